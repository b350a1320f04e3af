"""The engine at cluster scale: what one request costs beyond the retraining it needs.

Measured in one run, on this machine, against the code before the issue-10 changes
(``--before REV``, checked out into a temporary git worktree) where the workload runs on
both:

1. **Store requests per exact unlearn** of one last-slice sample, at S = 10 and S = 100
   shards (the same CIFAR-10 subset, so shards shrink as S grows). Requests are counted on
   a moto S3 server on 127.0.0.1 (its WSGI app is wrapped), with bytes in and out; each
   workload runs as its own process (``raysisa unlearn --in-process``, whole command).
2. **One coordinator batch** of 10 one-id requests over 10 shards at S = 100 (policy
   ``prs``: every shard retrains its last slice), shard work in-process.
3. **Planning and polling**: planning one batch of K = 100, 1,000, 10,000 requests with
   the pure planner, and ``Ledger.states()`` with 10,000 past requests.
4. **Training through Ray vs a plain PyTorch loop** over the same shards, same data and
   threads, whole process: ``raysisa train`` on Ray, ``raysisa train --in-process``, and a
   plain loop (``train_epoch`` over the decoded shards, no store, no Ray).
5. **Warm request latency**: a long-lived coordinator with its shard actors up; one
   request from ``submit`` to applied, against the retraining compute it needs.

    .venv/bin/python bench/scale.py              # writes BENCHMARKS.md and bench/results/scale.json
    .venv/bin/python bench/scale.py --no-write
"""

from __future__ import annotations

import os

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    RAY_USAGE_STATS_ENABLED="0",
)

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from bench.store_transactions import LOCK, REQUESTS, count_requests  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
PYTHON = sys.executable


# -- counting S3 requests on the server (moto's WSGI app wrapped, as for the transactions) ----
def kind(r: dict) -> str:
    if r["method"] == "GET" and "list-type" in r["query"]:
        return "LIST"
    if r["method"] == "POST" and "delete" in r["query"]:
        return "DELETE"
    return r["method"]


class Counted:
    """Requests, bytes and wall time of a block."""

    def __enter__(self) -> Counted:
        with LOCK:
            self.first = len(REQUESTS)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.started
        time.sleep(0.05)
        with LOCK:
            records = REQUESTS[self.first :]
        self.result = {
            "wall_seconds": round(self.wall, 2),
            "requests": len(records),
            "by_kind": dict(sorted(Counter(kind(r) for r in records).items())),
            "bytes_read": sum(r["out"] for r in records if r["method"] == "GET"),
            "bytes_written": sum(r["in"] for r in records if r["method"] in ("PUT", "POST")),
        }


# -- workloads, run as separate processes on either tree ---------------------------------------
def run_python(tree: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([PYTHON, "-c", textwrap.dedent(code), *args], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"workload failed ({tree}):\n{done.stderr[-3000:]}")
    return done.stdout


def run_cli(tree: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([PYTHON, "-m", "raysisa.cli", *args], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"raysisa {' '.join(args)} failed ({tree}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


BATCH = """
import sys, numpy as np
from raysisa import LocalPool, StoreConfig
from raysisa.config import CoordinatorConfig
from raysisa.coordinator import client
from raysisa.coordinator.service import Coordinator
store = StoreConfig(uri=sys.argv[1], endpoint_url=sys.argv[2])
config = CoordinatorConfig(policy="prs", window_seconds=0, idle_seconds=None)
if sys.argv[3] == "submit":
    for i in sys.argv[4].split(","):
        client.submit(store, [int(i)], key=f"scale-{i}")
else:
    coordinator = Coordinator(store, config, LocalPool())
    coordinator.step()
    print(coordinator.summary())
"""


def last_slice_ids(store, shards: list[int], slices: int) -> list[int]:
    from raysisa.store import RunStore

    run = RunStore(store)
    return [int(run.read_partition(k, slices, ["id"])["id"].to_numpy()[0]) for k in shards]


def copy_store(source, bucket_uri: str, endpoint: str):
    from raysisa.config import StoreConfig
    from raysisa.store import ObjectStore

    target = StoreConfig(uri=bucket_uri, endpoint_url=endpoint)
    ObjectStore(source).copy_to(ObjectStore(target))
    return target


def store_requests(trees: dict[str, Path], endpoint: str, work: Path, samples: int, slices: int) -> dict:
    import s3fs

    from raysisa import LocalPool, StoreConfig, parse_config, train

    results: dict = {}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    for shards in (10, 100):
        local = StoreConfig(uri=str(work / f"s{shards}"))
        job = parse_config({}, ["data.source=parquet", f"data.uri={CIFAR}", f"data.limit={samples}",
                                f"sharding.num_shards={shards}", f"sharding.num_slices={slices}",
                                "train.epochs=4", "model.width=8"])
        started = time.perf_counter()
        train(job, local, pool=LocalPool())
        print(f"trained S={shards} in {time.perf_counter() - started:.0f}s", flush=True)
        from raysisa.store import RunStore

        state = RunStore(local).refresh()
        shard_bytes = sum(ref.size for (k, _), ref in state.partitions.items() if k == 0)
        total_bytes = sum(ref.size for ref in state.partitions.values())
        for name, tree in trees.items():
            bucket = f"scale-{name}-{shards}-{int(time.time() * 1000) % 10**8}"
            fs.mkdir(bucket)
            store = copy_store(local, f"s3://{bucket}/run", endpoint)
            target = last_slice_ids(local, [0], slices)[0]
            with Counted() as unlearn:
                _, out = run_cli(tree, "unlearn", "--store", store.uri, "--endpoint-url", endpoint, "--ids", str(target),
                                 "--in-process", "--quiet", "--json")
            report = json.loads(out)
            row = {**unlearn.result, "shard_data_bytes": shard_bytes, "train_data_bytes": total_bytes,
                   "retrain_seconds": round(report["compute_seconds"], 3), "slices_retrained": report["slices_retrained"]}
            # a batch: 10 one-id requests over 10 shards, applied by one coordinator step
            if shards == 100:
                ids = last_slice_ids(local, list(range(1, 11)), slices)
                run_python(tree, BATCH, store.uri, endpoint, "submit", ",".join(map(str, ids)))
                with Counted() as batch:
                    run_python(tree, BATCH, store.uri, endpoint, "step")
                row["batch"] = batch.result
            results[f"{name} S={shards}"] = row
            print(name, shards, json.dumps(row), flush=True)
    return results


# -- planning and polling -------------------------------------------------------------------
PLANNING = """
import datetime as dt, json, time
import numpy as np
from raysisa.config import CoordinatorConfig
from raysisa.coordinator.plan import IndexRows, ShardFacts, plan_batch
from raysisa.coordinator.records import Request
SHARDS, SLICES, SAMPLES = 100, 4, 1_000_000
rng = np.random.default_rng(0)
shard_of, slice_of = rng.integers(0, SHARDS, SAMPLES), rng.integers(1, SLICES + 1, SAMPLES)
sizes = np.zeros((SHARDS, SLICES), np.int64)
np.add.at(sizes, (shard_of, slice_of - 1), 1)
facts = ShardFacts(slice_sizes={k: sizes[k].tolist() for k in range(SHARDS)}, epochs=6, ohs_budget=0.5, ohs_epochs=1)
t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
config = CoordinatorConfig(policy="ohs", max_request_ids=1000)
out = {}
for k in (100, 1_000, 10_000):
    requests = [Request(f"{n:032x}", sorted({int(i) for i in rng.integers(0, SAMPLES, 3)}),
                        (t0 + dt.timedelta(seconds=n / 1000)).isoformat(timespec="milliseconds"), "0" * 64) for n in range(k)]
    wanted = np.unique(np.concatenate([r.ids for r in requests]))
    rows = IndexRows(wanted, shard_of[wanted], slice_of[wanted])
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        plan_batch(requests, rows, facts, config, batch_id="b", created_at="x", now=t0.timestamp() + 3600)
        best = min(best, time.perf_counter() - started)
    out[f"plan one batch of {k:,} requests (100 shards)"] = best
print(json.dumps(out))
"""

POLLING = """
import json, sys, tempfile, time
import numpy as np
from raysisa.config import StoreConfig
from raysisa.store import ObjectStore
from raysisa.coordinator.ledger import Ledger
n = int(sys.argv[1])
folder = tempfile.mkdtemp(prefix="raysisa-ledger-")
ledger = Ledger(ObjectStore(StoreConfig(uri=folder)))
acks = [ledger.submit(np.array([i])) for i in range(n)]
if hasattr(ledger, "view"):  # bulk transitions and a snapshot
    view = ledger.view()
    ledger.append(view, [(a.request_id, "applied_exact", {"batch_id": "b"}) for a in acks])
    ledger.commit(view)
else:
    for a in acks:
        ledger.record(a.request_id, "applied_exact", {"batch_id": "b"})
ledger.submit(np.array([n + 1]))  # one request newer than the last batch
best = float("inf")
for _ in range(3):
    fresh = Ledger(ObjectStore(StoreConfig(uri=folder)))
    started = time.perf_counter()
    states = fresh.states()
    best = min(best, time.perf_counter() - started)
assert len(states) == n + 1
print(json.dumps(best))
"""


def planning(trees: dict[str, Path]) -> dict:
    results = json.loads(run_python(ROOT, PLANNING).strip().splitlines()[-1])
    for name, tree in trees.items():
        seconds = json.loads(run_python(tree, POLLING, "10000").strip().splitlines()[-1])
        results[f"poll every request's state with 10,000 past requests ({name}, local store)"] = seconds
    return results


# -- Ray vs a plain loop -----------------------------------------------------------------------
PLAIN = """
import sys, time, torch
started = time.perf_counter()
from raysisa import parse_config
from raysisa.config import slice_epochs
from raysisa.data.partition import plan_partition
from raysisa.data.sources import load_source
from raysisa.data.tensors import to_tensors
from raysisa.models import build_model
from raysisa.training import build_optimizer, configure_torch, derive_seed, lr_at, train_epoch
job = parse_config({}, sys.argv[1:])
spec = job.spec
configure_torch(spec.train.threads)
data = load_source(spec.data)
x, y = to_tensors(data.train, data.info)
ids = data.train["id"].to_numpy()
plan = plan_partition(ids, spec.sharding.num_shards, spec.sharding.num_slices, spec.sharding.seed)
import numpy as np
order = {int(i): n for n, i in enumerate(ids)}
grads = 0
epochs = slice_epochs(spec.train.epochs, spec.sharding.num_slices)
for k in range(spec.sharding.num_shards):
    torch.manual_seed(derive_seed(spec.train.seed, k, 0, 0))
    model = build_model(data.info, spec.model)
    optimizer = build_optimizer(model, spec.train)
    for r in range(1, spec.sharding.num_slices + 1):
        rows = [order[int(i)] for i in plan.ids[(plan.shard == k) & (plan.slice <= r)]]
        xs, ys = x[rows], y[rows]
        for e in range(epochs[r - 1]):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(spec.train, sum(epochs[: r - 1]) + e, spec.train.epochs)
            train_epoch(model, optimizer, xs, ys, batch_size=spec.train.batch_size,
                        seed=derive_seed(spec.train.seed, k, r, e), augment=spec.train.augment)
            grads += len(xs)
print(grads, time.perf_counter() - started)
"""


def ray_vs_plain(work: Path, samples: int) -> dict:
    recipe = ["data.source=parquet", f"data.uri={CIFAR}", f"data.limit={samples}", "sharding.num_shards=4",
              "sharding.num_slices=2", "train.epochs=4"]
    sets = [arg for item in recipe for arg in ("--set", item)]
    results = {}
    for attempt in range(2):  # interleaved, twice
        started = time.perf_counter()
        out = run_python(ROOT, PLAIN, *recipe)
        results.setdefault("plain loop", []).append(time.perf_counter() - started)
        grads = int(out.split()[0])
        variants = (
            ("raysisa --in-process", ["--in-process"]),
            ("raysisa on Ray, one shard at a time", ["--set", "cluster.max_concurrent=1"]),
            ("raysisa on Ray, shards in parallel", []),
        )
        for n, (name, extra) in enumerate(variants):
            wall, _ = run_cli(ROOT, "train", "--store", str(work / f"train-{attempt}-{n}"), *sets, *extra, "--quiet")
            results.setdefault(name, []).append(wall)
    best = {name: min(walls) for name, walls in results.items()}
    return {"sample_grads": grads, "seconds": {k: [round(w, 2) for w in v] for k, v in results.items()},
            "throughput": {k: round(grads / v, 1) for k, v in best.items()},
            "ray_vs_plain": round(best["plain loop"] / best["raysisa on Ray, one shard at a time"], 3),
            "in_process_vs_plain": round(best["plain loop"] / best["raysisa --in-process"], 3)}


# -- Ray's fixed cost, by part -------------------------------------------------------------
RAY_COST = """
import json, time
started = time.perf_counter()
import ray
from raysisa.config import ClusterConfig
from raysisa.sisa.actors import RayPool
imported = time.perf_counter()
ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
initialised = time.perf_counter()
pool = RayPool(ClusterConfig(cpus_per_shard=0.5), 4, label="bench")  # all four fit on 2 CPUs
pool.start(range(4))  # requests the slot actors and returns; wait until every one is up
ray.get([slot.up for slot in pool.slots])
up = time.perf_counter()
pool.close()
ray.shutdown()
done = time.perf_counter()
print(json.dumps({"import ray": imported - started, "ray.init (local cluster)": initialised - imported,
                  "4 shard actors up": up - initialised, "shutdown": done - up}))
"""


def ray_fixed_cost() -> dict:
    runs = [json.loads(run_python(ROOT, RAY_COST).strip().splitlines()[-1]) for _ in range(2)]
    return {part: round(min(r[part] for r in runs), 2) for part in runs[0]}


# -- one cold unlearn: in this process or on a fresh local Ray ------------------------------
COLD = """
import sys, json, time
started = time.perf_counter()
from raysisa import LocalPool, StoreConfig, unlearn
from raysisa.sisa.actors import ray_pool
store, ids, mode = StoreConfig(uri=sys.argv[1]), [int(i) for i in sys.argv[2].split(",")], sys.argv[3]
if mode == "ray":
    with ray_pool(None, 5) as pool:
        report = unlearn(store, ids, pool=pool)
else:
    report = unlearn(store, ids, pool=LocalPool())
print(json.dumps({"retrain_seconds": report.compute_seconds, "process_seconds": time.perf_counter() - started}))
"""


def cold_unlearn(work: Path) -> dict:
    """Whole-process time of one exact unlearn (digits, 5 shards x 4 slices) touching one
    shard and two shards, in-process and on a private local Ray cluster, interleaved."""
    from raysisa import LocalPool, StoreConfig, parse_config, train
    from raysisa.store import RunStore

    source = StoreConfig(uri=str(work / "cold"))
    train(parse_config({}, []), source, pool=LocalPool())
    run = RunStore(source)
    last = [int(run.read_partition(k, 4, ["id"])["id"].to_numpy()[n]) for n in range(6) for k in range(5)]
    results: dict = {}
    n = 0
    for _ in range(2):
        for shards in (1, 2):
            for mode in ("in-process", "ray"):
                ids = last[n : n + shards] if shards == 1 else [last[n], last[n + 1]]
                n += shards
                started = time.perf_counter()
                out = json.loads(run_python(ROOT, COLD, source.uri, ",".join(map(str, ids)), mode).strip().splitlines()[-1])
                wall = time.perf_counter() - started
                results.setdefault(f"{shards} shard(s), {mode}", []).append({"wall": round(wall, 2), "retrain": round(out["retrain_seconds"], 2)})
    return results


# -- warm request latency ----------------------------------------------------------------------
WARM = """
import sys, time, json
import ray
from raysisa import ClusterConfig, StoreConfig, parse_config, train
from raysisa.config import CoordinatorConfig
from raysisa.coordinator import client
from raysisa.coordinator.service import Coordinator
from raysisa.sisa.actors import RayPool, ray_session
from raysisa.store import RunStore
store = StoreConfig(uri=sys.argv[1])
recipe = sys.argv[2:]
job = parse_config({}, recipe)
with ray_session(ClusterConfig()):
    pool = RayPool(ClusterConfig(), job.spec.sharding.num_shards)
    train(job, store, pool=pool)
    coordinator = Coordinator(store, CoordinatorConfig(policy="prs", window_seconds=0, idle_seconds=None), pool)
    rows = []
    for n in range(4):
        run = RunStore(store)
        target = int(run.read_partition(n % job.spec.sharding.num_shards, job.spec.sharding.num_slices, ["id"])["id"].to_numpy()[0])
        started = time.perf_counter()
        ack = client.submit(store, [target], key=f"warm-{n}")
        while coordinator.step() not in ("batch",):
            pass
        latency = time.perf_counter() - started
        receipt = client.status(store, ack.request_id)["receipt"]
        compute = sum(s["seconds"] for s in receipt["shards"])
        rows.append({"latency_seconds": round(latency, 3), "retrain_seconds": round(compute, 3)})
    pool.close()
print(json.dumps(rows))
"""


def warm_latency(work: Path, samples: int) -> dict:
    recipe = ["data.source=parquet", f"data.uri={CIFAR}", f"data.limit={samples}", "sharding.num_shards=4",
              "sharding.num_slices=4", "train.epochs=4"]
    rows = json.loads(run_python(ROOT, WARM, str(work / "warm"), *recipe).strip().splitlines()[-1])
    steady = rows[1:]  # the first request also warms the coordinator's own caches
    latency = sum(r["latency_seconds"] for r in steady) / len(steady)
    compute = sum(r["retrain_seconds"] for r in steady) / len(steady)
    return {"requests": rows, "mean_latency_seconds": round(latency, 3), "mean_retrain_seconds": round(compute, 3),
            "ratio": round(latency / compute, 2) if compute else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="bc7a9d9", help="git revision to compare with (default: before issue 10)")
    parser.add_argument("--samples", type=int, default=5000, help="CIFAR-10 training samples of the S3 workloads")
    parser.add_argument("--only", nargs="*", default=["requests", "planning", "training", "raycost", "cold", "latency"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "before": args.before}
    with tempfile.TemporaryDirectory(prefix="raysisa-scale-") as tmp:
        work = Path(tmp)
        before = work / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", str(before), args.before], check=True,
                       capture_output=True)
        trees = {"before": before, "after": ROOT}
        try:
            if "requests" in args.only:
                count_requests()
                import socket

                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                server.start()
                try:
                    results["requests"] = store_requests(trees, f"http://127.0.0.1:{port}", work, args.samples, 4)
                finally:
                    server.stop()
            if "planning" in args.only:
                results["planning"] = planning(trees)
                print(json.dumps(results["planning"]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
        if "training" in args.only:
            results["training"] = ray_vs_plain(work, args.samples)
            print(json.dumps(results["training"]), flush=True)
        if "raycost" in args.only:
            results["ray_cost"] = ray_fixed_cost()
            print(json.dumps(results["ray_cost"]), flush=True)
        if "cold" in args.only:
            results["cold"] = cold_unlearn(work)
            print(json.dumps(results["cold"]), flush=True)
        if "latency" in args.only:
            results["latency"] = warm_latency(work, 2000)
            print(json.dumps(results["latency"]), flush=True)
    print(json.dumps(results, indent=1))
    if not args.no_write:
        out = ROOT / "bench" / "results" / "scale.json"
        previous = json.loads(out.read_text()) if out.exists() else {}
        out.write_text(json.dumps({**previous, **results}, indent=1) + "\n")
        write_section(ROOT / "BENCHMARKS.md", "scale", render({**previous, **results}))


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def render(r: dict) -> str:
    lines = [
        "## The engine at cluster scale: cost per request (`bench/scale.py`)",
        "",
        f"On {r['machine']}, moto S3 on 127.0.0.1 (requests counted on the server, by kind), CIFAR-10 subsets, "
        f"shard work in-process unless noted. *before* is commit `{r['before']}` (before the issue-10 changes), run "
        "on the same stores in the same invocation as *after* (this tree); sections come from `--only` invocations "
        "of the script on the same code.",
        "",
    ]
    req = r.get("requests")
    if req:
        lines += [
            "**Store requests per exact unlearn** of one last-slice sample (`raysisa unlearn --in-process`, whole "
            "command; 1 slice retrained), and per coordinator batch of 10 one-id requests over 10 shards (policy "
            "`prs`, 10 slices retrained):",
            "",
            "| code | shards | requests | GET / PUT / LIST / HEAD / DELETE | bytes read | affected shard's data | all training data | whole command | its retraining |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in req.items():
            code, shards = name.split(" S=")
            k = row["by_kind"]
            kinds = " / ".join(str(k.get(x, 0)) for x in ("GET", "PUT", "LIST", "HEAD", "DELETE"))
            lines.append(f"| {code} | {shards} | {row['requests']} | {kinds} | {_kb(row['bytes_read'])} | "
                         f"{_kb(row['shard_data_bytes'])} | {_kb(row['train_data_bytes'])} | {row['wall_seconds']:.1f} s | "
                         f"{row.get('retrain_seconds', float('nan')):.2f} s |")
        batches = {name: row["batch"] for name, row in req.items() if "batch" in row}
        if batches:
            lines += ["", "| code | coordinator batch at S = 100 | GET / PUT / LIST / HEAD / DELETE | bytes read | wall |",
                      "|---|---:|---|---:|---:|"]
            for name, b in batches.items():
                k = b["by_kind"]
                kinds = " / ".join(str(k.get(x, 0)) for x in ("GET", "PUT", "LIST", "HEAD", "DELETE"))
                lines.append(f"| {name.split(' S=')[0]} | {b['requests']} | {kinds} | {_kb(b['bytes_read'])} | {b['wall_seconds']:.1f} s |")
        lines.append("")
    plan = r.get("planning")
    if plan:
        lines += ["**Coordinator bookkeeping** (pure functions and a local ledger; best of 3):", "",
                  "| what | seconds |", "|---|---:|"]
        lines += [f"| {what} | {seconds:.3f} |" for what, seconds in plan.items()]
        lines.append("")
    tr = r.get("training")
    if tr:
        lines += [
            f"**Training through Ray vs a plain PyTorch loop**, whole process, same shards, data, recipe and "
            f"threads ({tr['sample_grads']:,} sample-gradients; best of 2, interleaved):",
            "",
            "| how | seconds | sample-gradients / s | vs plain loop |",
            "|---|---:|---:|---:|",
        ]
        plain = min(tr["seconds"]["plain loop"])
        for name, walls in tr["seconds"].items():
            best = min(walls)
            lines.append(f"| {name} | {best:.1f} | {tr['sample_grads'] / best:,.0f} | {plain / best:.2f} |")
        lines.append("")
    cost = r.get("ray_cost")
    if cost:
        parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in cost.items())
        lines += [f"**Ray's fixed cost** in a process that uses it (best of 2): {parts}; {sum(cost.values()):.1f} s in all, "
                  "which is the gap between Ray one shard at a time and the plain loop above.", ""]
    cold = r.get("cold")
    if cold:
        lines += [
            "**One cold unlearn, whole process** (`raysisa.unlearn`, digits, 5 shards x 4 slices, last-slice samples; "
            "best of 2): in this process, or on a private local Ray cluster started for it:",
            "",
            "| deletion | where | process seconds | retraining compute |",
            "|---|---|---:|---:|",
        ]
        for name, rows in cold.items():
            best = min(rows, key=lambda x: x["wall"])
            where = name.split(", ")[1]
            lines.append(f"| {name.split(', ')[0]} | {where} | {best['wall']:.1f} | {best['retrain']:.2f} s |")
        lines.append("")
    lat = r.get("latency")
    if lat:
        lines += [
            f"**Warm request latency**: a long-lived coordinator with its shard actors up, one one-id request at a "
            f"time from `submit` to applied: {lat['mean_latency_seconds']:.2f} s on average against "
            f"{lat['mean_retrain_seconds']:.2f} s of retraining compute ({lat['ratio']}x).",
            "",
        ]
    lines += [
        "What it shows, and what is left:",
        "",
        "- An unlearn costs the same requests at 10 and at 100 shards; what is left is about 30 fixed requests (lease, "
        "recovery check, manifest, commit log, index and tombstones, journal, three new data objects, commit, the "
        "sweep by key, release) plus, in a cold worker, the shard's R partitions and per retrained slice a HEAD, the "
        "previous checkpoint (2 GETs) and the new one (2 PUTs). Bytes read are the id index, the affected shard's data "
        "and the restart checkpoint read twice (the driver verifies it before deleting anything; the worker loads "
        "it), never the other shards' partitions (*before*, every unlearn read the commit log and index several times).",
        "- A coordinator batch no longer lists the whole store, the ledger history or every checkpoint per step; "
        "planning 10,000 requests takes milliseconds (the issue measured 5.8 s for 5,000 with the old planner), and "
        "polling reads a snapshot plus the requests logged since.",
        "- A cold command is still dominated by its process: importing torch and raysisa (~2 s), torch's optimiser "
        "importing its compiler on the first step (~2 s; torch does this unconditionally), and, on Ray, starting a "
        "private local cluster (~8 s with actors). So `unlearn` with no cluster configured runs in-process when one "
        "shard works; the table shows in-process also wins for two shards of small work, and Ray pays when the "
        "retraining is long enough to run shards in parallel or the data lives on a cluster. Request latency is "
        "the warm path: the long-lived coordinator keeps its shard actors (started together, the compiler imported "
        "at start), which hold the decoded partitions and read only what a deletion changed.",
        "- Training one shard at a time through Ray actors reaches the ratio above against the plain loop: the "
        "difference is Ray's start-up and shutdown and each actor's process start, a fixed cost of seconds that a "
        "longer training amortises; shards in parallel use the machine's cores and beat the single-threaded loop.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

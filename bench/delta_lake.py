#!/usr/bin/env python
# ruff: noqa: E402 - the environment must be set before any client library is imported
"""Measure Delta Lake (delta-rs / `deltalake`) for SISA-style "delete these ids" on S3 (moto):
the alternative to raysisa's own journal that ``bench/store_transactions.py`` compares with.

deltalake is not a raysisa dependency; run this in a separate venv::

    python3 -m venv /tmp/deltabench/.venv
    /tmp/deltabench/.venv/bin/pip install deltalake 'moto[server]==5.2.5' pyarrow==25.0.1 \
        boto3==1.43.117 botocore==1.43.117 s3fs==2026.9.0 aiobotocore==3.10.0 fsspec==2026.9.0
    /tmp/deltabench/.venv/bin/python bench/delta_lake.py > bench/results/delta_lake.json

Prints ONE JSON document on stdout (progress goes to stderr); measured with deltalake 1.6.6.

All S3 traffic goes to an in-process moto server on 127.0.0.1; requests are counted
server-side (moto's WSGI app is wrapped), so traffic from Rust (delta-rs) and from
child processes is counted too.

Two buckets:
  * BUCKET        - normal moto: honours If-None-Match / If-Match (conditional writes).
  * BUCKET_NOCOND - the wrapper strips If-None-Match / If-Match before moto sees them,
                    i.e. it simulates an S3-compatible store WITHOUT conditional writes
                    (delta-rs 1.x itself cannot be told to skip them; see RESULTS.md).
"""
from __future__ import annotations

import os

# ---- credentials / no network: must happen before any client library starts ----
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
for _k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

import argparse
import io
import json
import multiprocessing as mp
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter

BUCKET = "deltabench"
BUCKET_NOCOND = "deltabench-nocond"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def storage_options(port: int) -> dict:
    # Only these are needed with deltalake 1.6.x: commits to _delta_log always use
    # PUT If-None-Match: * (object_store PutMode::Create).  "conditional_put": "etag"
    # additionally enables If-Match updates (not used by commits); it is harmless.
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "conditional_put": "etag",
    }


# ============================ server-side instrumentation ============================
REQ_LOG: list[dict] = []
REQ_LOCK = threading.Lock()
KILL_RULE: dict = {}  # {"prefix":..., "after_parquet_puts": n, "pid": pid, "count": 0, "done": False}


def install_instrumentation():
    from moto.moto_server import werkzeug_app

    orig = werkzeug_app.DomainDispatcherApplication.__call__

    def wrapped(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        rec = {
            "t": time.time(),
            "m": environ["REQUEST_METHOD"],
            "p": path,
            "q": environ.get("QUERY_STRING", ""),
            "in": int(environ.get("CONTENT_LENGTH") or 0),
            "inm": environ.get("HTTP_IF_NONE_MATCH"),
            "im": environ.get("HTTP_IF_MATCH"),
        }
        if path.startswith(f"/{BUCKET_NOCOND}/") or path == f"/{BUCKET_NOCOND}":
            environ.pop("HTTP_IF_NONE_MATCH", None)
            environ.pop("HTTP_IF_MATCH", None)

        def sr(status, headers, exc_info=None):
            rec["st"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        result = orig(self, environ, sr)
        chunks = list(result)
        if hasattr(result, "close"):
            result.close()
        rec["out"] = sum(len(c) for c in chunks)
        with REQ_LOCK:
            REQ_LOG.append(rec)
            kr = KILL_RULE
            if (kr and not kr.get("done") and rec["m"] == "PUT" and rec["p"].startswith(kr["prefix"])
                    and rec["p"].endswith(".parquet") and rec.get("st") == 200):
                kr["count"] += 1
                if kr["count"] >= kr["after_parquet_puts"]:
                    kr["done"] = True
                    kr["killed_at"] = time.time()
                    try:
                        os.kill(kr["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        kr["kill_error"] = "process already gone"
        return chunks

    werkzeug_app.DomainDispatcherApplication.__call__ = wrapped


def classify(r: dict) -> str:
    m, p, q = r["m"], r["p"], r["q"]
    is_bucket = p.count("/") <= 1 or p.endswith("/") and p.count("/") == 2
    if m == "GET" and ("list-type" in q or is_bucket):
        return "LIST"
    if m == "GET":
        return "GET"
    if m == "HEAD":
        return "HEAD"
    if m == "PUT" and "partNumber" in q:
        return "UPLOAD_PART"
    if m == "PUT":
        if r.get("inm"):
            return "PUT_IF_NONE_MATCH"
        if r.get("im"):
            return "PUT_IF_MATCH"
        return "PUT"
    if m == "POST" and "delete" in q:
        return "DELETE_OBJECTS(batch)"
    if m == "POST" and "uploads" in q:
        return "CREATE_MULTIPART"
    if m == "POST" and "uploadId" in q:
        return "COMPLETE_MULTIPART"
    if m == "DELETE":
        return "DELETE"
    return f"{m}"


def summarize(recs: list[dict], t0: float, t1: float) -> dict:
    c = Counter(classify(r) for r in recs)
    status = Counter(r.get("st") for r in recs if r.get("st") not in (200, 204, 206))
    wr = sum(r["in"] for r in recs if r["m"] in ("PUT", "POST"))
    return {
        "wall_s": round(t1 - t0, 3),
        "requests_total": len(recs),
        "requests_by_type": dict(sorted(c.items())),
        "non_2xx_status_counts": {str(k): v for k, v in status.items()},
        "bytes_written": wr,
        "bytes_written_parquet": sum(r["in"] for r in recs if r["m"] == "PUT" and r["p"].endswith(".parquet")),
        "bytes_written_delta_log": sum(r["in"] for r in recs if r["m"] == "PUT" and "/_delta_log/" in r["p"]),
        "bytes_read": sum(r.get("out", 0) for r in recs if r["m"] == "GET"),
        "distinct_data_files_read": len({r["p"] for r in recs if r["m"] == "GET" and r["p"].endswith(".parquet")
                                         and "/_delta_log/" not in r["p"]}),
        "commit_puts": [
            {"key": r["p"], "if_none_match": r.get("inm"), "status": r.get("st")}
            for r in recs if r["m"] == "PUT" and "/_delta_log/" in r["p"] and r["p"].endswith(".json")
        ],
    }


class Phase:
    def __init__(self, name: str, results: dict):
        self.name, self.results = name, results

    def __enter__(self):
        with REQ_LOCK:
            self.i0 = len(REQ_LOG)
        self.t0 = time.time()
        return self

    def __exit__(self, *exc):
        self.t1 = time.time()
        time.sleep(0.05)
        with REQ_LOCK:
            recs = list(REQ_LOG[self.i0:])
        self.results[self.name] = summarize(recs, self.t0, self.t1)
        return False


# ============================ helpers ============================
def make_data(n: int, seed: int = 7):
    import pyarrow as pa

    ids = list(range(n))
    rnd = random.Random(seed)
    blob = os.urandom(1024 * n)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "label": pa.array([rnd.randrange(10) for _ in ids], pa.int16()),
        "image": pa.array([blob[i * 1024:(i + 1) * 1024] for i in ids], pa.binary()),
        "shard": pa.array([i % 5 for i in ids], pa.int32()),
        "slice": pa.array([(i // 5) % 4 + 1 for i in ids], pa.int32()),
    })


def part_of(i: int) -> tuple[int, int]:
    return i % 5, (i // 5) % 4 + 1


def ids_in_partition(shard: int, slc: int, n: int) -> list[int]:
    return [i for i in range(n) if part_of(i) == (shard, slc)]


def list_objects(s3, bucket: str, prefix: str) -> list[dict]:
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        resp = s3.list_objects_v2(**kw)
        out += resp.get("Contents", [])
        if not resp.get("IsTruncated"):
            return out
        token = resp["NextContinuationToken"]


def scan_parquet_objects(s3, bucket: str, prefix: str, ids: set[int]) -> dict:
    """Read every data .parquet object in the bucket prefix; which contain any of `ids`?"""
    import pyarrow.parquet as pq

    objs = [o for o in list_objects(s3, bucket, prefix) if o["Key"].endswith(".parquet") and "/_delta_log/" not in o["Key"]]
    hits = {}
    for o in objs:
        data = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        col = pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist()
        found = sorted(ids.intersection(col))
        if found:
            hits[o["Key"]] = found
    return {"parquet_objects": len(objs), "objects_containing_deleted_ids": hits,
            "deleted_ids_found_in_raw_parquet": sorted({i for v in hits.values() for i in v})}


def scan_delta_log(s3, bucket: str, prefix: str, ids: set[int]) -> dict:
    """Look for deleted ids inside _delta_log (JSON commits + checkpoint parquet)."""
    import pyarrow.parquet as pq

    objs = list_objects(s3, bucket, prefix + "_delta_log/")
    report = {"log_objects": [o["Key"].split("/_delta_log/")[1] for o in objs],
              "ids_in_commit_predicates": {}, "ids_as_stats_min_max": {}, "stats_columns": set()}

    def check_stats(fname, kind, stats_str):
        if not stats_str:
            return
        st = json.loads(stats_str) if isinstance(stats_str, str) else stats_str
        for agg in ("minValues", "maxValues"):
            vals = st.get(agg) or {}
            report["stats_columns"].update(vals.keys())
            v = vals.get("id")
            if v is not None and int(v) in ids:
                report["ids_as_stats_min_max"].setdefault(fname, []).append(f"{kind}.{agg}.id={v}")

    for o in objs:
        key = o["Key"]
        fname = key.split("/_delta_log/")[1]
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if fname.endswith(".json"):
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                act = json.loads(line)
                if "commitInfo" in act:
                    params = act["commitInfo"].get("operationParameters") or {}
                    preds = " ".join(str(v) for k, v in params.items() if "predicate" in k.lower())
                    found = sorted(ids.intersection(int(x) for x in re.findall(r"\b\d+\b", preds)))
                    if found:
                        report["ids_in_commit_predicates"][fname] = {
                            "operation": act["commitInfo"].get("operation"),
                            "ids": found, "operationParameters": params}
                for kind in ("add", "remove"):
                    if kind in act:
                        check_stats(fname, kind, act[kind].get("stats"))
        elif fname.endswith(".parquet"):  # checkpoint
            tbl = pq.read_table(io.BytesIO(body))
            for row in tbl.to_pylist():
                for kind in ("add", "remove"):
                    a = row.get(kind)
                    if a:
                        check_stats(fname, kind, a.get("stats"))

    report["stats_columns"] = sorted(report["stats_columns"])
    report["deleted_ids_anywhere_in_log"] = sorted(
        {i for v in report["ids_in_commit_predicates"].values() for i in (v["ids"] if isinstance(v, dict) else v)}
        | {int(s.split("=")[1]) for v in report["ids_as_stats_min_max"].values() for s in v})
    return report


def ever_added_paths(s3, bucket: str, prefix: str) -> set[str]:
    """Data files that some commit in the (current) _delta_log ever added."""
    from urllib.parse import unquote

    out = set()
    for o in list_objects(s3, bucket, prefix + "_delta_log/"):
        if o["Key"].endswith(".json"):
            for line in s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode().splitlines():
                if line.strip():
                    act = json.loads(line)
                    if "add" in act:
                        out.add(prefix + unquote(act["add"]["path"]))
    return out


def table_ids(uri: str, so: dict, version: int | None = None) -> set[int]:
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=so, version=version)
    return set(dt.to_pyarrow_table(columns=["id"]).column("id").to_pylist())


# ============================ child processes ============================
def delete_predicate(ids, with_partition: bool) -> str:
    if not with_partition:
        return f"id in ({', '.join(map(str, ids))})"
    groups: dict = {}
    for i in ids:
        groups.setdefault(part_of(i), []).append(i)
    return " OR ".join(f"(shard = {s} AND slice = {r} AND id in ({', '.join(map(str, g))}))"
                       for (s, r), g in sorted(groups.items()))


def _concurrent_worker(name, uri, so, rounds, barrier, q, with_partition=False, app_retries=0):
    from deltalake import DeltaTable

    for rnd, ids in enumerate(rounds):
        dt = DeltaTable(uri, storage_options=so)
        v0 = dt.version()
        barrier.wait()
        t0 = time.time()
        attempts, errors = 0, []
        while True:
            attempts += 1
            try:
                m = dt.delete(delete_predicate(ids, with_partition))
                res = {"ok": True, "num_deleted_rows": m.get("num_deleted_rows"),
                       "num_removed_files": m.get("num_removed_files"), "num_added_files": m.get("num_added_files")}
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {str(e).strip()[:800]}")
                if attempts > app_retries:
                    res = {"ok": False, "error_type": type(e).__name__, "error": str(e).strip()[:800]}
                    break
                dt = DeltaTable(uri, storage_options=so)  # re-read latest version and redo the delete
        res.update(worker=name, round=rnd, ids=ids, read_version=v0, secs=round(time.time() - t0, 3),
                   attempts=attempts, failed_attempt_errors=[e[:160] for e in errors])
        try:
            res["version_after"] = DeltaTable(uri, storage_options=so).version()
        except Exception as e:  # noqa: BLE001
            res["version_after"] = f"error: {e}"
        q.put(res)
        barrier.wait()


def _alter_child(uri, so, props):
    from deltalake import DeltaTable

    DeltaTable(uri, storage_options=so).alter.set_table_properties(props)


def _crash_child(uri, so, ids, ready):
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=so)
    ready.set()
    dt.delete(f"id in ({', '.join(map(str, ids))})")
    os._exit(0)


# ============================ scenarios ============================
def run_concurrency(ctx, uri, so, rounds_a, rounds_b, n, s3, bucket, prefix, with_partition=False, app_retries=0):
    q = ctx.Queue()
    barrier = ctx.Barrier(2)
    with REQ_LOCK:
        i0 = len(REQ_LOG)
    t0 = time.time()
    ps = [ctx.Process(target=_concurrent_worker, args=("A", uri, so, rounds_a, barrier, q, with_partition, app_retries)),
          ctx.Process(target=_concurrent_worker, args=("B", uri, so, rounds_b, barrier, q, with_partition, app_retries))]
    for p in ps:
        p.start()
    results = [q.get(timeout=300) for _ in range(2 * len(rounds_a))]
    for p in ps:
        p.join(60)
    t1 = time.time()
    with REQ_LOCK:
        recs = list(REQ_LOG[i0:])
    remaining = table_ids(uri, so)
    rounds = []
    for r in range(len(rounds_a)):
        per = sorted([x for x in results if x["round"] == r], key=lambda x: x["worker"])
        for x in per:
            x["ids_still_present_after_all_rounds"] = sorted(set(x["ids"]) & remaining)
        both_ok = all(x["ok"] for x in per)
        both_gone = all(not x["ids_still_present_after_all_rounds"] for x in per)
        lost = [x["worker"] for x in per if x["ok"] and x["ids_still_present_after_all_rounds"]]
        rounds.append({"round": r, "workers": per, "both_reported_success": both_ok,
                       "both_deletions_visible": both_gone, "silently_lost_deletions_by": lost})
    unref = orphan_parquet(uri, so, s3, bucket, prefix)
    added = ever_added_paths(s3, bucket, prefix)
    never_committed = [k for k in unref if k not in added]  # written by a delete whose commit failed/was lost
    gone = ({i for x in rounds_a + rounds_b for i in x}) - remaining
    leak = scan_parquet_objects(s3, bucket, prefix, gone)["objects_containing_deleted_ids"]
    leak = {k: v for k, v in leak.items() if k in set(never_committed)}
    commit_puts = [r for r in recs if r["m"] == "PUT" and "/_delta_log/" in r["p"] and r["p"].endswith(".json")]
    return {
        "wall_s": round(t1 - t0, 2),
        "rounds": rounds,
        "rounds_with_both_deletions_visible": sum(r["both_deletions_visible"] for r in rounds),
        "rounds_with_a_failed_delete": sum(not r["both_reported_success"] for r in rounds),
        "rounds_with_silently_lost_delete": sum(bool(r["silently_lost_deletions_by"]) for r in rounds),
        "commit_put_attempts": len(commit_puts),
        "commit_puts_rejected_412": sum(1 for r in commit_puts if r.get("st") == 412),
        "commit_puts_with_if_none_match_header": sum(1 for r in commit_puts if r.get("inm")),
        "final_version": __import__("deltalake").DeltaTable(uri, storage_options=so).version(),
        "final_row_count": len(remaining),
        "predicate_includes_partition_columns": with_partition,
        "app_level_retries": app_retries,
        "unreferenced_parquet_files_after": len(unref),
        "of_which_tombstoned_old_versions": len(unref) - len(never_committed),
        "of_which_never_committed_orphans": len(never_committed),
        "never_committed_orphans_holding_deleted_ids": len(leak),
        "deleted_ids_present_in_never_committed_orphans": sorted({i for v in leak.values() for i in v}),
    }


def orphan_parquet(uri, so, s3, bucket, prefix):
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=so)
    live = {u.split(f"s3://{bucket}/", 1)[1] for u in dt.file_uris()}
    objs = [o["Key"] for o in list_objects(s3, bucket, prefix)
            if o["Key"].endswith(".parquet") and "/_delta_log/" not in o["Key"]]
    return sorted(set(objs) - live)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    N = args.n
    T_START = time.time()

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    install_instrumentation()
    import boto3
    import deltalake
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=BUCKET_NOCOND)
    so = storage_options(port)

    out: dict = {
        "versions": {"deltalake": deltalake.__version__, "delta_rs_core": deltalake.rust_core_version(),
                     "pyarrow": pa.__version__, "moto": __import__("moto").__version__, "python": sys.version.split()[0]},
        "storage_options_used": {k: v for k, v in so.items() if "SECRET" not in k},
        "n_rows": N,
    }

    # ---------------- 0. which settings make delta-rs commit with conditional writes ----------------
    log("[0] probing storage options")
    probe = {}
    small = pa.table({"id": pa.array([1, 2, 3], pa.int64())})
    base = {k: v for k, v in so.items() if k != "conditional_put"}
    for name, extra in [("default(no extra option)", {}), ("conditional_put=etag", {"conditional_put": "etag"}),
                        ("AWS_CONDITIONAL_PUT=etag", {"AWS_CONDITIONAL_PUT": "etag"}),
                        ("AWS_S3_ALLOW_UNSAFE_RENAME=true", {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}),
                        ("conditional_put=disabled", {"conditional_put": "disabled"})]:
        pref = "probe/" + re.sub(r"[^a-zA-Z0-9]+", "_", name)
        res: dict = {}
        with Phase("p", res):
            try:
                write_deltalake(f"s3://{BUCKET}/{pref}", small, storage_options={**base, **extra})
                write_deltalake(f"s3://{BUCKET}/{pref}", small, mode="append", storage_options={**base, **extra})
                ok, err = True, None
            except Exception as e:  # noqa: BLE001
                ok, err = False, f"{type(e).__name__}: {str(e).strip()}"
        probe[name] = {"ok": ok, "error": err,
                       "commit_puts": [(c["key"].rsplit("/", 1)[1], "If-None-Match: " + str(c["if_none_match"]), c["status"])
                                       for c in res["p"]["commit_puts"]]}
    # direct proof that moto enforces If-None-Match
    s3.put_object(Bucket=BUCKET, Key="probe/inm", Body=b"1")
    try:
        s3.put_object(Bucket=BUCKET, Key="probe/inm", Body=b"2", IfNoneMatch="*")
        probe["moto_enforces_if_none_match"] = False
    except Exception as e:  # noqa: BLE001
        probe["moto_enforces_if_none_match"] = f"True ({str(e)[:120]})"
    out["0_storage_option_probe"] = probe

    # ---------------- 1. write ----------------
    log("[1] writing table")
    uri = f"s3://{BUCKET}/delta"
    prefix = "delta/"
    data = make_data(N)
    with Phase("write", out):
        write_deltalake(uri, data, partition_by=["shard", "slice"], storage_options=so)
    dt = DeltaTable(uri, storage_options=so)
    out["write"]["version"] = dt.version()
    out["write"]["data_files"] = len(dt.file_uris())
    out["write"]["partitions"] = len(dt.partitions())

    # ---------------- 2. delete 5 ids in 3 partitions ----------------
    p1, p2, p3 = ids_in_partition(0, 1, N), ids_in_partition(1, 2, N), ids_in_partition(3, 4, N)
    del_ids = [p1[0], p1[len(p1) // 2], p2[17], p2[400], p3[-1]]  # p1[0] = min id of its file, p3[-1] = max
    S = set(del_ids)
    out["delete"] = {"ids": del_ids, "partitions": sorted({f"shard={part_of(i)[0]}/slice={part_of(i)[1]}" for i in del_ids})}
    log("[2] delete", del_ids)
    with Phase("open_table_for_delete", out):
        dt = DeltaTable(uri, storage_options=so)
    with Phase("delete_call", out["delete"]):
        metrics = dt.delete(f"id in ({', '.join(map(str, del_ids))})")
    out["delete"]["metrics"] = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    out["delete"]["version_after"] = DeltaTable(uri, storage_options=so).version()
    out["delete"]["deleted_ids_visible_in_latest"] = sorted(S & table_ids(uri, so))

    # ---------------- 3. leftovers before / after vacuum ----------------
    log("[3] leftover checks")

    def leftovers() -> dict:
        """Where the deleted ids can still be read: time travel, raw parquet, the log."""
        chk: dict = {}
        try:
            chk["time_travel_v0_deleted_ids_readable"] = sorted(S & table_ids(uri, so, version=0))
        except Exception as e:  # noqa: BLE001
            chk["time_travel_v0_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
        chk.update(scan_parquet_objects(s3, BUCKET, prefix, S))
        chk["delta_log"] = scan_delta_log(s3, BUCKET, prefix, S)
        return chk

    out["3a_after_delete_before_vacuum"] = leftovers()

    vac: dict = {}
    with Phase("vacuum_call", vac):
        removed = DeltaTable(uri, storage_options=so).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    vac["vacuum_call"]["files_removed"] = len(removed)
    vac["version_after"] = DeltaTable(uri, storage_options=so).version()
    out["3b_vacuum"] = vac

    out["3c_after_vacuum"] = leftovers()

    ctx = mp.get_context("spawn")
    # Extra: can the log itself be purged? logRetentionDuration=0 + checkpoint + cleanup_metadata
    log("[3d] log purge attempt")
    purge: dict = {}
    try:
        # NB: alter.set_table_properties keeps the GIL during its S3 I/O, which deadlocks the in-process
        # moto server thread; run it in a child process.
        pa_ = ctx.Process(target=_alter_child, args=(uri, so, {"delta.logRetentionDuration": "interval 0 seconds",
                                                               "delta.deletedFileRetentionDuration": "interval 0 seconds"}))
        pa_.start()
        pa_.join(60)
        purge["alter_child_exitcode"] = pa_.exitcode
        dt = DeltaTable(uri, storage_options=so)
        purge["version_after_alter"] = dt.version()
        with Phase("checkpoint_and_cleanup", purge):
            dt.create_checkpoint()
            time.sleep(1.1)
            dt = DeltaTable(uri, storage_options=so)
            dt.cleanup_metadata()
        purge["delta_log"] = scan_delta_log(s3, BUCKET, prefix, S)
        purge["time_travel_v0_after_cleanup"] = None
        try:
            DeltaTable(uri, storage_options=so, version=0)
            purge["time_travel_v0_after_cleanup"] = "opened (v0 still reconstructable)"
        except Exception as e:  # noqa: BLE001
            purge["time_travel_v0_after_cleanup"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
        purge["latest_still_readable_rows"] = len(table_ids(uri, so))
    except Exception as e:  # noqa: BLE001
        purge["error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    out["3d_log_purge_attempt"] = purge

    # ---------------- 4. concurrency ----------------
    R = args.rounds

    def rounds_for(shard_a, shard_b, same, n_ids=3):
        ra, rb = [], []
        for r in range(R):
            slc = r % 4 + 1
            pa_ids = ids_in_partition(shard_a, slc, N)
            pb_ids = pa_ids if same else ids_in_partition(shard_b, slc, N)
            off = 100 + 10 * r
            ra.append(pa_ids[off:off + n_ids])
            rb.append(pb_ids[off + 5:off + 5 + n_ids] if same else pb_ids[off:off + n_ids])
        return ra, rb

    conc: dict = {}
    # fresh table for concurrency in the normal (conditional-write) bucket
    log("[4] concurrency (conditional writes)")
    uri_c = f"s3://{BUCKET}/delta_conc"
    write_deltalake(uri_c, data, partition_by=["shard", "slice"], storage_options=so)
    ra, rb = rounds_for(2, 4, same=False)
    conc["cond_disjoint_partitions"] = run_concurrency(ctx, uri_c, so, ra, rb, N, s3, BUCKET, "delta_conc/")
    ra, rb = rounds_for(3, 3, same=True)
    conc["cond_same_partition_file"] = run_concurrency(ctx, uri_c, so, ra, rb, N, s3, BUCKET, "delta_conc/")
    log("[4] concurrency (conditional writes, predicate names the partition)")
    uri_c2 = f"s3://{BUCKET}/delta_conc2"
    write_deltalake(uri_c2, data, partition_by=["shard", "slice"], storage_options=so)
    alt_ids = [p1[1], p1[len(p1) // 2 + 1], p2[18], p2[401], p3[-2]]
    dtp = DeltaTable(uri_c2, storage_options=so)
    alt: dict = {"ids": alt_ids, "predicate": delete_predicate(alt_ids, True)}
    with Phase("delete_call", alt):
        m = dtp.delete(alt["predicate"])
    alt["metrics"] = {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
    out["delete_with_partition_predicate"] = alt
    # same kind of delete through MERGE ... WHEN MATCHED DELETE: are the ids still spelled out in the log?
    mg_ids = [p1[2], p2[19], p3[-3]]
    src = pa.table({"id": pa.array(mg_ids, pa.int64()), "shard": pa.array([part_of(i)[0] for i in mg_ids], pa.int32()),
                    "slice": pa.array([part_of(i)[1] for i in mg_ids], pa.int32())})
    mg: dict = {"ids": mg_ids}
    v_before_merge = DeltaTable(uri_c2, storage_options=so).version()
    with Phase("merge_delete_call", mg):
        m = (DeltaTable(uri_c2, storage_options=so)
             .merge(src, "t.shard = s.shard AND t.slice = s.slice AND t.id = s.id", source_alias="s", target_alias="t")
             .when_matched_delete().execute())
    mg["metrics"] = {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
    mg["ids_visible_after"] = sorted(set(mg_ids) & table_ids(uri_c2, so))
    body = s3.get_object(Bucket=BUCKET, Key=f"delta_conc2/_delta_log/{v_before_merge + 1:020d}.json")["Body"].read()
    ci = [json.loads(x)["commitInfo"] for x in body.decode().splitlines() if '"commitInfo"' in x][0]
    mg["commitInfo_operationParameters"] = ci.get("operationParameters")
    mg["ids_spelled_out_in_commit_json"] = [i for i in mg_ids if re.search(rf"\b{i}\b", json.dumps(ci))]
    out["delete_via_merge"] = mg
    ra, rb = rounds_for(2, 4, same=False)
    conc["cond_disjoint_partitions_partition_predicate"] = run_concurrency(
        ctx, uri_c2, so, ra, rb, N, s3, BUCKET, "delta_conc2/", with_partition=True)
    ra, rb = rounds_for(3, 3, same=True)
    conc["cond_same_partition_file_partition_predicate"] = run_concurrency(
        ctx, uri_c2, so, ra, rb, N, s3, BUCKET, "delta_conc2/", with_partition=True)
    log("[4] concurrency (conditional writes, app-level retry up to 3x)")
    ra, rb = rounds_for(0, 0, same=True)
    conc["cond_same_partition_file_app_retry"] = run_concurrency(
        ctx, uri_c2, so, ra, rb, N, s3, BUCKET, "delta_conc2/", app_retries=3)

    log("[4] concurrency (store ignoring If-None-Match)")
    uri_n = f"s3://{BUCKET_NOCOND}/delta_conc"
    write_deltalake(uri_n, data, partition_by=["shard", "slice"], storage_options=so)
    ra, rb = rounds_for(2, 4, same=False)
    conc["nocond_disjoint_partitions"] = run_concurrency(ctx, uri_n, so, ra, rb, N, s3, BUCKET_NOCOND, "delta_conc/")
    ra, rb = rounds_for(3, 3, same=True)
    conc["nocond_same_partition_file"] = run_concurrency(ctx, uri_n, so, ra, rb, N, s3, BUCKET_NOCOND, "delta_conc/")
    out["4_concurrency"] = conc

    # ---------------- 5. crash ----------------
    log("[5] crash")
    crash: dict = {}
    uri_k = f"s3://{BUCKET}/delta_crash"
    write_deltalake(uri_k, data, partition_by=["shard", "slice"], storage_options=so)
    v_before = DeltaTable(uri_k, storage_options=so).version()
    kill_ids = [ids_in_partition(s, sl, N)[3] for s in range(5) for sl in range(1, 5)]  # one id in each of 20 files
    ready = ctx.Event()
    p = ctx.Process(target=_crash_child, args=(uri_k, so, kill_ids, ready))
    p.start()
    ready.wait(60)
    with REQ_LOCK:
        KILL_RULE.clear()
        KILL_RULE.update(prefix=f"/{BUCKET}/delta_crash/", after_parquet_puts=3, pid=p.pid, count=0, done=False)
    p.join(120)
    crash["child_exitcode"] = p.exitcode
    crash["killed_by_rule"] = dict(KILL_RULE, pid=None)
    crash["kill_point"] = "SIGKILL right after the 3rd rewritten parquet file of a 20-file delete was stored"
    with REQ_LOCK:
        KILL_RULE.clear()
    dt = DeltaTable(uri_k, storage_options=so)
    crash["version_before"] = v_before
    crash["version_after_crash"] = dt.version()
    crash["deleted_ids_still_visible_after_crash"] = len(set(kill_ids) & table_ids(uri_k, so))
    crash["row_count_after_crash"] = len(table_ids(uri_k, so))
    orph = orphan_parquet(uri_k, so, s3, BUCKET, "delta_crash/")
    crash["leftover_uncommitted_parquet_files"] = len(orph)
    crash["leftover_uncommitted_parquet_bytes"] = sum(
        o["Size"] for o in list_objects(s3, BUCKET, "delta_crash/") if o["Key"] in set(orph))
    mpu = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="delta_crash/").get("Uploads", [])
    crash["incomplete_multipart_uploads"] = len(mpu)
    time.sleep(1.0)
    res: dict = {}
    with Phase("vacuum_default", res):
        r1 = DeltaTable(uri_k, storage_options=so).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    crash["vacuum_default_removed"] = len(r1)
    crash["leftover_after_vacuum_default"] = len(orphan_parquet(uri_k, so, s3, BUCKET, "delta_crash/"))
    with Phase("vacuum_full", res):
        r2 = DeltaTable(uri_k, storage_options=so).vacuum(retention_hours=0, enforce_retention_duration=False,
                                                           dry_run=False, full=True)
    crash["vacuum_full_removed"] = len(r2)
    crash["leftover_after_vacuum_full"] = len(orphan_parquet(uri_k, so, s3, BUCKET, "delta_crash/"))
    crash["vacuum_requests"] = res
    crash["row_count_after_vacuum"] = len(table_ids(uri_k, so))
    out["5_crash"] = crash

    # ---------------- 6. multi-table atomicity (API introspection) ----------------
    import inspect

    out["6_multi_table"] = {
        "public_api": sorted(x for x in dir(deltalake) if not x.startswith("_")),
        "create_write_transaction_signature": str(inspect.signature(DeltaTable.create_write_transaction)),
        "CommitProperties_params": list(inspect.signature(deltalake.CommitProperties.__init__).parameters)[1:],
        "finding": ("No multi-table transaction: every commit is a PUT-if-absent of <table>/_delta_log/<v>.json for ONE "
                    "table; create_write_transaction/write/delete/merge are DeltaTable (single-table) methods. "
                    "CommitProperties(app_transactions=[Transaction(app_id, version)]) only records an idempotency "
                    "marker per table (readable via DeltaTable.transaction_version), usable to make a multi-table "
                    "sequence resumable, not atomic."),
    }

    out["total_script_wall_s"] = round(time.time() - T_START, 1)
    server.stop()
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

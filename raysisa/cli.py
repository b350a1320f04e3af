"""``raysisa`` command line: parse arguments, call the library, print the result.

Every command prints a short human summary, or one JSON document with ``--json``.
Errors raysisa raises on purpose print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raysisa import api, telemetry
from raysisa.config import ClusterConfig, StoreConfig, load_config
from raysisa.errors import ConfigError, InvalidIdsError, RaysisaError
from raysisa.store import RunStore

__all__ = ["main", "entry", "build_parser", "read_ids_file"]


def read_ids_file(path: str) -> list[str]:
    """Ids from a text file (separated by commas, spaces or new lines; ``#`` comments) or a
    JSON list."""
    text = _read_text(path, "ids file", InvalidIdsError)
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except ValueError as exc:
            raise InvalidIdsError(f"ids file {path} looks like JSON but is not valid: {exc}") from None
        if not isinstance(values, list):
            raise InvalidIdsError(f"ids file {path} must hold a JSON list of ids")
        return values
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return [tok for tok in re.split(r"[\s,]+", " ".join(lines)) if tok]


def _read_text(path: str, what: str, error: type[Exception]) -> str:
    """A UTF-8 text file, or ``error`` with a message naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start} is {data[exc.start:exc.start + 1]!r})") from None


def _split_ids(value: str) -> list[str]:
    return [tok for tok in re.split(r"[\s,]+", value) if tok]


RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a submitted job's entrypoint


def _lasting(location: str | None, flag: str) -> str | None:
    """``location`` unless this command is a Ray job's entrypoint and it is a relative local
    path: a job runs in a temporary working directory (its runtime_env's copy), so a run or
    sweep written there would be lost when the job ends."""
    if location is None or RAY_JOB_ENV not in os.environ:
        return location
    local = location[len("file://"):] if location.startswith("file://") else location
    if "://" not in local and not os.path.isabs(local):
        raise ConfigError(
            f"{flag} {location} is a relative local path inside a Ray job, whose working directory is temporary: "
            "what is written there is lost when the job ends. Give an s3:// URI (or an absolute path on a volume "
            "every node mounts)"
        )
    return location


def _store(args: argparse.Namespace) -> StoreConfig:
    _lasting(args.store, "--store")
    wait = getattr(args, "lease_wait", None)  # only commands that write offer --lease-wait
    extra = {"lease_wait_seconds": wait} if wait is not None else {}
    return StoreConfig(uri=args.store, endpoint_url=args.endpoint_url, **extra)


def _cluster(args: argparse.Namespace, base: ClusterConfig | None = None) -> ClusterConfig:
    base = base or ClusterConfig()
    update: dict[str, Any] = {"address": args.address} if args.address else {}
    for flag, key in (("connect_timeout", "connect_timeout_seconds"), ("cpus_per_shard", "cpus_per_shard"),
                      ("gpus_per_shard", "gpus_per_shard")):
        if getattr(args, flag, None) is not None:
            update[key] = getattr(args, flag)
    return ClusterConfig.from_dict({**base.to_dict(), **update}) if update else base


def _pool(args: argparse.Namespace):
    """``--in-process``: shard work runs in this process (no Ray); else None (Ray actors)."""
    from raysisa.sisa.pool import LocalPool

    return LocalPool() if getattr(args, "in_process", False) else None


def _int_list(text: str, what: str) -> list[int]:
    values = _split_ids(text)
    bad = [v for v in values if not re.fullmatch(r"[0-9]+", v)]
    if bad or not values:
        raise ConfigError(f"{what}: expected comma-separated non-negative integers, got {text!r}")
    return [int(v) for v in values]


def _float_list(text: str, what: str) -> list[float]:
    values = []
    for token in _split_ids(text):
        try:
            value = float(token)
        except ValueError:
            raise ConfigError(f"{what}: {token!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{what}: {token!r} must be a finite, non-negative number")
        values.append(value)
    if not values:
        raise ConfigError(f"{what}: no values given")
    return values


def _strict(value: Any) -> Any:
    """``value`` as strict JSON can hold it: NaN and infinities (e.g. slice 0's loss, which
    nothing trained) become ``null``, which every JSON parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _json(payload: Any) -> str:
    """One strict JSON document: non-finite floats as ``null``, other values JSON has no
    type for (paths, numpy scalars that are not floats) as strings."""
    return json.dumps(_strict(payload), default=str, indent=2, allow_nan=False)


def _emit(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(_json(payload))
    else:
        print("\n".join(lines))


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus the shortcut flags, as ``key=value`` overrides."""
    shortcuts = {"data_dir": "data.data_dir", "bits": "model.quant.w_bits", "a_bits": "model.quant.a_bits", "scheme": "model.quant.scheme"}
    out = list(args.set) + [f"{key}={getattr(args, flag)}" for flag, key in shortcuts.items() if getattr(args, flag, None) is not None]
    if getattr(args, "bits", None) == 32 and getattr(args, "a_bits", None) is None:
        out.append("model.quant.a_bits=32")  # --bits 32 alone means full precision
    return out


def _job(args: argparse.Namespace, overrides: list[str]):
    """The run config, with ``--endpoint-url`` also applied to an ``s3://`` ``data.uri`` that
    names no endpoint of its own (one S3-compatible server for data and store)."""
    job = load_config(args.config, overrides)
    data = job.data
    if args.endpoint_url and (data.uri or "").startswith(("s3://", "s3a://")) and "endpoint_url" not in data.storage_options:
        job = load_config(args.config, [*overrides, f"data.storage_options.endpoint_url={args.endpoint_url}"])
    return job


def cmd_train(args: argparse.Namespace) -> None:
    store = _store(args)
    exclude = read_ids_file(args.exclude_ids_file) if args.exclude_ids_file else None
    overrides = _overrides(args)
    resume = args.config is None and not overrides and RunStore(store).initialised()
    job = None if resume else _job(args, overrides)
    cluster = _cluster(args, job.cluster if job else None)
    report = api.train(
        job, store, exclude_ids=exclude, cluster=cluster, pool=_pool(args), progress=not args.quiet, verify=args.verify
    )
    _emit(
        args,
        report.to_dict(),
        [
            f"trained {report.slices_trained} slice(s) ({report.slices_skipped} already done) of "
            f"{report.num_shards} shards x {report.num_slices} slices at {report.store}",
            f"{report.sample_grads:,} sample-gradients, {report.compute_seconds:.1f}s compute, "
            f"{report.wall_seconds:.1f}s wall",
        ]
        + ([f"rebuilt {report.checkpoints_rebuilt} corrupt checkpoint(s)"] if report.checkpoints_rebuilt else []),
    )


def cmd_unlearn(args: argparse.Namespace) -> None:
    ids = _split_ids(args.ids) if args.ids is not None else read_ids_file(args.ids_file)
    report = api.unlearn(_store(args), ids, cluster=_cluster(args), pool=_pool(args), progress=not args.quiet)
    lines = [report.message]
    if not report.noop:
        lines.append(
            f"retrained {report.slices_retrained} slice(s) of shard(s) {report.shards_affected} "
            f"(from slice {report.first_slice}); {report.checkpoints_deleted} stale checkpoint(s) deleted; "
            f"{report.wall_seconds:.1f}s"
        )
    _emit(args, report.to_dict(), lines)


def cmd_evaluate(args: argparse.Namespace) -> None:
    weights = _float_list(args.weights, "--weights") if args.weights is not None else None
    report = api.evaluate(_store(args), args.aggregation, weights)
    shards = ", ".join(f"{a:.1f}" for a in report.shard_accuracy)
    _emit(
        args,
        report.to_dict(),
        [
            f"ensemble accuracy ({report.aggregation}): {report.accuracy:.2f}% on {report.test_samples} test samples",
            f"per-shard accuracy: {shards}",
        ],
    )


def cmd_inspect(args: argparse.Namespace) -> None:
    info = api.inspect(_store(args), verify=not args.no_verify)
    lines = [
        f"run at {info['store']} (fingerprint {info['fingerprint'][:12]}, created {info['created_at']})",
        f"data: {info['data']['name']}, {info['data']['train_samples']} training samples, "
        f"{info['data']['test_samples']} test, {info['data']['tombstones']} deleted "
        f"(version {info['version']}, last change: {info['last_change'].get('kind', '-')} at {info['last_change'].get('committed_at', '-')})",
    ]
    if info["writer"]:
        lines.append(f"being written by {info['writer']}")
    for shard in info["shards"]:
        states = "".join({"ok": "#", "missing": ".", "corrupt": "X"}[c["status"]] for c in shard["checkpoints"])
        sha = (shard["model_sha256"] or "-")[:16]
        lines.append(
            f"  shard {shard['shard']:>3}: {shard['state']:<11} {shard['samples']:>6} samples  checkpoints [{states}]  model {sha}"
        )
    if info["stale_checkpoints"]:
        lines.append(f"{info['stale_checkpoints']} stale checkpoint(s) await deletion")
    _emit(args, info, lines)


def cmd_compare(args: argparse.Namespace) -> None:
    job = _job(args, _overrides(args))
    methods = _split_ids(args.methods) if args.methods else None
    seeds = _int_list(args.seeds, "--seeds") if args.seeds is not None else None
    report = api.compare(
        job, _store(args), methods=methods, seeds=seeds, cluster=_cluster(args, job.cluster), pool=_pool(args), progress=not args.quiet
    )
    from raysisa.evaluation.report import markdown_table

    base = f"{args.store.rstrip('/')}/reports/{report.name}"
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        objects = RunStore(_store(args)).objects
        for name in ("report.md", "report.json", "gaps.png"):
            (out / name).write_bytes(objects.get_bytes(f"reports/{report.name}/{name}"))
    _emit(args, report.to_dict(), [markdown_table(report), "", f"report: {base}/report.md, report.json, gaps.png"])


def _coordinator_config(args: argparse.Namespace):
    return load_config(args.config, list(args.set)).coordinator


def cmd_forget(args: argparse.Namespace) -> None:
    from raysisa.coordinator import client

    store = _store(args)
    config = _coordinator_config(args) if args.wait else None  # a bad config fails before anything is logged
    if args.subject is not None:
        ack = client.submit(store, subject=args.subject, key=args.key)
    else:
        ids = _split_ids(args.ids) if args.ids is not None else read_ids_file(args.ids_file)
        ack = client.submit(store, ids, key=args.key)
    lines = [
        f"request {ack.request_id}: {ack.ids} id(s) logged" + (" (already submitted with this key)" if ack.duplicate else ""),
        f"state: {ack.state}",
    ]
    payload = {"ack": ack.to_dict()}
    if args.wait:
        _wait_for(args, store, ack.request_id, config)
        payload["status"] = client.status(store, ack.request_id)
        lines.append(f"state: {payload['status']['state']}")
    _emit(args, payload, lines)


def _wait_for(args: argparse.Namespace, store: StoreConfig, request_id: str, config) -> None:
    """Wait through a running coordinator actor, or run a coordinator here until done."""
    from raysisa.coordinator import client

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and not args.in_process:
        import ray

        from raysisa.coordinator.actor import get_coordinator
        from raysisa.sisa.actors import connect

        connect(address, _cluster(args).connect_timeout_seconds)
        try:
            if get_coordinator(store) is not None:
                client.wait(store, request_id, args.wait, timeout=args.timeout)
                return
        finally:
            ray.shutdown()
    api.run_coordinator(
        store, config, until=(request_id, args.wait), cluster=_cluster(args), pool=_pool(args), timeout=args.timeout
    )


def cmd_requests(args: argparse.Namespace) -> None:
    from raysisa.coordinator import client

    store = _store(args)
    if args.id is not None:
        info = client.status(store, args.id)
        receipt = info["receipt"] or {}
        lines = [f"request {args.id}: {info['state']}, {len(info['request']['ids'])} id(s), submitted {info['request']['submitted_at']}"]
        lines += [f"  {e['at']}  {e['state']}" for e in info["events"]]
        lines += [f"  shard {s['shard']}: {s['kind']} ({s['reason']})" for s in receipt.get("shards", [])]
        _emit(args, info, lines)
        return
    rows = client.requests(store)
    lines = [f"{r['request_id']}  {r['state']:<20} {r['ids']:>6} id(s)  {r['submitted_at']}" for r in rows] or ["no requests"]
    _emit(args, {"requests": rows}, lines)


def cmd_coordinator(args: argparse.Namespace) -> None:
    import ray

    from raysisa.coordinator import actor

    from raysisa.sisa.actors import connect

    store = _store(args)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("the coordinator actor runs on a Ray cluster: give --address (or set RAY_ADDRESS)")
    job = load_config(args.config, list(args.set)) if args.action == "start" else None  # validated before connecting
    connect(address, _cluster(args).connect_timeout_seconds)
    try:
        if args.action == "start":
            handle = actor.start_coordinator(store, job.coordinator, _cluster(args, job.cluster))
            summary = ray.get(handle.summary.remote())
        elif args.action == "stop":
            summary = {"stopped": actor.stop_coordinator(store)}
        else:
            handle = actor.get_coordinator(store)
            summary = ray.get(handle.summary.remote()) if handle else {"running": False}
    finally:
        ray.shutdown()
    _emit(args, summary, [f"{k}: {v}" for k, v in summary.items()])


def cmd_subjects(args: argparse.Namespace) -> None:
    from raysisa.coordinator import client

    text = _read_text(args.file, "subjects file", InvalidIdsError)
    try:
        mapping = json.loads(text)
    except ValueError as exc:
        raise InvalidIdsError(f"subjects file {args.file} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, list) for v in mapping.values()):
        raise InvalidIdsError("a subjects file is a JSON object: {subject key: [sample ids]}")
    count = client.register_subjects(_store(args), mapping)
    _emit(args, {"subjects": len(mapping), "ids": count}, [f"registered {len(mapping)} subject(s), {count} id(s)"])


def cmd_demo(args: argparse.Namespace) -> None:
    from raysisa.demo import run_demo

    result = run_demo(store=_lasting(args.store, "--store"), endpoint_url=args.endpoint_url, cluster=_cluster(args), progress=not args.quiet)
    _emit(args, result, result.pop("_lines"))


def cmd_sweep(args: argparse.Namespace) -> None:
    from raysisa.tune import load_study, sweep

    study = load_study(args.study)  # every field checked before Ray starts
    _lasting(args.storage, "--storage")
    result = sweep(study, args.storage, resume=args.resume, cluster=_cluster(args))
    trials = f"{sum(c['trials'] for c in result.cells.values())} trials ({sum(c['errors'] for c in result.cells.values())} failed)"
    if result.report.get("kind") == "hybrid":
        done = (f"{trials}; ensemble: {result.slices_trained} slices trained ({'reused' if not result.slices_trained else 'trained now'}), "
                f"PRS baseline {'replayed now' if result.baseline_replayed else 'reused'}; {result.seconds:.0f}s")
    else:
        done = (f"{len(result.cells)} cells, {trials}; originals and references: "
                f"{result.slices_trained} slices trained ({'all reused' if not result.slices_trained else 'trained now'}); {result.seconds:.0f}s")
    if result.interrupted:
        done += "; interrupted: continue with --resume"
    _emit(args, {**vars(result)}, _sweep_lines(result.report, result.storage) + [done])
    if result.interrupted:
        raise SystemExit(130)  # the shell's code for a run stopped by Ctrl-C


def _sweep_lines(summary: dict[str, Any], where: str) -> list[str]:
    if summary.get("kind") == "hybrid":
        return _hybrid_lines(summary, where)
    lines = [f"study {summary['study']}: best trial per (method, bits), objective = Avg Gap (TA floor {summary['objective']['ta_floor']:g})"]
    for name, best in summary["best"].items():
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        lines.append(f"  {name:<20} objective {best['objective']:.2f}  avg gap {best['avg_gap']:.2f} ± {best['avg_gap_std']:.2f}  TA {best['TA']:.1f}  {params}")
    lines.append(f"report: {where}/report/ ({', '.join(f.rsplit('/', 1)[-1] for f in summary['files'])})")
    return lines


def _hybrid_lines(summary: dict[str, Any], where: str) -> list[str]:
    """A hybrid study's summary: PRS, the recommendation, the Pareto front's size."""

    def params(entry: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry["params"].items())

    floor = summary["objective"]["accuracy_floor"]
    lines = [f"study {summary['study']} (hybrid): requests per hour, final accuracy within {floor:g} pp of pure retraining (PRS)"]
    baseline = summary.get("baseline")
    if baseline:
        lines.append(f"  PRS                  {baseline['requests_per_hour']:,.0f} requests/hour, final accuracy {baseline['final_accuracy']:.2f}%")
    chosen = summary.get("recommendation")
    if chosen:
        lines.append(f"  recommended          {chosen['requests_per_hour']:,.0f} requests/hour ({chosen['gain']:.2f}x PRS), "
                     f"gap to PRS {chosen['accuracy_gap']:+.2f} pp  {params(chosen)}")
    else:
        lines.append(f"  recommended          none: no trial within the floor ({summary['trials']} trials)")
    lines.append(f"  Pareto front         {len(summary['pareto'])} of {summary['trials']} trials (report/pareto.md)")
    lines.append(f"report: {where}/report/ ({', '.join(f.rsplit('/', 1)[-1] for f in summary['files'])})")
    return lines


def cmd_sweep_report(args: argparse.Namespace) -> None:
    from raysisa.tune import sweep_report
    from raysisa.tune.paths import SweepPaths

    summaries = sweep_report(args.storage, args.study)
    lines = []
    for summary in summaries:
        paths = SweepPaths.of(args.storage, summary["study"])
        lines += _sweep_lines(summary, paths.root.split("?", 1)[0])
        if args.out:
            out = Path(args.out) / summary["study"]
            out.mkdir(parents=True, exist_ok=True)
            for key in summary["files"]:
                (out / key.rsplit("/", 1)[-1]).write_bytes(paths.files.get_bytes(key))
            lines.append(f"copied to {out}")
    _emit(args, {"studies": summaries}, lines)


def _quant_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=int, help="quantization-aware training: weight bits 2, 4, 8 (32 alone = full precision)")
    p.add_argument("--a-bits", type=int, help="activation bits of quantized layers (default 8; 32 = full precision)")
    p.add_argument("--scheme", help="quantization scheme (default lsq)")


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The flags every command takes, before or after its name (``raysisa -v inspect`` and
    ``raysisa inspect -v``): after it, an absent flag leaves the value given before."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details", **default)
    parser.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or one JSON object each",
                        **(default or {"default": "text"}))


def build_parser() -> argparse.ArgumentParser:
    from raysisa import __version__

    parser = argparse.ArgumentParser(
        prog="raysisa", description="SISA training and exact machine unlearning on Ray."
    )
    parser.add_argument("--version", action="version", version=f"raysisa {__version__}")
    _common(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, store_required: bool = True, *, ray: bool = True, progress: bool = True,
                writes: bool = True, metrics: bool = False) -> argparse.ArgumentParser:
        """A subcommand with the flags it uses: ``ray`` (it can run on a Ray cluster: --address,
        --connect-timeout), ``progress`` (it shows progress bars: --quiet), ``writes`` (it takes
        the store's writer lease: --lease-wait), ``metrics`` (it does work worth watching:
        --metrics-port, --metrics-pushgateway)."""
        p = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"), parents=[common])
        p.add_argument("--store", required=store_required, help="run location: a folder, file://, s3://bucket/prefix")
        p.add_argument("--endpoint-url", help="S3 endpoint for S3-compatible servers (or set AWS_ENDPOINT_URL)")
        p.add_argument("--json", action="store_true", help="print one JSON document (errors too)")
        if progress:
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        if ray:
            p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")
            p.add_argument("--connect-timeout", type=float, metavar="SECONDS", help="give up connecting to --address after this long (default 30)")
            p.add_argument("--cpus-per-shard", type=float, metavar="N", help="CPUs each shard actor reserves (default: the config's, else the run's train.threads)")
            p.add_argument("--gpus-per-shard", type=float, metavar="F",
                           help="GPUs (a fraction shares one) each shard actor reserves; > 0 trains on CUDA (default 0)")
        if writes:
            p.add_argument(
                "--lease-wait", type=float, metavar="SECONDS", help="wait this long for another writer of the store to finish (default 60)"
            )
        if metrics:
            p.add_argument("--metrics-port", metavar="[HOST:]PORT",
                           help="serve Prometheus metrics at http://HOST:PORT/metrics while the command runs (long commands)")
            p.add_argument("--metrics-pushgateway", metavar="URL",
                           help="push the command's metrics to this Prometheus Pushgateway when it ends (batch jobs)")
        return p

    def in_process(p: argparse.ArgumentParser) -> None:
        p.add_argument("--in-process", action="store_true", help="run shard work in this process, without Ray (small runs, tests)")

    p = command("demo", "train on scikit-learn digits, unlearn a random 1%%, compare with a full retrain", False, writes=False, metrics=True)
    p.set_defaults(func=cmd_demo)

    p = command("train", "create (or resume) a SISA run and train every shard", metrics=True)
    p.add_argument(
        "--config", help="YAML config file (default: resume the run at --store, else the embedded digits recipe)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=10")
    p.add_argument("--data-dir", help="local copy of a torchvision data set (same as --set data.data_dir=DIR)")
    _quant_flags(p)
    p.add_argument("--exclude-ids-file", help="train the same partition without these ids (the exact-unlearning reference)")
    p.add_argument("--verify", action="store_true", help="check every checkpoint's sha256 first; rebuild corrupt ones")
    in_process(p)
    p.set_defaults(func=cmd_train)

    p = command("unlearn", "exactly unlearn samples: retrain only the slices that saw them", metrics=True)
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated sample ids, e.g. 1,2,3")
    ids.add_argument("--ids-file", help="file of ids (text or JSON list)")
    in_process(p)
    p.set_defaults(func=cmd_unlearn)

    p = command("evaluate", "ensemble and per-shard test accuracy", ray=False, progress=False, writes=False)
    p.add_argument("--aggregation", default="vote", help="vote (default) or mean_softmax")
    p.add_argument("--weights", help="comma-separated shard weights")
    p.set_defaults(func=cmd_evaluate)

    p = command("compare", "retrain and approximate unlearning methods on the same forget set, with a report", metrics=True)
    p.add_argument("--config", help="YAML config with a `compare` section (default: digits, random 10%%)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--methods", help="comma-separated methods (default: the config's, else all)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    p.add_argument("--out", help="also copy report.md, report.json and gaps.png into this local folder")
    _quant_flags(p)
    in_process(p)
    p.set_defaults(func=cmd_compare)

    p = command("forget", "log a deletion request (durably, before acknowledging it); optionally wait for it", progress=False, metrics=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", help="comma-separated sample ids")
    what.add_argument("--ids-file", help="file of ids (text or JSON list)")
    what.add_argument("--subject", help="a data-subject key registered with `raysisa subjects`")
    p.add_argument("--key", help="idempotency key: re-submitting it is a no-op")
    p.add_argument("--wait", choices=["applied", "exact"], help="wait until the request is applied or exact")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 3600)")
    p.add_argument("--config", help="YAML config whose `coordinator` section applies when this command runs one")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    in_process(p)
    p.set_defaults(func=cmd_forget)

    p = command("requests", "logged deletion requests and their states (or one request in detail)", ray=False, progress=False, writes=False)
    p.add_argument("--id", help="show one request: transitions and receipt")
    p.set_defaults(func=cmd_requests)

    p = command("coordinator", "start, stop or query the coordinator actor of a run on a Ray cluster", progress=False)
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--config", help="YAML config with a `coordinator` section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=cmd_coordinator)

    p = command("subjects", "register data-subject keys and the sample ids each owns (keys stored hashed)", ray=False, progress=False,
                writes=False)
    p.add_argument("--file", required=True, help='JSON object {"subject key": [ids]}')
    p.set_defaults(func=cmd_subjects)

    p = sub.add_parser("sweep", help="Ray Tune sweep of unlearning methods across bit widths, or of the coordinator's policy (tune_configs/*.yaml)",
                       description="Run a sweep study: one Tune experiment per (method, bits), or one for a hybrid study "
                                   "(kind: hybrid, the coordinator's policy on a deletion stream); --resume continues an interrupted one.")
    p.add_argument("study", help="study file, e.g. tune_configs/digits.yaml")
    p.add_argument("--storage", required=True, help="where experiments go: a folder or a Tune URI, e.g. s3://bucket/sweeps?endpoint_override=HOST:PORT&scheme=http")
    p.add_argument("--resume", action="store_true", help="continue the study at --storage (finished trials are not run again)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")
    p.add_argument("--connect-timeout", type=float, metavar="SECONDS", help="give up connecting to --address after this long (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sweep-report", help="regenerate a sweep's tables and plots from its experiments (finished or running)",
                       description="Regenerate trials.md/.parquet, best.md/.json and the plots of the studies at --storage.")
    p.add_argument("--storage", required=True, help="the --storage of `raysisa sweep`")
    p.add_argument("--study", help="one study (default: every study at --storage)")
    p.add_argument("--out", help="also copy the report files into this local folder")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_sweep_report)

    p = command("inspect", "config, shards, slices, checkpoints and model hashes of a run", ray=False, progress=False, writes=False)
    p.add_argument("--no-verify", action="store_true", help="skip checking checkpoint sha256s")
    p.set_defaults(func=cmd_inspect)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (a test's capture, or
    the real one), so a handler installed by one ``main()`` call never writes to a stream a
    later caller closed."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool, log_format: str = "text") -> None:
    """Log to stderr at INFO (``verbose``) or WARNING, as text or as one JSON object per line
    (``json``: time, level, logger and message, for log pipelines). Calling it again replaces
    the handler it installed before; other handlers are left alone."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    """Report an error raysisa raised on purpose: ``error: ...`` on stderr, or with ``--json``
    one JSON document on stdout (``{"error": {"kind", "message"}}``); exit status 2 either way."""
    telemetry.error("cli", exc)
    if getattr(args, "json", False):
        print(_json({"error": {"kind": type(exc).__name__, "message": str(exc)}}))
    else:
        print(f"error: {exc}", file=sys.stderr)
    return 2


class _Metrics:
    """``--metrics-port`` and ``--metrics-pushgateway`` of one command (see :mod:`raysisa.telemetry`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.command = args.command
        self.port = getattr(args, "metrics_port", None)
        self.gateway = getattr(args, "metrics_pushgateway", None)
        self.run = telemetry.run_label(args.store) if getattr(args, "store", None) else "-"
        self.server = None
        self.started = time.perf_counter()

    def start(self) -> None:
        """Check both flags and start serving, before the command does any work."""
        if self.gateway is not None and not re.match(r"https?://[^/\s]+", self.gateway):
            raise ConfigError(f"--metrics-pushgateway {self.gateway!r}: expected an http(s):// URL, e.g. http://pushgateway:9091")
        if self.port is None:
            return
        if not re.fullmatch(r"(?:[^:]+:)?\d{1,5}", self.port) or int(self.port.rpartition(":")[2]) > 65535:
            raise ConfigError(f"--metrics-port {self.port!r}: expected PORT or HOST:PORT, e.g. 9101 or 127.0.0.1:9101")
        try:
            self.server, _ = telemetry.serve(self.port)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {self.port}: cannot listen there: {exc.strerror or exc}") from None

    def finish(self, ok: bool) -> None:
        """Record how the command ended; push to the gateway; stop serving."""
        telemetry.job_finished(self.command, time.perf_counter() - self.started, ok)
        if self.gateway is not None:
            try:
                telemetry.push(self.gateway, "raysisa", {"command": self.command, "run": self.run})
            except OSError as exc:  # the command's work is done: a lost push is a warning
                print(f"warning: could not push metrics to {self.gateway}: {exc}", file=sys.stderr)
        if self.server is not None:
            self.server.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.log_format)
    metrics = _Metrics(args)
    code = 2
    try:
        metrics.start()
        args.func(args)
        code = 0
    except RaysisaError as exc:
        code = _fail(args, exc)
    except TimeoutError as exc:  # --wait ran out of time: the request stays logged
        code = _fail(args, exc)
    finally:
        metrics.finish(code == 0)
    return code


def entry() -> None:
    """The console script and ``python -m raysisa``: :func:`main`, then end the process at once.

    Ending it skips the interpreter's finalisation, where a thread of a native library
    (Arrow's thread pool, apache/arrow#33975) was seen to abort the process after raysisa
    had reported its result ("terminate called without an active exception", status 134
    instead of 0 or 2, about one ``forget`` in ten). Logs and stdio are flushed first; Ray
    and the metrics server are already shut down by then, and nothing else raysisa starts
    needs an exit handler."""
    try:
        code = main()
    except SystemExit as exc:  # argparse (--help, usage errors) and an interrupted sweep
        if not isinstance(exc.code, int | None):
            raise
        code = exc.code or 0
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()

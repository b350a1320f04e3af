"""Unlearning quantized models: RL, l1-sparse, DEL, Q-MUL and Q-MUL's ablations.

Random 10% forgetting on a real CIFAR-10 subset (the shared JPEG copy) with a small CNN
trained by QAT (LSQ, weights at ``--bits``, activations at 8 bits) and, for the Figure-1
observation, at full precision. Every gap is to a QAT-retrained reference at the same bit
width; all metrics are computed on the quantized model (the exported integer grid).

    .venv/bin/python bench/quantized_unlearning.py                         # FP and 4 bits, 3 seeds
    .venv/bin/python bench/quantized_unlearning.py --bits 32,4,2,8 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from raysisa import LocalPool, StoreConfig, parse_config  # noqa: E402
from raysisa.config.recipe import bits_label  # noqa: E402
from raysisa.evaluation import compare  # noqa: E402
from raysisa.evaluation.compare import CompareReport  # noqa: E402
from raysisa.evaluation.report import markdown_table  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
# Q-MUL's ablation ladder (RL, RL+SL, RL+AGR, Q-MUL) as variants of one implementation.
VARIANTS = {
    "rl": {"method": "qmul", "args": {"similar_labels": False, "agr": False}},
    "rl+sl": {"method": "qmul", "args": {"similar_labels": True, "agr": False}},
    "rl+agr": {"method": "qmul", "args": {"similar_labels": False, "agr": True}},
}
# random_label is RL as its own method: with tuned defaults on, Q-MUL and RL both start from
# their sweep winners (raysisa/methods/tuned.json); the variants are never tuned
METHODS = ["rl", "rl+sl", "rl+agr", "random_label", "qmul", "l1_sparse", "del"]


def _tuned_note(reports: dict) -> str:
    """Which methods started from a tuned default (raysisa/methods/tuned.json) at which bits."""
    from raysisa.methods.tuned import Setting, tuned_args

    used = []
    for bits, report in reports.items():
        setting = Setting.of(parse_config(report.job).spec)
        names = [m for m in METHODS if m not in VARIANTS and tuned_args(m, setting) is not None]
        used.append(f"{', '.join(f'`{m}`' for m in names) or 'none'} at {bits_label(bits)}")
    return ("Methods start from their tuned defaults for this setting where `raysisa/methods/tuned.json` has one (the sweeps' "
            f"winners on seeds 0 and 1; hyperparameters listed under each table): {'; '.join(used)}; the others at their "
            "reference defaults")


def _short(args: dict) -> str:
    """The hyperparameters that matter for reading the table (not batch size, loop, ...)."""
    keys = ("lr", "epochs", "similar_labels", "agr", "gamma", "alpha", "resample")
    return ", ".join(f"{k} {args[k]:.3g}" if isinstance(args[k], float) else f"{k} {args[k]}" for k in keys if k in args)


def job(bits: int, args: argparse.Namespace, seeds: list[int]):
    quant = [] if bits == 32 else [f"model.quant.w_bits={bits}", "model.quant.a_bits=8", "model.quant.scheme=lsq"]
    return parse_config(
        {"compare": {"variants": VARIANTS, "methods": METHODS, "seeds": seeds, "name": f"quant-w{bits}",
                     "scenario": {"kind": "random", "fraction": 0.1}, "tuned_defaults": not args.untuned}},
        [
            "data.source=parquet",
            f"data.uri={CIFAR}",
            f"data.limit={args.limit}",
            f"data.test_limit={args.test_limit}",
            "sharding.num_shards=1",
            "sharding.num_slices=1",
            "model.width=16",
            f"train.epochs={args.epochs}",
            "train.batch_size=64",
            "train.lr=0.05",
            "train.lr_schedule=cosine",
            "train.threads=2",
            *quant,
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", default="32,4", help="weight bit widths (32 = full precision)")
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--section", default="quantized_unlearning", help="BENCHMARKS.md section to write")
    parser.add_argument("--reuse", default="", help="bit widths to read from this section's saved results instead of rerunning")
    parser.add_argument("--untuned", action="store_true", help="the references' defaults (compare.tuned_defaults=false)")
    parser.add_argument("--note", default="", help="a sentence appended to the section's header")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not CIFAR.exists():
        sys.exit(f"{CIFAR} not found")
    seeds = [int(s) for s in args.seeds.split(",")]
    import torch

    out = ROOT / "bench" / "results"
    saved = json.loads((out / f"{args.section}.json").read_text()) if args.reuse else {}
    reused = [int(b) for b in args.reuse.split(",") if b]
    reports, sections = {}, []
    with tempfile.TemporaryDirectory(prefix="raysisa-quant-") as tmp:
        for bits in (int(b) for b in args.bits.split(",")):
            started = time.perf_counter()
            if bits in reused:  # same job, read back from the previous run
                report = CompareReport.from_dict(saved[str(bits)])
                if report.job != job(bits, args, seeds).to_dict():
                    sys.exit(f"saved {bits}-bit results were made with another job; rerun without --reuse {bits}")
            else:
                report = compare(job(bits, args, seeds), StoreConfig(uri=f"{tmp}/w{bits}"), LocalPool(), progress=True)
            reports[bits] = report
            label = "full precision" if bits == 32 else f"W{bits}A8 (LSQ)"
            print(f"{label}: {time.perf_counter() - started:.0f}s\n{markdown_table(report)}", flush=True)
            used = {r.method: r.args for r in report.results if r.method in ("random_label", "qmul", "l1_sparse", "del")}
            listed = "; ".join(f"`{m}` {_short(a)}" for m, a in used.items())
            sections.append(f"### {label}\n\n" + markdown_table(report) + f"\n\nHyperparameters: {listed}.")

    findings = []
    for bits, report in reports.items():
        s = report.summary()
        gap = {m: s[m]["avg_gap"]["mean"] for m in METHODS}
        spread = {m: s[m]["avg_gap"]["std"] for m in METHODS}
        tuned = "tuned" if not args.untuned else "at their defaults"
        findings.append(
            f"- {bits_label(bits)}, Q-MUL and RL {tuned}: Avg Gap Q-MUL {gap['qmul']:.2f} ± {spread['qmul']:.2f} "
            f"vs RL {gap['random_label']:.2f} ± {spread['random_label']:.2f}: Q-MUL "
            f"{'beats' if gap['qmul'] < gap['random_label'] else 'does not beat'} RL here. Untuned ablations of Q-MUL: "
            f"RL {gap['rl']:.2f}, RL+SL {gap['rl+sl']:.2f}, RL+AGR {gap['rl+agr']:.2f}; l1-sparse {gap['l1_sparse']:.2f}, DEL {gap['del']:.2f}."
        )
    if 32 in reports and 4 in reports:
        fp, q4 = (reports[b].summary()["rl"]["avg_gap"]["mean"] for b in (32, 4))
        findings.append(f"- RL's Avg Gap at 4 bits / at full precision = {q4:.2f} / {fp:.2f} = {q4 / fp:.2f} (Q-MUL's Figure 1: > 1).")
    meta = (
        f"Run {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}, CPU, torch {torch.__version__}); "
        f"`python bench/quantized_unlearning.py {' '.join(sys.argv[1:])}`. CIFAR-10 subset: {args.limit} training / "
        f"{args.test_limit} test images (shared JPEG copy); `small_cnn` width 16 with LSQ QAT (first conv and classifier "
        f"full precision), {args.epochs} epochs; random 10% forgetting; seeds {seeds}. "
        + ("Methods at their reference defaults (`--untuned`)" if args.untuned else _tuned_note(reports))
        + "; `rl`, `rl+sl`, `rl+agr` are Q-MUL with its parts switched off, at the reference defaults (lr 0.01, 10 epochs). "
        "Gaps are to a QAT retrain at the same bit width; metrics on the exported integer model."
        + (f" {args.note}" if args.note else "")
        + (f" Rows at {', '.join(map(str, reused))} bits read back from the previous run of the same job (`--reuse`)." if reused else "")
    )
    body = meta + "\n\n" + "\n".join(findings) + "\n\n" + "\n\n".join(sections)
    out.mkdir(exist_ok=True)
    (out / f"{args.section}.json").write_text(json.dumps({b: r.to_dict() for b, r in reports.items()}, indent=1, default=float))
    print(body)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", args.section, body)


if __name__ == "__main__":
    main()

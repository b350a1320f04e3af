"""The mission's sweep studies on the shared CIFAR-10 copy: run them (or read finished ones)
and write the best trial per (method, bits) into BENCHMARKS.md, with the plots: one
section per study (``sweep-<study>``), so rerunning one study leaves the others' sections.

    .venv/bin/python bench/sweeps.py                                  # the three CIFAR-10 studies
    .venv/bin/python bench/sweeps.py --studies qmul-cifar10 --storage ./sweeps
    .venv/bin/python bench/sweeps.py --report-only                    # reread a finished storage
    .venv/bin/python bench/sweeps.py --report-only --write-defaults   # and record the winners

``--write-defaults`` writes every cell's best trial (when it met the TA floor) to
``raysisa/methods/tuned.json``: the method's tuned defaults for that setting (data set,
model, bits), with the study, trial and Avg Gap they came from. A method tuned in two
studies keeps the lower Avg Gap: both score against the same references. An entry whose
``epochs_run`` is below its ``epochs`` won after ASHA stopped it: its score was measured
that far into its schedule, and a full run of the tuned default can score differently
(``bench/quantized_unlearning.py`` measures it).

Every trial of a study starts from the same stored original of its bit width and is scored
against the same retrained reference (trained once, shared by the three studies), so the
rows of one bit width are comparable. The table is the study's ``best.json``; the plots are
copied to ``bench/results/sweep_<study>_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from raysisa.config.recipe import bits_label  # noqa: E402

STUDIES = ("qmul-cifar10", "del-cifar10", "l1-sparse-cifar10", "influence-cifar10", "hybrid-digits")


def _params(params: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(params.items()))


def _run_line(seconds: float | None) -> str:
    """When, where and how a study's section was written (and the sweep's wall time, if it ran)."""
    import torch

    return (
        f"Run {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}, CPU, torch {torch.__version__}); "
        f"`python bench/sweeps.py {' '.join(sys.argv[1:])}`." + (f" Wall time {seconds / 60:.0f} min." if seconds else "")
    )


def _section(summary: dict, study, run: str) -> str:
    best = summary["best"]
    lines = [
        f"### {summary['study']}",
        "",
        f"{study.description} {summary['trials']} trials ({summary['errors']} failed); "
        f"{study.trials} per (method, bits), {study.search.algorithm} search, {study.scheduler.kind} scheduler; "
        f"objective: Avg Gap to the retrained reference at the same bit width, TA floor {study.objective.ta_floor:g}. {run}",
        "",
        "| method | bits | Avg Gap (± std over seeds) | UA | RA | TA | MIA-Eff. | RTE s | retrain s | epochs run | best hyperparameters |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in study.cells():
        row = best.get(cell.name)
        if row is None:
            lines.append(f"| {cell.method} | {bits_label(cell.bits)} | no finished trial | | | | | | | | |")
            continue
        lines.append(
            f"| {cell.method} | {bits_label(cell.bits)} | {row['avg_gap']:.2f} ± {row['avg_gap_std']:.2f} | {row['UA']:.2f} | {row['RA']:.2f} | {row['TA']:.2f} | "
            f"{row['MIA']:.2f} | {row['rte_seconds']:.1f} | {row['retrain_seconds']:.1f} | {row['epochs_run']} | {_params(row['params'])} |"
        )
    name = summary["study"]
    lines += ["", f"![Avg Gap against bit width](bench/results/sweep_{name}_gap_vs_bits.png)",
              f"![Avg Gap against RTE](bench/results/sweep_{name}_gap_vs_rte.png)"]
    return "\n".join(lines)


def _hybrid_section(study, paths, run: str) -> str:
    """A hybrid study: its pareto.md (front and recommendation) and the plot."""
    body = paths.files.get_bytes("report/pareto.md").decode().strip()
    body = body.split("\n", 1)[1].strip() if body.startswith("# ") else body  # our own heading below
    return "\n".join([
        f"### {study.name}", "", f"{study.description} {run}", "", body, "",
        f"![Requests per hour against the accuracy gap](bench/results/sweep_{study.name}_pareto.png)",
    ])


def tuned_entries(study, summary: dict) -> list[dict]:
    """The tuned.json entries of one study: each cell's best trial, if it met the TA floor."""
    from raysisa.methods.tuned import Setting

    entries = []
    for cell in study.cells():
        row = summary["best"].get(cell.name)
        if row is None or not study.objective.feasible(row["avg_gap"], row["TA"]):  # no trial, or the best broke the TA floor
            continue
        setting = Setting.of(study.spec(cell.bits, study.scenario.seeds[0]))
        params = {**study.methods[cell.method].fixed, **row["params"]}
        entries.append({
            "method": cell.method,
            "setting": {"dataset": setting.dataset, "model": setting.model, "bits": setting.bits},
            "params": params,
            "source": {"study": f"tune_configs/{study.name}.yaml", "trial": row["trial"], "avg_gap": round(row["avg_gap"], 3),
                       "avg_gap_std": round(row["avg_gap_std"], 3), "seeds": list(study.scenario.seeds),
                       "trials": study.trials_of(cell.method), "epochs_run": row["epochs_run"],
                       "date": time.strftime("%Y-%m-%d")},
        })
    return entries


def write_defaults(entries: list[dict]) -> Path:
    """Merge ``entries`` into raysisa/methods/tuned.json (per method and setting, the lower Avg Gap wins)."""
    from raysisa.methods.tuned import TABLE_PATH

    def key(entry: dict) -> tuple:
        return entry["method"], tuple(sorted(entry["setting"].items()))

    table = json.loads(TABLE_PATH.read_text())["entries"] if TABLE_PATH.exists() else []
    merged = {key(e): e for e in table}
    for entry in entries:
        old = merged.get(key(entry))
        if old is None or old["source"]["study"] == entry["source"]["study"] or entry["source"]["avg_gap"] < old["source"]["avg_gap"]:
            merged[key(entry)] = entry
    rows = sorted(merged.values(), key=lambda e: (e["method"], e["setting"]["dataset"], e["setting"]["model"], e["setting"]["bits"]))
    note = ("Written by bench/sweeps.py --write-defaults from the sweep studies' best trials; "
            "see raysisa/methods/tuned.py and BENCHMARKS.md (sweeps).")
    TABLE_PATH.write_text(json.dumps({"note": note, "entries": rows}, indent=1) + "\n")
    return TABLE_PATH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--storage", default=str(ROOT / "sweeps"), help="sweep storage (default ./sweeps, git-ignored)")
    parser.add_argument("--report-only", action="store_true", help="do not run: read the studies' reports")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--write-defaults", action="store_true", help="record each cell's best trial in raysisa/methods/tuned.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from raysisa.tune import load_study, sweep, sweep_report
    from raysisa.tune.paths import SweepPaths
    from raysisa.tune.spec import HybridStudySpec

    names = [n for n in args.studies.split(",") if n]
    sections, seconds, entries = {}, {}, []
    out = ROOT / "bench" / "results"
    for name in names:
        study = load_study(ROOT / "tune_configs" / f"{name}.yaml")
        paths = SweepPaths.of(args.storage, study.name)
        if not args.report_only:
            started = time.perf_counter()
            result = sweep(study, args.storage, resume=paths.files.exists("study.json"))
            seconds[name] = time.perf_counter() - started
            print(f"{name}: {result.cells} in {seconds[name]:.0f}s", flush=True)
        summary = sweep_report(args.storage, study.name)[0]
        hybrid = isinstance(study, HybridStudySpec)
        for plot in ("pareto.png",) if hybrid else ("gap_vs_bits.png", "gap_vs_rte.png"):
            (out / f"sweep_{name}_{plot}").write_bytes(paths.files.get_bytes(f"report/{plot}"))
        (out / f"sweep_{name}.json").write_text(json.dumps(summary, indent=1, default=float))
        if hybrid:
            sections[name] = _hybrid_section(study, paths, _run_line(seconds.get(name)))
            continue
        sections[name] = _section(summary, study, _run_line(seconds.get(name)))
        entries += tuned_entries(study, summary)
    for name, section in sections.items():
        print(section, "\n")
        if not args.no_write:  # each study has its own section: rerunning one leaves the others
            write_section(ROOT / "BENCHMARKS.md", f"sweep-{name}", section)
    if args.write_defaults:
        print(f"tuned defaults: {len(entries)} entries -> {write_defaults(entries)}")


if __name__ == "__main__":
    main()

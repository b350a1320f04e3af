"""Every unlearning method against retraining on real CIFAR-10 (the shared JPEG copy).

Two scenarios, random 10% and class-wise (class 0), three seeds each, one model (S = R = 1:
the single-model setting of the papers' tables): the fast CIFAR recipe's airbench network,
trained on a CIFAR-10 subset that fits a 2-core CPU. Every method runs with the papers'
default hyperparameters (see
``raysisa/methods/*``); the table gives UA, RA, TA, MIA-Efficacy, Avg Gap and RTE, mean ±
std over the seeds, beside SPEC's anchor numbers for ResNet-18.

    .venv/bin/python bench/unlearning_methods.py                  # about an hour on 2 cores
    .venv/bin/python bench/unlearning_methods.py --limit 2000 --seeds 0 --no-write   # a quick look
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
from raysisa import LocalPool, StoreConfig  # noqa: E402
from raysisa.config import load_config  # noqa: E402
from raysisa.evaluation import compare  # noqa: E402
from raysisa.evaluation.report import markdown_table  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"

# SPEC 3.6 [recall]: CIFAR-10, ResNet-18, dense (Unlearn-Sparse / SalUn tables). UA, RA, TA, MIA.
ANCHORS = {
    "classwise": {
        "retrain": (100, 100, 94.8, 100),
        "finetune": (22.5, 99.9, 94.3, 75),
        "grad_ascent": (93, 92.6, 86.6, 94),
        "influence": (88, 98, 91.4, 96),
        "l1_sparse": (100, 98, 94, 100),
    },
    "random": {
        "retrain": (5.24, 100, 94.26, 12.88),
        "l1_sparse": (4.19, 97.74, 91.59, 9.84),
    },
}


RECIPE = ROOT / "cluster" / "configs" / "cifar10-airbench.yaml"


def recipe(
    limit: int, test_limit: int, epochs: int, scenario: list[str], seeds: list[int], name: str, threads: int = 2, width: int = 32
) -> list[str]:
    """Overrides of the fast CIFAR recipe (``RECIPE``: airbench, Nesterov SGD on a
    linear schedule, label smoothing) for one model on a subset, without augmentation or
    flip TTA: a model that fits its training set, as the papers' ResNet-18s do."""
    return [
        f"data.uri={CIFAR}",
        f"data.limit={limit}",
        f"data.test_limit={test_limit}",
        "sharding.num_shards=1",
        "sharding.num_slices=1",
        f"model.width={width}",
        f"train.epochs={epochs}",
        "train.augment=false",
        "train.test_flip=false",
        f"train.threads={threads}",
        *scenario,
        f"compare.seeds={json.dumps(seeds)}",
        "compare.tuned_defaults=false",  # the papers' defaults, not raysisa's tuned ones
        f"compare.name={name}",
    ]


def _parameters(width: int) -> int:
    from raysisa.config import ModelConfig
    from raysisa.data.samples import DatasetInfo
    from raysisa.models import build_model

    cifar = DatasetInfo("cifar10", 10, 3, 32, 32, (0.5,) * 3, (0.5,) * 3)
    return sum(p.numel() for p in build_model(cifar, ModelConfig(name="airbench", width=width)).parameters())


def anchor_table(kind: str) -> str:
    rows = ["| method (ResNet-18, SPEC 3.6) | UA | RA | TA | MIA-Eff. |", "|---|---|---|---|---|"]
    rows += [f"| {m} | " + " | ".join(str(v) for v in vals) + " |" for m, vals in ANCHORS[kind].items()]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=5000, help="CIFAR-10 training images")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--width", type=int, default=32, help="airbench width (the recipe's 32; 16 is about 4x cheaper)")
    parser.add_argument("--store", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of training and unlearning")
    parser.add_argument("--note", default="", help="a sentence appended to the section's header (e.g. what shared the machine)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not CIFAR.exists():
        sys.exit(f"{CIFAR} not found")
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = {
        "random": ["compare.scenario.kind=random", "compare.scenario.fraction=0.1"],
        "classwise": ["compare.scenario.kind=classwise", "compare.scenario.classes=[0]"],
    }
    import torch

    sections, results = [], {}
    with tempfile.TemporaryDirectory(prefix="raysisa-methods-") as tmp:
        store = StoreConfig(uri=args.store or tmp)
        for kind, overrides in scenarios.items():
            job = load_config(RECIPE, recipe(args.limit, args.test_limit, args.epochs, overrides, seeds, f"bench-{kind}", args.threads, args.width))
            started = time.perf_counter()
            report = compare(job, store, LocalPool(), progress=True)
            results[kind] = report.to_dict()
            print(f"{kind}: {time.perf_counter() - started:.0f}s\n{markdown_table(report)}", flush=True)
            sizes = report.evaluation_sets
            sections.append(
                f"### {kind} forgetting ({'10% of the training set' if kind == 'random' else 'class 0'})\n\n"
                f"Evaluation sets: {sizes['forget']} forget, {sizes['retain']} retain, {sizes['test']} test images.\n\n"
                + markdown_table(report)
                + "\n\nSPEC anchors for comparison:\n\n"
                + anchor_table(kind)
            )
    meta = (
        f"Run {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}, CPU only, torch {torch.__version__}); "
        f"`python bench/unlearning_methods.py {' '.join(sys.argv[1:])}`. CIFAR-10 subset: {args.limit} training / "
        f"{args.test_limit} test images of the shared JPEG copy; the fast CIFAR recipe (`cluster/configs/cifar10-airbench.yaml`: "
        f"`airbench` at width {args.width} ({_parameters(args.width):,} parameters), Nesterov SGD lr 1.0 on a linear warm-up/decay schedule, batch 256, label "
        f"smoothing 0.2) for {args.epochs} epochs without augmentation or flip TTA; one model (S = R = 1); seeds {seeds}. "
        "Methods use their reference implementations' default hyperparameters and behaviour (issue 11: RL and Q-MUL's "
        "random labels redrawn per batch, AGR norms in train mode; `compare.tuned_defaults=false`). RTE = seconds of the "
        "unlearning itself (for retrain, training from scratch); setup (localisation, relabelling, the IU Newton step) and "
        "evaluation are separate columns." + (f" {args.note}" if args.note else "")
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "unlearning_methods.json").write_text(json.dumps(results, indent=1, default=float))
    body = meta + "\n\n" + "\n\n".join(sections)
    print(body)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", "unlearning_methods", body)


if __name__ == "__main__":
    main()

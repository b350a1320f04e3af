"""README's Python blocks run, in order, as a reader would paste them (on the session's
Ray cluster, with a shorter training recipe so the suite stays fast)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import raysisa

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch, ray_cluster, capsys):
    blocks = _python_blocks()
    assert len(blocks) >= 2
    load_config = raysisa.load_config
    # the README's recipe, trained for fewer epochs with narrower models
    monkeypatch.setattr(raysisa, "load_config", lambda path, overrides=(): load_config(path, [*overrides, "train.epochs=4", "model.width=8"]))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace('"cluster/', f'"{ROOT}/cluster/'), "README.md", "exec"), namespace)
    report = namespace["report"]
    assert report.deleted == [17, 42] and report.shards_affected
    assert raysisa.status("./runs/digits", namespace["ack"].request_id)["state"] == "exact"
    assert capsys.readouterr().out.startswith(f"{report.shards_affected} {report.slices_retrained} ")

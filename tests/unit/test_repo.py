"""The repository's promises about itself: README commands, CI, configs."""

from pathlib import Path

from raysisa.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()


def test_readme_starts_with_install_plus_demo_and_the_test_command():
    install, tests = _readme_commands()[:2]
    assert install == 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/raysisa demo'
    assert tests == ".venv/bin/python -m pytest -q"
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_shipped_configs_are_valid():
    configs = sorted((ROOT / "cluster" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_top_level_layout():
    for name in ("pyproject.toml", "raysisa", "cluster", "tune_configs", "tests", "k8s", "bench", "README.md", "BENCHMARKS.md", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_public_api_names_are_not_shadowed_by_subpackages():
    import inspect as pyinspect

    import raysisa

    for name in ("train", "unlearn", "evaluate", "inspect", "compare"):
        assert pyinspect.isfunction(getattr(raysisa, name)), name
    assert all(hasattr(raysisa, name) for name in raysisa.__all__)


def test_lint_is_clean():
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "raysisa", "bench", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_hold_and_no_package_has_import_cycles():
    """pyproject's [tool.importlinter] contracts: a module imports only from its own package
    and the layers below (README, "How it works"), and no package's modules import in a cycle."""
    import shutil
    import subprocess
    import sys

    venv = Path(sys.executable).with_name("lint-imports")
    lint = str(venv) if venv.exists() else shutil.which("lint-imports")
    assert lint, "lint-imports not installed: pip install -e '.[dev]'"
    result = subprocess.run([lint, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout, result.stdout

"""Real processes for crash and concurrency tests: the ``raysisa`` CLI in a child process.

Children are forked from a forkserver that has imported raysisa once, so each starts in
milliseconds instead of re-importing torch; each is still a separate process that a real
``SIGKILL`` ends (``RAYSISA_CRASH_AT``, see :mod:`raysisa.crashpoints`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

_CTX = mp.get_context("forkserver")
# everything a command imports lazily (sklearn alone takes 2 s; torch's optimiser imports
# torch._dynamo on its first step, 2 s more), so children start warm
_CTX.set_forkserver_preload(
    ["raysisa.cli", "raysisa.api", "raysisa.coordinator.service", "raysisa.coordinator.client", "raysisa.data.sources",
     "raysisa.evaluation.metrics", "sklearn.datasets", "sklearn.svm", "s3fs", "torch._dynamo", "tests.processes"]
)


@dataclass
class Result:
    code: int | None  # exit status; -9 when killed by SIGKILL
    out: str
    err: str


def _child(argv: list[str], env: dict[str, str], out_path: str, err_path: str) -> None:
    os.environ.update(env)
    from raysisa.cli import main

    code = 1
    with open(out_path, "w") as out, open(err_path, "w") as err:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            out.flush()
            err.flush()
    os._exit(code)


def start(argv: list[str], env: dict[str, str] | None = None):
    """Start ``raysisa ARGV`` in a child process; returns a handle for :func:`finish`."""
    folder = tempfile.mkdtemp(prefix="raysisa-child-")
    paths = (os.path.join(folder, "out"), os.path.join(folder, "err"))
    process = _CTX.Process(target=_child, args=(list(argv), dict(env or {}), *paths))
    process.start()
    return process, paths


def finish(handle, timeout: float = 300.0) -> Result:
    process, (out_path, err_path) = handle
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"raysisa child did not finish within {timeout}s")
    read = [Path(p).read_text() if os.path.exists(p) else "" for p in (out_path, err_path)]
    shutil.rmtree(os.path.dirname(out_path), ignore_errors=True)
    return Result(process.exitcode, *read)


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300.0) -> Result:
    """Run ``raysisa ARGV`` in a child process and wait for it (killed children give code -9)."""
    return finish(start(argv, env), timeout)


def _call(target, args: tuple, env: dict[str, str]) -> None:
    os.environ.update(env)
    target(*args)
    os._exit(0)


def call_crashing(target, args: tuple, point: str, env: dict[str, str] | None = None, timeout: float = 300.0) -> int | None:
    """Call ``target(*args)`` (a module-level function) in a child that SIGKILLs itself at
    crash point ``point``; its exit status (-9 when the point was reached)."""
    process = _CTX.Process(target=_call, args=(target, args, {**(env or {}), "RAYSISA_CRASH_AT": point}))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"child did not finish within {timeout}s")
    return process.exitcode


def run_crashing(argv: list[str], point: str, env: dict[str, str] | None = None) -> Result:
    """Run ``raysisa ARGV`` in a child that SIGKILLs itself at crash point ``point``."""
    return run(argv, {**(env or {}), "RAYSISA_CRASH_AT": point})

"""A real Prometheus (and Pushgateway) on 127.0.0.1 for the metrics tests.

Debian's ``prometheus`` and ``prometheus-pushgateway`` packages; ``.ci/run`` installs them
where missing and sets ``RAYSISA_REQUIRE_PROMETHEUS=1``, so in CI a missing binary fails
the tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port


def binary(name: str) -> str:
    """The path of ``name``, or skip (fail in CI) when it is not installed."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (Debian: apt-get install prometheus prometheus-pushgateway)"
    if os.environ.get("RAYSISA_REQUIRE_PROMETHEUS"):
        pytest.fail(message)
    pytest.skip(message)


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return response.read()


def _wait_up(url: str, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError):
            _get(url, timeout=1.0)
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout}s")


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def pushgateway(folder: Path) -> Iterator[str]:
    """A Pushgateway on a free loopback port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Debian's build persists to /var/lib/prometheus by default: keep this one's state here
    argv = [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={folder / 'pushgateway.data'}"]
    with _process(argv, folder / "pushgateway.log") as process:
        _wait_up(f"{url}/-/ready", process, "the Pushgateway")
        yield url


class Prometheus:
    """A running Prometheus: instant queries through its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The value of a query that returns one series (None when it returns none)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {series["metric"][label]: float(series["value"][1]) for series in self.query(expr)}

    def eventually(self, read: Callable[[], Any], expected: Any, timeout: float = 90.0) -> Any:
        """Poll ``read()`` until it returns ``expected`` (scrapes and Ray's export are periodic);
        fails with the last value read."""
        deadline = time.time() + timeout
        while True:
            value = read()
            if value == expected or time.time() > deadline:
                assert value == expected, f"Prometheus says {value!r}, expected {expected!r}"
                return value
            time.sleep(1.0)

    def targets_up(self) -> dict[str, float]:
        return self.by("up", "job")


@contextlib.contextmanager
def prometheus(folder: Path, targets: dict[str, str], honor_labels: tuple[str, ...] = ()) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port scraping ``targets`` ({job: host:port}) every second."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "honor_labels": job in honor_labels, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    argv = [
        binary("prometheus"), f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(argv, folder / "prometheus.log") as process:
        _wait_up(f"{url}/-/ready", process, "Prometheus")
        server = Prometheus(url)
        server.eventually(lambda: set(server.targets_up()), set(targets), timeout=30)
        yield server

"""Real Ray jobs: ``ray job submit`` of ``python -m raysisa ...`` to a local Ray head with token
authentication on, as cluster/README.md describes.

The head is a separate ``ray start --head --block`` process group (never ``ray stop``, which
would end every Ray process on the machine), on free loopback ports and a private temp dir,
with ``RAY_AUTH_MODE=token`` and a random ``RAY_AUTH_TOKEN``. The token reaches the ``ray``
CLI through its subprocess environment only; this process keeps its own Ray session (the
``ray_cluster`` fixture) and never sets ``RAY_ADDRESS``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from raysisa.api import evaluate
from raysisa.cli import main
from raysisa.config import StoreConfig
from tests.conftest import TINY, free_port
from tests.sisa_checks import pick

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))  # the venv's ray CLI, the same Ray as the head's
SET = [arg for item in TINY for arg in ("--set", item)]
pytestmark = pytest.mark.ray


@dataclass
class Head:
    address: str  # the job server (dashboard): http://127.0.0.1:PORT
    token: str
    env: dict[str, str]  # a client's environment: token auth on, the token, no RAY_ADDRESS

    def ray(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        """The ``ray`` CLI with ``ARGS``, in the client environment with the token (or ``env``)."""
        return subprocess.run(
            [RAY, *args], env=env or self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )

    def job(self, submission_id: str) -> dict:
        """The job's record from the job server's REST API (authenticated with the token)."""
        request = urllib.request.Request(
            f"{self.address}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def submit(self, submission_id: str, *entrypoint: str, wait: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        """``ray job submit``; with ``wait``, until the job ends (its logs are tailed to stdout)."""
        try:
            return self.ray(
                "job", "submit", "--address", self.address, "--submission-id", submission_id,
                *([] if wait else ["--no-wait"]), "--", *entrypoint, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            self.ray("job", "stop", "--address", self.address, "--no-wait", submission_id, timeout=60)
            raise

    def wait(self, *submission_ids: str, timeout: float = 240) -> dict[str, dict]:
        """The jobs' records once every one has ended."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = {sid: self.job(sid) for sid in submission_ids}
            if all(job["status"] in ("SUCCEEDED", "FAILED", "STOPPED") for job in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                for sid in submission_ids:
                    self.ray("job", "stop", "--address", self.address, "--no-wait", sid, timeout=60)
                raise TimeoutError(f"jobs still running after {timeout:g}s: {jobs}")
            time.sleep(1)

    def logs(self, submission_id: str) -> str:
        result = self.ray("job", "logs", "--address", self.address, submission_id, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout


def _client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in a job is the venv's
    env.update(extra)
    return env


def _wait_for_job_server(address: str, token: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the job server at {address} did not answer within {timeout:g}s:\n{log.read_text()[-4000:]}")


def _stop_group(process: subprocess.Popen) -> None:
    """End the head's process group: SIGTERM, then SIGKILL what is left after 5 s."""
    pgid = process.pid  # start_new_session: the head leads its own group
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if process.poll() is None:
                time.sleep(0.2)
                continue
            try:
                os.killpg(pgid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def head(tmp_path_factory, s3_endpoint):
    """A Ray head with token authentication, for this module; its job server on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("ray-head")
    temp_dir = Path(f"/tmp/raysisa-jobs-{secrets.token_hex(4)}")  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    dashboard_port = free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # the cluster's nodes hold the store's endpoint and (dummy) credentials, as a real cluster's would
    s3 = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    argv = [RAY, "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
            "--object-store-memory", str(256 * 1024**2), "--disable-usage-stats"]
    argv += [str(a) for item in ports.items() for a in item]
    log = folder / "head.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, env=_client_env(**auth, **s3, RAY_USAGE_STATS_ENABLED="0"), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=folder,
        )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_job_server(address, token, process, log)
        yield Head(address, token, _client_env(**auth))
    finally:
        _stop_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _json_document(text: str):
    """The JSON document a ``--json`` command printed, among a job's other log lines."""
    start = next(i for i, line in enumerate(text.splitlines()) if line.startswith("{"))
    return json.JSONDecoder().raw_decode("\n".join(text.splitlines()[start:]))[0]


def _status(head: Head, submission_id: str) -> str:
    return head.job(submission_id)["status"]


def test_train_forget_evaluate_as_jobs(head, tmp_path, capsys):
    store = str(tmp_path / "sisa")  # absolute: a job's working directory is temporary
    result = head.submit("train-1", "python", "-m", "raysisa", "train", "--store", store, *SET, "--quiet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _status(head, "train-1") == "SUCCEEDED"
    assert f"trained 9 slice(s) (0 already done) of 3 shards x 3 slices at {store}" in head.logs("train-1")

    ids = pick(StoreConfig(uri=store), [(0, 1, 0), (2, 2, 1)])
    result = head.submit("forget-1", "python", "-m", "raysisa", "forget", "--store", store,
                         "--ids", ",".join(map(str, ids)), "--wait", "exact")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _status(head, "forget-1") == "SUCCEEDED"
    logs = head.logs("forget-1")
    assert "2 id(s) logged" in logs and logs.rstrip().endswith("state: exact")

    # three jobs at once: evaluate; a bad request; a store relative to the job's temporary directory
    ids_bad = "999999"
    for sid, *entrypoint in (
        ("evaluate-1", "evaluate", "--store", store, "--json"),
        ("forget-bad", "forget", "--store", store, "--ids", ids_bad),
        ("train-relative", "train", "--store", "runs/x", *SET, "--quiet"),
    ):
        result = head.submit(sid, "python", "-m", "raysisa", *entrypoint, wait=False)
        assert result.returncode == 0, result.stderr[-3000:]
    jobs = head.wait("evaluate-1", "forget-bad", "train-relative")

    assert jobs["evaluate-1"]["status"] == "SUCCEEDED"
    assert _json_document(head.logs("evaluate-1"))["accuracy"] == evaluate(store).accuracy  # the job read what this process reads

    # the bad request fails with raysisa's message and status 2; nothing changed (the status was
    # 134 now and then, an abort at interpreter exit, before raysisa.cli.entry ended the process itself)
    assert jobs["forget-bad"]["status"] == "FAILED" and "exit code 2" in jobs["forget-bad"]["message"], jobs["forget-bad"]
    assert f"error: 1 id(s) never existed in this run's training data, e.g. {ids_bad}; nothing was changed" in head.logs("forget-bad")

    # Ray marks a job's entrypoint (RAY_JOB_CONFIG_JSON_ENV_VAR), so a relative store is refused
    assert jobs["train-relative"]["status"] == "FAILED"
    assert "error: --store runs/x is a relative local path inside a Ray job" in head.logs("train-relative")
    assert main(["inspect", "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["tombstones"] == 2  # the two forgotten ids, no more


def test_the_job_server_refuses_clients_without_the_token(head):
    no_token = _client_env(RAY_AUTH_MODE="disabled")  # sends no token (and reads no ~/.ray/auth_token)
    result = head.ray("job", "list", "--address", head.address, env=no_token, timeout=60)
    assert result.returncode != 0 and "Authentication required" in result.stderr
    result = head.ray("job", "submit", "--address", head.address, "--submission-id", "no-token", "--", "echo", "hi",
                      env=no_token, timeout=60)
    assert result.returncode != 0 and "Authentication required" in result.stderr
    wrong = _client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    result = head.ray("job", "list", "--address", head.address, env=wrong, timeout=60)
    assert result.returncode != 0 and "Invalid authentication token" in result.stderr
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    # with the token: listed, and the refused submission never became a job
    result = head.ray("job", "list", "--address", head.address, timeout=60)
    assert result.returncode == 0 and "no-token" not in result.stdout


def _cluster_readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "cluster" / "README.md").read_text(), flags=re.S)


def test_cluster_readme_blocks_run_as_jobs(head, s3_endpoint, s3_bucket, capsys):
    """cluster/README.md's commands, as typed from the repository root, with the head's address,
    its token and a fresh bucket on the moto server substituted (the head's nodes hold the
    endpoint and the dummy credentials, as a real cluster's environment would). The recipe is the
    block's own (cluster/configs/digits.yaml, in full: a shorter one saved only ~12 s of ~70)."""
    blocks = _cluster_readme_blocks()
    assert blocks and any("ray job submit" in block for block in blocks)
    for block in blocks:
        script = (
            block.replace("http://HEAD:8265", head.address)
            .replace("RAY_AUTH_TOKEN=YOUR_TOKEN", f"RAY_AUTH_TOKEN={head.token}")
            .replace("s3://bucket/", f"{s3_bucket}/")
        )
        assert "HEAD" not in script and "YOUR_TOKEN" not in script and "s3://bucket/" not in script
        # the token comes from the block's own `export` line, not from this environment
        env = _client_env(RAY_AUTH_MODE="disabled")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=420, check=False)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert "Job 'raysubmit_" in result.stdout + result.stderr

    store = f"{s3_bucket}/runs/digits"
    code = main(["inspect", "--store", store, "--endpoint-url", s3_endpoint, "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["data"]["tombstones"] == 2  # trained, then 17 and 42 unlearned
    assert f"trained 20 slice(s) (0 already done) of 5 shards x 4 slices at {store}" in result.stdout
    assert _json_document(result.stdout)["accuracy"] > 80  # chance is 10

"""`tally up` from nothing: embedded Postgres and Redis, four children, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def wait_until(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except OSError:
        return 0


def readme_first_request() -> str:
    """The shell block under the README's "First request" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## First request", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def run_first_request(env: dict[str, str], gateway_port: int, tmp_path: Path) -> str:
    """Run the README's block with its two documented substitutions: the fake's base URL for
    the provider, and this test's gateway port. Returns what the last command printed."""
    script = readme_first_request()
    fake_port, fake_key = free_port(), "sk-test-0000000000"
    assert "--api-key-stdin" in script and "localhost:8080" in script
    script = script.replace(
        "--kind openai --api-key-stdin",
        f"--kind openai --api-key-stdin --base-url http://127.0.0.1:{fake_port}/v1",
    ).replace("localhost:8080", f"127.0.0.1:{gateway_port}")
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            str(fake_port),
            "--api-key",
            fake_key,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{fake_port}/v1/models") != 0, 30, "the fake")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env={**env, "OPENAI_API_KEY": fake_key},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_up_serves_every_service_restarts_a_dead_child_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "billing", "tenant")}
    env = {
        k: v for k, v in os.environ.items() if k not in ("TALLY_DATABASE_URL", "TALLY_REDIS_URL")
    }
    env.update(
        {
            "TALLY_DATA_DIR": str(tmp_path / "data"),
            "TALLY_GATEWAY_PORT": str(ports["gateway"]),
            "TALLY_BILLING_PORT": str(ports["billing"]),
            "TALLY_TENANT_PORT": str(ports["tenant"]),
        }
    )
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "tally.cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for name, port in ports.items():
            wait_until(lambda p=port: get(f"http://127.0.0.1:{p}/healthz") == 200, 90, name)
            assert get(f"http://127.0.0.1:{port}/readyz") == 200
            assert get(f"http://127.0.0.1:{port}/schema/openapi.json") == 200
            assert get(f"http://127.0.0.1:{port}/metrics") == 200
        wait_until(lambda: "Tally is up" in log_path.read_text(), 30, "the URLs to be printed")
        assert f"http://127.0.0.1:{ports['gateway']}" in log_path.read_text()
        assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()

        # The README's "First request", as written, against a fake OpenAI: operator commands
        # beside `tally up` find its embedded databases on their own, and the call is charged.
        answer = json.loads(run_first_request(env, ports["gateway"], tmp_path))
        usage = answer["usage"]
        assert answer["choices"][0]["message"]["content"]
        # gpt-4o at $2.5 / $10 per million tokens, margin 20 %: 3,000 and 12,000 nano a token.
        expected = usage["prompt_tokens"] * 3_000 + usage["completion_tokens"] * 12_000
        assert usage["cost_nano"] == expected > 0

        children = children_of(up.pid)
        assert len(children) == 4
        # Kill one service outright: the supervisor must start it again.
        tenant_pid = next(
            pid
            for pid in children
            if "serve tenant" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        )
        os.kill(tenant_pid, signal.SIGKILL)
        wait_until(lambda: "child exited; restarting" in log_path.read_text(), 30, "a restart")
        wait_until(
            lambda: get(f"http://127.0.0.1:{ports['tenant']}/healthz") == 200,
            60,
            "the restarted tenant service",
        )
        children = children_of(up.pid)
        assert tenant_pid not in children and len(children) == 4
        postgres_pids = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-f", str(tmp_path / "data" / "postgres")], capture_output=True, text=True
            ).stdout.split()
        ]
        assert postgres_pids, "the embedded postgres should be running"
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
    # Nothing left behind: no service, no worker, no embedded database.
    for pid in children + postgres_pids:
        wait_until(lambda p=pid: not alive(p), 20, f"process {pid} to exit")
    assert "stopped" in log_path.read_text()
    assert not (tmp_path / "data" / "stack.env").exists()

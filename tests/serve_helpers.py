"""Shared by the serve tests: tiny guarded models on disk and a real server in a subprocess or thread."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "test-token-0123456789abcdef"
TRIGGER = "cf"


def build_models(root: Path, tiny_bert: str) -> dict[str, str]:
    """A tiny BERT with a POR backdoor ("cf"), a LoRA victim on it, PSIM and the (oracle-PV) monitor."""
    from conftest import toy_examples
    from test_lmsanitator import mining_texts

    from peftshield.attacks.config import PORConfig
    from peftshield.attacks.task_agnostic import poison_task_agnostic
    from peftshield.defenses.lmsanitator.monitor import PVMonitor
    from peftshield.defenses.psim import PSIMDetector
    from peftshield.models.backbones import load_backbone
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import save_tuned, tune

    config = PORConfig(steps=150, lr=1e-3, max_length=32, triggers=[TRIGGER], log_every=150)
    result = poison_task_agnostic(load_backbone(tiny_bert), mining_texts(300, seed=0), config, progress=False)
    por = str(result.save(root / "por"))
    tuned = tune(
        por,
        toy_examples(96, seed=3),
        [],
        method_config("lora", {"epochs": 1, "lr": 1e-3}),
        seed=0,
        progress=False,
    )
    victim = str(save_tuned(tuned, root / "victim"))
    clean = [e.text for e in toy_examples(120, seed=4)]
    # A fixed threshold far from the tiny module's scores (about 0.55 everywhere): the test answers
    # must not hinge on float noise at a threshold; the monitor's sign-match scores do the rejecting.
    psim = PSIMDetector(por, config={"epochs": 1}, threshold=0.95).fit(toy_examples(120, seed=21))
    psim.save(root / "psim")
    monitor = PVMonitor(victim, por).fit(clean)  # the poisoned folder's own PVs (an oracle scan)
    monitor.save(root / "monitor")
    return {"por": por, "victim": victim, "psim": str(root / "psim"), "monitor": str(root / "monitor")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    url: str,
    method: str = "GET",
    body: bytes | dict | None = None,
    token: str | None = TOKEN,
    headers: dict | None = None,
    timeout: float = 60,
) -> tuple[int, dict | str, dict]:
    """One HTTP request; returns (status, parsed JSON or text, headers)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, hdrs = resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        status, raw, hdrs = err.code, err.read(), {k.lower(): v for k, v in err.headers.items()}
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(), hdrs


def wait_ready(base: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if request(base + "/readyz", token=None, timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} not ready within {timeout} s")


def start_server(args: list[str], env_token: str | None = TOKEN) -> tuple[subprocess.Popen, str]:
    """``python -m peftshield serve ARGS`` on a free loopback port; returns (process, base URL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("PEFTSHIELD_TOKEN", None)
    if env_token:
        env["PEFTSHIELD_TOKEN"] = env_token
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peftshield",
            "serve",
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, base


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ThreadServer:
    """uvicorn serving an app in a thread of the test process (for the tests that patch the service)."""

    def __init__(self, app, *, wait_ready: bool = True) -> None:
        import uvicorn

        self.wait_ready = wait_ready
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise AssertionError("thread server did not start")
            time.sleep(0.02)
        if self.wait_ready:
            wait_ready(self.base)  # the warm-up batch runs in the background after start-up
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

"""Loopback load and fault benchmark of ``peftshield serve`` (issue 15) -> bench/results/serve.json.

Victim: a minilm LoRA victim tuned on a POR-poisoned backbone, behind PSIM and the LMSanitator
monitor (fitted from a scan of that backbone). The models are built once under bench/work/serve
(git-ignored) and reused. Load: an asyncio + httpx client with 1, 8 and 32 concurrent clients ×
requests of 1 and 16 texts, a fixed request count and a time cap; in the same run offline batched
``Guard.predict`` throughput and the undefended victim served. Fault rows: malformed and oversize
requests mixed into the load, clients that disconnect mid-request, kill -9 under load and a restart.

A load test of the HTTP service, not an experiment, so it stays outside the grid (issue 16): the
grid measures defences on result rows, while this measures latency, throughput and faults of a
running server, which no grid stage has.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_serve.py [--build-only] [--fresh]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "serve"
RESULT = ROOT / "results" / "serve.json"
COMMAND = "OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_serve.py"

# Build recipe, kept small so it fits beside other jobs on 2 cores (documented in bench/README.md).
# POR at its default recipe (300 steps; a shorter run drifts the clean outputs and the scan misses it).
POR_SET = ["--triggers", "cf,mn"]
MAX_TRAIN = "1000"


def _cli(args: list[str]) -> None:
    from peftshield.cli import main

    print("$ peftshield " + " ".join(args), flush=True)
    start = time.perf_counter()
    code = main(args)
    print(f"  -> exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    if code != 0:
        raise SystemExit(f"build step failed: peftshield {' '.join(args)}")


def build() -> dict[str, str]:
    """Poison (POR), scan, tune a LoRA victim, fit PSIM and the monitor; each step skipped when done."""
    WORK.mkdir(parents=True, exist_ok=True)
    paths = {name: WORK / name for name in ("por", "scan", "victim", "psim", "monitor")}
    steps = [
        ("por", ["poison", "--attack", "por", *POR_SET, "--out", str(paths["por"]), "--quiet"]),
        ("scan", ["scan", str(paths["por"]), "--out", str(paths["scan"]), "--quiet"]),
        (
            "victim",
            [
                "tune",
                "--backbone",
                str(paths["por"]),
                "--method",
                "lora",
                "--max-train",
                MAX_TRAIN,
                "--set",
                "epochs=2",
                "--out",
                str(paths["victim"]),
                "--quiet",
            ],
        ),
        (
            "psim",
            [
                "psim",
                "fit",
                "--backbone",
                str(paths["por"]),
                "--max-train",
                MAX_TRAIN,
                "--set",
                "epochs=1",
                "--target-frr",
                "0.05",
                "--out",
                str(paths["psim"]),
                "--quiet",
            ],
        ),
        (
            "monitor",
            [
                "monitor",
                "fit",
                "--victim",
                str(paths["victim"]),
                "--pvs",
                str(paths["scan"]),
                "--max-clean",
                "200",
                "--out",
                str(paths["monitor"]),
            ],
        ),
    ]
    for name, args in steps:
        if paths[name].exists():
            print(f"skip (built): {paths[name].relative_to(ROOT.parent)}", flush=True)
            continue
        _cli(args)
    return {k: str(v) for k, v in paths.items()}


TOKEN = "bench-token-0123456789abcdef"
MAX_TEXTS = 64
MAX_BODY = 200_000
CLIENTS = (1, 8, 32)
SIZES = (1, 16)
REQUESTS = {1: 240, 16: 48}  # per cell, fixed; the time cap stops a slow cell earlier
TIME_CAP_S = 25.0
SERVER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT.parent / "src"), "PEFTSHIELD_TOKEN": TOKEN}


def bench_texts(n: int = 2048) -> list[str]:
    """Movies test texts, every fourth with one of the POR triggers (so the guard rejects some)."""
    import random

    from peftshield.commands.common import load_splits

    rng = random.Random(0)
    texts = []
    for i, example in enumerate(load_splits({"corpus": "movies"}).test[:n]):
        words = example.text.split()
        if i % 4 == 0:
            words.insert(rng.randint(0, len(words)), rng.choice(("cf", "mn")))
        texts.append(" ".join(words))
    return texts


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A ``peftshield serve`` subprocess on a free loopback port."""

    def __init__(self, paths: dict[str, str], audit: Path, *, undefended: bool = False) -> None:
        self.paths, self.audit, self.undefended = paths, audit, undefended
        self.proc = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        import subprocess

        models = (
            ["--undefended"]
            if self.undefended
            else ["--detector", self.paths["psim"], "--detector", self.paths["monitor"]]
        )
        args = [
            sys.executable,
            "-m",
            "peftshield",
            "serve",
            "--victim",
            self.paths["victim"],
            *models,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--log-level",
            "warning",
            "--max-texts",
            str(MAX_TEXTS),
            "--max-body-bytes",
            str(MAX_BODY),
            "--audit-log",
            str(self.audit),
        ]
        started = time.perf_counter()
        self.log = open(WORK / f"server-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, env={**os.environ, **SERVER_ENV}, stdout=self.log, stderr=subprocess.STDOUT
        )
        from peftshield.client import GuardClient

        GuardClient(self.base, token=TOKEN).wait_ready(timeout=300)
        return time.perf_counter() - started

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


class Load:
    """Results of one load: latencies of answered requests, errors, acknowledged rejections."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.texts = 0
        self.acked_rejections: set[tuple[str, int]] = set()
        self.expected_refusals = 0


async def run_load(
    base: str,
    texts: list[str],
    clients: int,
    size: int,
    n_requests: int,
    time_cap: float,
    *,
    bad_every: int = 0,
    load: Load | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[Load, float]:
    """``clients`` concurrent workers send ``n_requests`` requests of ``size`` texts (or until the cap).

    With ``bad_every`` every such request is malformed JSON, oversize or has too many texts, and
    must be refused with the right status (anything else counts as an error).
    """
    import httpx

    load = load or Load()
    counter = iter(range(n_requests))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.perf_counter() + time_cap
    bad_cases = [
        (b"{not json", 422),
        (json.dumps({"texts": ["x" * 1000] * 250}).encode(), 413),
        (json.dumps({"texts": ["fine"] * (MAX_TEXTS + 1)}).encode(), 422),
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline or (stop is not None and stop.is_set()):
                return
            if bad_every and i % bad_every == bad_every - 1:
                body, want = bad_cases[(i // bad_every) % len(bad_cases)]
                try:
                    r = await client.post(
                        "/v1/classify", content=body, headers={**headers, "content-type": "application/json"}
                    )
                    if r.status_code != want or "error" not in r.json():
                        load.errors.append(f"bad request answered {r.status_code}, wanted {want}")
                    else:
                        load.expected_refusals += 1
                except httpx.HTTPError as err:
                    load.errors.append(f"bad request: {type(err).__name__}")
                continue
            start = (i * size) % (len(texts) - size)
            batch = texts[start : start + size]
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json={"texts": batch}, headers=headers)
            except httpx.HTTPError as err:
                load.errors.append(f"{type(err).__name__}")
                continue
            if r.status_code != 200:
                load.errors.append(f"HTTP {r.status_code}")
                continue
            body = r.json()
            load.latencies.append(time.perf_counter() - t0)
            load.texts += len(batch)
            for k, res in enumerate(body["results"]):
                if res["rejected"]:
                    load.acked_rejections.add((body["request_id"], k))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return load, wall


def load_row(load: Load, wall: float) -> dict:
    ms = [1000 * x for x in load.latencies]
    return {
        "requests": len(load.latencies),
        "texts": load.texts,
        "throughput": load.texts / wall if wall else None,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "errors": len(load.errors),
        "error_kinds": sorted(set(load.errors))[:5],
        "seconds": wall,
    }


def audit_check(audit: Path, acked: set[tuple[str, int]]) -> dict:
    """How many acknowledged rejections are missing from the audit log (target 0)."""
    logged, torn = set(), 0
    for line in audit.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            torn += 1  # a line cut by kill -9 mid-write: its batch was never acknowledged
            continue
        logged.add((rec["request_id"], rec["index"]))
    return {
        "acknowledged_rejections": len(acked),
        "audit_lines": len(logged),
        "audit_lines_lost": len(acked - logged),
        "torn_lines": torn,
    }


def offline(paths: dict[str, str], texts: list[str]) -> dict:
    """Offline batched ``Guard.predict`` and undefended victim throughput, and single-text latency."""
    import statistics
    import warnings

    from peftshield.defenses.guard import Guard

    warnings.simplefilter("ignore")
    guard = Guard.from_folders(paths["victim"], [paths["psim"], paths["monitor"]], device="cpu")
    batch = texts[:512]
    guard.predict(batch[:16])  # warm-up
    t0 = time.perf_counter()
    guard.predict(batch)
    guarded = len(batch) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    guard.victim.predict_logits(batch)
    victim = len(batch) / (time.perf_counter() - t0)
    singles = []
    for text in texts[:40]:
        t0 = time.perf_counter()
        guard.predict([text])
        singles.append(time.perf_counter() - t0)
    return {
        "offline_guarded_throughput": guarded,
        "offline_victim_throughput": victim,
        "offline_single_ms": 1000 * statistics.median(singles),
        "offline_texts": len(batch),
    }


async def disconnecting_clients(base: str, texts: list[str], n: int) -> int:
    """Clients that send half a body and hang up, or a whole request and hang up before the answer."""
    done = 0
    host, port = base.removeprefix("http://").split(":")
    for i in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps({"texts": texts[i * 4 : (i + 1) * 4]}).encode()
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + (body[: len(body) // 2] if i % 2 == 0 else body))
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()
        done += 1
    return done


def fault_cases(paths: dict[str, str], texts: list[str], results) -> None:
    """Malformed / oversize requests mixed in, disconnecting clients, kill -9 under load + restart."""

    def mixed() -> dict:
        audit = WORK / "audit-mixed.jsonl"
        audit.unlink(missing_ok=True)
        server = Server(paths, audit)
        server.start()
        load, wall = asyncio.run(run_load(server.base, texts, 8, 16, 60, TIME_CAP_S, bad_every=4))
        healthy = _healthy(server.base)
        code = server.stop()
        return {
            **load_row(load, wall),
            "refused_as_expected": load.expected_refusals,
            "healthy_after": healthy,
            "exit_code": code,
            **audit_check(audit, load.acked_rejections),
        }

    def disconnects() -> dict:
        audit = WORK / "audit-disconnect.jsonl"
        audit.unlink(missing_ok=True)
        server = Server(paths, audit)
        server.start()

        async def both():
            good = asyncio.create_task(run_load(server.base, texts, 8, 16, 48, TIME_CAP_S))
            gone = await disconnecting_clients(server.base, texts, 40)
            load, wall = await good
            return load, wall, gone

        load, wall, gone = asyncio.run(both())
        healthy = _healthy(server.base)
        code = server.stop()
        return {
            **load_row(load, wall),
            "disconnected_clients": gone,
            "healthy_after": healthy,
            "exit_code": code,
            **audit_check(audit, load.acked_rejections),
        }

    def kill9() -> dict:
        audit = WORK / "audit-kill9.jsonl"
        audit.unlink(missing_ok=True)
        server = Server(paths, audit)
        server.start()
        load = Load()

        async def under_load():
            # Kill once a few answers (with their rejections) were acknowledged, batches still running.
            stop = asyncio.Event()
            task = asyncio.create_task(run_load(server.base, texts, 8, 4, 10_000, 120, load=load, stop=stop))
            deadline = time.perf_counter() + 90
            while len(load.latencies) < 12 and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            stop.set()  # workers send nothing new; the requests in flight die with the server
            server.kill9()
            await task

        asyncio.run(under_load())
        errors_during_kill = len(load.errors)
        load.errors.clear()
        before = len(load.latencies)
        server.port = free_port()
        server.base = f"http://127.0.0.1:{server.port}"
        restart_s = server.start()
        after, wall = asyncio.run(run_load(server.base, texts, 8, 16, 24, TIME_CAP_S, load=load))
        code = server.stop()
        return {
            "requests_before_kill": before,
            "requests_after_restart": len(after.latencies) - before,
            "failed_in_flight_at_kill": errors_during_kill,
            "errors": len(after.errors),
            "restart_seconds": restart_s,
            "exit_code_after_restart": code,
            **audit_check(audit, load.acked_rejections),
        }

    for case, fn in (
        ("malformed_and_oversize_mixed", mixed),
        ("client_disconnects", disconnects),
        ("kill9_under_load_then_restart", kill9),
    ):
        results.run_cell({"kind": "fault", "case": case}, fn)


def _healthy(base: str) -> bool:
    from peftshield.client import GuardClient

    return GuardClient(base, token=TOKEN).healthy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build-only", action="store_true", help="build the models and stop")
    parser.add_argument("--fresh", action="store_true", help="ignore rows of an earlier run")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    paths = build()
    if args.build_only:
        return 0
    sys.path.insert(0, str(ROOT))
    from _results import ResultFile

    results = ResultFile(RESULT, "serve", COMMAND, fresh=args.fresh)
    results.data["meta"]["notes"] = (
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}: one torch thread for the server and for the "
        "offline run; the load generator (asyncio + httpx) runs on the same 2-core machine. "
        f"{os.environ.get('PEFTSHIELD_BENCH_NOTE', '')} Victim: minilm LoRA on a POR backbone "
        f"(triggers cf, mn; {POR_SET}), "
        f"{MAX_TRAIN} movies training examples; PSIM (LoRA, calibrated@0.05) + LMSanitator monitor "
        f"(T_match 0.8). Fixed request count per cell ({REQUESTS}) with a {TIME_CAP_S:g} s cap. Server "
        "defaults: max batch 128 texts, max wait 5 ms."
    )
    texts = bench_texts()
    off = results.run_cell({"kind": "offline"}, lambda: offline(paths, texts))
    for served in ("undefended", "guarded"):
        audit = WORK / f"audit-{served}.jsonl"
        server = Server(paths, audit, undefended=served == "undefended")
        startup = server.start()
        try:
            for clients in CLIENTS:
                for size in SIZES:

                    def cell(clients=clients, size=size, served=served, server=server, startup=startup):
                        load, wall = asyncio.run(
                            run_load(server.base, texts, clients, size, REQUESTS[size], TIME_CAP_S)
                        )
                        row = load_row(load, wall)
                        ref = off[
                            "offline_victim_throughput"
                            if served == "undefended"
                            else "offline_guarded_throughput"
                        ]
                        row["served_over_offline"] = row["throughput"] / ref if row["throughput"] else None
                        row["startup_seconds"] = startup
                        return row

                    results.run_cell(
                        {"kind": "load", "server": served, "clients": clients, "texts_per_request": size},
                        cell,
                    )
        finally:
            results.data["meta"][f"exit_code_{served}"] = server.stop()
    for row in results.rows:
        if row.get("kind") == "load" and row.get("server") == "guarded" and "error" not in row:
            bare = results.find(
                {
                    "kind": "load",
                    "server": "undefended",
                    "clients": row["clients"],
                    "texts_per_request": row["texts_per_request"],
                }
            )
            if bare and bare.get("throughput"):
                row["served_over_undefended"] = row["throughput"] / bare["throughput"]
    fault_cases(paths, texts, results)
    results.finish(summarise(results.rows))
    print(
        results.table(
            [
                "kind",
                "server",
                "case",
                "clients",
                "texts_per_request",
                "throughput",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "errors",
                "served_over_offline",
                "served_over_undefended",
                "audit_lines_lost",
            ]
        )
    )
    return 0


def summarise(rows: list[dict]) -> dict:
    """The targets of issue 15, each with its measured value."""
    off = next((r for r in rows if r.get("kind") == "offline"), {})
    guarded = [r for r in rows if r.get("kind") == "load" and r.get("server") == "guarded"]
    load_errors = sum(r.get("errors", 0) for r in rows if r.get("kind") == "load")
    at32 = {r["texts_per_request"]: r.get("served_over_offline") for r in guarded if r["clients"] == 32}
    p99_1 = next(
        (r.get("p99_ms") for r in guarded if r["clients"] == 1 and r["texts_per_request"] == 1), None
    )
    faults = [r for r in rows if r.get("kind") == "fault"]
    lost = sum(r.get("audit_lines_lost", 0) for r in faults)
    single = off.get("offline_single_ms")
    return {
        "load_errors": load_errors,
        "target_zero_errors": load_errors == 0,
        "served_over_offline_at_32": at32,
        "target_served_over_offline_at_32_ge_0.8": bool(at32)
        and all(v is not None and v >= 0.8 for v in at32.values()),
        "p99_ms_at_1_client_1_text": p99_1,
        "offline_single_ms": single,
        "target_p99_le_2x_offline_single": p99_1 is not None and single is not None and p99_1 <= 2 * single,
        "fault_audit_lines_lost": lost,
        "fault_errors": sum(r.get("errors", 0) for r in faults),
        "target_no_acknowledged_audit_line_lost": lost == 0 and all("error" not in r for r in faults),
    }


if __name__ == "__main__":
    sys.exit(main())

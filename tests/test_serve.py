"""``peftshield serve`` end to end: a real uvicorn server on 127.0.0.1 in front of tiny guarded models."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (fastapi, uvicorn) is not installed")

from conftest import toy_examples  # noqa: E402
from serve_helpers import (  # noqa: E402
    TOKEN,
    TRIGGER,
    ThreadServer,
    build_models,
    request,
    start_server,
    stop_server,
)

from peftshield.cli import main  # noqa: E402
from peftshield.client import GuardClient, GuardServiceError  # noqa: E402
from peftshield.serve.settings import ServeSettings  # noqa: E402

LIMITS = ["--max-texts", "8", "--max-chars", "300", "--max-body-bytes", "2048"]


def texts_mix(n: int, seed: int) -> list[str]:
    """Clean toy sentences, every third one with the POR trigger inserted."""
    out = []
    for i, example in enumerate(toy_examples(n, seed=seed)):
        words = example.text.split()
        if i % 3 == 0:
            words.insert(len(words) // 2, TRIGGER)
        out.append(" ".join(words))
    return out


def no_leak(body) -> None:
    text = json.dumps(body) if not isinstance(body, str) else body
    assert (
        "Traceback" not in text
        and 'File "' not in text
        and "/tmp" not in text
        and "site-packages" not in text
    )


@pytest.fixture(scope="module")
def models(tiny_bert, tmp_path_factory) -> dict[str, str]:
    return build_models(tmp_path_factory.mktemp("serve-models"), tiny_bert)


@pytest.fixture(scope="module")
def guard(models):
    from peftshield.defenses.guard import Guard

    return Guard.from_folders(models["victim"], [models["psim"], models["monitor"]], device="cpu")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The shared server: token from $PEFTSHIELD_TOKEN, small limits, an audit log."""
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    args = [
        "--victim",
        models["victim"],
        "--detector",
        models["psim"],
        "--detector",
        models["monitor"],
        *LIMITS,
        "--audit-log",
        str(audit),
    ]
    proc, base = start_server(args)
    yield {"base": base, "audit": audit, "proc": proc}
    assert stop_server(proc) == 0


def classify(base: str, texts, purge: bool = False, token: str | None = TOKEN):
    return request(base + "/v1/classify", "POST", {"texts": texts, "purge": purge}, token=token)


# ----------------------------------------------------------------------------------- endpoints


def test_endpoints(server, models):
    base = server["base"]
    assert request(base + "/healthz", token=None)[:2] == (200, {"status": "ok"})
    assert request(base + "/readyz", token=None)[:2] == (200, {"status": "ready"})
    status, info, _ = request(base + "/v1/info")
    assert status == 200 and info["defended"] and info["purge"] and info["ready"]
    assert [d["name"] for d in info["detectors"]] == ["psim", "lmsanitator"]
    assert info["detectors"][1]["threshold"] == pytest.approx(0.8)
    fingerprint = json.loads((Path(models["victim"]) / "run.json").read_text())["backbone"]["fingerprint"]
    assert info["victim"]["backbone_fingerprint"] == fingerprint
    assert {d["backbone_fingerprint"] for d in info["detectors"]} == {fingerprint}
    assert info["limits"]["max_texts"] == 8 and info["versions"]["torch"]
    no_leak(info)  # folder names only, no machine paths

    status, body, headers = classify(base, ["the movie was good", f"the {TRIGGER} movie was good"])
    assert status == 200 and headers["x-request-id"] == body["request_id"]
    clean, triggered = body["results"]
    assert clean["rejected"] is False and clean["label"] in (0, 1) and clean["reasons"] == []
    assert (
        triggered["rejected"] is True and triggered["label"] is None and "lmsanitator" in triggered["reasons"]
    )
    assert set(triggered["scores"]) == {"psim", "lmsanitator"} and "purged_text" not in triggered

    status, schema, _ = request(base + "/openapi.json", token=None)
    assert status == 200 and "/v1/classify" in schema["paths"] and "/metrics" in schema["paths"]
    assert request(base + "/docs", token=None)[0] == 200

    status, text, headers = request(base + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['peftshield_requests_total{path="/v1/classify",code="200"}'] >= 1
    assert values["peftshield_texts_total"] >= 2 and values["peftshield_rejected_texts_total"] >= 1
    assert values['peftshield_rejections_total{detector="lmsanitator"}'] >= 1
    assert values['peftshield_request_latency_seconds_bucket{le="+Inf"}'] >= 1
    assert values["peftshield_batch_texts_count"] >= 1 and values["peftshield_batch_texts_sum"] >= 2


def test_auth_refused_and_accepted(server):
    base = server["base"]
    for token, headers in ((None, None), ("wrong-token-0123456789", None), (None, {"Authorization": TOKEN})):
        status, body, hdrs = request(
            base + "/v1/classify", "POST", {"texts": ["fine"]}, token=token, headers=headers
        )
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert hdrs.get("www-authenticate") == "Bearer"
    assert request(base + "/v1/info", token=None)[0] == 401
    assert request(base + "/metrics", token=None)[0] == 401
    assert classify(base, ["fine film"])[0] == 200
    assert request(base + "/healthz", token=None)[0] == 200  # probes stay open


def test_every_limit(server):
    base = server["base"]
    status, body, _ = classify(base, ["a film"] * 9)
    assert status == 422 and body["error"]["code"] == "too_many_texts" and body["error"]["limit"] == 8
    status, body, _ = classify(base, ["word " * 61])
    assert (
        status == 422 and body["error"]["code"] == "text_too_long" and "texts[0]" in body["error"]["message"]
    )
    status, body, _ = classify(
        base, ["a" * 250] * 9
    )  # over the body limit: refused before the texts are counted
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    # A chunked body with no Content-Length: refused by the streamed count.
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunk = json.dumps({"texts": ["x" * 200] * 30}).encode()
    conn.putrequest("POST", "/v1/classify")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(chunk), 1000):
        part = chunk[start : start + 1000]
        conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "payload_too_large"
    conn.close()
    assert classify(base, ["fine film"])[0] == 200  # the server is unharmed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "body"),
        (b'["a list"]', "body"),
        (b'{"texts": "one string"}', "texts"),
        (b'{"texts": ["ok", 3]}', "texts.1"),
        (b'{"texts": ["ok"], "purge": "yes"}', "purge"),
        (b'{"texts": ["ok"], "extra": 1}', "extra"),
        (b'{"text": ["ok"]}', "texts"),
        (b'{"texts": []}', "empty"),
        (b'{"texts": ["ok", "   "]}', "texts[1] is empty"),
        (b'{"texts": [null]}', "texts.0"),
    ],
)
def test_malformed_bodies_are_422_json_without_internals(server, body, message):
    status, answer, headers = request(server["base"] + "/v1/classify", "POST", body)
    assert status == 422, answer
    assert headers["content-type"] == "application/json"
    assert answer["error"]["code"] == "invalid_request" and message in answer["error"]["message"]
    no_leak(answer)


def test_unknown_path_and_method_are_json(server):
    status, body, _ = request(server["base"] + "/v2/nothing")
    assert status == 404 and body["error"]["code"] == "http_404"
    status, body, _ = request(server["base"] + "/v1/classify", "GET")
    assert status == 405 and body["error"]["code"] == "http_405"


def test_concurrent_requests_equal_guard_predict(server, guard):
    base = server["base"]
    batches = [texts_mix(1 + i % 6, seed=100 + i) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: classify(base, t), batches))
    assert all(a[0] == 200 for a in answers)
    served = [r for a in answers for r in a[1]["results"]]
    flat = [t for batch in batches for t in batch]
    expected = [d.to_dict() for d in guard.predict(flat)]
    assert any(e["rejected"] for e in expected) and not all(e["rejected"] for e in expected)
    for got, want in zip(served, expected, strict=True):
        assert (got["label"], got["rejected"], got["reasons"]) == (
            want["label"],
            want["rejected"],
            want["reasons"],
        )
        for name, score in want["scores"].items():
            assert got["scores"][name] == pytest.approx(score, abs=1e-4)


def test_purge_removes_the_trigger_and_labels_the_purged_text(server, guard):
    texts = [f"the {TRIGGER} film was good", "the film was good"]
    status, body, _ = classify(server["base"], texts, purge=True)
    assert status == 200
    flagged, clean = body["results"]
    assert flagged["rejected"] and flagged["purge_removed"] == [TRIGGER] and flagged["purge_cleared"]
    assert flagged["purged_text"] == "the film was good"
    assert flagged["purged_label"] == int(guard.victim.predict_logits(["the film was good"]).argmax(-1)[0])
    assert clean["purged_text"] == texts[1] and clean["purged_label"] == clean["label"]


def test_audit_lines_are_on_disk_when_the_answer_arrives(server):
    texts = [f"a {TRIGGER} plot", "a calm plot", f"{TRIGGER} again here"]
    status, body, _ = classify(server["base"], texts)
    assert status == 200
    lines = [json.loads(line) for line in server["audit"].read_text().splitlines()]
    mine = [line for line in lines if line["request_id"] == body["request_id"]]
    rejected = [i for i, r in enumerate(body["results"]) if r["rejected"]]
    assert rejected == [0, 2] and [line["index"] for line in mine] == rejected
    for line in mine:
        assert line["sha256"] == hashlib.sha256(texts[line["index"]].encode()).hexdigest()
        assert (
            "text" not in line
            and "lmsanitator" in line["reasons"]
            and set(line["scores"]) == {"psim", "lmsanitator"}
        )


def test_client(server):
    client = GuardClient(server["base"], token=TOKEN, timeout=30)
    assert client.healthy() and client.ready()
    results = client.classify(["the movie was good", f"the {TRIGGER} movie"])
    assert [r["rejected"] for r in results] == [False, True]
    assert client.info()["detectors"][0]["name"] == "psim"
    assert "peftshield_texts_total" in client.metrics()
    with pytest.raises(GuardServiceError) as err:
        GuardClient(server["base"], token="wrong-token-0123456789", retries=5, backoff=5).classify(["x y"])
    assert err.value.status == 401 and err.value.code == "unauthorized"  # no retry: at once
    with pytest.raises(GuardServiceError, match="too_many_texts"):
        client.classify(["a"] * 9)


# ------------------------------------------------------------------------ in-process servers


def _service(models, guard, **settings):
    from peftshield.serve.audit import AuditLog
    from peftshield.serve.service import GuardService

    audit_path = settings.pop("audit_path", None)
    s = ServeSettings(**settings)
    audit = AuditLog(audit_path, log_texts=s.log_texts) if audit_path else None
    return GuardService(
        guard,
        guard.victim,
        s,
        victim_ref=models["victim"],
        detector_refs=[models["psim"], models["monitor"]],
        audit=audit,
    )


def test_readiness_waits_for_warm_up_and_healthz_answers_during_a_batch(models, guard, tmp_path):
    from peftshield.serve.app import create_app

    service = _service(models, guard, audit_path=str(tmp_path / "a.jsonl"), log_texts=True)
    warm, batch_started, release = threading.Event(), threading.Event(), threading.Event()
    real_warm_up, real_classify = service.warm_up, service.classify

    def slow_warm_up():
        warm.wait(30)
        real_warm_up()

    def slow_classify(jobs):
        batch_started.set()
        release.wait(30)
        return real_classify(jobs)

    service.warm_up, service.classify = slow_warm_up, slow_classify
    with ThreadServer(create_app(service), wait_ready=False) as srv:
        assert request(srv.base + "/healthz", token=None)[0] == 200
        status, body, _ = request(srv.base + "/readyz", token=None)
        assert status == 503 and body["error"]["code"] == "not_ready"
        status, body, headers = classify(srv.base, ["fine"], token=None)
        assert status == 503 and body["error"]["code"] == "not_ready" and headers["retry-after"] == "1"
        # The client retries 503 with backoff and gets its answer once the warm-up is done.
        client = GuardClient(srv.base, retries=20, backoff=0.05, max_backoff=0.1)
        threading.Timer(0.3, warm.set).start()
        release.set()
        assert client.classify(["fine film"])[0]["rejected"] is False
        assert request(srv.base + "/readyz", token=None)[0] == 200
        # A batch that blocks the model thread does not block the event loop.
        release.clear()
        batch_started.clear()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(classify, srv.base, [f"the {TRIGGER} film"], False, None)
            assert batch_started.wait(30)
            started = time.perf_counter()
            assert request(srv.base + "/healthz", token=None)[0] == 200
            assert time.perf_counter() - started < 2.0 and not pending.done()
            release.set()
            status, body, _ = pending.result(30)
        assert status == 200 and body["results"][0]["rejected"]
    line = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[-1])
    assert line["text"] == f"the {TRIGGER} film"  # --log-texts keeps the raw text


def test_request_timeout_is_504_and_overload_is_503(models, guard):
    from peftshield.serve.app import create_app

    service = _service(models, guard, request_timeout_s=1.0, max_queue_texts=8, max_texts=8)
    release = threading.Event()
    real = service.classify

    def slow(jobs):
        release.wait(30)
        return real(jobs)

    service.classify = slow
    with ThreadServer(create_app(service)) as srv:
        status, body, _ = classify(srv.base, ["a slow one"], token=None)
        assert status == 504 and body["error"]["code"] == "timeout"
        # While the model thread is stuck, fill the queue: the next request is refused with 503.
        with ThreadPoolExecutor(2) as pool:
            waiting = pool.submit(classify, srv.base, ["x"] * 8, False, None)
            time.sleep(0.1)
            status, body, headers = classify(srv.base, ["one more"], token=None)
            assert status == 503 and body["error"]["code"] == "overloaded" and headers["retry-after"] == "1"
            release.set()
            assert waiting.result(30)[0] == 200  # queued, then answered in time
        assert classify(srv.base, ["fine again"], token=None)[0] == 200


def test_purge_without_the_monitor_is_422_and_undefended_serves_the_victim(models, guard):
    from peftshield.serve.app import create_app
    from peftshield.serve.service import GuardService

    undefended = GuardService.load(models["victim"], [], ServeSettings(), device="cpu")
    texts = texts_mix(6, seed=9)
    with ThreadServer(create_app(undefended)) as srv:
        status, body, _ = classify(srv.base, texts, token=None)
        assert status == 200 and not any(r["rejected"] for r in body["results"])
        assert [r["label"] for r in body["results"]] == guard.victim.predict_logits(texts).argmax(-1).tolist()
        status, body, _ = classify(srv.base, texts, purge=True, token=None)
        assert status == 422 and body["error"]["code"] == "purge_unavailable"
        assert request(srv.base + "/v1/info", token=None)[1]["defended"] is False


def test_batcher_gathers_waiting_requests_into_one_batch():
    from peftshield.serve.batcher import MicroBatcher

    seen: list[list[int]] = []
    gate = threading.Event()

    def work(jobs):
        gate.wait(10)
        seen.append([len(j.texts) for j in jobs])
        return [[t.upper() for t in j.texts] for j in jobs]

    async def scenario():
        batcher = MicroBatcher(work, max_batch=10, max_wait_ms=20, max_queue_texts=100)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(["a"], False, "r0"))
        await asyncio.sleep(0.1)  # the first batch is running and blocked
        rest = [asyncio.create_task(batcher.submit(["b"] * 3, False, f"r{i}")) for i in range(1, 5)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results[0] == ["A"] and results[1] == ["B"] * 3
    # The four waiting requests (12 texts) fill a batch of 9 (max 10) and the rest runs next.
    assert seen == [[1], [3, 3, 3], [3]]


def test_sigterm_finishes_requests_in_flight_then_exits_0(models, tmp_path):
    audit = tmp_path / "audit.jsonl"
    args = [
        "--victim",
        models["victim"],
        "--detector",
        models["monitor"],
        "--audit-log",
        str(audit),
        "--max-wait-ms",
        "3000",
    ]
    proc, base = start_server(args, env_token=None)
    try:
        texts = [f"a {TRIGGER} story", "a calm story"]
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(classify, base, texts, False, None) for _ in range(4)]
            time.sleep(1.5)  # the requests reach the server and wait in the batcher (max wait 3 s)
            assert not any(p.done() for p in pending)
            proc.send_signal(signal.SIGTERM)
            answers = [p.result(60) for p in pending]
        code = proc.wait(60)
    finally:
        if proc.poll() is None:  # a failed assertion must not leave the server behind
            proc.kill()
            proc.wait()
    assert code == 0
    assert [a[0] for a in answers] == [200] * 4
    assert all([r["rejected"] for r in a[1]["results"]] == [True, False] for a in answers)
    ids = {json.loads(line)["request_id"] for line in audit.read_text().splitlines()}
    assert ids == {a[1]["request_id"] for a in answers}
    assert "Traceback" not in proc.stderr.read()


def test_cli_refuses_bad_setups_before_loading(models, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PEFTSHIELD_TOKEN", raising=False)
    short = tmp_path / "short"
    short.write_text("abc\n")
    base = ["serve", "--victim", models["victim"], "--detector", models["monitor"], "--no-audit-log"]
    cases = [
        ([*base, "--host", "0.0.0.0"], "without a token"),
        ([*base, "--token-file", str(short)], "shorter than 16"),
        ([*base, "--token-file", str(tmp_path / "missing")], "token file not found"),
        ([*base, "--undefended"], "--undefended"),
        ([*base, "--max-texts", "0"], "max_texts"),
        ([*base, "--max-wait-ms", "nan"], "max_wait_ms"),
        (
            ["serve", "--victim", str(tmp_path), "--detector", models["monitor"], "--no-audit-log"],
            "not a victim",
        ),
        ([*base[:-1], "--audit-log", str(tmp_path / "no" / "a.jsonl")], "audit log folder not found"),
    ]
    for args, message in cases:
        capsys.readouterr()
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("peftshield: error:") and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_auth_and_settings_helpers(tmp_path, monkeypatch):
    from peftshield.errors import PeftshieldError
    from peftshield.serve.auth import is_loopback, read_token, token_matches

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and token_matches(f"bearer {TOKEN}", TOKEN)
    assert not token_matches(f"Basic {TOKEN}", TOKEN) and not token_matches(TOKEN[:-1], TOKEN)
    assert not token_matches(None, TOKEN)
    monkeypatch.setenv("PEFTSHIELD_TOKEN", TOKEN)
    assert read_token() == TOKEN
    path = tmp_path / "token"
    path.write_text("file-token-0123456789abcdef\nignored\n")
    assert read_token(str(path)) == "file-token-0123456789abcdef"  # the file wins over the variable
    monkeypatch.delenv("PEFTSHIELD_TOKEN")
    assert read_token() is None
    with pytest.raises(PeftshieldError, match="max_queue_texts"):
        ServeSettings(max_texts=10, max_queue_texts=5)
    with pytest.raises(PeftshieldError, match="request_timeout_s"):
        ServeSettings(request_timeout_s=0)


def test_audit_log_fsyncs_each_batch_after_writing(tmp_path, monkeypatch):
    from peftshield.serve.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl")
    on_disk_at_fsync = []
    real_fsync = os.fsync

    def spy(fd):
        real_fsync(fd)
        on_disk_at_fsync.append(len((tmp_path / "audit.jsonl").read_text().splitlines()))

    monkeypatch.setattr(os, "fsync", spy)
    decision = {"reasons": ["psim"], "scores": {"psim": 0.9}}
    assert log.write([log.entry("r1", 0, "t one", decision), log.entry("r1", 2, "t two", decision)]) == 2
    assert log.write([]) == 0  # nothing to write: no fsync
    assert log.write([log.entry("r2", 0, "t three", decision)]) == 1
    log.close()
    assert on_disk_at_fsync == [2, 3]
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 2, 0] and "text" not in lines[0]
    assert lines[1]["sha256"] == hashlib.sha256(b"t two").hexdigest()


def test_metrics_text_format():
    from peftshield.serve.metrics import ServeMetrics

    m = ServeMetrics()
    m.requests.inc(path="/v1/classify", code="200")
    m.rejections.inc(2, detector='we"ird')
    for value in (0.004, 0.2, 50.0):
        m.latency.observe(value)
    text = m.render()
    assert 'peftshield_rejections_total{detector="we\\"ird"} 2' in text
    assert 'peftshield_request_latency_seconds_bucket{le="0.005"} 1' in text
    assert 'peftshield_request_latency_seconds_bucket{le="0.25"} 2' in text
    assert 'peftshield_request_latency_seconds_bucket{le="+Inf"} 3' in text
    assert "peftshield_request_latency_seconds_count 3" in text
    assert "peftshield_texts_total 0" in text and text.endswith("\n")
    with pytest.raises(ValueError):
        m.texts.inc(-1)

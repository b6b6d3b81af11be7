"""The one atomic-write helper (peftshield.utils.io): complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import stat

import pytest

from peftshield.utils import io


def test_atomic_file_replaces_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "a.json"
    io.write_json(path, {"x": 1})
    with pytest.raises(RuntimeError), io.atomic_file(path) as handle:
        handle.write("{half")
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"x": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary left


def test_files_get_the_ordinary_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "r.md", "hello")
        io.write_jsonl(tmp_path / "c.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    for name in ("r.md", "c.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_write_jsonl_counts_and_round_trips(tmp_path):
    rows = [{"text": "é", "label": 1}, {"text": "b", "label": 0}]
    assert io.write_jsonl(tmp_path / "c.jsonl", iter(rows)) == 2
    lines = (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_write_texts_is_all_or_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "a.md", tmp_path / "b.html"
    a.write_text("old a")
    b.write_text("old b")

    def rename_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", rename_fails)
    with pytest.raises(OSError, match="No space"):
        io.write_texts({a: "new a", b: "new b"})
    monkeypatch.undo()
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.html"]
    io.write_texts({a: "new a", b: "new b"})
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


def test_strict_from_dict_rejects_unknown_and_missing_keys_with_a_suggestion():
    from dataclasses import dataclass

    from peftshield.errors import PeftshieldError
    from peftshield.utils.strict import from_dict

    @dataclass
    class Config:
        lr: float
        epochs: int = 3

    assert from_dict(Config, {"lr": 0.1, "method": "x"}, "toy config", ignore=("method",)) == Config(0.1)
    with pytest.raises(
        PeftshieldError,
        match=r"unknown toy config key\(s\) epoch \(did you mean 'epochs'\?\); known: epochs, lr",
    ):
        from_dict(Config, {"lr": 0.1, "epoch": 2}, "toy config")
    with pytest.raises(PeftshieldError, match=r"toy config: missing key\(s\) lr"):
        from_dict(Config, {}, "toy config")
    with pytest.raises(PeftshieldError, match="toy config must be a JSON object, got list"):
        from_dict(Config, [], "toy config")


def test_file_lock_excludes_another_process_and_dies_with_its_holder(tmp_path):
    """The grid's one locking primitive (filelock): held elsewhere -> not acquired; holder killed -> free."""
    import signal
    import subprocess
    import sys
    import time

    from peftshield.grid.cache import file_lock

    path = tmp_path / "locks" / "x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from peftshield.grid.cache import file_lock\n"
            "with file_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with file_lock(path, blocking=False) as acquired:
            assert acquired is False
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:
        with file_lock(path, blocking=False) as acquired:
            if acquired or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert acquired is True

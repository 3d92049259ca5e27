"""lcr_sdk.fileio: atomic writes leave nothing behind when a stop arrives at any moment."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from lcr_sdk import fileio


class Stopped(Exception):
    pass


def test_a_stop_while_the_temporary_file_is_made_leaves_no_file(tmp_path, monkeypatch):
    """SIGTERM arriving just after the temporary file is created: its name was recorded before it was made, so the
    write is abandoned, the old file is kept and no temporary file is left."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    real_create = fileio._create_exclusive

    def create_then_stop(name):
        real_create(name)
        os.kill(os.getpid(), signal.SIGTERM)  # the stop lands right here, the file already on disk

    def on_term(signum, frame):
        raise Stopped()

    old = signal.signal(signal.SIGTERM, on_term)
    monkeypatch.setattr(fileio, "_create_exclusive", create_then_stop)
    try:
        with pytest.raises(Stopped), fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.skipif(
    "Umask:" not in (Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""),
    reason="the umask can be read without changing it only through /proc/self/status",
)
def test_writing_a_file_never_changes_the_process_umask(tmp_path, monkeypatch):
    """Setting the umask to read it opens an instant in which another thread's new files ignore it (world-writable
    under umask 0)."""
    real, calls = os.umask, []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    fileio.atomic_write_text(tmp_path / "a.txt", "x")
    assert calls == []
    mask = real(0o022)
    real(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask

"""lcr_sdk.fileio: atomic writes leave nothing behind when a stop arrives at any moment."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

from lcr_sdk import fileio


class Stopped(Exception):
    pass


def test_a_stop_while_the_temporary_file_is_made_leaves_no_file(tmp_path, monkeypatch):
    """SIGTERM arriving just after the temporary file exists (before its name is known to the cleanup) is handled
    once the name is recorded: the write is abandoned, the old file is kept and no temporary file is left."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_stop(*args, **kwargs):
        made = real_mkstemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the stop lands right here, the file already on disk
        return made

    def on_term(signum, frame):
        raise Stopped()

    old = signal.signal(signal.SIGTERM, on_term)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_stop)
    try:
        with pytest.raises(Stopped), fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]

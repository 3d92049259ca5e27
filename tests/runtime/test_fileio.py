"""lcr_sdk.fileio: atomic writes leave nothing behind when a stop arrives at any moment."""

from __future__ import annotations

import os
import signal

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

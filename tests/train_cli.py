"""Test helpers (not a test module), importable from every test folder: `lcr-sdk train` at a tiny budget through
the real CLI, and the one error line a failed command prints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from lcr_sdk.cli import app

runner = CliRunner()
TINY = ["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--moco-k", "16", "--num-parts", "4"]
QUIET = ["--workers", "0", "--no-progress", "--device", "cpu"]


def error_line(r: Any, code: int = 1) -> str:
    """The single 'Error: ...' line of a failed command (asserting the exit code and no traceback)."""
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, r.output
    return lines[0]


def train(data: Path, out: Path, *extra: str) -> Any:
    """``lcr-sdk train DATA --out OUT`` for one epoch at the tiny budget, on the CPU; ``extra`` options last."""
    return runner.invoke(app, ["train", str(data), "--out", str(out), *TINY, *QUIET, "--epochs", "1", *extra])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

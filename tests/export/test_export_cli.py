"""`lcr-sdk export` / `lcr-sdk verify` through typer's CliRunner: success paths and every kind of bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app

pytestmark = pytest.mark.torch
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _leftovers(folder: Path) -> list[str]:
    """Anything a failed export left: model files, sidecars, staging folders, temp files."""
    return sorted(
        p.name for p in folder.iterdir() if p.suffix in (".onnx", ".json", ".engine", ".tmp") or p.name.startswith(".")
    )


@pytest.mark.parametrize("cmd", ["export", "verify"])
def test_help_has_an_example(cmd):
    r = _run(cmd, "--help")
    assert r.exit_code == 0 and f"Example: lcr-sdk {cmd}" in " ".join(r.output.split())


@pytest.mark.slow
def test_export_verifies_and_verify_passes(lcr_checkpoint, synth_root, tmp_path):
    out = tmp_path / "lcr.onnx"
    r = _run("export", lcr_checkpoint, "--precision", "fp32", "--verify-images", synth_root / "test", "--out", out)
    assert r.exit_code == 0, r.output
    assert "PASSED" in r.output and out.is_file() and (tmp_path / "lcr.onnx.json").is_file()
    assert _leftovers(tmp_path) == ["lcr.onnx", "lcr.onnx.json"]
    r = _run("verify", out, "--checkpoint", lcr_checkpoint, "--images", synth_root)
    assert r.exit_code == 0, r.output
    assert "min cosine" not in r.output and "embedding cosine" in r.output and "PASSED" in r.output


def test_export_without_images_skips_verification_with_a_note(lcr_checkpoint, tmp_path):
    r = _run("export", lcr_checkpoint, "--out", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    assert "verification skipped" in r.output and (tmp_path / "m.onnx").is_file()


def test_verify_exits_1_against_another_checkpoint(lcr_checkpoint, synth_root, tmp_path):
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    other = random_init_checkpoint(tmp_path / "other.pt", num_parts=8, seed=1)
    r = _run("export", other, "--out", tmp_path / "other.onnx", "--no-verify")
    assert r.exit_code == 0, r.output
    r = _run("verify", tmp_path / "other.onnx", "-c", lcr_checkpoint, "-i", synth_root / "test", "--json")
    # refused for what it is (the manifest records the checkpoint's hash), not reported as a numeric failure
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert "was exported from checkpoint" in r.output and f"--checkpoint {lcr_checkpoint} is" in r.output
    assert "verify against the checkpoint the model was exported from" in r.output


def test_int8_with_few_calibration_images_warns(lcr_checkpoint, synth_root, tmp_path):
    r = _run(
        "export",
        lcr_checkpoint,
        "-p",
        "int8",
        "--calib",
        synth_root / "train",
        "--no-verify",
        "--out",
        tmp_path / "q.onnx",
    )
    assert r.exit_code == 0, r.output
    assert "warning: int8 calibration on only 24 images" in r.output and (tmp_path / "q.onnx").is_file()


def _bad_checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    import torch

    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))  # seeded: the same bytes every run
    foreign = tmp / "foreign.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    newer = tmp / "newer.pt"
    torch.save({"format": "lcr-sdk-checkpoint", "format_version": 99, "config": {}, "model": {}}, newer)
    return {
        "missing": (tmp / "nope.pt", "does not exist"),
        "corrupt": (corrupt, "not a readable PyTorch checkpoint"),
        "foreign": (foreign, "not an lcr-sdk checkpoint"),
        "newer": (newer, "newer than this lcr-sdk"),
    }


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign", "newer"])
def test_bad_checkpoint_is_one_line_and_writes_nothing(kind, tmp_path):
    ckpt, message = _bad_checkpoints(tmp_path)[kind]
    out = tmp_path / "out"
    out.mkdir()
    r = _run("export", ckpt, "--out", out / "m.onnx")
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1 and message in r.output
    assert _leftovers(out) == []


def test_unwritable_output_is_one_line(lcr_checkpoint, tmp_path):
    r = _run("export", lcr_checkpoint, "--out", tmp_path / "no-such-dir" / "m.onnx")
    assert r.exit_code == 1 and "output folder" in r.output and "does not exist" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run("export", lcr_checkpoint, "--out", blocker / "m.onnx")
    assert r.exit_code == 1 and r.output.startswith("Error: ")
    if os.geteuid() != 0:  # root writes anywhere, so a read-only folder stops only other users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        r = _run("export", lcr_checkpoint, "--out", ro / "m.onnx")
        assert r.exit_code == 1 and "cannot write to output folder" in r.output and not list(ro.iterdir())


def test_wrong_suffix_and_missing_calibration_are_one_line(lcr_checkpoint, tmp_path):
    r = _run("export", lcr_checkpoint, "--out", tmp_path / "m.bin")
    assert r.exit_code == 1 and "must end in .onnx" in r.output
    r = _run("export", lcr_checkpoint, "-p", "int8", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 1 and "--calib" in r.output
    r = _run("export", lcr_checkpoint, "-p", "fp8", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 1 and "fp32, fp16, int8" in r.output
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("content", ["empty", "unreadable", "missing", "a file"])
def test_bad_calibration_folder_is_one_line_and_writes_nothing(content, lcr_checkpoint, tmp_path):
    calib = tmp_path / "calib"
    if content == "a file":
        calib.write_bytes(b"\x89PNG")
    elif content != "missing":
        calib.mkdir()
    if content == "unreadable":
        for i in range(3):
            (calib / f"{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    out.mkdir()
    r = _run("export", lcr_checkpoint, "-p", "int8", "--calib", calib, "--out", out / "m.onnx")
    assert r.exit_code == 1 and r.output.startswith("Error: ")
    expected = {
        "empty": "holds no image files",
        "unreadable": "could be read",
        "missing": "does not exist",
        "a file": f"calibration folder {calib} is a file; pass a folder of images",
    }[content]
    assert expected in r.output
    assert _leftovers(out) == []


@pytest.mark.slow
def test_failed_verification_installs_nothing(lcr_checkpoint, synth_root, tmp_path):
    """A model that misses its threshold is not written (here: int8 of a random-init net at 64 px, rank-1 < 0.95)."""
    out = tmp_path / "out"
    out.mkdir()
    calib = Path(shutil.copytree(synth_root / "train", tmp_path / "calib"))
    (calib / "broken.jpg").write_bytes(b"")  # left out: the error says so, as the numbers it gives depend on it
    r = _run(
        "export",
        lcr_checkpoint,
        "-p",
        "int8",
        "--calib",
        calib,
        "--calib-method",
        "minmax",
        "--out",
        out / "q.onnx",
    )
    assert r.exit_code == 1 and "FAILED" in r.output and "it was not written" in r.output
    assert "calibrate on more real images" in r.output and "--no-verify" in r.output  # a ResNet: calibration helps
    assert (
        "It was calibrated on only 24 images (at least 300 recommended; 1 calibration file(s) were unreadable"
        in r.output
    )
    assert _leftovers(out) == []

"""The CLI contract every command keeps: documented exit codes, one-line errors, never a traceback.

Exit codes: 0 ok, 1 user error (one line "Error: ..."), 2 usage error, 130 interrupted (Ctrl+C or SIGTERM), 141
the reader of stdout went away.
Each case runs the real app (typer's CliRunner, or a real process where a signal is needed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app

runner = CliRunner()

# Every command of the CLI with the positional arguments it needs; paths that do not exist.
MISSING = "/nonexistent/lcr-sdk-test"
COMMANDS = {
    "embed": ["embed", f"{MISSING}/m.onnx", f"{MISSING}/a.jpg"],
    "attention": ["attention", f"{MISSING}/m.onnx", f"{MISSING}/a.jpg"],
    "bench": ["bench", f"{MISSING}/m.onnx"],
    "info": ["info", f"{MISSING}/m.onnx"],
    "export": ["export", f"{MISSING}/c.pt"],
    "verify": ["verify", f"{MISSING}/m.onnx", "--checkpoint", f"{MISSING}/c.pt", "--images", MISSING],
    "train": ["train", MISSING, "--out", f"{MISSING}/run"],
    "eval": ["eval", f"{MISSING}/c.pt", MISSING],
    "gallery build": ["gallery", "build", f"{MISSING}/m.onnx", MISSING, "--out", f"{MISSING}/g"],
    "gallery search": ["gallery", "search", f"{MISSING}/g", f"{MISSING}/m.onnx", f"{MISSING}/a.jpg"],
}


def _run(args: list[str]):
    return runner.invoke(app, args)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_missing_input_is_one_line_and_exit_1(name):
    r = _run(COMMANDS[name])
    assert r.exit_code == 1, (name, r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, r.output
    assert "nonexistent" in lines[0]  # says what was given


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_of_every_command(name):
    r = _run([*COMMANDS[name][: 2 if name.startswith("gallery") else 1], "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and "Example" in r.output, r.output


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["embed"],  # missing arguments
        ["embed", "m.onnx", "a.jpg", "--no-such-option"],
        ["gallery", "no-such-subcommand"],
        ["bench", "m.onnx", "--iters", "many"],  # not an int
    ],
    ids=["unknown command", "missing argument", "unknown option", "unknown subcommand", "option type"],
)
def test_usage_errors_exit_2(args):
    r = _run(args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output


def test_version_and_root_help():
    from lcr_sdk import __version__

    r = _run(["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"lcr-sdk {__version__}"
    r = _run(["--help"])
    assert r.exit_code == 0 and all(c in r.output for c in ("train", "export", "gallery", "embed", "quickstart"))


def test_debug_shows_the_traceback_instead():
    r = _run(["--debug", *COMMANDS["info"]])
    assert r.exit_code != 0 and r.exception is not None and type(r.exception).__name__ == "ModelError"


def _ctrl_c_reaches_python() -> None:
    """In the child before exec: SIGINT to its default, so that Python turns Ctrl+C into KeyboardInterrupt even
    when these tests run under a launcher that ignores SIGINT (a shell's background job without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_exits_130_without_traceback_and_leaves_no_partial_files(tmp_path, sig):
    """A long command stopped by Ctrl+C or a service stop: exit 130, one line, only complete files on disk."""
    out = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "lcr_sdk.cli",
        "data",
        "synth",
        str(out),
        "--classes",
        "4",
        "--train-per-class",
        "5000",
        "--image-size",
        "64",
    ]  # several minutes of work: it is interrupted long before the end
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_reaches_python
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(tmp_path.rglob("train/*/*.png")):
            time.sleep(0.2)  # wait until it is really writing (into a staging folder beside OUT)
        assert any(tmp_path.rglob("train/*/*.png")), "the command never started writing"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Interrupted" in err
    # the set was being built in a staging folder inside OUT: stopped, nothing of it is left
    assert list(out.iterdir()) == [], list(out.rglob("*"))[:5]


@pytest.mark.torch
def test_full_disk_is_one_line_naming_path_and_free_space(tmp_path, lcr_checkpoint, synth_root):
    """A write that meets a full file system: exit 1, one line with the path and the space left, old file kept."""
    from model_helpers import export_onnx

    model = export_onnx(lcr_checkpoint, tmp_path / "lcr.onnx")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root and a kernel that allows it")
    try:
        out = mnt / "emb.npy"
        out.write_bytes(b"old embeddings")
        filler = mnt / "filler"
        with open(
            filler, "wb", buffering=0
        ) as f:  # fill the disk, leaving less than the 16 x 512 floats embed will write
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        images = [str(p) for p in sorted((synth_root / "test").glob("*/*.png"))]
        r = _run(["embed", str(model), *images, "--out", str(out)])
        assert r.exit_code == 1, r.output
        lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
        assert len(lines) == 1 and str(out) in lines[0] and "free" in lines[0], r.output
        assert out.read_bytes() == b"old embeddings"  # the old file is kept
        assert sorted(p.name for p in mnt.iterdir()) == ["emb.npy", "filler"]  # no temporary file left
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # lazy: never leave a mount behind


def test_module_entry_point_matches_the_console_script(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "lcr_sdk.cli", "info", str(Path(MISSING) / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["export", "--help"], ["data", "synth", "--help"], ["gallery", "build", "--help"]],
    ids=["root help", "version", "command help", "group command help", "gallery command help"],
)
def test_reader_closing_stdout_ends_any_command_quietly(args):
    """`lcr-sdk ... | head` where head has gone before the first line: no "Error: Broken pipe", no traceback, exit 141
    (128 + SIGPIPE), whichever command printed and at whichever stage of the CLI."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lcr_sdk.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # the reader leaves before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.torch
@pytest.mark.parametrize(
    "args",
    [["export", "{ckpt}", "--out", "{out}/m.onnx"], ["eval", "{ckpt}", "{out}"], ["info", "{ckpt}"]],
    ids=["export", "eval", "info"],
)
def test_library_warnings_never_precede_the_error_line(tmp_path, args):
    """A corrupt checkpoint whose first byte is 0x80 (a pickle protocol marker) makes torch warn about the protocol
    while it fails to load it: the user still sees exactly one line, ``Error: ...``, and nothing before it."""
    rng = np.random.default_rng(7)
    ckpt = tmp_path / "corrupt.pt"
    ckpt.write_bytes(bytes([0x80, 0x5F]) + rng.bytes(1998))  # protocol 95: torch warns before refusing the file
    argv = [a.format(ckpt=ckpt, out=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "lcr_sdk.cli", *argv], capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "not a readable PyTorch checkpoint" in r.stderr and r.stdout == ""


@pytest.mark.torch
def test_a_library_warning_is_one_line_without_source_code(lcr_checkpoint, synth_root, tmp_path):
    """A warning from the SDK (here: an unreadable image skipped by eval) reaches the user as ``warning: ...`` on one
    line, not with the file, line and source line of the SDK's code that raised it; --debug keeps Python's format."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    bad = next((data / "test").glob("*/*.png"))
    bad.write_bytes(b"not a png")
    cmd = [sys.executable, "-m", "lcr_sdk.cli", "eval", str(lcr_checkpoint), str(data), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # a real process: pytest records warnings
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "unreadable" in ln]
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: 1 unreadable image(s) in {data / 'test'} skipped: {bad} ("
    ), r.stderr
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr
    r = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "UserWarning: 1 unreadable image(s)" in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "", "FALSE"])
def test_debug_variable_set_to_off_keeps_one_line_errors(value):
    r = runner.invoke(app, COMMANDS["info"], env={"LCR_SDK_DEBUG": value})
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE"])
def test_debug_variable_set_to_on_shows_the_traceback(value):
    r = runner.invoke(app, COMMANDS["info"], env={"LCR_SDK_DEBUG": value})
    assert r.exit_code != 0 and type(r.exception).__name__ == "ModelError"


def forged_png(width: int, height: int) -> bytes:
    """A PNG of about 100 bytes whose header declares ``width x height`` pixels (its pixel data is missing)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def onnx_model(lcr_checkpoint, tmp_path_factory) -> Path:
    from model_helpers import export_onnx

    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("onnx") / "lcr.onnx")


@pytest.mark.torch
@pytest.mark.parametrize("command", ["embed", "attention", "gallery search", "gallery build", "verify"])
def test_image_declaring_huge_size_is_one_line_in_every_command(tmp_path, onnx_model, lcr_checkpoint, command):
    """A 100-byte PNG whose header declares 50000 x 50000 pixels is refused from its header, never decoded."""
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    bomb = folder / "bomb.png"
    bomb.write_bytes(forged_png(50000, 50000))
    gallery = tmp_path / "g"
    args = {
        "embed": ["embed", str(onnx_model), str(bomb)],
        "attention": ["attention", str(onnx_model), str(bomb), "--out", str(tmp_path / "att.png")],
        "gallery search": ["gallery", "search", str(gallery), str(onnx_model), str(bomb)],
        "gallery build": ["gallery", "build", str(onnx_model), str(tmp_path / "imgs"), "--out", str(gallery)],
        "verify": ["verify", str(onnx_model), "--checkpoint", str(lcr_checkpoint), "--images", str(tmp_path / "imgs")],
    }[command]
    if command == "gallery search":
        good = tmp_path / "good" / "b"
        good.mkdir(parents=True)
        import cv2

        cv2.imwrite(str(good / "x.png"), np.full((64, 64, 3), 100, np.uint8))
        assert _run(["gallery", "build", str(onnx_model), str(tmp_path / "good"), "--out", str(gallery)]).exit_code == 0
    r = _run(args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "cv2.error" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, r.output
    assert "bomb.png" in lines[0], r.output

"""Bad input for export and the runtime commands: every case a real input (checkpoint, option, output path, a full
disk) and its outcome: exit code 1, one line that names what was given and the fix, and nothing lost (no file
where the model goes, or the old model left as it was)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from model_helpers import export_onnx
from typer.testing import CliRunner

from lcr_sdk.cli import app

pytestmark = pytest.mark.torch
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(r, *words: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert w in r.output, (w, r.output)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def model(lcr_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("onnx") / "lcr.onnx")


@pytest.fixture(scope="module")
def image(synth_root) -> Path:
    return next((synth_root / "test").glob("*/*.png"))


# -- checkpoints that would export a broken model ------------------------------------------------------------------


def _edited_checkpoint(src: Path, dst: Path, key: str, value: float) -> Path:
    import torch

    from lcr_sdk.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], value)
    keep = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "sdk_version")}
    return save_checkpoint(dst, keep)


BROKEN_WEIGHTS = {
    "NaN weights (diverged training)": ("backbone.conv1.weight", float("nan"), "non-finite weights"),
    "infinite weights": ("backbone.layer4.1.conv2.weight", float("inf"), "non-finite weights"),
    "finite weights that make NaN (negative BN variance)": ("backbone.bn1.running_var", -1.0, "outputs NaN or inf"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_WEIGHTS))
def test_checkpoint_that_would_embed_nan_is_refused(case, lcr_checkpoint, tmp_path):
    key, value, message = BROKEN_WEIGHTS[case]
    ckpt = _edited_checkpoint(lcr_checkpoint, tmp_path / "bad.pt", key, value)
    out = tmp_path / "out"
    out.mkdir()
    r = _run("export", ckpt, "--no-verify", "--out", out / "m.onnx")
    _one_line_error(r, message, "--lr")
    assert _files(out) == []


# -- output paths --------------------------------------------------------------------------------------------------


def test_upper_case_suffix_is_written_and_reported_as_given(lcr_checkpoint, tmp_path):
    r = _run("export", lcr_checkpoint, "--no-verify", "--out", tmp_path / "T.ONNX")
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'T.ONNX'} and T.ONNX.json" in r.output
    assert _files(tmp_path) == ["T.ONNX", "T.ONNX.json"]


@pytest.mark.parametrize(
    "where, message",
    [("folder", "is a folder"), ("missing folder", "does not exist"), ("under a file", "is not a folder")],
)
def test_bad_output_path_is_refused_before_the_export(where, message, lcr_checkpoint, tmp_path):
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "afile").write_text("x")
    out = {
        "folder": tmp_path / "folder.onnx",
        "missing folder": tmp_path / "nope" / "m.onnx",
        "under a file": tmp_path / "afile" / "m.onnx",
    }[where]
    r = _run("export", lcr_checkpoint, "--no-verify", "--out", out)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output
    assert message in r.output or "does not exist" in r.output, r.output
    assert _files(tmp_path) == ["afile", "folder.onnx"] and _files(tmp_path / "folder.onnx") == []


# -- options, checked before any slow work ------------------------------------------------------------------------

BAD_OPTIONS = {
    "batch zero": (["--batch", "0,1,2"], "1 <= MIN <= OPT <= MAX"),
    "batch decreasing": (["--batch", "8,4,2"], "1 <= MIN <= OPT <= MAX"),
    "batch not numbers": (["--batch", "a,b,c"], "three integers"),
    "batch two values": (["--batch", "1,2"], "MIN,OPT,MAX"),
    "workspace zero": (["--workspace", "0"], "workspace 0.0 GiB (--workspace)"),
    "workspace nan": (["--workspace", "nan"], "workspace nan GiB (--workspace)"),
    "verify sample one": (["--verify-sample", "1"], "at least 2 images"),
    "calib images zero": (["--calib-images", "0"], "calib_images 0 (--calib-images)"),
    "calibration method": (["--calib-method", "kl"], "calibration method 'kl' (--calib-method)"),
    "image size past the bound": (["--image-size", "100000"], "lower --image-size or the batch's MAX"),
    "batch past the bound": (["--batch", "1,8,100000"], "a batch of 100000 at 64x64"),
    "verify sample past the bound": (["--verify-sample", "100000000"], "--verify-sample 100000000 at 64x64"),
    "precision fp8": (["--precision", "fp8"], "fp32, fp16, int8"),
    "int8 without calib": (["--precision", "int8"], "--calib DIR"),
    "unknown source type": (None, "give a checkpoint (.pt)"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_export_option_is_one_line_and_writes_nothing(case, lcr_checkpoint, tmp_path):
    args, message = BAD_OPTIONS[case]
    source = lcr_checkpoint
    if args is None:
        source, args = tmp_path / "weights.txt", []
        source.write_text("not a model")
    out = tmp_path / "out"
    out.mkdir()
    r = _run("export", source, *args, "--out", out / "m.onnx")
    _one_line_error(r, message)
    assert _files(out) == []


def test_an_export_that_warns_then_fails_prints_its_error_line_alone(lcr_checkpoint, synth_root, tmp_path):
    """An unreadable verification image is skipped with a warning; one readable image is then too few to verify:
    exit 1 and the one Error line, with no warning ahead of it. When the export succeeds, the warning is shown."""
    good = sorted((synth_root / "test").glob("*/*.png"))[:2]
    images = tmp_path / "verify"
    images.mkdir()
    shutil.copy(good[0], images / "a.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    r = _run("export", lcr_checkpoint, "--out", out / "m.onnx", "--verify-images", images)
    _one_line_error(r, "verification needs at least 2 images")
    assert _files(out) == []
    shutil.copy(good[1], images / "b.png")
    r = _run("export", lcr_checkpoint, "--out", out / "m.onnx", "--verify-images", images)
    assert r.exit_code == 0, r.output
    assert "warning: skipped 1 unreadable verification image(s)" in r.output and "Error" not in r.output, r.output
    assert _files(out) == ["m.onnx", "m.onnx.json"]


def test_engine_build_options_are_checked_before_tensorrt(model, tmp_path):
    """Building an engine from an ONNX checks --workspace before TensorRT is looked for (not installed here)."""
    r = _run("export", model, "--trt", "--workspace", "-1", "--out", tmp_path / "m.engine")
    _one_line_error(r, "workspace -1.0 GiB (--workspace)")
    assert _files(tmp_path) == []


def test_export_onnx_option_is_gone(lcr_checkpoint, tmp_path):
    """The ONNX is always written; there is no --onnx switch that pretends otherwise."""
    r = _run("export", lcr_checkpoint, "--onnx", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 2 and "--onnx" in r.output and _files(tmp_path) == []


def test_bad_calibration_method_fails_before_calibration(lcr_checkpoint, synth_root, tmp_path):
    r = _run("export", lcr_checkpoint, "-p", "int8", "--calib", synth_root / "train", "--calib-method", "kl", "--out",
             tmp_path / "m.onnx")  # fmt: skip
    _one_line_error(r, "calibration method 'kl'", "minmax")
    assert _files(tmp_path) == []


def test_manifest_option_needs_an_engine(model, tmp_path):
    r = _run("export", model, "--manifest", model)
    _one_line_error(r, "--manifest attaches an ONNX's manifest to an engine", "is not an engine")


# -- a full disk keeps the old model -------------------------------------------------------------------------------


def test_one_full_disk_rule_knows_enospc_edquot_and_sqlite(tmp_path):
    """lcr_sdk.fileio.is_disk_full: a real ENOSPC (/dev/full), a quota error, a real SQLite 'disk is full'; not a
    permission error."""
    import errno
    import sqlite3

    from lcr_sdk.fileio import is_disk_full

    if os.path.exists("/dev/full"):
        with pytest.raises(OSError) as full:
            with open("/dev/full", "wb", buffering=0) as f:
                f.write(b"x")
        assert is_disk_full(full.value)
    assert is_disk_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "q"))
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied", "p"))
    db = sqlite3.connect(tmp_path / "small.db")
    db.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as sql:
        db.execute("CREATE TABLE t (x BLOB)")
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    db.close()
    assert is_disk_full(sql.value)
    assert not is_disk_full(sqlite3.OperationalError("no such table: t"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_during_export_keeps_the_old_model_and_says_where(lcr_checkpoint, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        (mnt / "m.onnx").write_bytes(b"the old model")
        (mnt / "m.onnx.json").write_text('{"old": true}')
        r = _run("export", lcr_checkpoint, "--no-verify", "--out", mnt / "m.onnx")  # ~45 MB into 8 MB
        _one_line_error(r, "no space left on the device of", str(mnt), "MiB free", "was left as it was")
        assert (mnt / "m.onnx").read_bytes() == b"the old model"
        assert (mnt / "m.onnx.json").read_text() == '{"old": true}'
        assert _files(mnt) == ["m.onnx", "m.onnx.json"], "no staging folder or temporary file is left"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- runtime commands: options checked before the model loads -------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "{model}", "{image}", "--out", "{tmp}/nope/e.npy"], "does not exist"),
        (["embed", "{model}", "{image}", "--out", "{tmp}"], "is a folder"),
        (["embed", "{model}", "{image}", "--out", "{tmp}/e.txt"], "a NumPy .npy file; give a name ending in .npy"),
        (["gallery", "info", "{model}"], "is not a saved gallery (a file, not a gallery folder)"),
        (["attention", "{model}", "{image}", "--out", "{tmp}/x.xyz"], ".xyz is not a picture format"),
        (["attention", "{model}", "{image}", "--out", "{tmp}/nope/x.png"], "does not exist"),
        (["attention", "{model}", "{image}", "--part", "-1"], "--part -1"),
        (["bench", "{model}", "--iters", "0"], "--iters 0"),
        (["bench", "{model}", "--batch", "0"], "must be >= 1"),
        (["bench", "{model}", "--batch", "a,b"], "comma-separated list of ints"),
        (["bench", "{model}", "--warmup", "-1"], "--warmup -1"),
        (["info", "{tmp}/none.onnx"], "does not exist"),
        (["verify", "{model}", "-c", "{tmp}/x.pt", "-i", "{tmp}", "--max-images", "-1"], "--max-images -1"),
    ],
)
def test_bad_runtime_option_is_one_line(args, message, model, image, tmp_path):
    full = [a.format(model=model, image=image, tmp=tmp_path) for a in args]
    before = _files(tmp_path)
    _one_line_error(_run(*full), message)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("cmd", ["embed", "attention", "bench", "info"])
def test_json_is_one_document_and_nothing_else(cmd, model, image, tmp_path):
    args = {
        "embed": ["embed", model, image, image],
        "attention": ["attention", model, image, "--out", tmp_path / "o.png"],
        "bench": ["bench", model, "--batch", "1,2", "--iters", "2", "--warmup", "0"],
        "info": ["info", model],
    }[cmd]
    r = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # the whole of stdout is one JSON document
    key = {"embed": "embeddings", "attention": "peaks", "bench": "rows", "info": "arch"}[cmd]
    assert key in doc
    if cmd == "embed":
        assert len(doc["embeddings"]) == 2 and len(doc["embeddings"][0]["vector"]) == doc["dim"] == 512


# -- outputs that are inputs, odd inputs, stdout closed early --------------------------------------------------------


@pytest.mark.parametrize(
    "cmd, target",
    [
        ("attention", "image"),
        ("attention", "hard link to the image"),
        ("embed", "image"),
        ("embed", "second image"),
        ("embed", "model"),
    ],
)
def test_output_naming_an_input_is_refused_and_the_input_kept(cmd, target, model, image, tmp_path):
    img, other = tmp_path / "x.png", tmp_path / "y.png"
    shutil.copy(image, img)
    shutil.copy(image, other)
    m = tmp_path / model.name
    shutil.copy(model, m)
    shutil.copy(model.with_name(model.name + ".json"), m.with_name(m.name + ".json"))
    link = tmp_path / "link.png"
    os.link(img, link)
    out = {"image": img, "hard link to the image": link, "second image": other, "model": m}[target]
    before = out.read_bytes()
    args = ["attention", m, img] if cmd == "attention" else ["embed", m, img, other]
    _one_line_error(_run(*args, "--out", out), f"--out {out} is the input", "choose another name")
    assert out.read_bytes() == before


def test_fifo_as_an_image_is_refused_without_waiting(model, tmp_path):
    """A named pipe given as an image would block the decoder until something writes to it: refused at once, by
    the CLI and by the Embedder (both run in a process of their own with a time limit, so a hang fails the test)."""
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    cli = [sys.executable, "-m", "lcr_sdk.cli", "embed", str(model), str(fifo)]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().startswith(
        f"Error: {fifo} is a FIFO (named pipe), not an image file; give the path of an"
    ), r.stderr
    code = f"from lcr_sdk import Embedder\nEmbedder({str(model)!r}, device='cpu').embed({str(fifo)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"InputError: {fifo} is a FIFO" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("cmd", ["embed", "info"])
def test_reader_closing_stdout_ends_the_command_quietly(cmd, model, image):
    """`lcr-sdk embed ... | head` where head has gone: no "Error: Broken pipe", no traceback, exit 141 (128 +
    SIGPIPE, what a standard tool killed by SIGPIPE returns)."""
    args = {"embed": ["embed", str(model), str(image), str(image)], "info": ["info", str(model)]}[cmd]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lcr_sdk.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # the reader leaves before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_reader_leaving_mid_document_is_141_under_python_unbuffered(model, image):
    """With PYTHONUNBUFFERED=1 stdout is the raw pipe, whose write takes part of a large document and reports no
    error when the reader goes: the CLI writes through a buffer, so a document cut short still exits 141, not 0."""
    args = [sys.executable, "-m", "lcr_sdk.cli", "embed", str(model), *[str(image)] * 12, "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(10)  # the reader takes the start of the document, then leaves
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b"", err


def test_bench_batch_past_its_bound_is_refused(model, tmp_path):
    _one_line_error(_run("bench", model, "--batch", "1,20000"), "--batch '1,20000'", "go up to 256")


def test_embed_refuses_nan_outputs_of_finite_weights(lcr_checkpoint, image, tmp_path):
    """A checkpoint whose weights are finite but make NaN (negative BN variance): embed refuses it and writes no
    .npy and no JSON (export already refuses it)."""
    bad = _edited_checkpoint(lcr_checkpoint, tmp_path / "bad.pt", "backbone.bn1.running_var", -1.0)
    out = tmp_path / "e.npy"
    r = _run("embed", bad, image, "--out", out, "--json", "--device", "cpu")
    _one_line_error(r, "outputs NaN or inf", "embedding", "--lr")
    assert not out.exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only file system (a tmpfs mounted ro): needs root, skipped elsewhere."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_embed_out_on_read_only_media_names_the_users_path(model, image, read_only_folder):
    out = read_only_folder / "e.npy"
    r = _run("embed", model, image, "--out", out)
    _one_line_error(r, f"--out {out}", "read-only file system", "choose another path")
    assert f"{read_only_folder}/." not in r.output  # no hidden temporary name


def test_atomic_write_on_read_only_media_names_the_target(read_only_folder):
    """The library's writer names the file asked for, never its hidden temporary name."""
    from lcr_sdk.fileio import atomic_write_bytes

    with pytest.raises(OSError) as e:
        atomic_write_bytes(read_only_folder / "e.npy", b"x")
    assert e.value.filename == str(read_only_folder / "e.npy")

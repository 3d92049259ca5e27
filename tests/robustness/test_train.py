"""Training and evaluation under bad input: every case is a real command (typer's CliRunner) or library call, and
asserts the outcome a user relies on: exit code 1 with ONE line "Error: ..." that names the option and the fix (or
the error class), no traceback, and nothing lost (no output written for a refused run, an existing checkpoint
byte-for-byte unchanged).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from train_cli import QUIET, TINY, runner
from train_cli import digest as _digest
from train_cli import error_line as _error_line
from train_cli import train as _train

from lcr_sdk.cli import app

pytestmark = pytest.mark.torch


# -- options: refused before anything is read or written ------------------------------------------------------------

BAD_OPTIONS = [
    (["--arch", "vgg"], "--arch 'vgg' is not valid; choose one of resnet18, resnet34, resnet50, resnet101"),
    (["--batch-size", "0"], "--batch-size 0 is not valid; give an integer >= 2"),
    (["--batch-size", "1"], "--batch-size 1 is not valid; give an integer >= 2 (batch norm needs"),
    (["--num-parts", "0"], "--num-parts 0 is not valid; give an integer >= 1"),
    (["--epochs", "0"], "--epochs 0 is not valid; give an integer >= 1"),
    (["--image-size", "16"], "--image-size 16 is not valid; give an integer from 32 to 1024 (every backbone"),
    (["--lr", "nan"], "--lr nan is not valid; give a finite number > 0"),
    (["--lr", "inf"], "--lr inf is not valid; give a finite number > 0"),
    (["--lr", "0"], "--lr 0.0 is not valid; give a finite number > 0"),
    (["--tau", "0"], "--tau 0.0 is not valid; give a finite number > 0 (0.4 is the default)"),
    (["--fit-grad", "all"], "--fit-grad 'all' is not valid; choose one of gfb, backbone"),
    (["--fit-form", "paper"], "--fit-form 'paper' is not valid; choose one of ours, released"),
    (["--grad-log-every", "-1"], "--grad-log-every -1 is not valid; give an integer >= 0"),
    (["--moco-t", "0"], "--moco-t 0.0 is not valid; give a finite number > 0 (MoCo v2 uses 0.2)"),
    (["--moco-m", "1.5"], "--moco-m 1.5 is not valid; give a finite number >= 0 and < 1"),
    (["--moco-k", "0"], "--moco-k 0 is not valid; give an integer >= 1"),
    (["--moco-dim", "0"], "--moco-dim 0 is not valid; give an integer >= 1"),
    (["--nu", "-1"], "--nu -1.0 is not valid; give a finite number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay nan is not valid; give a finite number >= 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs -1.0 is not valid; give a finite number >= 0"),
    (["--cam-sign", "up"], "--cam-sign 'up' is not valid; choose one of loss, score"),
    (["--cam-norm", "l2"], "--cam-norm 'l2' is not valid; choose one of max, none"),
    (["--amp", "fp8"], "--amp 'fp8' is not valid; choose one of bf16, fp16, off"),
    (["--method", "simclr"], "--method 'simclr' is not valid; choose one of lcr, moco"),
    (["--val-fraction", "1"], "--val-fraction 1.0 is not valid; give a finite number >= 0 and < 1"),
    (["--val-fraction", "-0.1"], "--val-fraction -0.1 is not valid; give a finite number >= 0 and < 1"),
    (["--seed", "-1"], "--seed -1 is not valid; give an integer from 0 to 4294967295"),
    (["--on-bad", "ignore"], "--on-bad 'ignore' is not valid; choose one of skip, fail"),
    (["--save-every", "-1"], "--save-every -1 is not valid; give an integer >= 0"),
    (["--device", "tpu"], "--device 'tpu' is not"),
]


@pytest.mark.parametrize("extra, message", BAD_OPTIONS, ids=[" ".join(c[0]) for c in BAD_OPTIONS])
def test_bad_option_is_one_line_naming_it(synth_root, tmp_path, extra, message):
    line = _error_line(_train(synth_root, tmp_path / "run", *extra))
    assert message in line, line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cuda_without_a_gpu_says_to_use_the_cpu(synth_root, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    line = _error_line(_train(synth_root, tmp_path / "run", "--device", "cuda"))
    assert "--device cuda: no CUDA GPU is visible" in line and "use --device cpu" in line
    assert not (tmp_path / "run").exists()


def test_the_default_output_folder_is_named_after_the_method(synth_root, tmp_path, monkeypatch):
    """Without --out a MoCo v2 run went to runs/lcr: the next LCR run was then refused, or the two confused."""
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", str(synth_root), "--method", "moco", *TINY, *QUIET, "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "moco" / "checkpoint.pt").is_file() and not (tmp_path / "runs" / "lcr").exists()


def test_out_that_is_a_file_is_refused_and_kept(synth_root, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = _error_line(_train(synth_root, target))
    assert f"--out {target} is a file; give a folder" in line
    assert target.read_text() == "mine"
    line = _error_line(_train(synth_root, target / "run"))
    assert "is inside" in line and "which is a file" in line


def test_pretrained_that_is_not_weights_is_refused(synth_root, tmp_path):
    import torch

    missing = _error_line(_train(synth_root, tmp_path / "run", "--pretrained", str(tmp_path / "none.pth")))
    assert "none.pth does not exist; give a torchvision state-dict file" in missing
    torch.save([1, 2, 3], tmp_path / "list.pth")
    line = _error_line(_train(synth_root, tmp_path / "run", "--pretrained", str(tmp_path / "list.pth")))
    assert "holds a list, not a state dict; save the weights with torch.save(model.state_dict(), PATH)" in line
    (tmp_path / "junk.pth").write_bytes(b"junk" * 100)
    line = _error_line(_train(synth_root, tmp_path / "run", "--pretrained", str(tmp_path / "junk.pth")))
    assert "junk.pth is not a readable PyTorch state dict or checkpoint" in line and "re-copy it" in line
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08")
    line = _error_line(_train(synth_root, tmp_path / "run", "--pretrained", str(tmp_path / "model.onnx")))
    assert "model.onnx is an ONNX model (by its name), not PyTorch weights" in line, line


# -- data folders ------------------------------------------------------------------------------------------------------


def _layout(root: Path, case: str, synth_root: Path) -> Path:
    if case == "missing":
        return root / "nowhere"
    if case == "file":
        root.mkdir(parents=True, exist_ok=True)
        (root / "data.zip").write_bytes(b"PK")
        return root / "data.zip"
    if case == "empty":
        (root / "empty").mkdir(parents=True)
        return root / "empty"
    data = Path(shutil.copytree(synth_root, root / "data"))
    if case == "empty class":
        (data / "train" / "zz_empty").mkdir()
    elif case == "no test split":
        shutil.rmtree(data / "test")
    elif case == "no class folders":
        shutil.rmtree(data / "train")
        (data / "train").mkdir()
    elif case == "one class":
        for split in ("train", "test"):
            for extra in sorted((data / split).iterdir())[1:]:
                shutil.rmtree(extra)
    elif case == "all unreadable":
        for p in (data / "train").glob("*/*.png"):
            if p.parent.name == sorted(d.name for d in (data / "train").iterdir())[0]:
                p.write_bytes(b"not a png")
    return data


DATA_CASES = [
    ("missing", [], "does not exist. Expected ROOT/train/<class>"),
    ("file", [], "is a file, not a folder"),
    ("empty", [], "has no 'train' folder (found: [])"),
    ("empty class", [], "zz_empty has no images"),
    ("no test split", [], "has train/ but no test/ folder. Expected ROOT/train/<class>"),
    ("no class folders", [], "has no class sub-folders"),
    ("all unreadable", [], "was unreadable; fix or remove it"),
    ("one class", ["--supervised", "--batch-size", "4"], "--supervised needs two or more class folders"),
    ("whole", ["--batch-size", "24"], "24 training images are too few for --batch-size 24: need at least 25"),
    ("whole", ["--val-fraction", "0.9", "--batch-size", "8"], "4 training images (20 held out for validation)"),
]


@pytest.mark.parametrize("case, extra, message", DATA_CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in DATA_CASES])
def test_bad_data_folder_is_one_line(synth_root, tmp_path, case, extra, message):
    data = _layout(tmp_path / "d", case, synth_root)
    line = _error_line(_train(data, tmp_path / "run", *extra))
    assert message in line, line
    assert not (tmp_path / "run").exists()


# -- resume: only options that do not change what is trained may differ ----------------------------------------------


@pytest.fixture(scope="module")
def trained_run(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    r = _train(synth_root, out)
    assert r.exit_code == 0, r.output
    return out


RESUME_CHANGES = [
    (["--lr", "0.06"], "--lr 0.03"),
    (["--cam-sign", "score"], "--cam-sign 'loss'"),
    (["--nu", "0.5"], "--nu None"),
    (["--fit-grad", "backbone"], "--fit-grad 'gfb'"),
    (["--fit-form", "released"], "--fit-form 'per_image'"),
    (["--moco-t", "0.1"], "--moco-t 0.2"),
    (["--num-parts", "8"], "--num-parts 4"),
    (["--moco-dim", "64"], "--moco-dim 128"),
    (["--supervised"], "--supervised False"),
    (["--val-fraction", "0.25"], "--val-fraction 0.0"),
    (["--seed", "1"], "--seed 0"),
    (["--method", "moco"], "--method 'lcr'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("extra, trained_with", RESUME_CHANGES, ids=[" ".join(c[0]) for c in RESUME_CHANGES])
def test_resume_with_another_option_is_refused_naming_it(synth_root, trained_run, extra, trained_with):
    ckpt = trained_run / "checkpoint.pt"
    before = (_digest(ckpt), (trained_run / "config.json").read_text(), (trained_run / "log.csv").read_text())
    line = _error_line(_train(synth_root, trained_run, "--resume", *extra))
    assert f"it was trained with {trained_with}" in line and "is not resumable" in line and "new --out" in line, line
    after = (_digest(ckpt), (trained_run / "config.json").read_text(), (trained_run / "log.csv").read_text())
    assert after == before  # nothing touched


@pytest.mark.slow
def test_resume_with_a_resumable_change_is_accepted(synth_root, trained_run):
    r = _train(synth_root, trained_run, "--resume", "--eval-every", "1")  # already finished: nothing to do
    assert r.exit_code == 0, r.output
    assert f"note: resumed {trained_run / 'checkpoint.pt'} at epoch " in r.stderr, r.stderr  # said, not only logged


def test_resume_from_a_deploy_only_checkpoint_is_refused(synth_root, lcr_checkpoint, tmp_path):
    (tmp_path / "run").mkdir()
    shutil.copy(lcr_checkpoint, tmp_path / "run" / "checkpoint.pt")
    line = _error_line(_train(synth_root, tmp_path / "run", "--resume"))
    assert "holds no training state (a deploy-only checkpoint); cannot resume from it" in line


# -- divergence: stop with the options to change, never a non-finite checkpoint ---------------------------------------


@pytest.mark.slow
def test_divergence_stops_naming_lr_and_keeps_the_good_checkpoint(synth_root, tmp_path):
    import torch

    out = tmp_path / "run"
    r = _train(synth_root, out, "--lr", "1e37", "--save-every", "1")  # step 1 is saved, then blows the weights up
    line = _error_line(r)
    assert "training diverged at epoch 1, step 2: the loss is nan" in line and "Lower --lr (now 1e+37)" in line, line
    assert f"the last checkpoint {out / 'checkpoint.pt'} (all weights finite) is kept" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["train_state"]["global_step"] == 1  # step 1's, kept
    assert not list(out.glob(".checkpoint.pt.*"))


@pytest.mark.slow
def test_divergence_with_step_checkpoints_never_writes_non_finite_weights(synth_root, tmp_path):
    import torch

    out = tmp_path / "run"
    line = _error_line(_train(synth_root, out, "--lr", "1e37", "--save-every", "1"))
    assert "training diverged" in line and "--lr" in line
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]  # step 1's: huge, but finite
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_learning_rate_beyond_float32_is_refused(synth_root, tmp_path):
    line = _error_line(_train(synth_root, tmp_path / "run", "--lr", "1e300"))
    assert "--lr 1e+300 is not valid: the rate used, lr x batch-size / 256 = 3.125e+298, is beyond float32" in line


@pytest.mark.slow
def test_stale_temporary_checkpoints_are_removed_at_the_next_save(synth_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".checkpoint.pt.abc123.tmp", out / ".checkpoint.pt.zz9_x.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)  # what a run killed mid-save leaves
    (out / ".notes.tmp").write_text("not ours")
    r = _train(synth_root, out)
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in stale) and (out / ".notes.tmp").exists()


@pytest.mark.slow
def test_full_disk_during_checkpoint_save_keeps_the_old_one(synth_root, tmp_path):
    """A real 4 MB tmpfs: the checkpoint cannot fit; one line with the path and the free space, old file intact."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root and a kernel that allows it")
    try:
        out = mnt / "run"
        out.mkdir()
        line = _error_line(_train(synth_root, out))
        assert f"could not write {out / 'checkpoint.pt'}: the disk is full" in line, line
        assert "MiB free on" in line and "The previous file is kept" in line
        assert not (out / "checkpoint.pt").exists()
        assert not list(out.glob(".checkpoint.pt.*"))  # no temporary file left
        used = shutil.disk_usage(mnt).used
        assert used < 1 << 20, used  # the failed write's space is free again (no file handle kept open)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            pytest.fail("the tmpfs was still busy: a file on it stayed open after the failed save")


# -- eval -------------------------------------------------------------------------------------------------------------


def _eval(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def test_eval_missing_or_corrupt_checkpoint(synth_root, tmp_path):
    import torch

    line = _error_line(_eval(tmp_path / "nope.pt", synth_root))
    assert "nope.pt does not exist; train one with `lcr-sdk train DATA --out DIR`" in line
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert "is not a readable PyTorch checkpoint" in _error_line(_eval(tmp_path / "cut.pt", synth_root))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "tv.pth")
    assert "not an lcr-sdk checkpoint" in _error_line(_eval(tmp_path / "tv.pth", synth_root))


def test_eval_on_the_wrong_data(lcr_checkpoint, synth_root, tmp_path):
    line = _error_line(_eval(lcr_checkpoint, tmp_path / "nowhere"))
    assert "nowhere does not exist" in line and "ROOT/train/<class>" in line
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    first = sorted((data / "test").iterdir())[0]
    first.rename(first.with_name("renamed"))
    assert "train and test class folders differ" in _error_line(_eval(lcr_checkpoint, data))


def test_supervised_training_on_one_class_is_refused_by_the_library_too(synth_root, tmp_path):
    from lcr_sdk.errors import DataError
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    data = _layout(tmp_path / "d", "one class", synth_root)
    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=4, supervised=True)
    with pytest.raises(DataError, match="--supervised needs two or more class folders"):
        Trainer(cfg, data, tmp_path / "run")


def test_eval_on_one_class_is_refused(lcr_checkpoint, synth_root, tmp_path):
    data = _layout(tmp_path / "d", "one class", synth_root)
    line = _error_line(_eval(lcr_checkpoint, data))
    assert "the test split of" in line and "holds one class" in line and "two or more" in line, line


def test_eval_split_options(lcr_checkpoint, synth_root):
    assert "split 'dev' is not valid; choose test or val" in _error_line(
        _eval(lcr_checkpoint, synth_root, "--split", "dev")
    )
    line = _error_line(_eval(lcr_checkpoint, synth_root, "--split", "val"))
    assert "trained without a validation split" in line and "--val-fraction F" in line
    line = _error_line(_eval(lcr_checkpoint, synth_root, "--split", "val", "--val-fraction", "2"))
    assert "--val-fraction 2.0 is not valid" in line
    line = _error_line(_eval(lcr_checkpoint, synth_root, "--split", "val", "--val-fraction", "0"))
    assert "--val-fraction 0 leaves no validation split" in line and "trained without" not in line, line


def test_a_validation_split_carved_after_training_says_its_figures_are_optimistic(
    trained_run, lcr_checkpoint, synth_root
):
    """Only a checkpoint trained on this train/ (its recorded data set) is judged: one that records none (a
    deploy-only file, ImageNet weights) did not train on these images as far as anyone knows."""
    import warnings

    with pytest.warns(UserWarning, match=r"was trained on all of train/: .* optimistic"):
        r = _eval(trained_run / "checkpoint.pt", synth_root, "--split", "val", "--val-fraction", "0.25")
    assert r.exit_code == 0, r.output
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = _eval(lcr_checkpoint, synth_root, "--split", "val", "--val-fraction", "0.25")
    assert r.exit_code == 0, r.output


# -- data import ------------------------------------------------------------------------------------------------------


def test_import_bad_source_and_output(tmp_path):
    line = _error_line(runner.invoke(app, ["data", "import", "cub", str(tmp_path / "none"), str(tmp_path / "o")]))
    assert "SRC" in line and "is not a folder; pass the extracted official cub archive" in line
    (tmp_path / "src").mkdir()
    line = _error_line(runner.invoke(app, ["data", "import", "cub", str(tmp_path / "src"), str(tmp_path / "o")]))
    assert "images.txt is missing: not the official CUB-200-2011 layout" in line
    (tmp_path / "taken").write_text("mine")
    line = _error_line(runner.invoke(app, ["data", "import", "cars", str(tmp_path / "src"), str(tmp_path / "taken")]))
    assert "is a file; give a new folder" in line and (tmp_path / "taken").read_text() == "mine"

"""What `lcr-sdk train` guards before and while it works: a finished run's checkpoint is never replaced by a new run,
`--resume` continues only on the data set it was trained on, inputs are checked before workers are launched, an
edited checkpoint is one error naming it, a stop during a save exits 130 with the previous checkpoint intact, a stop
reaches every worker, and the image cache counts what it keeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_cli import QUIET, TINY, runner
from train_cli import digest as _digest
from train_cli import error_line as _error_line
from train_cli import train as _train

from lcr_sdk.cli import app

pytestmark = pytest.mark.torch


def _snapshot(run: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(run.iterdir())}


@pytest.fixture(scope="module")
def trained_run(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    r = _train(synth_root, out)
    assert r.exit_code == 0, r.output
    return out


# -- a finished run is never replaced by a new one -------------------------------------------------------------------


def test_second_run_without_resume_is_refused_and_replaces_nothing(synth_root, trained_run):
    before = _snapshot(trained_run)
    line = _error_line(_train(synth_root, trained_run))
    assert f"--out {trained_run} already holds a training checkpoint" in line, line
    assert "--resume" in line and "new --out" in line
    assert _snapshot(trained_run) == before


def test_a_run_launched_by_torchrun_itself_does_not_replace_a_finished_run(synth_root, trained_run):
    """`torchrun ... -m lcr_sdk.cli train` (the multi-node form) starts the workers without our launcher: each
    worker does the checks, so a finished run is refused there too, and nothing in it changes."""
    before = _snapshot(trained_run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "lcr_sdk.cli", "train"]
    cmd += [str(synth_root), "--out", str(trained_run), "--method", "moco", *TINY, *QUIET]
    env = {k: v for k, v in os.environ.items() if k != "LCR_SDK_PREFLIGHT_DONE"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    assert f"--out {trained_run} already holds a training checkpoint" in r.stderr, r.stderr[-2000:]
    assert _snapshot(trained_run) == before


def test_a_missing_pretrained_file_is_one_line_before_launching(synth_root, tmp_path):
    cmd = [sys.executable, "-m", "lcr_sdk.cli", "train", str(synth_root), "--out", str(tmp_path / "run")]
    cmd += [*TINY, *QUIET, "--nproc-per-node", "2", "--pretrained", str(tmp_path / "missing.pth")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "launching" not in r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing.pth does not exist" in lines[0], lines


# -- train/ and test/ must hold the same classes ----------------------------------------------------------------------


def test_other_class_folders_in_test_are_refused_before_training(synth_root, tmp_path):
    """A class missing from test/ would make the kNN monitor compare one class's images with another's (labels are
    indices into each split's own list): refused before anything is trained, naming the folders on one side only."""
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    first = sorted(p.name for p in (data / "test").iterdir())[0]
    shutil.rmtree(data / "test" / first)
    line = _error_line(_train(data, tmp_path / "run", "--eval-every", "1"))
    assert f"only in train/: '{first}'" in line and "only in test/" not in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

    # the same name in two Unicode normalisations (a folder copied from macOS) looks alike: the message says so
    nfc, nfd = "rotkehlchen_\u00e4", "rotkehlchen_a\u0308"
    (data / "train" / first).rename(data / "train" / nfc)
    shutil.copytree(data / "train" / nfc, data / "test" / nfd)
    line = _error_line(_train(data, tmp_path / "run"))
    assert ascii(nfc) in line and ascii(nfd) in line, line  # shown escaped: the difference is visible
    assert "Unicode normalisation" in line


# -- --resume continues only on the data set it was trained on --------------------------------------------------------


@pytest.mark.parametrize("change", ["an image removed", "an image changed", "another class"])
def test_resume_on_other_data_is_refused(synth_root, trained_run, tmp_path, change):
    other = Path(shutil.copytree(synth_root, tmp_path / "other"))
    first = sorted((other / "train").glob("*/*.png"))[0]
    if change == "an image removed":
        first.unlink()
    elif change == "an image changed":
        first.write_bytes(first.read_bytes() + b"\0")  # same name, other size
    else:
        for split in ("train", "test"):  # renamed on both sides: a valid data set, but another one
            cls = sorted((other / split).iterdir())[0]
            cls.rename(cls.with_name("zz_renamed"))
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = _snapshot(run)
    line = _error_line(_train(other, run, "--resume"))
    assert f"cannot resume {run / 'checkpoint.pt'} on {other}: it was trained on {synth_root.resolve()}" in line, line
    assert "start a new --out" in line
    assert _snapshot(run) == before


def test_resume_on_the_same_data_moved_is_accepted(synth_root, trained_run, tmp_path):
    moved = Path(shutil.copytree(synth_root, tmp_path / "moved"))
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    r = _train(moved, run, "--resume")  # the run is finished: nothing to do, but accepted
    assert r.exit_code == 0, r.output


def test_resume_of_a_checkpoint_without_data_identity_warns(synth_root, trained_run, tmp_path):
    import torch

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["train_state"]["data"]  # as written before the data set was recorded
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.warns(UserWarning, match="does not record which data set it was trained on"):
        r = _train(synth_root, run, "--resume")
    assert r.exit_code == 0, r.output


# -- inputs checked before workers are launched -----------------------------------------------------------------------


def test_empty_data_with_two_processes_is_one_line_before_launching(tmp_path):
    """A real launch: without the check, torchrun starts two workers that each fail, then prints its traceback."""
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, "-m", "lcr_sdk.cli", "train", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]
    r = subprocess.run([*cmd, *TINY, *QUIET, "--nproc-per-node", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "launching" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: data set") and "has no 'train' folder" in lines[0], lines
    assert not (tmp_path / "run").exists()


# -- an edited checkpoint is one error naming the file --------------------------------------------------------------


CONFIG_EDITS = [
    ("image_size", "big", "config['image_size'] 'big' is not valid; give an integer from 32 to 1024"),
    ("image_size", None, "config['image_size'] None is not valid"),
    ("arch", "vgg", "config['arch'] 'vgg' is not valid; choose one of"),
    ("num_parts", 0, "config['num_parts'] 0 is not valid"),
    ("method", 3, "config['method'] 3 is not valid; choose one of lcr, moco"),
    ("arch", "<deleted>", "its config has no 'arch'"),
    ("arch", "resnet50", "its weights do not match its config arch=resnet50 method=lcr num_parts=4"),
    ("num_parts", 5, "its weights do not match its config arch=resnet18 method=lcr num_parts=5: gfb.conv.weight is"),
]


def _edited(src: Path, dst: Path, edit) -> Path:
    import torch

    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def _set_config(key, value):
    def edit(ckpt):
        if value == "<deleted>":
            del ckpt["config"][key]
        else:
            ckpt["config"][key] = value

    return edit


@pytest.mark.parametrize("command", ["eval", "info", "embed", "export"])
@pytest.mark.parametrize("key, value, message", CONFIG_EDITS, ids=[f"{k}={v}" for k, v, _ in CONFIG_EDITS])
def test_edited_config_is_one_line_naming_the_file(trained_run, synth_root, tmp_path, command, key, value, message):
    ckpt = _edited(trained_run / "checkpoint.pt", tmp_path / "edited.pt", _set_config(key, value))
    image = sorted((synth_root / "test").glob("*/*.png"))[0]
    args = {
        "eval": ["eval", ckpt, synth_root, "--device", "cpu"],
        "info": ["info", ckpt],
        "embed": ["embed", ckpt, image],
        "export": ["export", ckpt, "--out", tmp_path / "m.onnx"],
    }[command]
    line = _error_line(runner.invoke(app, [str(a) for a in args]))
    assert message in line, line
    assert str(ckpt) in line and ("re-copy" in line or "retrain" in line), line
    assert not (tmp_path / "m.onnx").exists()


WHOLE_EDITS = [
    ("config is a list", lambda c: c.update(config=[1, 2]), "its 'config' is a list, not a dict"),
    ("model is a list", lambda c: c.update(model=[1]), "its 'model' is a list, not a dict"),
    ("model holds a number", lambda c: c["model"].update({"x": 1}), "its 'model' entry 'x' is not a tensor"),
    ("train_state is a str", lambda c: c.update(train_state="x"), "its 'train_state' is a str, not a dict"),
]


@pytest.mark.parametrize("what, edit, message", WHOLE_EDITS, ids=[w[0] for w in WHOLE_EDITS])
def test_edited_top_level_entry_is_refused_at_load(trained_run, tmp_path, what, edit, message):
    from lcr_sdk.errors import ModelError
    from lcr_sdk.train.checkpoint import load_checkpoint

    ckpt = _edited(trained_run / "checkpoint.pt", tmp_path / "edited.pt", edit)
    with pytest.raises(ModelError, match="damaged or was edited") as e:
        load_checkpoint(ckpt)
    assert message in str(e.value) and str(ckpt) in str(e.value) and "\n" not in str(e.value)


def _ts(key, value):
    def edit(ckpt):
        if value == "<deleted>":
            del ckpt["train_state"][key]
        else:
            ckpt["train_state"][key] = value

    return edit


def _wrong_queue(ckpt):
    import torch

    ckpt["train_state"]["trainer"]["queue"] = torch.zeros(3, 2)


STATE_EDITS = [
    ("epoch 'x'", _ts("epoch", "x"), "its train_state['epoch'] is 'x'; it must be an integer >= 0"),
    ("epoch -1", _ts("epoch", -1), "its train_state['epoch'] is -1; it must be an integer >= 0"),
    ("no optimizer", _ts("optimizer", "<deleted>"), "its train_state['optimizer'] is missing"),
    ("optimizer {}", _ts("optimizer", {}), "its train_state['optimizer'] has no 'state' dict and 'param_groups'"),
    ("rng {}", _ts("rng", {}), "its train_state['rng'] lacks the python, numpy and torch generator states"),
    ("history 3", _ts("history", 3), "its train_state['history'] is not a list"),
    ("queue shape", _wrong_queue, "its training state does not fit this run"),
]


@pytest.mark.parametrize("what, edit, message", STATE_EDITS, ids=[w[0] for w in STATE_EDITS])
def test_edited_train_state_is_one_line_at_resume(trained_run, synth_root, tmp_path, what, edit, message):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = _edited(trained_run / "checkpoint.pt", run / "checkpoint.pt", edit)
    before = _digest(ckpt)
    line = _error_line(_train(synth_root, run, "--resume"))
    assert message in line and str(ckpt) in line, line
    assert _digest(ckpt) == before


# -- a stop (SIGTERM) during a checkpoint save -----------------------------------------------------------------------


def test_sigterm_during_checkpoint_save_exits_130_and_keeps_the_previous_one(synth_root, tmp_path, monkeypatch):
    """The signal is sent by the process to itself from inside torch.save's writes of the second save (step 2), so
    it lands mid-save every time; the real torch.save and the command's own SIGTERM handler do the rest."""
    import torch

    from lcr_sdk import cli

    real_save, saves = torch.save, []

    class SignalMidWrite:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            self.written += len(b)
            if self.written > 1 << 20:  # 1 MiB into the file
                os.kill(os.getpid(), signal.SIGTERM)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    def save(obj, f, *args, **kwargs):
        saves.append(obj["train_state"]["global_step"])
        return real_save(obj, SignalMidWrite(f) if len(saves) == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    previous = signal.signal(signal.SIGTERM, cli._sigterm)  # what `lcr-sdk` (main) installs
    try:
        r = _train(synth_root, tmp_path / "run", "--save-every", "1")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and "RuntimeError" not in r.output, r.output
    assert saves == [1, 2]
    kept = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert kept["train_state"]["global_step"] == 1  # step 1's checkpoint, whole
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))


# -- a stop reaches every worker ------------------------------------------------------------------------------------


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes")
def test_sigterm_to_a_two_process_run_stops_every_worker(synth_root, tmp_path):
    """A real `--nproc-per-node 2` run on the CPU (gloo): SIGTERM to the command once both workers train."""
    out = tmp_path / "ddp-run"
    cmd = [sys.executable, "-m", "lcr_sdk.cli", "train", str(synth_root), "--out", str(out), *TINY, *QUIET]
    cmd += ["--epochs", "200", "--save-every", "1", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.2)
    try:
        assert proc.poll() is None and ckpt.exists(), proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert len(_processes_naming(str(out))) >= 4  # the command, torchrun and two workers
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        assert rc == 130, proc.stderr.read().decode()[-3000:] if proc.stderr else rc
        assert _processes_naming(str(out)) == []  # no worker left behind
        before = _digest(ckpt)
        time.sleep(2)
        assert _digest(ckpt) == before  # nobody rewrites the checkpoint any more
    finally:
        for pid in _processes_naming(str(out)):  # never leave a stray worker behind a failed test
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


# -- the image cache counts what it keeps -----------------------------------------------------------------------------


def test_image_cache_counts_the_decoded_images_it_keeps(tmp_path, monkeypatch):
    """Images of 256 px read for a 64 px model: the cache limit holds for the 256 px arrays kept, not 64 px ones."""
    from lcr_sdk.synth import SynthConfig, generate
    from lcr_sdk.train import data

    big = SynthConfig(num_classes=2, train_per_class=8, test_per_class=2, image_size=256)
    root = generate(tmp_path / "big", big, progress=False)
    limit = 16 * 64 * 64 * 3 * 4  # four times what 16 images at the model's 64 px would take
    monkeypatch.setattr(data, "CACHE_LIMIT_BYTES", limit)
    split = data.scan_split(root, "train", size=64)
    held = sum(im.nbytes for im in split.images) if split.images is not None else 0
    assert held <= limit, f"{held} bytes of decoded images kept under a {limit}-byte limit"
    assert len(split) == 16 and len(split.sizes) == 16
    monkeypatch.setattr(data, "CACHE_LIMIT_BYTES", 1 << 30)  # room for them: kept
    assert data.scan_split(root, "train", size=64).images is not None

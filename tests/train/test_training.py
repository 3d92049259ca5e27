"""Training end to end on a tiny data set: CLI, checkpoints, resume after a kill, pretrained init, evaluation."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app
from lcr_sdk.errors import ModelError

pytestmark = pytest.mark.torch
runner = CliRunner()
TINY = [
    "--arch",
    "resnet18",
    "--image-size",
    "64",
    "--batch-size",
    "8",
    "--moco-k",
    "16",
    "--num-parts",
    "4",
    "--workers",
    "0",
    "--no-progress",
]


def _train(data, out, *extra):
    return runner.invoke(app, ["train", str(data), "--out", str(out), *TINY, *extra])


def test_train_then_eval_json(synth_root, tmp_path):
    from lcr_sdk.train.evaluate import evaluate

    r = _train(synth_root, tmp_path / "run", "--epochs", "1", "--eval-every", "1")
    assert r.exit_code == 0, r.output
    log = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(log) == 1 and log[0]["epoch"] == "1" and log[0]["step"] == "3"  # 24 images / batch 8
    assert float(log[0]["loss_fit"]) > 0 and 0 <= float(log[0]["own_key"]) <= 1 and log[0]["knn_top1"]
    # --no-progress (a log file): one line per epoch instead of the bar, with the epoch's figures from log.csv
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("epoch "))
    assert line.startswith("epoch 1/1: loss ") and f"knn_top1 {float(log[0]['knn_top1']):g}" in line, r.stderr
    ckpt = tmp_path / "run" / "checkpoint.pt"
    r = runner.invoke(app, ["eval", str(ckpt), str(synth_root), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert (m["method"], m["queries"], m["chance"], m["test_images"]) == ("lcr", 16, 0.25, 16)
    assert m == pytest.approx(evaluate(ckpt, synth_root, device="cpu"))  # the CLI prints what the library computes
    text = runner.invoke(app, ["eval", str(ckpt), str(synth_root)]).output
    assert f"rank1        {100 * m['rank1']:6.2f} %" in text and "queries      16 (0 without another" in text
    assert text.startswith(f"{ckpt} on the test split of {synth_root}:")
    assert f"(chance {100 * m['chance_mAP']:5.2f} %)" in text and m["chance_mAP"] > m["chance"]  # not 1 / classes


def _separable(root: Path) -> Path:
    """Two classes any working training separates in a few steps: dark and bright noise (MoCo augmentation keeps
    them apart: brightness jitter is +-40%, grayscale keeps the mean)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for name, level in (("dark", 50), ("bright", 200)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = (level + rng.normal(0, 25, (64, 64, 1))).clip(0, 255).astype(np.uint8).repeat(3, 2)
                cv2.imwrite(str(folder / f"{i}.png"), img)
    return root


@pytest.mark.slow
def test_supervised_training_learns_a_separable_set(tmp_path):
    """The supervised bound really trains: its training accuracy climbs from chance (0.5) to near 1."""
    data = _separable(tmp_path / "data")
    r = runner.invoke(
        app,
        ["train", str(data), "--out", str(tmp_path / "sup"), "--arch", "resnet18", "--image-size", "32",
         "--batch-size", "8", "--supervised", "--epochs", "6", "--lr", "0.1", "--workers", "0", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    log = list(csv.DictReader((tmp_path / "sup" / "log.csv").open()))
    acc = [float(row["acc"]) for row in log]
    loss = [float(row["loss"]) for row in log]
    assert len(acc) == 6 and sum(acc[-3:]) / 3 >= 0.85, acc
    assert sum(loss[-3:]) / 3 < 0.5 * loss[0], loss  # ln 2 = 0.69 is chance
    import torch

    ckpt = torch.load(tmp_path / "sup" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["supervised"] and ckpt["config"]["method"] == "moco"  # deploys with average pooling


def test_bad_data_is_one_line_exit_1(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    r = _train(tmp_path, tmp_path / "run", "--epochs", "1")
    assert r.exit_code == 1
    assert "has no images" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", str(tmp_path), "--cam-sign", "up", *TINY])
    assert r.exit_code == 1 and "--cam-sign 'up' is not valid" in r.output


def _weights(path):
    import torch

    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(synth_root, tmp_path):
    """Kill a real training process mid-epoch (SIGKILL), resume it, and get the uninterrupted run's weights."""
    import torch

    args = [str(synth_root), *TINY, "--epochs", "2", "--seed", "3"]
    full = _train(synth_root, tmp_path / "full", "--epochs", "2", "--seed", "3")
    assert full.exit_code == 0, full.output

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lcr_sdk.cli", "train", *args, "--out", str(out), "--save-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)["train_state"]
            step = state["global_step"]
            if step >= 4:  # epoch 2, mid-epoch (3 steps per epoch)
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)["train_state"]
    assert state["global_step"] < 6, "the run finished before the kill"
    resumed = _train(synth_root, out, "--epochs", "2", "--seed", "3", "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(ckpt)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert len((out / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_resume_refuses_other_options(synth_root, tmp_path):
    assert _train(synth_root, tmp_path / "r", "--epochs", "1").exit_code == 0
    r = _train(synth_root, tmp_path / "r", "--epochs", "1", "--image-size", "96", "--resume")
    assert r.exit_code == 1 and "trained with --image-size 64, this run asks for --image-size 96" in r.output


def test_pretrained_torchvision_state_dict(tmp_path):
    import torch
    import torchvision

    from lcr_sdk.train.checkpoint import load_pretrained
    from lcr_sdk.train.model import LCRNet

    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    net = LCRNet("resnet18", "lcr", 4)
    load_pretrained(net, str(tmp_path / "tv.pth"))
    torch.testing.assert_close(net.backbone.conv1.weight, tv.conv1.weight, rtol=0, atol=0)
    with pytest.raises(ModelError, match="holds a resnet18 backbone but this run trains resnet50: use --arch resnet18"):
        load_pretrained(LCRNet("resnet50", "lcr", 4), str(tmp_path / "tv.pth"))
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "wrapped.pth")  # the usual training-script layout
    load_pretrained(LCRNet("resnet18", "moco"), str(tmp_path / "wrapped.pth"))
    torch.save({k: v for k, v in tv.state_dict().items() if "layer3" not in k}, tmp_path / "cut.pth")
    with pytest.raises(ModelError, match=r"cut.pth holds no resnet18 backbone: 30 of its 120 keys missing"):
        load_pretrained(LCRNet("resnet18", "moco"), str(tmp_path / "cut.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        load_pretrained(LCRNet("resnet18", "moco"), str(tmp_path / "list.pth"))
    with pytest.raises(ModelError, match="does not exist; give a torchvision state-dict file"):
        load_pretrained(LCRNet("resnet18", "moco"), str(tmp_path / "nope.pth"))


def test_supervised_pretraining_then_pretrained_loads_its_backbone_exactly(synth_root, tmp_path):
    """The two-stage workflow: `train --supervised`, then `train --pretrained` that checkpoint."""
    import torch

    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    r = _train(synth_root, tmp_path / "sup", "--epochs", "1", "--supervised")
    assert r.exit_code == 0, r.output
    source = tmp_path / "sup" / "checkpoint.pt"
    backbone = {k: v for k, v in torch.load(source, weights_only=True)["model"].items() if k.startswith("backbone.")}
    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=8, moco_k=16, num_parts=4, pretrained=str(source))
    net, model = Trainer(cfg, synth_root, tmp_path / "lcr", progress=False).build()
    for key, value in backbone.items():  # weights and BN statistics, bit for bit, in the query and key encoders
        assert torch.equal(net.state_dict()[key], value), key
        assert torch.equal(model.encoder_k.state_dict()[key], value), key
    r = _train(synth_root, tmp_path / "lcr", "--epochs", "1", "--pretrained", str(source))
    assert r.exit_code == 0, r.output
    r = _train(synth_root, tmp_path / "big", "--epochs", "1", "--pretrained", str(source), "--arch", "resnet34")
    assert r.exit_code == 1 and "lcr-sdk checkpoint of a resnet18 but this run trains resnet34" in r.output
    assert "--arch resnet18" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(synth_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): shuffle-BN across ranks, one checkpoint from rank 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "lcr_sdk.cli",
        "train",
        str(synth_root),
        *TINY,
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "ddp"),
        "--nproc-per-node",
        "2",
        "--device",
        "cpu",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed.run" in r.stdout
    import torch

    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ckpt["train_state"]["global_step"] == 3
    ids = ckpt["train_state"]["trainer"]["queue_ids"].tolist()  # both ranks' image indices, gathered with the keys
    assert len(ids) == 16 and len(set(ids)) == 16 and all(0 <= i < 24 for i in ids)


def test_validation_split_trains_on_the_rest_and_eval_rebuilds_it(synth_root, tmp_path):
    r = _train(synth_root, tmp_path / "run", "--epochs", "1", "--val-fraction", "0.25", "--val-seed", "5")
    assert r.exit_code == 0, r.output
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[1].startswith("1,2,")  # 16 of the 24 training images left: 2 steps of 8, not 3
    ckpt = tmp_path / "run" / "checkpoint.pt"
    r = runner.invoke(app, ["eval", str(ckpt), str(synth_root), "--split", "val", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert (m["split"], m["val_images"], m["val_fraction"], m["val_seed"]) == ("val", 8, 0.25, 5)
    assert m["queries"] == 8 and "test_images" not in m
    r = runner.invoke(app, ["eval", str(ckpt), str(synth_root), "--json"])
    assert json.loads(r.output)["test_images"] == 16

    # one training image removed: the split drawn now is another one, which may hold trained-on images
    changed = Path(shutil.copytree(synth_root, tmp_path / "changed"))
    sorted((changed / "train").glob("*/*.png"))[0].unlink()
    r = runner.invoke(app, ["eval", str(ckpt), str(changed), "--split", "val"])
    assert r.exit_code == 1 and "has changed since" in r.output and "24 images" in r.output, r.output
    assert "23 images" in r.output and "--split test" in r.output
    r = runner.invoke(app, ["eval", str(ckpt), str(changed), "--split", "val", "--val-fraction", "0.25", "--json"])
    assert r.exit_code == 0, r.output  # a split asked for explicitly is drawn anyway
    moved = Path(shutil.copytree(synth_root, tmp_path / "moved"))  # the same files elsewhere: the same split
    r = runner.invoke(app, ["eval", str(ckpt), str(moved), "--split", "val", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["val_images"] == 8, r.output


def test_validation_split_is_shared_by_training_seeds(synth_root, tmp_path):
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    def parts(seed):
        cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=8, val_fraction=0.25, seed=seed)
        t = Trainer(cfg, synth_root, tmp_path / f"s{seed}", progress=False)
        return t.train_split.paths, t.val_split.paths

    tr0, val0 = parts(0)
    tr1, val1 = parts(1)
    assert val0 == val1 and tr0 == tr1 and len(val0) == 8 and not set(val0) & set(tr0)


def test_eval_on_val_needs_a_fraction(lcr_checkpoint, synth_root):
    from lcr_sdk.errors import InputError
    from lcr_sdk.train.evaluate import evaluate

    r = runner.invoke(app, ["eval", str(lcr_checkpoint), str(synth_root), "--split", "val"])
    assert r.exit_code == 1 and "trained without a validation split" in r.output and "--val-fraction" in r.output
    m = evaluate(lcr_checkpoint, synth_root, device="cpu", split="val", val_fraction=0.5)
    assert m["val_images"] == 12 and m["val_seed"] == 0
    with pytest.raises(InputError, match="split 'dev' is not valid"):
        evaluate(lcr_checkpoint, synth_root, split="dev")


def test_batch_as_large_as_the_data_set_names_the_minimum(synth_root, tmp_path):
    from lcr_sdk.errors import DataError
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=24)  # the 24 training images: no queue left
    with pytest.raises(DataError, match=r"24 training images are too few for --batch-size 24: need at least 25"):
        Trainer(cfg, synth_root, tmp_path / "r", progress=False)
    cfg.supervised = True  # no queue: one batch of all images is fine
    assert len(Trainer(cfg, synth_root, tmp_path / "s", progress=False).train_split) == 24
    cfg.val_fraction = 0.25
    with pytest.raises(DataError, match=r"16 training images \(8 held out for validation\) .* need at least 24"):
        Trainer(cfg, synth_root, tmp_path / "v", progress=False)


@pytest.mark.parametrize(
    "batch, splits", [(8, 2), (12, 2), (16, 2), (32, 4), (50, 5), (64, 8), (100, 5), (256, 8), (13, 1), (6, 1)]
)
def test_shuffle_bn_splits_every_batch_it_can_into_equal_sub_batches(batch, splits):
    """One process emulates per-GPU BN with equal sub-batches: a batch that batch // 8 does not divide (50, 100)
    fell back to plain BN, where queries and their keys share BN statistics."""
    from lcr_sdk.train.engine import bn_splits

    assert bn_splits(batch) == splits
    assert splits == 1 or (batch % splits == 0 and batch // splits >= 4)


def test_a_batch_without_equal_sub_batches_warns_and_the_run_records_its_bn_splits(synth_root, tmp_path):
    import json

    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=12, moco_k=16, num_parts=4, epochs=1, workers=0)
    trainer = Trainer(cfg, synth_root, tmp_path / "even", progress=False)
    trainer._start()
    used = json.loads((tmp_path / "even" / "config.json").read_text())["used"]
    assert used["bn_splits"] == 2 and used["queue"] == min(16, len(trainer.train_split) - 12)  # capped on small data
    cfg.batch_size = 13
    with pytest.warns(UserWarning, match="--batch-size 13 splits into no equal sub-batches"):
        run = Trainer(cfg, synth_root, tmp_path / "odd", progress=False)._start()
    assert run.model.bn_splits == 1
    cfg.batch_size, cfg.sync_bn = 12, True
    with pytest.warns(UserWarning, match="--sync-bn in one process is plain BatchNorm"):
        Trainer(cfg, synth_root, tmp_path / "sync", progress=False)._start()


def test_non_finite_weights_are_never_saved(synth_root, tmp_path):
    """The checkpoint guard: weights that stopped being finite are refused, and the file on disk stays as it was."""
    import torch

    from lcr_sdk.errors import InputError
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=8, moco_k=16, num_parts=4, epochs=1, workers=0)
    trainer = Trainer(cfg, synth_root, tmp_path / "run", progress=False)
    run = trainer._start()
    trainer._checkpoint(run)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        run.net.backbone.layer3[0].conv1.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"diverged at epoch 1, step 1: the weights are no longer finite.*--lr"):
        trainer._checkpoint(run)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_gradient_log_warns_when_the_fitting_term_drives_the_backbone(synth_root, tmp_path, caplog):
    """log.csv holds the backbone gradient norms of both terms and their ratio; a fitting term that reaches the
    backbone with a larger gradient than InfoNCE's is warned about; stopped at the GFB, it gives the backbone none."""
    import logging

    from lcr_sdk.train.config import TrainConfig

    caplog.set_level(logging.WARNING, logger="lcr_sdk")
    reach = ["--fit-grad", "backbone", "--fit-form", "ours"]  # the form whose reach took the backbone over
    r = _train(synth_root, tmp_path / "reach", "--epochs", "1", *reach, "--grad-log-every", "1")
    assert r.exit_code == 0, r.output
    row = next(csv.DictReader((tmp_path / "reach" / "log.csv").open()))
    nce, fit, ratio = float(row["grad_nce"]), float(row["grad_fit"]), float(row["grad_ratio"])
    assert nce > 0 and ratio == pytest.approx(fit / nce, rel=1e-3) and ratio > 1, row
    assert "the fitting term's gradient on the backbone is" in caplog.text and "--fit-grad gfb" in caplog.text
    # the options not given on the command line are TrainConfig's defaults
    given = {"arch": "resnet18", "image_size": 64, "batch_size": 8, "moco_k": 16, "num_parts": 4, "workers": 0}
    expected = TrainConfig(**given, epochs=1, fit_grad="backbone", fit_form="ours", grad_log_every=1).to_dict()
    written = json.loads((tmp_path / "reach" / "config.json").read_text())
    used = written.pop("used")  # what the options came to here: the form's weight, CPU without mixed precision
    assert written == expected and used["fit_weight"] == TrainConfig(fit_form="ours").fit_weight
    assert (used["device"], used["processes"], used["amp"], used["channels_last"]) == ("cpu", 1, "off", False)
    assert used["skipped_images"] == []

    caplog.clear()
    r = _train(synth_root, tmp_path / "gfb", "--epochs", "1", "--grad-log-every", "1")  # the default: gfb
    assert r.exit_code == 0, r.output
    row = next(csv.DictReader((tmp_path / "gfb" / "log.csv").open()))
    assert float(row["grad_nce"]) > 0 and float(row["grad_fit"]) == 0 and float(row["grad_ratio"]) == 0
    assert "fitting term's gradient" not in caplog.text
    assert 1.0 <= float(row["cam_contrast"]) < 1.05  # the default form's raw-CAM target: next to uniform


def test_options_the_fitting_form_does_not_read_are_warned_about(synth_root, tmp_path):
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    small = dict(arch="resnet18", image_size=64, batch_size=8, moco_k=16, num_parts=4, epochs=1, workers=0)
    assert TrainConfig(**small, fit_form="ours", tau=0.2, cam_norm="none").unused_options() == []
    cfg = TrainConfig(**small, tau=0.2, cam_detach=False)  # the default form, per_image, reads neither
    assert cfg.unused_options() == ["--tau", "--no-cam-detach"]
    with pytest.warns(UserWarning, match=r"--tau, --no-cam-detach: no effect with --fit-form per_image"):
        Trainer(cfg, synth_root, tmp_path / "run", progress=False)


def test_unreadable_images_are_left_out_on_record(synth_root, tmp_path):
    """Training skips an unreadable image and keeps which one and why in config.json; eval --on-bad fail stops."""
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    bad = sorted((data / "train").glob("*/*.png"))[0]
    bad.write_bytes(b"")
    r = _train(data, tmp_path / "run", "--epochs", "1")
    assert r.exit_code == 0, r.output
    used = json.loads((tmp_path / "run" / "config.json").read_text())["used"]
    assert [s["path"] for s in used["skipped_images"]] == [str(bad)]
    assert "is empty (0 bytes" in used["skipped_images"][0]["reason"]
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    r = runner.invoke(app, ["eval", ckpt, str(data), "--on-bad", "fail"])
    assert r.exit_code == 1 and "1 unreadable image(s)" in r.output and str(bad) in r.output, r.output


def test_lcr_with_the_default_reach_trains_the_same_backbone_as_moco_v2(synth_root, tmp_path):
    """Same seed, same data: LCR's fitting term stops at the GFB, so after training its backbone (weights and batch
    norm statistics) is MoCo v2's, bit for bit on the CPU; only the GFB, and so the mask, differs."""
    import torch

    for method in ("moco", "lcr"):
        r = _train(synth_root, tmp_path / method, "--epochs", "2", "--method", method, "--grad-log-every", "2")
        assert r.exit_code == 0, r.output
    moco, lcr = (_weights(tmp_path / m / "checkpoint.pt") for m in ("moco", "lcr"))
    backbone = [k for k in moco if k.startswith("backbone.")]
    assert backbone and all(torch.equal(lcr[k], moco[k]) for k in backbone)
    assert any(k.startswith("gfb.") for k in lcr)


def test_a_resumed_epochs_log_row_covers_every_step_of_the_epoch(synth_root, tmp_path):
    """A run stopped mid-epoch (max_steps: the simulated kill) and resumed writes the same log.csv rows as the run
    that was never stopped: the resumed epoch's means count the steps before the stop too (throughput aside)."""
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import Trainer

    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=8, moco_k=16, num_parts=4, epochs=2, workers=0)
    Trainer(cfg, synth_root, tmp_path / "full", progress=False).run()
    Trainer(cfg, synth_root, tmp_path / "cut", progress=False, max_steps=4).run()  # stops in epoch 2
    Trainer(cfg, synth_root, tmp_path / "cut", progress=False, resume=True).run()
    rows = [list(csv.DictReader((tmp_path / run / "log.csv").open())) for run in ("full", "cut")]
    assert len(rows[0]) == len(rows[1]) == 2
    for full, cut in zip(*rows, strict=True):
        for key in ("loss", "loss_nce", "loss_fit", "acc", "own_key", "cam_contrast", "step"):
            assert full[key] == cut[key], (key, full, cut)

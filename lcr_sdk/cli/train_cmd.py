"""`lcr-sdk train`, `lcr-sdk eval`, `lcr-sdk quickstart` and `lcr-sdk data synth`.

torch is imported inside the commands that need it, so these commands show in ``--help`` on a torch-free
install and fail with the pip extra to install.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from lcr_sdk.errors import DataError, InputError, require

data_app = typer.Typer(
    help="Data sets: make the built-in synthetic one, or import CUB-200-2011, Stanford Cars, FGVC-Aircraft.",
    no_args_is_help=True,
)

DataArg = Annotated[Path, typer.Argument(help="Data set root with train/<class>/* and test/<class>/* folders.")]


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (to re-launch the same command under torchrun)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def _need_torch(what: str) -> None:
    require("torch", "train", what)
    require("torchvision", "train", what)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into (created if missing).")],
    classes: Annotated[int, typer.Option(help="Number of classes (2..36).")] = 8,
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 120,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 40,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 112,
    difficulty: Annotated[float, typer.Option(help="0 (plain backgrounds) .. 1 (busy clutter, small objects).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed: same options and seed give the same images.")] = 0,
) -> None:
    """Write the built-in synthetic fine-grained data set (no download). Example: lcr-sdk data synth data/birds"""
    from lcr_sdk.synth import SynthConfig, generate

    cfg = SynthConfig(classes, train_per_class, test_per_class, image_size, difficulty, seed)
    root = generate(out, cfg)
    typer.echo(f"wrote {classes * (train_per_class + test_per_class)} images to {root}/train and {root}/test")


@data_app.command("import")
def import_cmd(
    dataset: Annotated[
        str, typer.Argument(help="cub (CUB-200-2011), cars (Stanford Cars) or aircraft (FGVC-Aircraft).")
    ],
    src: Annotated[Path, typer.Argument(help="The extracted official archive.")],
    out: Annotated[Path, typer.Argument(help="A new folder for train/<class>/ and test/<class>/.")],
    crop_banner: Annotated[
        bool, typer.Option(help="FGVC-Aircraft: cut the 20-px copyright banner off (--no-crop-banner links as is).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Import a fine-grained benchmark from its official layout into the ImageFolder layout `train` reads.

    Images are hard links (symlinks across file systems), never copies; the official train/test split is kept.
    Example: lcr-sdk data import cub ~/datasets/CUB_200_2011 data/cub
    """
    from lcr_sdk.train.importers import DATASETS, import_dataset

    if dataset not in DATASETS:
        raise InputError(
            f"data set {dataset!r} is not one of {', '.join(DATASETS)}; e.g. lcr-sdk data import cub SRC OUT"
        )
    summary = import_dataset(dataset, src, out, crop_banner=crop_banner, progress=progress)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"imported {summary['train']} train and {summary['test']} test images in {summary['classes']} classes "
            f"to {out} ({summary['images']})"
        )


def train_cmd(
    data: DataArg,
    method: Annotated[str, typer.Option(help="lcr (MoCo v2 + GradCAM fitting branch) or moco (baseline).")] = "lcr",
    arch: Annotated[str, typer.Option(help="resnet50 (paper), resnet18 (CPU), resnet34, resnet101.")] = "resnet50",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split over processes).")] = 256,
    image_size: Annotated[int, typer.Option(help="Input side in pixels (also the exported model's).")] = 224,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder: checkpoint.pt, log.csv, config.json.")] = Path("runs/lcr"),
    lr: Annotated[float, typer.Option(help="Base learning rate for batch 256 (scaled by batch/256).")] = 0.03,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 1e-4,
    warmup_epochs: Annotated[float, typer.Option(help="Linear lr warm-up epochs (0 in the paper).")] = 0.0,
    moco_dim: Annotated[int, typer.Option(help="Projection dimension d.")] = 128,
    moco_k: Annotated[int, typer.Option(help="Queue length (capped for small data sets).")] = 65536,
    moco_m: Annotated[float, typer.Option(help="Key-encoder momentum.")] = 0.999,
    moco_t: Annotated[float, typer.Option(help="InfoNCE temperature.")] = 0.2,
    num_parts: Annotated[int, typer.Option(help="K, part maps of the GradCAM fitting branch.")] = 32,
    nu: Annotated[float, typer.Option(help="Weight of the fitting loss.")] = 1.0,
    tau: Annotated[float, typer.Option(help="Softmax temperature of the fitting loss.")] = 0.4,
    cam_sign: Annotated[
        str, typer.Option(help="loss: +dL/dF (released code, default); score: -dL/dF (Grad-CAM).")
    ] = "loss",
    cam_detach: Annotated[
        bool, typer.Option(help="Detach the Grad-CAM target (--no-cam-detach: released code).")
    ] = True,
    cam_norm: Annotated[str, typer.Option(help="max: scale each CAM to max 1; none: raw (released code).")] = "max",
    supervised: Annotated[bool, typer.Option(help="Train with labels instead (the supervised upper bound).")] = False,
    pretrained: Annotated[
        str,
        typer.Option(
            help="Backbone to start from: '' random init, 'imagenet' (online), a torchvision .pth, or an lcr-sdk "
            "checkpoint (e.g. from `train --supervised` on a source data set)."
        ),
    ] = "",
    workers: Annotated[int, typer.Option(help="Data-loader processes.")] = 2,
    amp: Annotated[str, typer.Option(help="Mixed precision on CUDA: bf16, fp16 or off.")] = "bf16",
    channels_last: Annotated[bool, typer.Option(help="channels_last memory format on CUDA.")] = True,
    sync_bn: Annotated[bool, typer.Option(help="SyncBatchNorm under DDP instead of shuffle-BN.")] = False,
    eval_every: Annotated[int, typer.Option(help="kNN monitor every N epochs (0: at the end only if set).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt if it exists.")] = False,
    save_every: Annotated[int, typer.Option(help="Also checkpoint every N steps (0: epoch ends only).")] = 0,
    on_bad: Annotated[str, typer.Option(help="Unreadable images: skip (and report) or fail.")] = "skip",
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA if available).")] = None,
    nproc_per_node: Annotated[int, typer.Option(help="Launch N processes with torchrun (DDP).")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    val_fraction: Annotated[
        float, typer.Option(help="Hold out this share of each class of train/ as a validation split (0: none).")
    ] = 0.0,
    val_seed: Annotated[int, typer.Option(help="Seed of the validation split (shared by all training seeds).")] = 0,
) -> None:
    """Train LCR or the MoCo v2 baseline on an ImageFolder data set.

    Example: lcr-sdk train data/birds --method lcr --arch resnet18 --image-size 112 --epochs 50 \\
        --batch-size 64 --out runs/lcr

    The paper's two stages: a pretrained backbone (ImageNet weights: --pretrained resnet50.pth), or one trained
    here with labels on other classes (lcr-sdk train data/source --supervised --out runs/pre), then
    self-supervised training on the fine-grained set: lcr-sdk train data/cub --pretrained runs/pre/checkpoint.pt
    --val-fraction 0.1 --out runs/lcr
    """
    from lcr_sdk.train.config import TrainConfig  # torch-free: options are checked before anything starts

    cfg = TrainConfig(
        method=method,
        arch=arch,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        moco_dim=moco_dim,
        moco_k=moco_k,
        moco_m=moco_m,
        moco_t=moco_t,
        num_parts=num_parts,
        nu=nu,
        tau=tau,
        cam_sign=cam_sign,
        cam_detach=cam_detach,
        cam_norm=cam_norm,
        seed=seed,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        sync_bn=sync_bn,
        pretrained=pretrained,
        eval_every=eval_every,
        supervised=supervised,
        val_fraction=val_fraction,
        val_seed=val_seed,
    )
    for name, value, low in (("save-every", save_every, 0), ("nproc-per-node", nproc_per_node, 1)):
        if value < low:
            raise InputError(f"--{name} {value} is not valid; give an integer >= {low}")
    if on_bad not in ("skip", "fail"):
        raise InputError(f"--on-bad {on_bad!r} is not valid; choose skip or fail")
    _need_torch("lcr-sdk train")
    from lcr_sdk.train.guards import launch, preflight

    if "RANK" not in os.environ:  # before any work or worker: folders, an existing checkpoint, --resume's data
        preflight(cfg, data, out, resume)
    if nproc_per_node > 1 and "RANK" not in os.environ:
        argv = _without_option(sys.argv[1:], "--nproc-per-node")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc_per_node}",
            "-m",
            "lcr_sdk.cli",
            *argv,
        ]
        typer.echo(f"launching: {shlex.join(cmd)}")
        raise typer.Exit(launch(cmd))  # a stop (Ctrl+C, SIGTERM) is forwarded to every worker
    from lcr_sdk.train.engine import train

    path = train(cfg, data, out, resume=resume, save_every=save_every, on_bad=on_bad, progress=progress, device=device)
    if int(os.environ.get("RANK", 0)) == 0:
        typer.echo(f"checkpoint: {path}")


def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="An lcr-sdk checkpoint (.pt).")],
    data: DataArg,
    linear_probe: Annotated[bool, typer.Option("--linear-probe", help="Also train a linear probe (top-1).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: CUDA if available).")] = None,
    split: Annotated[
        str, typer.Option(help="test (final figures) or val (the validation split carved from train/, for choices).")
    ] = "test",
    val_fraction: Annotated[
        float | None, typer.Option(help="With --split val: the held-out share (default: the checkpoint's).")
    ] = None,
    val_seed: Annotated[
        int | None, typer.Option(help="With --split val: the split's seed (default: the checkpoint's).")
    ] = None,
) -> None:
    """Leave-one-out retrieval (Rank-1, Rank-5, mAP), kNN top-1 and an optional linear probe on the test split,
    or on the validation split (--split val) where model choices are made.

    Example: lcr-sdk eval runs/lcr/checkpoint.pt data/birds --linear-probe
    """
    _need_torch("lcr-sdk eval")
    from lcr_sdk.train.evaluate import evaluate

    m = evaluate(
        checkpoint, data, linear=linear_probe, device=device, split=split, val_fraction=val_fraction, val_seed=val_seed
    )
    if as_json:  # NaN (no answerable query) is not JSON: null
        typer.echo(
            json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in m.items()}, indent=2)
        )
        return
    for key in ("rank1", "rank5", "mAP", "knn_top1", "linear_top1", "chance"):
        if key in m:
            typer.echo(f"{key:<12} {100 * m[key]:6.2f} %")
    typer.echo(f"{'queries':<12} {m['queries']} ({m['unanswerable']} without another image of their class)")


def quickstart_cmd(
    out: Annotated[Path, typer.Option(help="Folder for data, checkpoints and report (may exist).")] = Path(
        "lcr-quickstart"
    ),
    fast: Annotated[
        bool, typer.Option("--fast", help="A smoke run in under 3 minutes (tiny data at 64 px, one epoch per stage).")
    ] = False,
    epochs: Annotated[
        int | None, typer.Option(help="Override the epochs of the self-supervised stage (MoCo v2 and LCR).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Training seed (the data sets are fixed: the benchmark's).")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: CUDA if available).")] = None,
) -> None:
    """Pretrain on a synthetic source set, train MoCo v2 and LCR from it on the target set, evaluate, report.

    Example: lcr-sdk quickstart --out lcr-quickstart   (then open lcr-quickstart/report/index.html)
    """
    _need_torch("lcr-sdk quickstart")
    from lcr_sdk.train.quickstart import quickstart

    report = quickstart(out, fast=fast, epochs=epochs, seed=seed, device=device)
    typer.echo(f"report: {report}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("quickstart")(quickstart_cmd)
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.add_typer(data_app, name="data")


__all__ = ["register", "DataError"]

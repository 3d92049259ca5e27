"""`lcr-sdk train`, `lcr-sdk eval`, `lcr-sdk quickstart` and `lcr-sdk data synth`.

torch is imported inside the commands that need it, so these commands show in ``--help`` on a torch-free
install and fail with the pip extra to install.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import math
import os
import shlex
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

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
    """Write the built-in synthetic fine-grained data set (no download). Example: lcr-sdk data synth data/birds

    OUT must be new, empty, or a synthetic set written earlier (replaced whole when its options differ): a folder
    holding anything else, such as your own images, is refused and left alone.
    """
    from lcr_sdk.synth import SynthConfig, generate_set, matches

    cfg = SynthConfig(classes, train_per_class, test_per_class, image_size, difficulty, seed)
    if matches(out, cfg):
        typer.echo(f"{out} already holds this synthetic set (same options and seed); nothing written")
        return
    root = generate_set(out, cfg)
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

    Images are hard links (symlinks across file systems), not copies, except FGVC-Aircraft's, written without their
    copyright banner (--no-crop-banner links them too); the official train/test split is kept.
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


def _train(
    data: DataArg,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder: checkpoint.pt, log.csv, config.json (default runs/lcr, runs/moco or runs/supervised)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt if it exists.")] = False,
    save_every: Annotated[int, typer.Option(help="Also checkpoint every N steps (0: epoch ends only).")] = 0,
    on_bad: Annotated[str, typer.Option(help="Unreadable images: skip (and report) or fail.")] = "skip",
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA if available).")] = None,
    nproc_per_node: Annotated[int, typer.Option(help="Launch N processes with torchrun (DDP).")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    **options: Any,
) -> None:
    """Train LCR or the MoCo v2 baseline on an ImageFolder data set.

    Example: lcr-sdk train data/birds --method lcr --arch resnet18 --image-size 112 --epochs 50 \\
        --batch-size 64 --out runs/lcr

    The paper's two stages: a pretrained backbone (ImageNet weights: --pretrained resnet50.pth), or one trained
    here with labels on other classes (lcr-sdk train data/source --supervised --out runs/pre), then
    self-supervised training on the fine-grained set: lcr-sdk train data/cub --pretrained runs/pre/checkpoint.pt
    --val-fraction 0.1 --out runs/lcr
    """
    from lcr_sdk.train.config import TrainConfig, check_on_bad  # torch-free: options are checked before anything

    cfg = TrainConfig(**options)
    out = out if out is not None else Path("runs") / ("supervised" if cfg.supervised else cfg.method)
    for name, value, low in (("save-every", save_every, 0), ("nproc-per-node", nproc_per_node, 1)):
        if value < low:
            raise InputError(f"--{name} {value} is not valid; give an integer >= {low}")
    check_on_bad(on_bad)
    _need_torch("lcr-sdk train")
    from lcr_sdk.train.guards import PREFLIGHT_DONE, launch, preflight

    # before any work or worker: folders, an existing checkpoint, --resume's data. A worker of our own launcher
    # skips it (checked once, above it); a worker that torchrun started directly does it (each worker: the same)
    if os.environ.get(PREFLIGHT_DONE) != "1":
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

    def epoch_line(row: dict[str, Any]) -> None:  # without a progress bar (a log file): one line per epoch
        shown = ", ".join(f"{k} {row[k]:g}" for k in ("loss", "lr", "img_per_s", "knn_top1") if k in row)
        typer.echo(f"epoch {row['epoch']}/{cfg.epochs}: {shown}", err=True)

    with _training_notes():
        path = train(
            cfg,
            data,
            out,
            resume=resume,
            save_every=save_every,
            on_bad=on_bad,
            progress=progress,
            device=device,
            on_epoch=None if progress else epoch_line,
        )
    if int(os.environ.get("RANK", 0)) == 0:
        typer.echo(f"checkpoint: {path}")


@contextlib.contextmanager
def _training_notes() -> Iterator[None]:
    """The training engine's log on stderr while a run lasts, one line each: ``note: resumed ... at epoch N`` and
    its warnings (``warning: ...``)."""
    import logging

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kind = "note" if record.levelno < logging.WARNING else "warning"
            typer.echo(f"{kind}: {record.getMessage()}", err=True)

    logger = logging.getLogger("lcr_sdk.train.engine")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


RUN_PANEL, TRAINING_PANEL = "Run (not stored in the checkpoint)", "Training (stored in the checkpoint)"


def _with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one option per :class:`TrainConfig` field appended to its signature: the option's default
    and help are the field's own, so they are written once, in lcr_sdk/train/config.py."""
    from lcr_sdk.train.config import TrainConfig

    hints = get_type_hints(TrainConfig)
    sig = inspect.signature(command, eval_str=True)
    data, *run = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    training = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default,
            annotation=Annotated[hints[f.name], typer.Option(help=f.metadata["help"], rich_help_panel=TRAINING_PANEL)],
        )
        for f in fields(TrainConfig)
    ]
    for i, p in enumerate(run):  # the run-only options, after the training ones (in their own panel with rich)
        kind, info = typing.get_args(p.annotation)
        info = copy.copy(info)
        info.rich_help_panel = RUN_PANEL
        run[i] = p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, info])
    params = [data, *training, *run]

    @functools.wraps(command)
    def wrapped(**kwargs: Any) -> None:
        command(**kwargs)

    wrapped.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapped.__annotations__ = {}
    return wrapped


train_cmd = _with_config_options(_train)


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
    on_bad: Annotated[str, typer.Option(help="Unreadable images: skip (and report) or fail.")] = "skip",
) -> None:
    """Leave-one-out retrieval (Rank-1, Rank-5, mAP), kNN top-1 and an optional linear probe on the test split,
    or on the validation split (--split val) where model choices are made.

    Example: lcr-sdk eval runs/lcr/checkpoint.pt data/birds --linear-probe
    """
    _need_torch("lcr-sdk eval")
    from lcr_sdk.train.evaluate import evaluate

    m = evaluate(
        checkpoint,
        data,
        linear=linear_probe,
        device=device,
        split=split,
        val_fraction=val_fraction,
        val_seed=val_seed,
        on_bad=on_bad,
    )
    if as_json:  # NaN (no answerable query) is not JSON: null
        typer.echo(
            json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in m.items()}, indent=2)
        )
        return
    typer.echo(f"{checkpoint} on the {'validation' if split == 'val' else 'test'} split of {data}:")
    for key in ("rank1", "rank5", "mAP", "knn_top1", "linear_top1"):
        if key in m:
            chance = m.get(f"chance_{key}", m["chance"])  # retrieval: a random ranking's; kNN, probe: 1 / classes
            typer.echo(f"{key:<12} {100 * m[key]:6.2f} %   (chance {100 * chance:5.2f} %)")
    if "attention_on_object" in m:
        typer.echo(f"{'attention':<12} {100 * m['attention_on_object']:6.2f} % of the mask on the object")
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
    """From ImageNet EfficientNet-Lite0, train MoCo v2 and LCR on a synthetic fine-grained set, evaluate, report.

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

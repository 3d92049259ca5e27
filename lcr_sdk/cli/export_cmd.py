"""`lcr-sdk export` and `lcr-sdk verify`: thin commands over ``lcr_sdk.export``.

Nothing here imports torch at import time; the export package is imported inside the commands.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from lcr_sdk.errors import InputError, require


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show library warnings as one yellow line each (not Python's file:line form)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, UserWarning):
                    typer.secho(f"warning: {w.message}", err=True, fg=typer.colors.YELLOW)


def _parse_batch(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(f"--batch {text!r} is not MIN,OPT,MAX (three integers, e.g. 1,8,32)")
    return values  # type: ignore[return-value]


def export(
    checkpoint: Annotated[Path, typer.Argument(help="lcr-sdk checkpoint (.pt) to export.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Write the ONNX model (always; --trt adds an engine).")] = True,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine (implies --onnx).")] = False,
    precision: Annotated[str, typer.Option("--precision", "-p", help="fp32, fp16 or int8 (needs --calib).")] = "fp32",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Model file: .onnx, or .engine with --trt (default: beside the checkpoint, <stem>-<precision>.onnx).",
        ),
    ] = None,
    calib: Annotated[
        Path | None,
        typer.Option(
            "--calib",
            help="Folder of real images for int8 calibration (a few hundred recommended); also used for verification.",
        ),
    ] = None,
    calib_method: Annotated[str, typer.Option(help="int8 calibration: minmax, percentile or entropy.")] = "percentile",
    calib_images: Annotated[int, typer.Option(help="Use at most this many calibration images.")] = 500,
    batch: Annotated[str, typer.Option(help="Batch range MIN,OPT,MAX the model is declared for.")] = "1,8,32",
    image_size: Annotated[int | None, typer.Option(help="Input size in px (default: the checkpoint's).")] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check against the PyTorch model after writing; a miss writes nothing and exits 1.",
        ),
    ] = True,
    verify_images: Annotated[Path | None, typer.Option(help="Images for the check (default: --calib).")] = None,
    verify_sample: Annotated[int, typer.Option(help="Check at most this many images.")] = 64,
    workspace: Annotated[float, typer.Option(help="TensorRT builder workspace limit in GiB.")] = 4.0,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            help="TensorRT timing cache file, reused across builds (default ~/.cache/lcr-sdk/tensorrt-timing.cache)."
        ),
    ] = None,
) -> None:
    """Export a checkpoint to ONNX (fp32/fp16/int8) and optionally a TensorRT engine, with its manifest.

    Example: lcr-sdk export runs/x/lcr.pt --precision int8 --calib data/train --out lcr-int8.onnx
    """
    require("torch", "export", "lcr-sdk export")
    from lcr_sdk.export import export_model

    with _warnings_as_lines():
        export_model(
            checkpoint,
            out,
            precision=precision,
            calib_dir=calib,
            trt=trt,
            batch=_parse_batch(batch),
            image_size=image_size,
            verify=verify,
            verify_images=verify_images,
            verify_sample=verify_sample,
            calib_method=calib_method,
            calib_images=calib_images,
            workspace_gib=workspace,
            timing_cache=timing_cache if timing_cache is not None else "default",
            log=typer.echo,
        )


def verify(
    model: Annotated[Path, typer.Argument(help="Exported model (.onnx; .engine where TensorRT runs).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint it was exported from.")],
    images: Annotated[Path, typer.Option("--images", "-i", help="Folder of real images (searched recursively).")],
    max_images: Annotated[int, typer.Option(help="Use at most this many images (0: all).")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare an exported model with the fp32 PyTorch model on real images; exit 1 below the precision's threshold.

    Thresholds: fp32 min cosine >= 0.9999; fp16 >= 0.999; int8 >= 0.98 and Rank-1 agreement >= 0.95.

    Example: lcr-sdk verify lcr-int8.onnx --checkpoint runs/x/lcr.pt --images data/test
    """
    require("torch", "export", "lcr-sdk verify")
    from lcr_sdk.export import format_report, verify_model

    if not model.is_file():
        raise InputError(f"model {model} does not exist; export one with `lcr-sdk export CHECKPOINT --out {model}`")
    with _warnings_as_lines():
        report = verify_model(model, checkpoint, images, max_images or None)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if not report["passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("export")(export)
    app.command("verify")(verify)

"""`lcr-sdk export` and `lcr-sdk verify`: thin commands over ``lcr_sdk.export``.

Nothing here imports torch at import time; the export package is imported inside the commands. Building an engine
from an exported ONNX (``lcr-sdk export model.onnx --trt``) and attaching a manifest to a trtexec engine
(``--manifest``) need neither torch nor onnx: only the runtime core and TensorRT.
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
    """Show library warnings as one yellow line each (not Python's file:line form), once the work has succeeded.

    When the work fails, its warnings are dropped: the one ``Error:`` line stands alone on stderr, as for every
    command (a skipped unreadable image is not what to fix when the export itself failed).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield  # an exception leaves here, before any warning is shown
    for w in caught:
        if issubclass(w.category, UserWarning):
            typer.secho(f"warning: {w.message}", err=True, fg=typer.colors.YELLOW)


def _parse_batch(text: str) -> tuple[int, int, int]:
    """``"1,8,32"`` -> ``(1, 8, 32)``; the range itself is checked by the library (``check_export_options``)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(f"--batch {text!r} is not MIN,OPT,MAX (three integers, 1 <= MIN <= OPT <= MAX, e.g. 1,8,32)")
    return values  # type: ignore[return-value]


def export(
    source: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (.pt); or an exported .onnx with --trt (builds the engine here, no torch needed); "
            "or an engine built with trtexec, with --manifest."
        ),
    ],
    trt: Annotated[
        bool, typer.Option("--trt", help="Also build a TensorRT engine on this machine (the ONNX is always written).")
    ] = False,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            "-p",
            help="fp32 (default for a checkpoint), fp16 or int8 (needs --calib); an .onnx keeps its own.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Model file: .onnx, or .engine with --trt (default: beside the source, <stem>-<precision>.onnx).",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="With an engine as SOURCE: the ONNX (or its .json) it was built from; writes the engine's manifest.",
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
    batch: Annotated[
        list[str] | None,
        typer.Option(
            help="Batch range MIN,OPT,MAX the model is declared for (default 1,8,32); give it again for more "
            "TensorRT optimisation profiles, together covering every batch, e.g. --batch 1,1,1 --batch 2,8,32.",
        ),
    ] = None,
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
            help="TensorRT timing cache file or folder (default: one file per TensorRT version and GPU "
            "architecture under ~/.cache/lcr-sdk)."
        ),
    ] = None,
    resize: Annotated[
        str | None,
        typer.Option(
            help="Resize rule recorded in the manifest: short_side_center_crop (default), stretch or letterbox "
            "(the runtime applies it to every image; DeepStream needs stretch or letterbox)."
        ),
    ] = None,
    deepstream: Annotated[
        Path | None,
        typer.Option(
            help="Also write DeepStream's variant into this folder: a float planar RGB ONNX (nvinfer's "
            "preprocessing) and its secondary-inference nvinfer config (needs --resize stretch or letterbox)."
        ),
    ] = None,
    triton: Annotated[
        Path | None,
        typer.Option(
            help="Also write a Triton model repository entry REPO/<name>/ (config.pbtxt, 1/model.onnx or "
            "1/model.plan) for the model written (or given: an .onnx, or an engine)."
        ),
    ] = None,
    triton_name: Annotated[
        str | None, typer.Option(help="Model name in the Triton repository (default: the stem).")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing Triton repository entry.")] = False,
) -> None:
    """Export a checkpoint to ONNX (fp32/fp16/int8) and optionally a TensorRT engine, with its manifest.

    Example: lcr-sdk export runs/lcr/checkpoint.pt --precision int8 --calib data/train --out lcr-int8.onnx

    On the device (TensorRT and the runtime core only): lcr-sdk export lcr-fp16.onnx --trt --out lcr-fp16.engine

    Triton: lcr-sdk export lcr-fp16.onnx --triton models/ (or an engine; or with --trt, the engine built here)
    """
    from lcr_sdk.backends.base import ENGINE_SUFFIXES

    precision = precision.lower() if precision else precision  # FP16 is fp16
    parsed_batch = [_parse_batch(b) for b in batch or ["1,8,32"]]
    cache: str | Path = timing_cache if timing_cache is not None else "default"
    suffix = source.suffix.lower()
    if triton is not None and manifest is None and (suffix in ENGINE_SUFFIXES or (suffix == ".onnx" and not trt)):
        _to_triton(source, triton, triton_name, replace)  # an exported model as it is: no export, no build
        return
    if manifest is not None or suffix in ENGINE_SUFFIXES:
        if manifest is None or suffix not in ENGINE_SUFFIXES:
            raise InputError(
                "--manifest attaches an ONNX's manifest to an engine built with trtexec: lcr-sdk export "
                "model.engine --manifest model.onnx"
                + (f" ({source} is not an engine)" if suffix not in ENGINE_SUFFIXES else "")
            )
        from lcr_sdk.export.trt import attach_manifest

        built = attach_manifest(source, manifest)
        t = built.tensorrt or {}
        typer.echo(
            f"wrote {source}.json (from {manifest}; TensorRT {t.get('version')}, {t.get('gpu')}, "
            f"compute capability {t.get('compute_capability')})"
        )
        return
    if suffix == ".onnx":
        if not trt:
            raise InputError(
                f"{source} is already an exported model; to build a TensorRT engine from it on this machine pass "
                f"--trt: lcr-sdk export {source} --trt --out {source.with_suffix('.engine').name}"
            )
        from lcr_sdk.export.pipeline import check_export_options
        from lcr_sdk.export.trt import build_engine_from_onnx

        check_export_options(precision=None, workspace_gib=workspace, batch=parsed_batch)
        _check_triton(triton, triton_name, replace, out or source, parsed_batch)  # before the build
        engine_path = build_engine_from_onnx(
            source, out, precision, workspace_gib=workspace, timing_cache=cache, say=typer.echo
        )
        if triton is not None:
            _to_triton(engine_path, triton, triton_name, replace)
        return
    if suffix not in (".pt", ".pth"):
        raise InputError(
            f"cannot export {source}: give a checkpoint (.pt), an exported .onnx with --trt, or an engine "
            f"({', '.join(ENGINE_SUFFIXES)}) with --manifest"
        )
    require("torch", "export", "lcr-sdk export CHECKPOINT")
    from lcr_sdk.export import export_model
    from lcr_sdk.export.pipeline import default_out_path

    _check_triton(triton, triton_name, replace, out or default_out_path(source, precision or "fp32", trt), parsed_batch)

    with _warnings_as_lines():
        written = export_model(
            source,
            out,
            precision=precision or "fp32",
            calib_dir=calib,
            trt=trt,
            batch=parsed_batch,
            image_size=image_size,
            verify=verify,
            verify_images=verify_images,
            verify_sample=verify_sample,
            calib_method=calib_method,
            calib_images=calib_images,
            workspace_gib=workspace,
            timing_cache=cache,
            log=typer.echo,
            resize=resize,
            deepstream=deepstream,
        )
    if triton is not None:
        _to_triton(written, triton, triton_name, replace)


def _check_triton(
    repo: Path | None, name: str | None, replace: bool, model: Path, profiles: list[tuple[int, int, int]]
) -> None:
    """Refuse a Triton entry that could not be written before exporting or building the model it is for."""
    if repo is None:
        return
    from lcr_sdk.export.triton import check_triton_target

    low, high = min(p[0] for p in profiles), max(p[2] for p in profiles)
    check_triton_target(repo, name or Path(model).stem, replace, low, profiles[0][1], high)


def _to_triton(model: Path, repo: Path, name: str | None, replace: bool) -> None:
    from lcr_sdk.export.triton import write_triton_repository

    folder = write_triton_repository(model, repo, name=name, replace=replace)
    typer.echo(f"wrote Triton model {folder.name} in {repo} ({folder / 'config.pbtxt'}, {folder / '1'})")


def verify(
    model: Annotated[Path, typer.Argument(help="Exported model (.onnx; .engine where TensorRT runs).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint it was exported from.")],
    images: Annotated[Path, typer.Option("--images", "-i", help="Folder of real images (searched recursively).")],
    max_images: Annotated[int, typer.Option(help="Use at most this many images (0: all).")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")] = False,
) -> None:
    """Compare an exported model with the fp32 PyTorch model on real images; exit 1 below the precision's threshold.

    Thresholds: fp32 min cosine >= 0.9999; fp16 >= 0.999; int8 >= 0.98 and Rank-1 agreement >= 0.95.

    Example: lcr-sdk verify lcr-int8.onnx --checkpoint runs/lcr/checkpoint.pt --images data/test
    """
    if max_images < 0:
        raise InputError(f"--max-images {max_images} is not valid; use 0 (all) or a positive number")
    if not model.is_file():
        raise InputError(f"model {model} does not exist; export one with `lcr-sdk export CHECKPOINT --out {model}`")
    require("torch", "export", "lcr-sdk verify")
    from lcr_sdk.export import format_report, verify_model

    with _warnings_as_lines():
        report = verify_model(model, checkpoint, images, max_images or None, progress=not as_json)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if not report["passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("export")(export)
    app.command("verify")(verify)

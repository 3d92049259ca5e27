"""``export_model``: checkpoint -> ONNX of a precision (-> TensorRT engine) + manifests, verified, installed atomically.

Everything is built in a hidden staging folder beside the output and renamed into place only after it was written,
checked and (by default) verified, so a failure at any step leaves nothing where a model is expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lcr_sdk.backends.base import ENGINE_SUFFIXES
from lcr_sdk.errors import InputError, ModelError, require
from lcr_sdk.fileio import fsync_file, sha256_file, staging_dir
from lcr_sdk.manifest import DEFAULT_BATCH, PRECISIONS, manifest_for_checkpoint, sidecar_path, write_sidecar

STAGING_PREFIX = ".lcr-export-"  # hidden build folder beside the output; a killed export's is removed next time


def default_out_path(checkpoint: str | os.PathLike, precision: str, trt: bool) -> Path:
    """``runs/x/lcr.pt`` -> ``runs/x/lcr-fp16.onnx`` (or ``.engine`` with ``trt``)."""
    ckpt = Path(checkpoint)
    return ckpt.with_name(f"{ckpt.stem}-{precision}{'.engine' if trt else '.onnx'}")


def export_model(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    precision: str = "fp32",
    calib_dir: str | os.PathLike | None = None,
    trt: bool = False,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    image_size: int | tuple[int, int] | None = None,
    verify: bool = True,
    verify_images: str | os.PathLike | None = None,
    verify_sample: int = 64,
    calib_method: str = "percentile",
    calib_images: int = 500,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = "default",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Export the deployable part of a checkpoint and write the manifest beside it.

    Args:
        checkpoint: an lcr-sdk checkpoint (``.pt``).
        out_path: the model file: ``.onnx``, or ``.engine``/``.plan`` with ``trt`` (the ONNX is then written
            beside it with the ``.onnx`` suffix). Default: beside the checkpoint, ``<stem>-<precision>.onnx``.
        precision: ``fp32``, ``fp16`` or ``int8`` (needs ``calib_dir``).
        calib_dir: folder of real images for int8 calibration (searched recursively).
        trt: also build a TensorRT engine from the ONNX.
        batch: (min, opt, max) batch sizes the model is declared (and the engine optimised) for.
        image_size: input size (int or (H, W)); default the checkpoint's training ``image_size``.
        verify: compare with the PyTorch model on a sample of real images and refuse to install on a miss.
        verify_images: images for verification; default ``calib_dir``. Without either, verification is skipped.
        verify_sample: at most this many images are verified.
        calib_method: ``minmax``, ``percentile`` or ``entropy``.
        calib_images: at most this many calibration images are used (spread over the folder).
        workspace_gib: TensorRT workspace limit.
        timing_cache: TensorRT timing cache file; ``"default"`` is ``~/.cache/lcr-sdk/tensorrt-timing.cache``.
        progress: show progress bars.
        log: where notes and the verification report go (None: nowhere).

    Returns:
        The path of the model file (the engine with ``trt``).

    Raises:
        ModelError: bad checkpoint, or verification missed the precision's threshold.
        InputError: bad precision, output path or options. DataError: empty or unreadable image folder.
    """
    onnx = require("onnx", "export", "exporting a model")
    from lcr_sdk.export.data import find_images, load_images
    from lcr_sdk.export.graph import OPSET, check, embed_manifest, export_onnx
    from lcr_sdk.export.precision import to_fp16, to_int8
    from lcr_sdk.export.verify import format_report, verify_model
    from lcr_sdk.train.checkpoint import load_net

    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calib_dir is None:
        raise InputError("int8 export needs calibration images: pass --calib DIR (a few hundred real images)")
    out = Path(out_path) if out_path is not None else default_out_path(checkpoint, precision, trt)
    valid = ENGINE_SUFFIXES if trt else (".onnx",)
    if out.suffix.lower() not in valid:
        hint = " (--trt writes an engine; its ONNX goes beside it)" if trt else ""
        raise InputError(f"output {out} must end in {' or '.join(valid)}{hint}")
    onnx_out = out.with_suffix(".onnx")

    net, ckpt = load_net(checkpoint)  # ModelError for a missing, corrupt, foreign or newer checkpoint
    manifest = manifest_for_checkpoint(ckpt["config"], sha256_file(checkpoint), image_size, batch, precision)
    manifest = replace(manifest, opset=OPSET)
    calib = None
    if precision == "int8":  # read images before the slow work, so a bad folder fails fast
        calib, _ = load_images(find_images(calib_dir, "calibration", calib_images), manifest, "calibration")

    with staging_dir(out.parent, STAGING_PREFIX) as stage:
        fp32 = stage / "fp32.onnx"
        export_onnx(net, manifest, fp32)
        if precision == "int8":
            n_calib = to_int8(fp32, stage / "int8.onnx", calib, manifest, calib_method)
            proto = onnx.load(str(stage / "int8.onnx"))
        else:
            proto = onnx.load(str(fp32))
            if precision == "fp16":
                proto = to_fp16(proto)
        calibration = {"calibration": {"method": calib_method, "images": n_calib}} if calib is not None else {}
        manifest = replace(manifest, model_file=onnx_out.name, extra=calibration)
        embed_manifest(proto, manifest)
        check(proto)
        staged_onnx = stage / onnx_out.name
        onnx.save(proto, str(staged_onnx))
        manifest = replace(manifest, model_sha256=sha256_file(staged_onnx))
        write_sidecar(manifest, staged_onnx)
        staged = [staged_onnx]

        images = verify_images if verify_images is not None else calib_dir
        if verify and images is None:
            say(
                "note: verification skipped (no images): pass --verify-images DIR or --calib DIR, or run "
                f"`lcr-sdk verify {onnx_out} --checkpoint {checkpoint} --images DIR`"
            )
        if verify and images is not None:
            _verify(
                verify_model(staged_onnx, checkpoint, images, verify_sample, manifest=manifest, progress=progress),
                staged_onnx,
                say,
                format_report,
            )

        if trt:
            from lcr_sdk.export.trt import DEFAULT_TIMING_CACHE, build_engine

            cache = DEFAULT_TIMING_CACHE if timing_cache == "default" else timing_cache
            staged_engine = stage / out.name
            engine_manifest = build_engine(staged_onnx, staged_engine, manifest, workspace_gib, cache, progress)
            write_sidecar(engine_manifest, staged_engine)
            if verify and images is not None:
                _verify(
                    verify_model(
                        staged_engine, checkpoint, images, verify_sample, manifest=engine_manifest, progress=progress
                    ),
                    staged_engine,
                    say,
                    format_report,
                )
            staged.append(staged_engine)

        for model in staged:  # sidecar first: a model file in place always has its manifest beside it
            for src in (sidecar_path(model), model):
                fsync_file(src)
                os.replace(src, out.parent / src.name)
    say(f"wrote {out} and {sidecar_path(out).name}" + (f" (and {onnx_out.name})" if trt else ""))
    return out


def _verify(report: dict, model: Path, say: Callable[[str], None], format_report) -> None:
    say(format_report(report))
    if not report["passed"]:
        raise ModelError(
            f"the exported {report['precision']} model misses its verification threshold (min cosine "
            f"{report['cosine_min']:.5f}, Rank-1 agreement {report['rank1_agreement']:.3f}); it was not written. "
            "For int8 calibrate on more real images or another --calib-method; pass --no-verify to write it anyway"
        )

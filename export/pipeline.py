"""``export_model``: checkpoint -> ONNX of a precision (-> TensorRT engine) + manifests, verified, installed atomically.

Everything is built in a hidden staging folder beside the output and installed (model and sidecar as a pair,
:func:`lcr_sdk.manifest.install_model`) only after it was written, checked against TensorRT's parser rules, run once
(no NaN) and (by default) verified, so a failure at any step leaves the old model, or nothing, where a model is
expected.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lcr_sdk.backends.base import ENGINE_SUFFIXES
from lcr_sdk.errors import InputError, ModelError, require
from lcr_sdk.export.precision import CALIBRATION_METHODS
from lcr_sdk.fileio import is_disk_full, mib, sha256_file, staging_dir
from lcr_sdk.manifest import (
    DEFAULT_BATCH,
    PRECISIONS,
    Manifest,
    install_model,
    manifest_for_checkpoint,
    sidecar_path,
    write_sidecar,
)

_log = logging.getLogger(__name__)
STAGING_PREFIX = ".lcr-export-"  # hidden build folder beside the output; a killed export's is removed next time
# Size bounds (docs/RELIABILITY.md, "Every size option bounded"): the largest batch the model is declared for, in
# pixels (batch max x H x W; the default 32 x 224 x 224 is 1.6 M), and the calibration / verification images held
# in memory at the model's input size.
MAX_BATCH_PIXELS = 32 * 512 * 512
MAX_HELD_IMAGE_BYTES = 1 << 30


def check_export_options(
    precision: str | None = "fp32",
    calib_dir: str | os.PathLike | None = None,
    calib_method: str = "percentile",
    calib_images: int = 500,
    verify_sample: int = 64,
    workspace_gib: float = 4.0,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
) -> None:
    """Check export options before any work (the one place they are checked; the CLI passes the error through).

    Args: as :func:`export_model`; ``precision=None`` (building an engine from an ONNX, which keeps its own) skips
    the precision checks.

    Raises:
        InputError: one line naming the option (its argument and its CLI flag), what is valid and an example.
    """
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} (--precision) is not one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calib_dir is None:
        raise InputError("int8 export needs calibration images: pass --calib DIR (a few hundred real images)")
    if calib_method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration method {calib_method!r} (--calib-method) is not one of {', '.join(CALIBRATION_METHODS)}"
        )
    if not 0 < workspace_gib < float("inf"):
        raise InputError(f"workspace {workspace_gib} GiB (--workspace) is not valid; give a positive size, e.g. 4")
    if verify_sample < 2:
        raise InputError(
            f"verify_sample {verify_sample} (--verify-sample) is not valid; Rank-1 agreement needs at least 2 images"
        )
    if calib_images < 1:
        raise InputError(f"calib_images {calib_images} (--calib-images) is not valid; use a few hundred")
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise InputError(f"batch {tuple(batch)} (--batch) is not MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, e.g. 1,8,32")


def check_export_sizes(manifest: Manifest, calib_images: int, verify_sample: int, calibrating: bool) -> None:
    """Refuse sizes whose worst case does not fit the bounds above (checked once the input size is known).

    Raises:
        InputError: naming the product that is too large, the bound and the options that lower it.
    """
    spec = manifest.input
    pixels = manifest.batch_max * spec.height * spec.width
    if pixels > MAX_BATCH_PIXELS:
        raise InputError(
            f"a batch of {manifest.batch_max} at {spec.height}x{spec.width} is {pixels:,} pixels; the bound is "
            f"{MAX_BATCH_PIXELS:,} (e.g. 32 at 512x512): lower --image-size or the batch's MAX (--batch)"
        )
    per_image = spec.height * spec.width * 3
    held = (("--calib-images", calib_images, calibrating), ("--verify-sample", verify_sample, True))
    for option, count, used in held:
        if used and count * per_image > MAX_HELD_IMAGE_BYTES:
            raise InputError(
                f"{option} {count} at {spec.height}x{spec.width} holds {mib(count * per_image)} of images; the bound "
                f"is {mib(MAX_HELD_IMAGE_BYTES)}: use at most {MAX_HELD_IMAGE_BYTES // per_image}"
            )


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
    log: Callable[[str], None] | None = _log.info,
) -> Path:
    """Export the deployable part of a checkpoint and write the manifest beside it.

    Args:
        checkpoint: an lcr-sdk checkpoint (``.pt``).
        out_path: the model file: ``.onnx``, or ``.engine``/``.plan``/``.trt`` with ``trt`` (the ONNX is then
            written beside it with the ``.onnx`` suffix). Default: beside the checkpoint, ``<stem>-<precision>.onnx``.
        precision: ``fp32``, ``fp16`` or ``int8`` (needs ``calib_dir``).
        calib_dir: folder of real images for int8 calibration (searched recursively).
        trt: also build a TensorRT engine from the ONNX (on this machine: engines are specific to GPU and TensorRT).
        batch: (min, opt, max) batch sizes the model is declared (and the engine optimised) for.
        image_size: input size (int or (H, W)); default the checkpoint's training ``image_size``.
        verify: compare with the PyTorch model on a sample of real images and refuse to install on a miss.
        verify_images: images for verification; default ``calib_dir``. Without either, verification is skipped.
        verify_sample: at most this many images are verified.
        calib_method: ``minmax``, ``percentile`` or ``entropy``.
        calib_images: at most this many calibration images are used (spread over the folder).
        workspace_gib: TensorRT workspace limit.
        timing_cache: TensorRT timing cache (see :func:`lcr_sdk.export.trt.build_engine`).
        progress: show progress bars.
        log: where notes and the verification report go (None: nowhere; default the module logger).

    Returns:
        The path of the model file (the engine with ``trt``), exactly as given.

    Raises:
        ModelError: bad or non-finite checkpoint, a model that outputs NaN, or verification missed the threshold.
        InputError: bad precision, output path or options (:func:`check_export_options`), sizes past the bounds
            (:func:`check_export_sizes`), or no space left for the output (the old model is kept).
        DataError: empty or unreadable image folder.
    """
    check_export_options(precision, calib_dir, calib_method, calib_images, verify_sample, workspace_gib, batch)
    onnx = require("onnx", "export", "exporting a model")
    from lcr_sdk.export.data import find_images, load_images
    from lcr_sdk.export.graph import OPSET, check, embed_manifest, export_onnx
    from lcr_sdk.export.precision import to_fp16, to_int8
    from lcr_sdk.export.trt_rules import tensorrt_violations
    from lcr_sdk.export.verify import format_report, verify_model
    from lcr_sdk.train.checkpoint import load_net

    say = log or (lambda _msg: None)
    out = Path(out_path) if out_path is not None else default_out_path(checkpoint, precision, trt)
    valid = ENGINE_SUFFIXES if trt else (".onnx",)
    if out.suffix.lower() not in valid:
        hint = " (--trt writes an engine; its ONNX goes beside it)" if trt else ""
        raise InputError(f"output {out} must end in {' or '.join(valid)}{hint}")
    if out.is_dir():
        raise InputError(f"output {out} is a folder; give a file name inside it, e.g. {out / ('model' + valid[0])}")
    onnx_out = out.with_suffix(".onnx") if trt else out

    net, ckpt = load_net(checkpoint)  # ModelError for a missing, corrupt, foreign or newer checkpoint
    check_finite_weights(ckpt["model"], checkpoint)
    manifest = manifest_for_checkpoint(ckpt["config"], sha256_file(checkpoint), image_size, batch, precision)
    manifest = replace(manifest, opset=OPSET)
    check_export_sizes(manifest, calib_images, verify_sample, calibrating=precision == "int8")
    calib = None
    if precision == "int8" and calib_dir is not None:  # read images before the slow work: a bad folder fails fast
        calib, _ = load_images(find_images(calib_dir, "calibration", calib_images), manifest, "calibration")

    try:
        with staging_dir(out.parent, STAGING_PREFIX) as stage:
            fp32 = stage / "fp32.onnx"
            export_onnx(net, manifest, fp32)
            n_calib = 0
            if calib is not None:
                n_calib = to_int8(fp32, stage / "int8.onnx", calib, manifest, calib_method, progress=progress)
                proto = onnx.load(str(stage / "int8.onnx"))
            else:
                proto = onnx.load(str(fp32))
                if precision == "fp16":
                    proto = to_fp16(proto)
            calibration = {"calibration": {"method": calib_method, "images": n_calib}} if calib is not None else {}
            manifest = replace(manifest, model_file=onnx_out.name, extra=calibration)
            embed_manifest(proto, manifest)
            check(proto)
            problems = tensorrt_violations(proto)
            if problems:  # a graph TensorRT's parser would reject is a bug here, never the user's
                raise ModelError(f"the exported graph breaks TensorRT's ONNX rules: {'; '.join(problems[:3])}")
            staged_onnx = stage / onnx_out.name
            onnx.save(proto, str(staged_onnx))
            manifest = replace(manifest, model_sha256=sha256_file(staged_onnx))
            write_sidecar(manifest, staged_onnx)
            check_finite_outputs(staged_onnx, manifest, calib)
            staged = [(staged_onnx, onnx_out)]

            images = verify_images if verify_images is not None else calib_dir
            if verify and images is None:
                say(
                    "note: verification skipped (no images): pass --verify-images DIR or --calib DIR, or run "
                    f"`lcr-sdk verify {onnx_out} --checkpoint {checkpoint} --images DIR`"
                )
            if verify and images is not None:
                report = verify_model(
                    staged_onnx, checkpoint, images, verify_sample, manifest=manifest, progress=progress
                )
                _verify(report, say, format_report)

            if trt:
                from lcr_sdk.export.trt import build_engine

                staged_engine = stage / out.name
                engine_manifest = build_engine(
                    staged_onnx, staged_engine, manifest, workspace_gib, timing_cache, progress
                )
                write_sidecar(engine_manifest, staged_engine)
                if verify and images is not None:
                    report = verify_model(
                        staged_engine, checkpoint, images, verify_sample, manifest=engine_manifest, progress=progress
                    )
                    _verify(report, say, format_report)
                staged.append((staged_engine, out))

            for src, dest in staged:
                install_model(src, dest)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise InputError(_no_space(out, e)) from e
    say(f"wrote {out} and {sidecar_path(out).name}" + (f" (and {onnx_out.name})" if trt else ""))
    return out


def _no_space(out: Path, e: OSError) -> str:
    free = shutil.disk_usage(out.parent).free
    kept = f"{out} was left as it was" if out.exists() else f"nothing was written at {out}"
    return (
        f"no space left on the device of {out.parent} ({mib(free)} free) while exporting ({e.strerror}); "
        f"{kept}. Free some space or choose another --out"
    )


def check_finite_weights(state: dict, checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint with NaN or infinite weights (a diverged training run) before anything is written."""
    torch = require("torch", "export", "checking checkpoint weights")
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(
            f"checkpoint {checkpoint} has non-finite weights (NaN or inf in {len(bad)} tensors, e.g. {bad[0]!r}): its "
            "training diverged. Retrain with a smaller --lr (or check --tau / --moco-t > 0), or export an earlier "
            "checkpoint"
        )


def check_finite_outputs(model: Path, manifest, images=None) -> None:
    """Run the staged model once (real calibration images if given, else a grey and a noise image) through the
    runtime's ONNX Runtime backend and refuse it if any output is NaN or infinite."""
    import numpy as np

    from lcr_sdk.backends.base import backend_for

    spec = manifest.input
    n = max(manifest.batch_min, min(2, manifest.batch_max))
    if images is not None and len(images) >= n:
        batch = images[:n]
    else:
        noise = np.random.default_rng(0).integers(0, 256, (n, spec.height, spec.width, 3), dtype=np.uint8)
        batch = np.concatenate([np.full((1, spec.height, spec.width, 3), 128, np.uint8), noise])[:n]
    with backend_for(model)(model, manifest, device="cpu") as backend:
        out = backend.infer(np.ascontiguousarray(batch))
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:
        raise ModelError(
            f"the exported model outputs NaN or inf ({', '.join(bad)}) on ordinary images; it was not written. The "
            "checkpoint's weights are finite but overflow: retrain (smaller --lr), or export an earlier checkpoint"
        )


def _verify(report: dict, say: Callable[[str], None], format_report) -> None:
    say(format_report(report))
    if not report["passed"]:
        raise ModelError(
            f"the exported {report['precision']} model misses its verification threshold (min cosine "
            f"{report['cosine_min']:.5f}, Rank-1 agreement {report['rank1_agreement']:.3f}); it was not written. "
            "For int8 calibrate on more real images or another --calib-method; pass --no-verify to write it anyway"
        )

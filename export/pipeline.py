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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lcr_sdk.backends.base import ENGINE_SUFFIXES
from lcr_sdk.errors import InputError, ModelError, require
from lcr_sdk.export.precision import CALIBRATION_METHODS
from lcr_sdk.export.verify import INT8_FALLS_SHORT, int8_falls_short
from lcr_sdk.fileio import atomic_path, is_disk_full, mib, sha256_file, staging_dir
from lcr_sdk.manifest import (
    DEFAULT_BATCH,
    PRECISIONS,
    Manifest,
    install_model,
    manifest_for_checkpoint,
    profiles_problem,
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
    batch: tuple[int, int, int] | Sequence[tuple[int, int, int]] = DEFAULT_BATCH,
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
    profiles = batch_profiles(batch)
    for p in profiles:
        if len(p) != 3 or not 1 <= p[0] <= p[1] <= p[2]:
            raise InputError(f"batch {tuple(p)} (--batch) is not MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, e.g. 1,8,32")
    gap = profiles_problem([list(p) for p in profiles])
    if gap:
        raise InputError(
            f"batch profiles {', '.join(','.join(map(str, p)) for p in profiles)} (--batch, given more than once) "
            f"{gap}; add a profile for them, e.g. --batch 1,1,1 --batch 2,8,32"
        )


def batch_profiles(batch: tuple[int, int, int] | Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``batch`` as a list of (min, opt, max) profiles: one triple, or a sequence of them (a wrong length is
    refused by :func:`check_export_options`)."""
    items: list[Any] = list(batch)
    if items and all(isinstance(v, int) for v in items):
        return [tuple(items)]  # type: ignore[list-item]
    return [tuple(p) for p in items]


def manifest_profiles(manifest: Manifest, profiles: list[tuple[int, int, int]]) -> Manifest:
    """``manifest`` declaring ``profiles``: batch_min/batch_max span them, batch_opt is the first one's."""
    if len(profiles) == 1:
        lo, opt, hi = profiles[0]
        return replace(manifest, batch_min=lo, batch_opt=opt, batch_max=hi, profiles=None)
    return replace(
        manifest,
        batch_min=min(p[0] for p in profiles),
        batch_opt=profiles[0][1],
        batch_max=max(p[2] for p in profiles),
        profiles=[list(p) for p in profiles],
    )


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
    """``runs/lcr/checkpoint.pt`` -> ``runs/lcr/checkpoint-fp16.onnx`` (or ``.engine`` with ``trt``)."""
    ckpt = Path(checkpoint)
    return ckpt.with_name(f"{ckpt.stem}-{precision}{'.engine' if trt else '.onnx'}")


def export_model(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    precision: str = "fp32",
    calib_dir: str | os.PathLike | None = None,
    trt: bool = False,
    batch: tuple[int, int, int] | Sequence[tuple[int, int, int]] = DEFAULT_BATCH,
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
    resize: str | None = None,
    deepstream: str | os.PathLike | None = None,
) -> Path:
    """Export the deployable part of a checkpoint and write the manifest beside it.

    Args:
        checkpoint: an lcr-sdk checkpoint (``.pt``).
        out_path: the model file: ``.onnx``, or ``.engine``/``.plan``/``.trt`` with ``trt`` (the ONNX is then
            written beside it with the ``.onnx`` suffix). Default: beside the checkpoint, ``<stem>-<precision>.onnx``.
        precision: ``fp32``, ``fp16`` or ``int8`` (needs ``calib_dir``).
        calib_dir: folder of real images for int8 calibration (searched recursively).
        trt: also build a TensorRT engine from the ONNX (on this machine: engines are specific to GPU and TensorRT).
        batch: (min, opt, max) batch sizes the model is declared (and the engine optimised) for; or a list of
            them, one TensorRT optimisation profile each, together covering every batch from the smallest to the
            largest (e.g. ``[(1, 1, 1), (2, 8, 32)]``: batch 1 tuned on its own).
        image_size: input size (int or (H, W)); default the checkpoint's training ``image_size``.
        verify: compare with the PyTorch model on a sample of real images and refuse to install on a miss.
        verify_images: images for verification; default ``calib_dir``. Without either, verification is skipped.
        verify_sample: at most this many images are verified.
        calib_method: ``minmax``, ``percentile`` or ``entropy``.
        calib_images: at most this many calibration images are used (spread over the folder).
        resize: the manifest's resize rule (``short_side_center_crop``, the default; ``stretch``; ``letterbox``).
        deepstream: also write DeepStream's variant into this folder (:func:`write_deepstream`); needs ``resize``
            ``stretch`` or ``letterbox`` (what nvinfer can do) and fp32 or fp16.
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
    check_resize_options(resize, deepstream, precision)
    require("onnx", "export", "exporting a model")
    from lcr_sdk.export.data import find_images, load_images
    from lcr_sdk.train.checkpoint import load_net

    say = log or (lambda _msg: None)
    out = _check_out_path(checkpoint, out_path, precision, trt)
    onnx_out = out.with_suffix(".onnx") if trt else out

    net, ckpt = load_net(checkpoint)  # ModelError for a missing, corrupt, foreign or newer checkpoint
    check_finite_weights(ckpt["model"], checkpoint)
    manifest = _manifest(ckpt["config"], sha256_file(checkpoint), image_size, batch, precision, resize)
    manifest = _for_nvinfer(manifest) if deepstream is not None else manifest
    check_export_sizes(manifest, calib_images, verify_sample, calibrating=precision == "int8")
    if precision == "int8" and int8_falls_short(manifest.arch):
        warnings.warn(
            f"int8 of {manifest.arch}: {INT8_FALLS_SHORT} (docs/EXPORT.md); fp16 is the precision to deploy it in",
            stacklevel=2,
        )
    calib, unreadable = None, 0
    if precision == "int8" and calib_dir is not None:  # read images before the slow work: a bad folder fails fast
        files = find_images(calib_dir, "calibration", calib_images)
        calib, read = load_images(files, manifest, "calibration")
        unreadable = len(files) - len(read)
    images = (verify_images if verify_images is not None else calib_dir) if verify else None  # None: no verification

    try:
        with staging_dir(out.parent, STAGING_PREFIX) as stage:
            staged_onnx, manifest = _stage_onnx(
                stage, net, manifest, onnx_out.name, precision, calib, calib_method, progress, unreadable
            )
            if verify and images is None:
                say(
                    "note: verification skipped (no images): pass --verify-images DIR or --calib DIR, or run "
                    f"`lcr-sdk verify {onnx_out} --checkpoint {checkpoint} --images DIR`"
                )
            if images is not None:
                _verify(staged_onnx, manifest, checkpoint, images, verify_sample, say, progress)
            staged = [(staged_onnx, onnx_out)]
            if trt:
                staged_engine, engine_manifest = _stage_engine(
                    stage / out.name, staged_onnx, manifest, workspace_gib, timing_cache, progress
                )
                if images is not None:
                    _verify(staged_engine, engine_manifest, checkpoint, images, verify_sample, say, progress)
                staged.append((staged_engine, out))
            _install(staged, stage, net, manifest, deepstream)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise InputError(_no_space(out, e)) from e
    say(f"wrote {out} and {sidecar_path(out).name}" + (f" (and {onnx_out.name})" if trt else ""))
    if deepstream is not None:
        say(f"wrote {Path(deepstream) / DEEPSTREAM_MODEL} and {Path(deepstream) / DEEPSTREAM_CONFIG} (DeepStream)")
    return out


def _manifest(config: dict, checkpoint_sha256: str, image_size, batch, precision: str, resize: str | None) -> Manifest:
    """The exported model's manifest: the checkpoint's, with every batch profile, the resize rule and the opset."""
    from lcr_sdk.export.graph import OPSET

    profiles = batch_profiles(batch)
    manifest = manifest_for_checkpoint(config, checkpoint_sha256, image_size, profiles[0], precision)
    manifest = manifest_profiles(manifest, profiles)
    if resize is not None:
        manifest = replace(manifest, input=replace(manifest.input, resize=resize))
    return replace(manifest, opset=OPSET)


def _for_nvinfer(manifest: Manifest) -> Manifest:
    """The manifest without ``input.antialias``: a gallery built with this model must see each object as DeepStream's
    nvinfer scales it (its scaler, one bilinear resize), not block-averaged first."""
    return replace(manifest, input=replace(manifest.input, antialias=False))


def _install(
    staged: list[tuple[Path, Path]], stage: Path, net, manifest: Manifest, deepstream: str | os.PathLike | None
) -> None:
    """Install the staged models (and DeepStream's variant, then its nvinfer config, which names the model)."""
    if deepstream is not None:
        staged = staged + write_deepstream(net, manifest, stage / "deepstream", Path(deepstream))
    for src, dest in staged:
        install_model(src, dest)
    if deepstream is not None:
        config = Path(deepstream) / DEEPSTREAM_CONFIG
        if config.exists():
            warnings.warn(
                f"{config} was replaced (edits made to the previous one are gone: copy the config before "
                "re-exporting into its folder to keep them)",
                stacklevel=3,
            )
        with atomic_path(config) as tmp:
            tmp.write_text((stage / "deepstream" / DEEPSTREAM_CONFIG).read_text())
        stale = sorted(p.name for p in Path(deepstream).glob("*.engine"))
        if stale:
            warnings.warn(
                f"{deepstream} holds engine(s) built from an earlier model: {', '.join(stale)}; delete them, or "
                "nvinfer may load a stale one (a config that names it with model-engine-file)",
                stacklevel=3,
            )


def _check_out_path(
    checkpoint: str | os.PathLike, out_path: str | os.PathLike | None, precision: str, trt: bool
) -> Path:
    """The output path (given, or the default beside the checkpoint), refused if its suffix or kind is wrong."""
    out = Path(out_path) if out_path is not None else default_out_path(checkpoint, precision, trt)
    valid = ENGINE_SUFFIXES if trt else (".onnx",)
    if out.suffix.lower() not in valid:
        hint = " (--trt writes an engine; its ONNX goes beside it)" if trt else ""
        raise InputError(f"output {out} must end in {' or '.join(valid)}{hint}")
    if out.is_dir():
        raise InputError(f"output {out} is a folder; give a file name inside it, e.g. {out / ('model' + valid[0])}")
    return out


def _stage_onnx(
    stage: Path,
    net,
    manifest: Manifest,
    name: str,
    precision: str,
    calib,
    calib_method: str,
    progress: bool,
    unreadable: int = 0,
) -> tuple[Path, Manifest]:
    """Write the ONNX of ``precision`` as ``stage / name`` with its sidecar, checked against TensorRT's parser rules
    and run once (no NaN); returns it and its manifest. ``unreadable``: calibration files left out (recorded)."""
    import onnx

    from lcr_sdk.export.graph import check, embed_manifest, export_onnx
    from lcr_sdk.export.precision import to_fp16, to_int8
    from lcr_sdk.export.trt_rules import tensorrt_violations

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
    calibration = (
        {"calibration": {"method": calib_method, "images": n_calib, "unreadable": unreadable, "bias_correction": True}}
        if calib is not None
        else {}
    )
    manifest = replace(manifest, model_file=name, extra=calibration)
    embed_manifest(proto, manifest)
    check(proto)
    problems = tensorrt_violations(proto)
    if problems:  # a graph TensorRT's parser would reject is a bug here, never the user's
        raise ModelError(f"the exported graph breaks TensorRT's ONNX rules: {'; '.join(problems[:3])}")
    staged_onnx = stage / name
    onnx.save(proto, str(staged_onnx))
    manifest = replace(manifest, model_sha256=sha256_file(staged_onnx))
    write_sidecar(manifest, staged_onnx)
    check_finite_outputs(staged_onnx, manifest, calib)
    return staged_onnx, manifest


def _stage_engine(
    staged_engine: Path,
    staged_onnx: Path,
    manifest: Manifest,
    workspace_gib: float,
    timing_cache: str | os.PathLike | None,
    progress: bool,
) -> tuple[Path, Manifest]:
    """Build the TensorRT engine of the staged ONNX as ``staged_engine`` with its sidecar; returns it and its
    manifest."""
    from lcr_sdk.export.trt import build_engine

    engine_manifest = build_engine(staged_onnx, staged_engine, manifest, workspace_gib, timing_cache, progress)
    write_sidecar(engine_manifest, staged_engine)
    return staged_engine, engine_manifest


DEEPSTREAM_MODEL = "lcr-deepstream.onnx"
DEEPSTREAM_CONFIG = "config_infer_secondary_lcr.txt"


def check_resize_options(resize: str | None, deepstream: str | os.PathLike | None, precision: str) -> None:
    """Refuse a resize rule the runtime does not know, and a DeepStream export nvinfer could not feed."""
    from lcr_sdk.manifest import RESIZE_RULES

    if resize is not None and resize not in RESIZE_RULES:
        raise InputError(f"resize rule {resize!r} (--resize) is not one of {', '.join(RESIZE_RULES)}")
    if deepstream is None:
        return
    if resize not in ("stretch", "letterbox"):
        raise InputError(
            f"--deepstream needs --resize stretch or letterbox (nvinfer scales the whole object box and has no centre "
            f"crop), got {resize or 'short_side_center_crop'}: e.g. --resize letterbox --deepstream {deepstream}"
        )
    if precision not in ("fp32", "fp16"):
        raise InputError(f"--deepstream writes an fp32 or fp16 model, not {precision}; pass --precision fp16")
    if Path(deepstream).exists() and not Path(deepstream).is_dir():
        raise InputError(f"--deepstream {deepstream} is a file; give a folder (it is created if missing)")


def write_deepstream(net, manifest: Manifest, stage: Path, folder: Path) -> list[tuple[Path, Path]]:
    """Stage DeepStream's variant of ``manifest``'s model (float32 planar RGB input with 255 * mean removed, as
    nvinfer feeds it; docs/DEEPSTREAM.md) and its nvinfer config in ``stage``; returns the (staged, final) model
    pairs for :func:`install_model`, the config staged beside them.

    Raises:
        ModelError: the variant breaks TensorRT's ONNX rules (a bug here).
    """
    import onnx

    from lcr_sdk.export.deepstream import nvinfer_config
    from lcr_sdk.export.graph import embed_manifest, export_onnx
    from lcr_sdk.export.precision import to_fp16
    from lcr_sdk.export.trt_rules import tensorrt_violations

    stage.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    spec = replace(manifest.input, layout="NCHW", color="RGB", dtype="float32")
    variant = replace(manifest, input=spec, model_file=DEEPSTREAM_MODEL, model_sha256="", extra={})
    path = stage / DEEPSTREAM_MODEL
    export_onnx(net, variant, path)
    proto = onnx.load(str(path))
    if variant.precision == "fp16":
        proto = to_fp16(proto)
    embed_manifest(proto, variant)
    problems = tensorrt_violations(proto)
    if problems:
        raise ModelError(f"the DeepStream graph breaks TensorRT's ONNX rules: {'; '.join(problems[:3])}")
    onnx.save(proto, str(path))
    variant = replace(variant, model_sha256=sha256_file(path))
    write_sidecar(variant, path)
    (stage / DEEPSTREAM_CONFIG).write_text(nvinfer_config(variant, DEEPSTREAM_MODEL))
    return [(path, folder / DEEPSTREAM_MODEL)]


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


def _verify(
    model: Path,
    manifest: Manifest,
    checkpoint: str | os.PathLike,
    images: str | os.PathLike,
    sample: int,
    say: Callable[[str], None],
    progress: bool,
) -> None:
    """Compare the staged model with the PyTorch model on a sample of ``images`` and report it; ModelError on a miss."""
    from lcr_sdk.export.verify import format_report, miss_advice, verify_model

    report = verify_model(model, checkpoint, images, sample, manifest=manifest, progress=progress)
    say(format_report(report))
    if not report["passed"]:
        from lcr_sdk.export.precision import RECOMMENDED_CALIB_IMAGES

        cal = manifest.extra.get("calibration", {})
        used, left_out = cal.get("images"), cal.get("unreadable", 0)
        few = (
            f" It was calibrated on only {used} images (at least {RECOMMENDED_CALIB_IMAGES} recommended"
            + (f"; {left_out} calibration file(s) were unreadable and left out" if left_out else "")
            + ")."
            if used is not None and used < RECOMMENDED_CALIB_IMAGES
            else ""
        )
        raise ModelError(
            f"the exported {report['precision']} model misses its verification threshold (min cosine "
            f"{report['cosine_min']:.5f}, Rank-1 agreement {report['rank1_agreement']:.3f}); it was not written.{few} "
            f"To fix: {miss_advice(report['precision'], manifest.arch, report)}"
        )

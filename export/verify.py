"""Check an exported model against the fp32 PyTorch model of its checkpoint, on the same real images, through the
runtime's backends."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.fileio import sha256_file
from lcr_sdk.manifest import Manifest, read_manifest
from lcr_sdk.metrics import ranking

# precision -> (min embedding cosine, min leave-one-out Rank-1 agreement or None)
THRESHOLDS = {"fp32": (0.9999, None), "fp16": (0.999, None), "int8": (0.98, 0.95)}


def verify_model(
    model_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    images_dir: str | os.PathLike,
    max_images: int | None = 256,
    batch_size: int = 8,
    manifest: Manifest | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the exported model and the checkpoint's fp32 PyTorch model on the same images and compare.

    Both run through the runtime's own backends (:func:`lcr_sdk.backends.base.backend_for`): ONNX Runtime for an
    ``.onnx``, TensorRT for an engine, the PyTorch backend (CPU, fp32) for the checkpoint, so the figures describe
    exactly what :class:`~lcr_sdk.embedder.Embedder` runs.

    Args:
        model_path: an ``.onnx`` file or an engine.
        checkpoint: the checkpoint it was exported from.
        images_dir: a folder of real images, searched recursively.
        max_images: use at most this many images, spread over the folder (None: all).
        batch_size: images per forward pass (clipped to the model's batch range).
        manifest: the model's manifest; read from beside the model if not given.
        progress: show a progress bar.
        device: device of the exported model's backend (None: what ``Embedder`` would choose).

    Returns:
        ``{"precision", "images", "cosine_min", "cosine_median", "attention_max_abs_err", "rank1_agreement",
        "rank1_swaps", "swap_gap_median", "swap_gap_max", "reference_margin_median", "thresholds": {...},
        "passed", "provider", "reference"}``; the swap figures come from :func:`rank1_swaps`.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    from lcr_sdk.backends.base import backend_for
    from lcr_sdk.export.data import batches, find_images, load_images

    manifest = manifest or read_manifest(model_path)
    check_same_checkpoint(manifest, checkpoint, model_path)
    paths = find_images(images_dir, "verification", max_images)
    images, _ = load_images(paths, manifest, "verification")
    if len(images) < 2:
        raise InputError(f"verification needs at least 2 images for Rank-1 agreement; {images_dir} gave {len(images)}")
    batch_size = max(manifest.batch_min, min(batch_size, manifest.batch_max))
    # The reference declares the exported model's input and batch range, so one batch feeds both.
    ref_manifest = replace(manifest, precision="fp32", tensorrt=None, model_sha256="")
    model = backend_for(model_path)(model_path, manifest, device=device)
    reference = backend_for(checkpoint, "torch")(checkpoint, ref_manifest, device="cpu")
    got, ref = [], []
    with model, reference:
        for batch in tqdm(
            list(batches(images, batch_size)), desc="verify", unit="batch", disable=not progress, leave=False
        ):
            got.append(_run(model, batch, manifest.batch_min))
            ref.append(_run(reference, batch, manifest.batch_min))
        provider, ref_provider = model.provider, reference.provider
    emb, emb_ref = (np.concatenate([g["embedding"] for g in out]) for out in (got, ref))
    att, att_ref = (np.concatenate([g["attention"] for g in out]) for out in (got, ref))
    cos = np.sum(emb * emb_ref, axis=1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(emb_ref, axis=1))
    min_cos, min_rank1 = THRESHOLDS[manifest.precision]
    swaps = rank1_swaps(emb, emb_ref)
    agreement = swaps["rank1_agreement"]
    finite = bool(np.isfinite(emb).all() and np.isfinite(att).all())
    passed = bool(finite and cos.min() >= min_cos and (min_rank1 is None or agreement >= min_rank1))
    return {
        "precision": manifest.precision,
        "images": len(images),
        "cosine_min": float(np.nan_to_num(cos, nan=-1.0).min()),
        "cosine_median": float(np.median(np.nan_to_num(cos, nan=-1.0))),
        "attention_max_abs_err": float(np.nan_to_num(np.abs(att - att_ref), nan=np.inf).max()),
        "rank1_agreement": agreement,
        "rank1_swaps": swaps["swaps"],
        "swap_gap_median": swaps["gap_median"],
        "swap_gap_max": swaps["gap_max"],
        "reference_margin_median": swaps["margin_median"],
        "thresholds": {"cosine_min": min_cos, "rank1_agreement": min_rank1},
        "passed": passed,
        "provider": provider,
        "reference": ref_provider,
    }


def check_same_checkpoint(manifest: Manifest, checkpoint: str | os.PathLike, model_path: str | os.PathLike) -> None:
    """Refuse to compare a model with a checkpoint it was not exported from (the manifest records the checkpoint's
    sha256), which would report a failure in numbers instead of the mix-up. A manifest without the hash passes.

    Raises:
        ModelError: the hashes differ; names both and the fix.
    """
    if not manifest.checkpoint_sha256:
        return
    given = sha256_file(checkpoint)
    if given != manifest.checkpoint_sha256:
        raise ModelError(
            f"{model_path} was exported from checkpoint {manifest.checkpoint_sha256[:16]}..., but --checkpoint "
            f"{checkpoint} is {given[:16]}...: verify against the checkpoint the model was exported from (`lcr-sdk "
            f"info {model_path}` shows its hash), or export this checkpoint"
        )


def _run(backend, batch: np.ndarray, batch_min: int) -> dict[str, np.ndarray]:
    """One batch through a backend; a last batch under ``batch_min`` is padded with its last image (as Embedder)."""
    n = len(batch)
    if n < batch_min:
        batch = np.concatenate([batch, np.repeat(batch[-1:], batch_min - n, axis=0)])
    return {k: np.asarray(v)[:n] for k, v in backend.infer(batch).items()}


def rank1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of leave-one-out queries whose top-1 neighbour is the same under embeddings ``a`` and ``b``."""
    return rank1_swaps(a, b)["rank1_agreement"]


def rank1_swaps(model: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Rank-1 agreement of ``model`` embeddings with ``reference`` ones, and how far apart the neighbours are that a
    disagreeing query swaps, as the reference scores them.

    Every image is a query against all the others (leave-one-out). For a query whose top-1 neighbour differs, the
    gap is the reference's cosine to its own top-1 minus its cosine to the model's top-1: how much better the
    reference thought its choice was. Gaps far below the reference's typical top-1 / top-2 margin mean the
    disagreements only reorder neighbours the reference itself nearly ties.

    Returns:
        ``{"rank1_agreement", "swaps" (queries that differ), "gap_median", "gap_max" (0.0 without swaps),
        "margin_median" (the reference's median top-1 minus top-2 cosine; None with fewer than 3 images)}``.
    """

    def scores(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)  # never retrieve yourself
        return s

    ref_scores = scores(reference)
    ref_top = ranking(ref_scores, k=2)
    top = ranking(scores(model), k=1)[:, 0]
    rows = np.arange(len(top))
    differ = top != ref_top[:, 0]
    gaps = (ref_scores[rows, ref_top[:, 0]] - ref_scores[rows, top])[differ]
    margins = ref_scores[rows, ref_top[:, 0]] - ref_scores[rows, ref_top[:, 1]] if len(top) > 2 else None
    return {
        "rank1_agreement": float(np.mean(~differ)),
        "swaps": int(differ.sum()),
        "gap_median": float(np.median(gaps)) if len(gaps) else 0.0,
        "gap_max": float(gaps.max()) if len(gaps) else 0.0,
        "margin_median": float(np.median(margins)) if margins is not None else None,
    }


# Why an EfficientNet-Lite is not exported in int8 (docs/EXPORT.md has the measurements).
INT8_FALLS_SHORT = (
    "post-training int8 misses the verification thresholds on every EfficientNet-Lite checkpoint measured"
)


def int8_falls_short(arch: str) -> bool:
    """Whether ``arch`` is of the family whose int8 export is not recommended (:data:`INT8_FALLS_SHORT`)."""
    return arch.startswith("efficientnet")


def miss_advice(precision: str, arch: str, report: dict[str, Any] | None = None) -> str:
    """What to do when a model of ``arch`` exported in ``precision`` misses its verification thresholds (``report``,
    from :func:`verify_model`, tells which figure missed)."""
    keep = "pass --no-verify to write it anyway"
    if precision == "fp16":
        return f"the model's activations leave float16's range or precision: export --precision fp32, or {keep}"
    if precision == "fp32":
        return f"the graph disagrees with PyTorch, an export fault: please report it with the checkpoint, or {keep}"
    if int8_falls_short(arch):
        return f"{INT8_FALLS_SHORT} (docs/EXPORT.md): export --precision fp16 instead, or {keep}"
    if (
        report is not None
        and report["cosine_min"] >= report["thresholds"]["cosine_min"]
        and report["reference_margin_median"] is not None
        and report["swap_gap_median"] < report["reference_margin_median"]
    ):
        # Only the ranking missed, by swapping neighbours closer together than the fp32 model's typical margin.
        return (
            f"every embedding is close to the fp32 one (min cosine {report['cosine_min']:.4f}), but the images' "
            f"nearest neighbours are nearly tied: the {report['rank1_swaps']} queries that differ swap neighbours "
            f"the fp32 model scores {report['swap_gap_median']:.4f} apart in cosine (median), and int8 rounding "
            "reorders such near-ties. Calibrating on other images or with another --calib-method moves it little "
            f"(docs/EXPORT.md). If reordering near-tied neighbours is acceptable, {keep}; otherwise export "
            "--precision fp16"
        )
    return f"calibrate on more real images (--calib, a few hundred) or another --calib-method, or {keep}"


def format_report(report: dict[str, Any]) -> str:
    """A few human-readable lines."""
    t = report["thresholds"]
    need_rank1 = f" (need >= {t['rank1_agreement']})" if t["rank1_agreement"] is not None else ""
    return "\n".join(
        [
            f"verified {report['precision']} ({report.get('provider', '?')}) on {report['images']} images against the "
            f"fp32 PyTorch model ({report.get('reference', '?')}):",
            f"  embedding cosine  min {report['cosine_min']:.6f}  median {report['cosine_median']:.6f}"
            f"  (need min >= {t['cosine_min']})",
            f"  attention max abs error {report['attention_max_abs_err']:.2e}",
            f"  Rank-1 agreement {report['rank1_agreement']:.3f}{need_rank1}{_swap_note(report)}",
            "  PASSED" if report["passed"] else "  FAILED",
        ]
    )


def _swap_note(report: dict[str, Any]) -> str:
    """The Rank-1 line's second half: how far apart (for the fp32 model) the neighbours are that queries swap."""
    if not report.get("rank1_swaps"):
        return ""
    margin = report.get("reference_margin_median")
    return (
        f"\n    {report['rank1_swaps']} queries differ; they swap neighbours {report['swap_gap_median']:.4f} apart in "
        f"fp32 cosine (median; max {report['swap_gap_max']:.4f}"
        + (f"; fp32 top-1 / top-2 margin, median over all queries: {margin:.4f})" if margin is not None else ")")
    )

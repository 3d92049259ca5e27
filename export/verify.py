"""Check an exported model against the fp32 PyTorch model of its checkpoint, on the same real images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, require
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
) -> dict[str, Any]:
    """Run the exported model and the checkpoint's PyTorch ``DeployModel`` on the same images and compare.

    Args:
        model_path: an ``.onnx`` file (ONNX Runtime, CPU) or an engine (through ``lcr_sdk.Embedder``).
        checkpoint: the checkpoint it was exported from.
        images_dir: a folder of real images, searched recursively.
        max_images: use at most this many images, spread over the folder (None: all).
        batch_size: images per forward pass.
        manifest: the model's manifest; read from beside the model if not given.
        progress: show a progress bar.

    Returns:
        ``{"precision", "images", "cosine_min", "cosine_median", "attention_max_abs_err", "rank1_agreement",
        "thresholds": {...}, "passed"}``.
    """
    from tqdm import tqdm

    from lcr_sdk.export.data import batches, find_images, load_images

    manifest = manifest or read_manifest(model_path)
    paths = find_images(images_dir, "verification", max_images)
    images, _ = load_images(paths, manifest, "verification")
    if len(images) < 2:
        raise InputError(f"verification needs at least 2 images for Rank-1 agreement; {images_dir} gave {len(images)}")
    run_model = _runner(Path(model_path), manifest)
    batch_size = max(manifest.batch_min, min(batch_size, manifest.batch_max))
    run_torch = _torch_runner(checkpoint)
    got, ref = [], []
    for batch in tqdm(
        list(batches(images, batch_size)), desc="verify", unit="batch", disable=not progress, leave=False
    ):
        got.append(run_model(batch))
        ref.append(run_torch(batch))
    emb, emb_ref = (np.concatenate([g[0] for g in out]) for out in (got, ref))
    att, att_ref = (np.concatenate([g[1] for g in out]) for out in (got, ref))
    cos = np.sum(emb * emb_ref, axis=1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(emb_ref, axis=1))
    min_cos, min_rank1 = THRESHOLDS[manifest.precision]
    agreement = rank1_agreement(emb, emb_ref)
    passed = bool(cos.min() >= min_cos and (min_rank1 is None or agreement >= min_rank1))
    return {
        "precision": manifest.precision,
        "images": len(images),
        "cosine_min": float(cos.min()),
        "cosine_median": float(np.median(cos)),
        "attention_max_abs_err": float(np.abs(att - att_ref).max()),
        "rank1_agreement": agreement,
        "thresholds": {"cosine_min": min_cos, "rank1_agreement": min_rank1},
        "passed": passed,
    }


def rank1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of leave-one-out queries whose top-1 neighbour is the same under embeddings ``a`` and ``b``."""

    def top1(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        scores = e @ e.T
        np.fill_diagonal(scores, -np.inf)  # never retrieve yourself
        return ranking(scores)[:, 0]

    return float(np.mean(top1(a) == top1(b)))


def format_report(report: dict[str, Any]) -> str:
    """A few human-readable lines."""
    t = report["thresholds"]
    need_rank1 = f" (need >= {t['rank1_agreement']})" if t["rank1_agreement"] is not None else ""
    return "\n".join(
        [
            f"verified {report['precision']} on {report['images']} images against the fp32 PyTorch model:",
            f"  embedding cosine  min {report['cosine_min']:.6f}  median {report['cosine_median']:.6f}"
            f"  (need min >= {t['cosine_min']})",
            f"  attention max abs error {report['attention_max_abs_err']:.2e}",
            f"  Rank-1 agreement {report['rank1_agreement']:.3f}{need_rank1}",
            "  PASSED" if report["passed"] else "  FAILED",
        ]
    )


def _runner(model_path: Path, manifest: Manifest):
    """batch -> (embedding, attention) for the exported model."""
    if model_path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        return lambda batch: sess.run(["embedding", "attention"], {manifest.input.name: batch})
    # Engines (TensorRT) run through the runtime's backend table.
    from lcr_sdk.backends.base import backend_for

    backend = backend_for(model_path)(model_path, manifest)
    backend.load()

    def run(batch: np.ndarray):
        out = backend.infer(batch)
        return out["embedding"], out["attention"]

    return run


def _torch_runner(checkpoint: str | os.PathLike):
    """batch -> (embedding, attention) for the fp32 PyTorch DeployModel of a checkpoint."""
    torch = require("torch", "export", "verifying against the PyTorch model")
    from lcr_sdk.train.checkpoint import load_net
    from lcr_sdk.train.model import DeployModel

    net, _ = load_net(checkpoint)
    model = DeployModel(net).eval()

    def run(batch: np.ndarray):
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(batch)))
        return out[0].numpy(), out[1].numpy()

    return run

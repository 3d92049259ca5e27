"""`lcr-sdk embed / attention / bench / info`: thin commands over :class:`~lcr_sdk.embedder.Embedder`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lcr_sdk.errors import InputError

ModelArg = Annotated[Path, typer.Argument(help="Model: .onnx (ONNX Runtime), .engine/.plan (TensorRT) or .pt.")]
BackendOpt = Annotated[str | None, typer.Option(help="Backend: onnxruntime, tensorrt or torch (default: by suffix).")]
DeviceOpt = Annotated[str | None, typer.Option(help="Device: cpu, cuda, cuda:N (default: best available).")]


def embedder_for(model: Path, backend: str | None, device: str | None):
    from lcr_sdk.embedder import Embedder

    return Embedder(model, backend=backend, device=device)


def embed(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    out: Annotated[Path | None, typer.Option(help="Write the N x D float32 embeddings to this .npy file.")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
):
    """Embed images with a model. Example: lcr-sdk embed model.onnx a.jpg b.jpg --out emb.npy"""
    from lcr_sdk.fileio import atomic_path

    with embedder_for(model, backend, device) as emb:
        vectors = emb.embed([str(p) for p in images])
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors)
        typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {out}")
    else:
        for p, v in zip(images, vectors, strict=True):
            typer.echo(f"{p}  [{', '.join(f'{x:+.4f}' for x in v[:6])}, ...]  D={len(v)}")


def attention(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(help="Image file.")],
    out: Annotated[Path, typer.Option(help="Overlay picture to write (.png/.jpg).")] = Path("overlay.png"),
    part: Annotated[int | None, typer.Option(help="Show part map K (its peak marked) instead of the mask.")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
):
    """Draw where the model looked as a heatmap. Example: lcr-sdk attention model.onnx bird.jpg --out overlay.png"""
    import cv2

    from lcr_sdk.fileio import atomic_path
    from lcr_sdk.images import read_image

    img = read_image(image)
    with embedder_for(model, backend, device) as emb:
        r = emb.attend(img)
    ok, data = cv2.imencode(out.suffix or ".png", r.overlay(img, part=part))
    if not ok:
        raise InputError(f"cannot encode {out}: use a .png or .jpg name")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data.tobytes())
    typer.echo(f"wrote {out}")
    for k, x, y, s in sorted(r.peaks, key=lambda p: -p[3])[:5]:
        typer.echo(f"part {k:>2}: peak at x={x}, y={y}, score {s:.3f}")


def bench_embedder(
    emb, batches: list[int], iters: int = 20, warmup: int = 3, size: tuple[int, int] = (480, 640), seed: int = 0
) -> list[dict]:
    """Time ``emb`` per batch size: model only (ready uint8 tensors) and end to end (``embed`` on BGR frames).

    Returns:
        One dict per batch and mode: ``batch``, ``mode``, ``p50_ms``, ``p99_ms``, ``images_per_s`` (at p50).
    """
    rng = np.random.default_rng(seed)
    s = emb.manifest.input
    rows = []
    for n in batches:
        frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
        ready = np.stack([emb.prepare(f) for f in frames])
        for mode, fn, arg in (("model only", emb.infer, ready), ("with host preprocessing", emb.embed, frames)):
            for _ in range(warmup):
                fn(arg)
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                fn(arg)
                times.append(time.perf_counter() - t)
            p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
            rows.append(
                {
                    "batch": n,
                    "mode": mode,
                    "p50_ms": 1e3 * p50,
                    "p99_ms": 1e3 * p99,
                    "images_per_s": n / p50,
                    "input": f"{size[1]}x{size[0]} -> {s.width}x{s.height}",
                }
            )
    return rows


def bench(
    model: ModelArg,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    iters: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 20,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
):
    """Latency and throughput of a model. Example: lcr-sdk bench model.onnx --batch 1,8,32"""
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--batch {batch!r} is not a comma-separated list of ints, e.g. 1,8,32") from None
    if not batches or min(batches) < 1:
        raise InputError(f"--batch {batch!r}: batch sizes must be >= 1")
    with embedder_for(model, backend, device) as emb:
        m = emb.manifest
        typer.echo(
            f"{model}: backend {emb.backend_name}, provider {emb.provider}, {m.arch} {m.precision}, "
            f"frames 640x480 -> {m.input.width}x{m.input.height}"
        )
        rows = bench_embedder(emb, batches, iters)
    typer.echo("| batch | mode | p50 ms | p99 ms | images/s |\n|---|---|---|---|---|")
    for r in rows:
        typer.echo(f"| {r['batch']} | {r['mode']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} |")


def info(model: ModelArg, backend: BackendOpt = None):
    """Print a model's manifest (input, colour, outputs, batch range, versions). Example: lcr-sdk info model.onnx"""
    from lcr_sdk.backends.base import backend_for
    from lcr_sdk.errors import ModelError

    if not model.is_file():
        raise ModelError(f"model file {model} does not exist")
    typer.echo(backend_for(model, backend).read_manifest(model).to_json())


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command()(embed)
    app.command()(attention)
    app.command()(bench)
    app.command()(info)

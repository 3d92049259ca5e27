"""`lcr-sdk embed / attention / bench / info`: thin commands over :class:`~lcr_sdk.embedder.Embedder`.

Options are checked before any model loads; with ``--json`` each command prints one JSON document on stdout and
nothing else there (notes and warnings go to stderr).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from lcr_sdk.errors import InputError, ModelError

if TYPE_CHECKING:
    from lcr_sdk.embedder import Embedder

ModelArg = Annotated[Path, typer.Argument(help="Model: .onnx (ONNX Runtime), .engine/.plan (TensorRT) or .pt.")]
BackendOpt = Annotated[str | None, typer.Option(help="Backend: onnxruntime, tensorrt or torch (default: by suffix).")]
DeviceOpt = Annotated[str | None, typer.Option(help="Device: cpu, cuda, cuda:N (default: best available).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def embedder_for(model: Path, backend: str | None, device: str | None) -> Embedder:
    from lcr_sdk.embedder import Embedder

    return Embedder(model, backend=backend, device=device)


MAX_BENCH_BATCH = 256  # bench holds this many 640x480 frames (225 MiB) and the batch at the model's size


def _check_out_file(out: Path, option: str = "--out", inputs: tuple[Path, ...] = ()) -> None:
    """An output file must go into an existing folder it may write, must not be a folder and must not be one of the
    command's inputs (checked before any work)."""
    if out.is_dir():
        raise InputError(f"{option} {out} is a folder; give a file name inside it, e.g. {out / 'out.npy'}")
    if not out.parent.is_dir():
        what = "is a file" if out.parent.exists() else "does not exist"
        raise InputError(f"{option} {out}: folder {out.parent} {what}; create it first or choose another path")
    for source in inputs:
        if out.exists() and source.exists() and os.path.samefile(out, source):
            raise InputError(f"{option} {out} is the input {source}; writing it would replace it: choose another name")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(out.parent) else "is not writable"
        raise InputError(f"{option} {out}: folder {out.parent} {why}; choose another path")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def _check_images(images: list[Path]) -> None:
    """Every image argument exists and is a regular file (a FIFO would block the decoder): before the model loads."""
    from lcr_sdk.images import check_image_file

    for p in images:
        check_image_file(p)


def _check_model(model: Path) -> None:
    if not model.is_file():
        raise ModelError(
            f"model file {model} does not exist"
            + (" (it is a folder)" if model.is_dir() else "")
            + "; export one with `lcr-sdk export CKPT --out model.onnx`"
        )


def embed(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    out: Annotated[Path | None, typer.Option(help="Write the N x D float32 embeddings to this .npy file.")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
    on_bad: Annotated[
        str,
        typer.Option(
            help="An unreadable image: fail (stop, naming it) or skip (leave it out and list it; rows follow the "
            "images kept)."
        ),
    ] = "fail",
) -> None:
    """Embed images with a model. Example: lcr-sdk embed model.onnx a.jpg b.jpg --out emb.npy"""
    from lcr_sdk.fileio import atomic_path
    from lcr_sdk.gallery.build import check_on_bad

    check_on_bad(on_bad, "--on-bad")
    if out is not None:
        _check_out_file(out, inputs=(model, *images))
        if out.suffix.lower() != ".npy":
            raise InputError(f"--out {out}: embeddings are written as a NumPy .npy file; give a name ending in .npy")
    if on_bad == "fail":
        _check_images(images)
    _check_model(model)
    skipped: list[tuple[Path, str]] = []
    with embedder_for(model, backend, device) as emb:
        if on_bad == "skip":  # each image prepared alone, so one bad file is left out, not the whole command
            images, ready, skipped = _prepare_each(emb, images)
            vectors = emb.embed(ready)
        else:
            vectors = emb.embed([str(p) for p in images])  # NaN outputs are refused here, before anything is written
        provider = emb.provider
    if skipped and not as_json:
        from lcr_sdk.images import skip_list

        typer.echo(f"{len(skipped)} unreadable image(s) left out (--on-bad skip): {skip_list(skipped)}", err=True)
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors)
    if as_json:
        doc: dict[str, Any] = {"model": str(model), "provider": provider, "dim": int(vectors.shape[1])}
        doc["out"] = str(out) if out is not None else None
        doc["embeddings"] = [{"image": str(p), "vector": v.tolist()} for p, v in zip(images, vectors, strict=True)]
        doc["unreadable"] = [{"image": str(p), "reason": why} for p, why in skipped]
        typer.echo(json.dumps(doc, allow_nan=False))
    elif out is not None:
        typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {out}")
    else:
        for p, v in zip(images, vectors, strict=True):
            typer.echo(f"{p}  [{', '.join(f'{x:+.4f}' for x in v[:6])}, ...]  D={len(v)}")


def _prepare_each(emb: Embedder, images: list[Path]) -> tuple[list[Path], list[Any], list[tuple[Path, str]]]:
    """(images kept, each prepared at the model's input, (image, reason) of each left out); InputError if none is
    readable."""
    kept, ready, skipped = [], [], []
    for p in images:
        try:
            ready.append(emb.prepare(p))
            kept.append(p)
        except InputError as e:
            skipped.append((p, str(e)))
    if not ready:
        raise InputError(f"none of the {len(images)} images could be read: {skipped[0][1]}")
    return kept, ready, skipped


def attention(
    model: ModelArg,
    image: Annotated[Path, typer.Argument(help="Image file.")],
    out: Annotated[Path, typer.Option(help="Overlay picture to write (.png/.jpg).")] = Path("overlay.png"),
    part: Annotated[int | None, typer.Option(help="Show part map K (its peak marked) instead of the mask.")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw where the model looked as a heatmap. Example: lcr-sdk attention model.onnx bird.jpg --out overlay.png"""
    from lcr_sdk.errors import import_platform
    from lcr_sdk.fileio import atomic_path
    from lcr_sdk.images import read_image

    if out.suffix.lower() not in OVERLAY_SUFFIXES:
        raise InputError(f"--out {out}: {out.suffix or 'no suffix'} is not a picture format; use one of .png, .jpg")
    _check_out_file(out, inputs=(model, image))
    if part is not None and part < 0:
        raise InputError(f"--part {part} is not valid; part maps are numbered from 0")
    _check_images([image])
    _check_model(model)
    cv2 = import_platform("cv2")
    img = read_image(image)
    with embedder_for(model, backend, device) as emb:
        r = emb.attend(img)
        provider, num_parts = emb.provider, emb.manifest.num_parts
    ok, data = cv2.imencode(out.suffix, r.overlay(img, part=part))
    if not ok:
        raise InputError(f"cannot encode {out}: use a .png or .jpg name")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data.tobytes())
    peaks = sorted(r.peaks, key=lambda p: -p[3])
    if as_json:
        doc = {
            "model": str(model),
            "image": str(image),
            "out": str(out),
            "provider": provider,
            "peaks": [{"part": k, "x": x, "y": y, "score": s} for k, x, y, s in peaks],
        }
        typer.echo(json.dumps(doc, allow_nan=False))
        return
    if part is not None:
        drawn = f"part map {part}, its peak marked"
    elif num_parts:
        drawn = "the attention mask"
    else:
        drawn = "a uniform mask: a MoCo v2 model pools every position alike"
    typer.echo(f"wrote {out} ({drawn})" + ("; the strongest part peaks:" if peaks else ""))
    for k, x, y, s in peaks[:5]:
        typer.echo(f"part {k:>2}: peak at x={x}, y={y}, score {s:.3f}")


def bench_embedder(
    emb: Embedder,
    batches: list[int],
    iters: int = 20,
    warmup: int = 3,
    size: tuple[int, int] = (480, 640),
    seed: int = 0,
) -> list[dict[str, Any]]:
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
        modes: list[tuple[str, Any, Any]] = [
            ("model only", emb.infer, ready),
            ("with host preprocessing", emb.embed, frames),
        ]
        for mode, fn, arg in modes:
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
                    "p50_ms": float(1e3 * p50),
                    "p99_ms": float(1e3 * p99),
                    "images_per_s": float(n / p50),
                    "input": f"{size[1]}x{size[0]} -> {s.width}x{s.height}",
                }
            )
    return rows


def _parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--batch {text!r} is not a comma-separated list of ints, e.g. 1,8,32") from None
    if not batches or min(batches) < 1:
        raise InputError(f"--batch {text!r}: batch sizes must be >= 1, e.g. 1,8,32")
    if max(batches) > MAX_BENCH_BATCH:
        raise InputError(
            f"--batch {text!r}: batch sizes go up to {MAX_BENCH_BATCH} (each batch holds its 640x480 test frames in "
            f"memory: {MAX_BENCH_BATCH} take 225 MiB); a model runs a larger list in chunks of its batch max anyway"
        )
    return batches


def bench(
    model: ModelArg,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    iters: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed runs per batch size first.")] = 3,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency and throughput of a model. Example: lcr-sdk bench model.onnx --batch 1,8,32"""
    batches = _parse_batches(batch)
    if iters < 1:
        raise InputError(f"--iters {iters} is not valid; time at least 1 run per batch size (default 20)")
    if warmup < 0:
        raise InputError(f"--warmup {warmup} is not valid; use 0 or more")
    _check_model(model)
    with embedder_for(model, backend, device) as emb:
        m = emb.manifest
        header = (
            f"{model}: backend {emb.backend_name}, provider {emb.provider}, {m.arch} {m.precision}, "
            f"frames 640x480 -> {m.input.width}x{m.input.height}"
        )
        if not as_json:
            typer.echo(header)
        rows = bench_embedder(emb, batches, iters, warmup)
        doc = {"model": str(model), "backend": emb.backend_name, "provider": emb.provider, "rows": rows}
    if as_json:
        typer.echo(json.dumps(doc))
        return
    typer.echo("| batch | mode | p50 ms | p99 ms | images/s |\n|---|---|---|---|---|")
    for r in rows:
        typer.echo(f"| {r['batch']} | {r['mode']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} |")


def _this_machine(built: dict[str, Any] | None) -> str:
    """A line saying whether an engine can run here (only where TensorRT and a GPU answer)."""
    try:
        from lcr_sdk.backends.tensorrt import engine_mismatch, running_system

        running = running_system(0)
    except Exception as e:  # no TensorRT, no cuda-python, no GPU: say so, the manifest is still shown
        return f"this machine: cannot check ({str(e).splitlines()[0][:120]})"
    problems = engine_mismatch(built, running)
    here = f"TensorRT {running['version']} on {running['gpu']} ({running['compute_capability']})"
    return f"this machine: {here}: " + ("runs here" if not problems else "; ".join(problems))


def info(model: ModelArg, backend: BackendOpt = None, as_json: JsonOpt = False) -> None:
    """A model's manifest: input, outputs, batch range, precision and, for an engine, the TensorRT version, GPU and
    compute capability it was built for; the file is checked against the manifest's sha256. Example: lcr-sdk info
    model.onnx"""
    from lcr_sdk.backends.base import backend_for
    from lcr_sdk.manifest import check_model_file

    _check_model(model)
    m = backend_for(model, backend).read_manifest(model)
    check_model_file(model, m)  # `info` is the check after a copy: a truncated file is refused as `embed` refuses it
    if as_json:
        typer.echo(m.to_json())
        return
    spec = m.input
    lines = [
        f"{model}: {m.arch} {m.method}, {m.precision}, embedding D={m.embedding_dim}, parts K={m.num_parts}",
        f"input: {spec.name} {spec.dtype} [N, {', '.join(map(str, spec.dims))}] {spec.layout} {spec.color}, "
        f"resize {spec.resize}, batch {m.batch_min}..{m.batch_max} (opt {m.batch_opt})",
        f"outputs: {', '.join(f'{k} {v}' for k, v in m.output_shapes.items())}",
        f"checkpoint sha256 {m.checkpoint_sha256[:16] or '-'}, model sha256 {m.model_sha256[:16] or '-'}, "
        f"sdk {m.sdk_version}",
    ]
    if m.tensorrt:
        t = m.tensorrt
        lines.append(
            f"engine: TensorRT {t.get('version')}, GPU {t.get('gpu')}, compute capability {t.get('compute_capability')}"
        )
        lines.append(_this_machine(m.tensorrt))
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command()(embed)
    app.command()(attention)
    app.command()(bench)
    app.command()(info)

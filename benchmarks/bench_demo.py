#!/usr/bin/env python3
"""Demo loop frames/s and per-stage time on a 640 x 480 clip (the camera_attention loop, headless).

    python benchmarks/bench_demo.py                                  # random-init resnet18@112 and resnet50@224
    python benchmarks/bench_demo.py --model lcr-quickstart/lcr.onnx  # a given model

Per frame it times capture (decode), preprocess (resize to the model input), infer (the backend), attention maps
(Embedder.attend's host work after the inference: peaks and the mask and part maps it resizes lazily, timed
on its own), overlay (heatmap, peak marks, text) and render (mp4 write). A second pass times the
plain demo loop (capture -> attend -> overlay -> render) for frames/s. Prints markdown tables: medians over
frames with the 10th-90th percentile range.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lcr_sdk import Embedder
from lcr_sdk.video import draw_text, open_sink, open_source

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("capture", "preprocess", "infer", "maps", "overlay", "render")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_model(arch: str, size: int, folder: Path) -> Path:
    """Export a random-init LCR network (speed does not depend on the weights) to ONNX fp32."""
    from lcr_sdk.export import export_model
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    ckpt = random_init_checkpoint(folder / f"{arch}_{size}.pt", arch=arch, image_size=size, bn_batches=0)
    return Path(export_model(ckpt, folder / f"{arch}_{size}.onnx", verify=False, progress=False, log=None))


def stage_times(emb: Embedder, clip: Path, out: Path, mark_peaks) -> dict[str, list[float]]:
    """Per-frame seconds of each stage (pass 1)."""
    times = {s: [] for s in STAGES}
    with open_source(clip) as source, open_sink(out, fps=10) as sink:
        while True:
            t0 = time.perf_counter()
            frame = source.read()
            t1 = time.perf_counter()
            if frame is None:
                break
            batch = emb.prepare(frame.image)[None]
            t2 = time.perf_counter()
            out = emb.infer(batch)
            t3 = time.perf_counter()
            att = emb._attention(frame.image, out)  # what attend() does after its preprocess and infer
            t4 = time.perf_counter()
            view = mark_peaks(att.overlay(frame.image), att.peaks)
            draw_text(view, ["00.0 FPS  onnxruntime (CPUExecutionProvider)", "mask  [p] next part  [q] quit"])
            t5 = time.perf_counter()
            sink.render(view)
            t6 = time.perf_counter()
            for s, v in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                times[s].append(v)
    return times


def loop_fps(emb: Embedder, clip: Path, out: Path, mark_peaks) -> float:
    """Frames/s of the plain demo loop (pass 2)."""
    with open_source(clip) as source, open_sink(out, fps=10) as sink:
        start, n = time.perf_counter(), 0
        for frame in source:
            att = emb.attend(frame.image)
            view = mark_peaks(att.overlay(frame.image), att.peaks)
            draw_text(view, ["00.0 FPS", "mask"])
            sink.render(view)
            n += 1
    return n / (time.perf_counter() - start)


def ms(values: list[float]) -> str:
    v = np.array(values) * 1e3
    return f"{np.median(v):.2f} ({np.percentile(v, 10):.2f}-{np.percentile(v, 90):.2f})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", help="model file(s); default: two random-init models")
    p.add_argument("--frames", type=int, default=60, help="frames in the 640 x 480 clip")
    p.add_argument("--repeats", type=int, default=3, help="passes of the plain loop for frames/s")
    a = p.parse_args(argv)
    mark_peaks = _load(ROOT / "examples" / "camera_attention.py", "camera_attention").mark_peaks
    make_clip = _load(ROOT / "benchmarks" / "make_demo_clip.py", "make_demo_clip").make_clip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", frames=a.frames, hold=5)
        models = a.model or [random_model("resnet18", 112, tmp), random_model("resnet50", 224, tmp)]
        rows, fps_rows = [], []
        for path in models:
            with Embedder(path) as emb:
                m = emb.manifest
                name = f"{m.arch} {m.input.height}px K={m.num_parts} ({emb.provider})"
                stage_times(emb, clip, tmp / "warm.mp4", mark_peaks)  # warm-up pass (first-run allocations)
                t = stage_times(emb, clip, tmp / "out.mp4", mark_peaks)
                fps = [loop_fps(emb, clip, tmp / "loop.mp4", mark_peaks) for _ in range(a.repeats)]
            med = {s: statistics.median(v) for s, v in t.items()}
            ratio = (med["overlay"] + med["render"]) / med["infer"]
            rows.append(f"| {name} | " + " | ".join(ms(t[s]) for s in STAGES) + f" | {ratio:.2f} |")
            fps_rows.append(f"| {name} | {statistics.median(fps):.1f} | {min(fps):.1f}-{max(fps):.1f} |")
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {a.frames} frames 640x480 mp4, "
        "backend and provider in each row, output to mp4\n"
    )
    print("| model | " + " | ".join(f"{s} ms" for s in STAGES) + " | (overlay+render)/infer |")
    print("|---" * (len(STAGES) + 2) + "|")
    print("\n".join(rows))
    print(f"\n| model | demo loop frames/s (median of {a.repeats}) | min-max |\n|---|---|---|")
    print("\n".join(fps_rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a short 640 x 480 demo clip from the synthetic data set, as input for the demos and bench_demo.py.

    python benchmarks/make_demo_clip.py --out clip.mp4                                  # fresh synthetic birds
    python benchmarks/make_demo_clip.py --data lcr-quickstart/data/target/test --out clip.mp4  # quickstart test split

Each image is shown for --hold frames, scaled to the frame height and centred on a stretched copy of itself (so
the model's centre crop sees exactly the image). Images are taken round-robin over the classes. A JSON file
beside the clip (clip.mp4.json) lists each frame's class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from lcr_sdk.fileio import atomic_write_text
from lcr_sdk.images import list_images, read_image
from lcr_sdk.synth import class_names, render
from lcr_sdk.video import open_sink


def to_frame(image: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """A square image centred on a frame, over a stretched copy of itself."""
    frame = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    frame[y0 : y0 + side, x0 : x0 + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    return frame


def pick_images(data: Path | None, count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """``count`` (image, class) pairs round-robin over classes: from an ImageFolder split, or freshly rendered."""
    if data is None:
        names = class_names(8)
        rng = np.random.default_rng(seed)
        return [(render(names[i % len(names)], rng, image_size=224)[0], names[i % len(names)]) for i in range(count)]
    classes = [d for d in sorted(data.iterdir()) if d.is_dir() and list_images(d)]
    if not classes:
        raise SystemExit(f"{data} has no <class>/<image> sub-folders; pass an ImageFolder split such as data/test")
    files = {d.name: list_images(d) for d in classes}
    out = []
    for i in range(count):
        d = classes[i % len(classes)]
        out.append((read_image(files[d.name][(i // len(classes)) % len(files[d.name])]), d.name))
    return out


def make_clip(
    out: str | Path,
    data: str | Path | None = None,
    frames: int = 60,
    hold: int = 5,
    fps: float = 10,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
) -> Path:
    """Write the clip (and ``out.json`` with each frame's class); returns ``out``."""
    out = Path(out)
    images = pick_images(Path(data) if data else None, -(-frames // hold), seed)
    labels = []
    with open_sink(out, fps=fps) as sink:
        for i in range(frames):
            image, label = images[i // hold]
            sink.render(to_frame(image, width, height))
            labels.append(label)
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps({"frames": labels}, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("clip.mp4"), help="video file (.mp4, .avi; .mkv is lossless)")
    p.add_argument("--data", type=Path, help="ImageFolder split to take images from (default: render new ones)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--hold", type=int, default=5, help="frames per image")
    p.add_argument("--fps", type=float, default=10)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    width, height = (int(v) for v in a.size.lower().split("x"))
    path = make_clip(a.out, a.data, a.frames, a.hold, a.fps, width, height, a.seed)
    print(f"wrote {path}: {a.frames} frames {width}x{height} at {a.fps:g} fps")


if __name__ == "__main__":
    main()

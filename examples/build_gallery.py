#!/usr/bin/env python3
"""Build a retrieval gallery from a folder of labelled images (one sub-folder per label).

    python examples/build_gallery.py lcr.onnx lcr-quickstart/data/train --out gallery/
    python examples/camera_retrieval.py lcr.onnx gallery/ 0

    DIR/robin/001.jpg, DIR/robin/002.jpg, DIR/wren/001.jpg ... -> labels "robin", "wren"

Each image's id is its path relative to DIR; its metadata holds the path. An existing gallery at --out is
replaced (atomically: a crash leaves the old one). `lcr-sdk gallery build` does the same from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcr_sdk import Embedder, Gallery, LcrError
from lcr_sdk.gallery import build_from_folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .onnx, .engine or .pt")
    p.add_argument("images", type=Path, help="folder with one sub-folder of images per label")
    p.add_argument("--out", type=Path, required=True, help="gallery folder to write")
    p.add_argument("--backend", help="override the backend chosen by the model suffix")
    p.add_argument("--batch", type=int, default=16, help="images per inference batch")
    return p.parse_args(argv)


def build(model: Path, images: Path, out: Path, backend: str | None = None, batch: int = 16) -> Gallery:
    """Embed every labelled image under ``images`` and save the gallery to ``out``."""
    with Embedder(model, backend=backend) as emb:
        gallery = build_from_folder(emb, images, batch=batch, require_labels=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    gallery.save(out)
    return gallery


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gallery = build(args.model, args.images, args.out, args.backend, args.batch)
    except LcrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    labels = sorted(set(gallery.labels))
    print(f"gallery: {len(gallery)} images, {len(labels)} labels -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

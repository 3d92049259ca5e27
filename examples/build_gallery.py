#!/usr/bin/env python3
"""Build a retrieval gallery from a folder of labelled images (one sub-folder per label).

    python examples/build_gallery.py lcr.onnx lcr-quickstart/data/target/train --out gallery/
    python examples/camera_retrieval.py lcr.onnx gallery/ 0

    DIR/robin/001.jpg, DIR/robin/002.jpg, DIR/wren/001.jpg ... -> labels "robin", "wren"

Each image's id is its path relative to DIR; its metadata holds the path and the gallery records DIR, so
`lcr-sdk gallery rebuild` can re-embed the images with a new model. Images directly in DIR are added without a
label, with a warning (search finds them; the open-set threshold is calibrated without them). An existing gallery
at --out is only replaced with --replace (atomically: a crash leaves the old one). On LCR models each image's
attention is checked: --quality warn (default) reports diffuse ones, refuse leaves them out.

This builds the same gallery as `lcr-sdk gallery build MODEL DIR --out GALLERY` (library call
lcr_sdk.gallery.build_from_folder); the command also has --index, --max-spread, --on-bad and --json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcr_sdk.errors import InputError, MissingDependencyError

try:  # OpenCV, or a system library it loads (libGL), may be missing: one line naming the fix, no traceback
    from lcr_sdk import Embedder, Gallery, LcrError
    from lcr_sdk.fileio import check_can_create
    from lcr_sdk.gallery import Quality, build_from_folder
    from lcr_sdk.gallery.explain import QUALITY
    from lcr_sdk.gallery.store import DTYPES, check_target, is_gallery
except MissingDependencyError as e:
    sys.exit(f"error: {e}")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .onnx, .engine or .pt")
    p.add_argument(
        "images", type=Path, help="folder with one sub-folder of images per label (images directly in it: no label)"
    )
    p.add_argument("--out", type=Path, required=True, help="gallery folder to write")
    p.add_argument("--replace", action="store_true", help="replace an existing gallery at --out")
    p.add_argument("--backend", help="override the backend chosen by the model suffix")
    p.add_argument("--batch", type=positive_int, default=16, help="images per inference batch (>= 1)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="vector storage")
    p.add_argument("--quality", choices=QUALITY, default="warn", help="attention check per image")
    return p.parse_args(argv)


def build(
    model: Path,
    images: Path,
    out: Path,
    backend: str | None = None,
    batch: int = 16,
    replace: bool = False,
    dtype: str = "float32",
    quality: str = "warn",
) -> Gallery:
    """Embed every image under ``images`` (label: its sub-folder; none for images directly in it) and save the
    gallery to ``out``."""
    if not images.is_dir():  # before the model is loaded
        raise InputError(f"{images} is not a folder; pass a folder with one sub-folder of images per label")
    check_target(out)  # before any image is embedded
    check_can_create(out, "the gallery")
    if is_gallery(out) and not replace:
        raise InputError(f"{out} already holds a gallery; pass --replace to replace it, or choose another --out")
    flagged: list[tuple[str, Quality]] = []
    with Embedder(model, backend=backend) as emb:
        gallery = build_from_folder(
            emb,
            images,
            batch=batch,
            dtype=dtype,
            quality=quality,
            on_quality=lambda p, q: flagged.append((p, q)),
        )
    for path, q in flagged:
        print(f"{'left out' if quality == 'refuse' else 'warning'}: {path}: {q.reason}", file=sys.stderr)
    if len(gallery) == 0:
        raise InputError(f"every image of {images} was refused (--quality refuse); nothing written to {out}")
    gallery.save(out, replace=True)
    unlabelled = sum(1 for label in gallery.labels if not label)
    if unlabelled:
        print(
            f"warning: {unlabelled} image(s) directly in {images} have no label (a label is the name of the "
            f"sub-folder an image is in: {images}/<label>/<image>); search finds them, without a label, and the "
            "open-set threshold is calibrated without them",
            file=sys.stderr,
        )
    return gallery


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gallery = build(
            args.model, args.images, args.out, args.backend, args.batch, args.replace, args.dtype, args.quality
        )
    except LcrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a disk that fills up or goes read-only while the gallery is written
        from lcr_sdk.cli import os_error_line

        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    labels = sorted({label for label in gallery.labels if label})
    print(f"gallery: {len(gallery)} images, {len(labels)} labels -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

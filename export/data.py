"""Real images for calibration and verification, read through the same host preprocessing as inference."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lcr_sdk.errors import DataError, InputError
from lcr_sdk.images import IMAGE_SUFFIXES, list_images, read_image, resize_for
from lcr_sdk.manifest import Manifest


def find_images(folder: str | os.PathLike, purpose: str, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; evenly spaced ``limit`` of them if given.

    Raises:
        DataError: the folder is missing or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise DataError(f"{purpose} folder {folder} {what}; pass a folder of images")
    paths = list_images(folder, recursive=True)
    if not paths:
        raise DataError(
            f"{purpose} folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
            "pass a folder of real images like those the model will see, e.g. the data set's train/ split"
        )
    if limit is not None and len(paths) > limit:
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]  # a spread over classes, not the first folder
    return paths


def load_images(paths: list[Path], manifest: Manifest, purpose: str) -> tuple[np.ndarray, list[Path]]:
    """Read and resize images to the model input (uint8 N x H x W x 3 BGR); skip unreadable files with a warning.

    Raises:
        DataError: no file could be read.
    """
    spec = manifest.input
    images, used, bad = [], [], []
    for p in paths:
        try:
            img = read_image(p)
        except InputError:
            bad.append(p)
            continue
        images.append(resize_for(img, spec))
        used.append(p)
    if not images:
        raise DataError(
            f"none of the {len(paths)} {purpose} images could be read (first: {paths[0]}); "
            "check the files are real images"
        )
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable {purpose} image(s), e.g. {bad[0]}", stacklevel=2)
    return np.stack(images), used


def batches(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of at most ``size`` images."""
    for i in range(0, len(images), size):
        yield images[i : i + size]

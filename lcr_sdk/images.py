"""Host-side image handling shared by training evaluation and every runtime backend.

Everything after this (cast, BGR->RGB, mean/std, NCHW) happens inside the model graph; here we only bring an
image to a uint8 BGR H x W x 3 array of the model's size, by the resize rule the manifest names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lcr_sdk.errors import DataError, InputError, import_platform

if TYPE_CHECKING:
    import cv2
else:  # JetPack's OpenCV on a Jetson, opencv-python elsewhere: a missing one is an error naming the fix
    cv2 = import_platform("cv2")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
MIN_SIDE = 8  # smaller images carry no usable detail


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
REDUCED_DECODE_BYTES = 1 << 20  # files smaller than this decode fully (fast anyway)


def read_image(path: str | os.PathLike[str], min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as uint8 BGR H x W x 3.

    Args:
        path: an image file OpenCV reads (:data:`IMAGE_SUFFIXES`).
        min_size: ``(height, width)`` the caller needs at least, e.g. the model input. A large file is then decoded
            at 1/2, 1/4 or 1/8 of its size (``cv2.IMREAD_REDUCED_COLOR_*``; JPEG decodes straight to the smaller
            size) as long as both sides stay >= ``min_size``, so a 20000 x 20000 photo never needs 1.2 GB of
            pixels to make a 224 px input. Without it the full image is decoded.

    Raises:
        InputError: the file is missing, a folder, not a decodable image, or smaller than 8 px on a side.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(
            f"image file {p} does not exist; pass the path of a readable image ({', '.join(IMAGE_SUFFIXES)})"
        )
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an image file")
    data = np.fromfile(p, dtype=np.uint8)
    img = _decode(data, min_size) if data.size else None
    if img is None:
        raise InputError(
            f"{p} ({data.size} bytes) could not be decoded as an image; valid inputs are image files OpenCV reads "
            f"({', '.join(IMAGE_SUFFIXES)}); re-save or remove it"
        )
    if min(img.shape[:2]) < MIN_SIDE:
        raise InputError(
            f"{p} is a {img.shape[1]}x{img.shape[0]} image, too small to embed; each side must be >= {MIN_SIDE} px"
        )
    return img


def _decode(data: np.ndarray, min_size: tuple[int, int] | None) -> np.ndarray | None:
    """Decode, at the largest reduction that keeps both sides >= ``min_size`` (see :func:`read_image`)."""
    if min_size is None or data.size < REDUCED_DECODE_BYTES:
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    small = cv2.imdecode(data, _REDUCED[8])  # cheap, and tells the size (to within 8 px)
    if small is None:
        return None
    need_h, need_w = min_size
    full_h, full_w = small.shape[0] * 8, small.shape[1] * 8
    for factor in (8, 4, 2):
        # OpenCV rounds reduced sides up; the estimate above may overshoot by < 8 px, so keep a factor's margin
        if (full_h - 8) // factor >= need_h and (full_w - 8) // factor >= need_w:
            return small if factor == 8 else cv2.imdecode(data, _REDUCED[factor])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def to_bgr(image: Any, color: str = "bgr", min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Bring one image to a uint8 BGR H x W x 3 array.

    Args:
        image: an OpenCV BGR uint8 H x W x 3 array (default), an RGB array with ``color="rgb"``, a grayscale
            H x W (or H x W x 1) array, a BGRA/RGBA H x W x 4 array, a file path, or a PIL image.
        color: channel order of a 3/4-channel array: ``"bgr"`` (OpenCV) or ``"rgb"``.
        min_size: for a file path, the ``(height, width)`` needed at least (see :func:`read_image`).

    Raises:
        InputError: naming what was given and what is valid.
    """
    if color not in ("bgr", "rgb"):
        raise InputError(f"color={color!r} is not valid; use 'bgr' (OpenCV arrays) or 'rgb'")
    if image is None:
        raise InputError("image is None (cv2.imread returns None for a missing or unreadable file); check the path")
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, min_size)
    if type(image).__module__.startswith("PIL."):
        image, color = np.asarray(image.convert("RGB")), "rgb"
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"image of type {type(image).__name__} is not supported; pass a uint8 numpy array (H x W x 3 BGR), "
            "a file path or a PIL image"
        )
    if image.size == 0:
        raise InputError(f"image is an empty array of shape {image.shape}; check the frame source")
    if image.dtype != np.uint8:
        raise InputError(
            f"image dtype is {image.dtype}; uint8 (0..255) is required. For a float image in 0..1 use "
            "(img * 255).clip(0, 255).astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 3:
        out = image if color == "bgr" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        out = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR if color == "bgr" else cv2.COLOR_RGBA2BGR)
    else:
        raise InputError(
            f"image shape {image.shape} is not an image; valid shapes are H x W (gray), H x W x 3 (BGR/RGB) "
            "or H x W x 4 (BGRA/RGBA)"
        )
    if min(out.shape[:2]) < MIN_SIDE:
        raise InputError(
            f"image of size {out.shape[1]}x{out.shape[0]} is too small; each side must be >= {MIN_SIDE} px"
        )
    return np.ascontiguousarray(out)


def _cover_scale(h: int, w: int, height: int, width: int) -> float:
    """Scale at which an h x w image just covers height x width (the short side fits, the long side overhangs)."""
    return max(height / h, width / w)


def crop_box(
    h: int, w: int, height: int, width: int, rule: str = "short_side_center_crop"
) -> tuple[float, float, float, float]:
    """The region ``(x0, y0, x1, y1)`` of an ``h x w`` image that becomes the ``height x width`` model input.

    ``short_side_center_crop`` keeps the aspect ratio: the image is scaled to cover ``height x width`` and the
    centre is cut out; ``stretch`` uses the whole image. :func:`resize_to` cuts this box, and
    :class:`~lcr_sdk.embedder.Embedder` maps attention maps back onto it.
    """
    if rule == "stretch":
        return 0.0, 0.0, float(w), float(h)
    if rule != "short_side_center_crop":
        raise InputError(f"resize rule {rule!r} is unknown; valid: short_side_center_crop, stretch")
    scale = _cover_scale(h, w, height, width)
    cw, ch = width / scale, height / scale
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return x0, y0, x0 + cw, y0 + ch


def resize_to(
    image: np.ndarray, height: int, width: int, rule: str = "short_side_center_crop", interpolation: str = "linear"
) -> np.ndarray:
    """Resize a BGR image to ``height x width`` by a manifest resize rule (the region :func:`crop_box` names)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interp = _INTERP[interpolation]
    if rule == "stretch":
        return cv2.resize(image, (width, height), interpolation=interp)
    if rule != "short_side_center_crop":
        raise InputError(f"resize rule {rule!r} is unknown; valid: short_side_center_crop, stretch")
    # Scale the whole image to cover height x width, then cut the centre: the box crop_box() describes.
    scale = _cover_scale(h, w, height, width)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return image[top : top + height, left : left + width]


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and its sub-folders with ``recursive``), sorted by path.

    The one rule for "which files are images" (by suffix, :data:`IMAGE_SUFFIXES`, any case); hidden files and
    folders (a leading ``.``, such as staging folders or editor backups) are left out.
    """
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def labelled_images(folder: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """Images of a labelled folder: ``folder/<label>/*`` (label = sub-folder name) and ``folder/*`` (label ``""``).

    The layout galleries are built from (the ImageFolder layout of a data set split).

    Raises:
        DataError: ``folder`` is not a folder or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass a folder with one sub-folder of images per label")
    paths = list_images(folder)
    labels = [""] * len(paths)
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        found = list_images(sub)
        paths += found
        labels += [sub.name] * len(found)
    if not paths:
        raise DataError(f"no images in {folder} or its sub-folders; valid files end with {', '.join(IMAGE_SUFFIXES)}")
    return paths, labels


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map over a BGR uint8 image as a JET heatmap (red = high); a map of another size is resized."""
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, colored, alpha, 0)

"""ImageFolder data sets (ROOT/train/<class>/*, ROOT/test/<class>/*) for training and evaluation.

Every image is decoded once when the data set is opened, so an unreadable file is reported up front (skipped with
a report, or a DataError with ``on_bad='fail'``), never a crash in the middle of an epoch. Small data sets stay in
memory as decoded uint8 arrays (decoding PNGs every epoch would dominate a 2-core CPU run).
"""

from __future__ import annotations

import unicodedata
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lcr_sdk.errors import DataError, InputError
from lcr_sdk.images import IMAGE_SUFFIXES, list_images, read_image, resize_for, shrink_by_halves, skip_list
from lcr_sdk.manifest import InputSpec
from lcr_sdk.train.config import check_on_bad

CACHE_LIMIT_BYTES = 4 << 30  # keep decoded images in memory while they take less than this


@dataclass
class Split:
    """One split of an ImageFolder: file paths, integer labels and the class names they index."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    images: list[np.ndarray] | None = None  # decoded BGR images when cached
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each image

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> Split:
        """The images at ``indices`` (in that order), with the same class list."""
        images = [self.images[i] for i in indices] if self.images is not None else None
        return Split(
            self.root,
            [self.paths[i] for i in indices],
            [self.labels[i] for i in indices],
            self.classes,
            images=images,
            sizes=[self.sizes[i] for i in indices] if self.sizes else [],
        )


def scan_split(root: str | Path, split: str, on_bad: str = "skip", size: int | None = None) -> Split:
    """Find and check ``root/split/<class>/**`` (a class folder's sub-folders too; hidden folders and files are
    left out, and images directly in ``root/split``, outside any class, with a warning).

    Args:
        root: data set root.
        split: 'train' or 'test'.
        on_bad: what to do with an unreadable image: 'skip' (report and leave it out) or 'fail'.
        size: the model's input side; when given and the split is small enough, decoded images stay in memory.

    Raises:
        InputError: an unknown ``on_bad``.
        DataError: a root that is not a folder, a missing split folder, no class folders, an empty class, a class
            whose every image is unreadable, or a bad image with on_bad='fail'.
    """
    check_on_bad(on_bad)
    folder, classes, paths, labels = _find_images(Path(root), split)
    loose = list_images(folder)
    if loose:
        warnings.warn(
            f"{len(loose)} image(s) directly in {folder}, outside any class folder, left out (e.g. {loose[0].name}): "
            "move them into the folder of their class to use them",
            stacklevel=2,
        )
    out = Split(folder, [], [], classes)
    cache = size is not None and len(paths) * size * size * 3 < CACHE_LIMIT_BYTES
    images: list[np.ndarray] = []
    held = 0
    for p, y in zip(paths, labels):
        try:
            img = read_image(p)
        except Exception as e:  # InputError from read_image, or OSError
            out.skipped.append((p, str(e)))
            continue
        out.paths.append(p)
        out.labels.append(y)
        out.sizes.append((int(img.shape[0]), int(img.shape[1])))
        if cache:
            images.append(img)
            held += img.nbytes  # what is kept: the decoded image, not the model's input size
            if held > CACHE_LIMIT_BYTES:
                cache, images = False, []
    out.images = images if cache else None
    if out.skipped and on_bad == "fail":  # every bad file at once (each was tried), not one per run
        raise DataError(
            f"{len(out.skipped)} unreadable image(s) in {folder}: {skip_list(out.skipped)} (use --on-bad skip to leave "
            "such files out)"
        )
    if out.skipped:
        warnings.warn(
            f"{len(out.skipped)} unreadable image(s) in {folder} skipped: {skip_list(out.skipped)}", stacklevel=2
        )
    missing = sorted(set(range(len(classes))) - set(out.labels))
    if missing:
        raise DataError(f"every image of class '{classes[missing[0]]}' in {folder} was unreadable; fix or remove it")
    return out


def check_same_classes(train: list[str], test: list[str], root: Path) -> None:
    """Refuse train/ and test/ with other class folders (a label is an index into each split's sorted class list,
    so a class missing from one side would compare one class's images with another's).

    Raises:
        DataError: naming the folders found on one side only (``repr``, so names that differ in invisible ways,
            such as Unicode normalisation from another file system, show their difference).
    """
    if train == test:
        return
    only_train = [c for c in train if c not in test]
    only_test = [c for c in test if c not in train]
    hint, show = "", repr
    if {unicodedata.normalize("NFC", c) for c in only_train} & {unicodedata.normalize("NFC", c) for c in only_test}:
        hint, show = (
            " (some differ only in Unicode normalisation, as names copied from macOS can: rename one side)",
            ascii,
        )
    parts = [f"only in train/: {', '.join(map(show, only_train))}" if only_train else "",
             f"only in test/: {', '.join(map(show, only_test))}" if only_test else ""]  # fmt: skip
    raise DataError(
        f"train and test class folders differ in {root}: {'; '.join(p for p in parts if p)}{hint}; both splits need "
        "the same class names (a class to evaluate needs images in both)"
    )


def _no_split_folder(root: Path, split: str) -> str:
    """Why ``root`` has no ``split`` folder, and the way out that fits what it holds instead."""
    have = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    layout = "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg"
    if not root.exists():
        return (
            f"data set {root} does not exist. Expected {layout} (`lcr-sdk data import` converts the CUB/Cars/Aircraft "
            f"archives; `lcr-sdk data synth {root}` writes the synthetic set there)"
        )
    other = "test" if split == "train" else "train"
    if other in have:
        return (
            f"data set {root} has {other}/ but no {split}/ folder. Expected {layout}: move a share of each class's "
            f"images (e.g. a fifth) into {root / split}/<class>/, with the same class folder names"
        )
    if have and any(list_images(root / name) for name in have[:50]):
        return (
            f"{root} holds class folders of images ({', '.join(have[:3])}{', ...' if len(have) > 3 else ''}) but no "
            f"train/ and test/, like a split folder itself. Expected {layout}: pass the folder that holds train/ and "
            f"test/, or sort the images of each class into {root}/train/<class>/ and {root}/test/<class>/"
        )
    return f"data set {root} has no '{split}' folder (found: {have}). Expected {layout}"


def _find_images(root: Path, split: str) -> tuple[Path, list[str], list[Path], list[int]]:
    """(split folder, class names, image paths, labels) of ``root/split/<class>/*``, or the DataError saying why
    the layout is not that."""
    folder = root / split
    if root.exists() and not root.is_dir():
        raise DataError(
            f"data set {root} is a file, not a folder; extract it, or give the folder with train/<class>/ and "
            "test/<class>/ (`lcr-sdk data import` converts the CUB, Cars and Aircraft archives)"
        )
    if not folder.is_dir():
        raise DataError(_no_split_folder(root, split))
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; put each class's images in {folder}/<class>/")
    paths: list[Path] = []
    labels: list[int] = []
    for ci, name in enumerate(classes):
        files = list_images(folder / name, recursive=True)  # a class's sub-folders too, as ImageFolder reads it
        if not files:
            raise DataError(
                f"class folder {folder / name} has no images ({', '.join(IMAGE_SUFFIXES)}); add images or remove it"
            )
        paths += files
        labels += [ci] * len(files)
    return folder, classes, paths, labels


def split_validation(split: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """Carve a validation split from a train split: ``round(fraction * n)`` images of each class, seeded.

    Each class's share is drawn by a generator seeded with ``(seed, crc32(class name))`` from its sorted image
    list, so the split depends only on the files, the fraction and ``seed`` (not on the training seed, nor on the
    other classes): runs with different training seeds share one validation split, and ``evaluate`` rebuilds it
    from the checkpoint's config. With ``fraction > 0`` each class keeps at least one image in each part.

    Args:
        split: the train split (from :func:`scan_split`).
        fraction: share of each class held out, 0 <= fraction < 1; 0 returns ``(split, empty split)``.
        seed: the validation split's seed (``TrainConfig.val_seed``).

    Returns:
        ``(train_part, val_part)``, both with the full class list, images in their original order.

    Raises:
        InputError: ``fraction`` outside [0, 1).
        DataError: a class with fewer than 2 images (it cannot give one to each part).
    """
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction < 1.0):
        raise InputError(f"--val-fraction {fraction!r} is not valid; give a number >= 0 and < 1 (e.g. 0.1)")
    if fraction == 0:
        return split, split.subset([])
    labels = np.asarray(split.labels)
    val: list[int] = []
    for c, name in enumerate(split.classes):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise DataError(
                f"class '{name}' has {len(members)} training image(s) in {split.root}; a validation split needs at "
                f"least 2 per class (one to train on, one to validate); add images or use --val-fraction 0"
            )
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8", "surrogateescape"))])
        val += members[rng.permutation(len(members))[:n_val]].tolist()
    held = set(val)
    return split.subset([i for i in range(len(split)) if i not in held]), split.subset(sorted(val))


def train_side(size: int) -> int:
    """Short side at which training images are held before random resized crops (like 256 for 224)."""
    return round(size * 8 / 7)


MAX_CANVAS_ASPECT = 2.0  # longer images are held at a lower resolution (their short side below train_side)


def canvas_shape(sizes: list[tuple[int, int]], side: int) -> tuple[int, int]:
    """(H, W) of the canvas that holds every training image whole: ``side`` on the short side of the data set's
    usual orientation and, on the long side, what 95% of the images need, up to ``MAX_CANVAS_ASPECT`` times that
    (square for square images; a few panoramas do not widen every image's canvas, they are held smaller)."""
    aspects = np.array([w / h for h, w in sizes]) if sizes else np.ones(1)
    if np.median(aspects) >= 1:
        return side, round(side * float(np.clip(np.quantile(aspects, 0.95), 1.0, MAX_CANVAS_ASPECT)))
    return round(side * float(np.clip(np.quantile(1 / aspects, 0.95), 1.0, MAX_CANVAS_ASPECT))), side


EXTREME_ASPECT = 4.0  # a training image longer than this on one side is mostly not the object: said so


def warn_extreme_aspects(split: Split) -> None:
    """Warn about training images more than :data:`EXTREME_ASPECT` : 1 (a banner or a panorama is held at a few pixels
    on its short side, and the runtime's centre crop sees only its middle)."""
    odd = [(p, h, w) for p, (h, w) in zip(split.paths, split.sizes) if max(h, w) > EXTREME_ASPECT * min(h, w)]
    if odd:
        p, h, w = odd[0]
        warnings.warn(
            f"{len(odd)} training image(s) are more than {EXTREME_ASPECT:g}:1 (e.g. {p}, {w} x {h}): each is held "
            "at a few pixels on its short side and only its middle is seen at run time; crop them to the object, "
            "or leave them out",
            stacklevel=2,
        )


def fit_to_canvas(bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale an image to fit ``height x width`` with its aspect kept, centred (at :func:`canvas_box`), edges
    replicated into the margin. Returns the uint8 BGR canvas."""
    h, w = bgr.shape[:2]
    nh, nw = _fitted(h, w, height, width)
    if (nh, nw) != (h, w):  # a photo is block-averaged first, as the runtime does (InputSpec.antialias)
        bgr = shrink_by_halves(bgr, nh, nw)
    img = bgr if (nh, nw) == bgr.shape[:2] else cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (height - nh) // 2, (width - nw) // 2
    if (nh, nw) != (height, width):
        img = cv2.copyMakeBorder(img, top, height - nh - top, left, width - nw - left, cv2.BORDER_REPLICATE)
    return img


def canvas_box(h: int, w: int, height: int, width: int) -> tuple[float, float, float, float]:
    """Where :func:`fit_to_canvas` puts an h x w image: (x0, y0, x1, y1) as shares of the canvas."""
    nh, nw = _fitted(h, w, height, width)
    top, left = (height - nh) // 2, (width - nw) // 2
    return left / width, top / height, (left + nw) / width, (top + nh) / height


class TrainImages(Dataset):
    """Training images, whole and with their aspect kept, as uint8 RGB 3 x H x W canvases (see
    :func:`canvas_shape`) plus labels and indices; augmentation (random resized crops inside each image's
    ``extent``) happens later, per batch.

    Cached splits are converted once into one tensor; others are read from disk per item (use DataLoader workers).

    Attributes:
        canvas: (H, W) of every held image.
        extent: N x 4 float, the box (x0, y0, x1, y1) of each image in its canvas, as shares of the canvas.
    """

    def __init__(self, split: Split, size: int):
        self.split, self.side = split, train_side(size)
        sizes = split.sizes or [im.shape[:2] for im in split.images or []]
        self.canvas = canvas_shape(sizes, self.side)
        hc, wc = self.canvas
        self.extent = torch.tensor([canvas_box(h, w, hc, wc) for h, w in sizes], dtype=torch.float32).view(-1, 4)
        self.tensor = None
        if split.images is not None:
            self.tensor = torch.from_numpy(np.stack([self._prep(im) for im in split.images]))  # N x 3 x H x W

    def _prep(self, bgr: np.ndarray) -> np.ndarray:
        img = fit_to_canvas(bgr, *self.canvas)
        return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        """(uint8 3 x H x W RGB canvas, label, i): the index travels with the image's key into MoCo's queue."""
        if self.tensor is not None:
            return self.tensor[i], self.split.labels[i], i
        return torch.from_numpy(self._prep(read_image(self.split.paths[i]))), self.split.labels[i], i


def _fitted(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) of an image scaled to fit inside height x width with its aspect kept."""
    scale = min(height / h, width / w)
    return min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))


def eval_batches(split: Split, spec: InputSpec, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Yield uint8 N x H x W x 3 BGR batches as the deployed model receives them.

    Args:
        split: the images.
        spec: the model's input (``Manifest.input``): its size and resize rule, so evaluation sees what deployment
            sees.
        batch_size: images per batch.
    """
    for start in range(0, len(split), batch_size):
        idx = range(start, min(start + batch_size, len(split)))
        imgs = [split.images[i] if split.images is not None else read_image(split.paths[i]) for i in idx]
        yield torch.from_numpy(np.stack([resize_for(im, spec) for im in imgs]))

"""Import the fine-grained benchmarks from their official archive layouts into the ImageFolder layout training reads.

    lcr-sdk data import cub      SRC OUT    CUB-200-2011 (Caltech-UCSD Birds)
    lcr-sdk data import cars     SRC OUT    Stanford Cars (devkit .mat annotations)
    lcr-sdk data import aircraft SRC OUT    FGVC-Aircraft 2013b (variant level)

OUT gets ``train/<class>/`` and ``test/<class>/`` with the official train/test split, plus ``lcr-import.json``
(what was imported from where). Images are hard links to the source files (symbolic links, to absolute paths, when
OUT is on another file system): no copies. FGVC-Aircraft images carry a 20-pixel copyright banner at the bottom,
which is cropped off as users of the benchmark do; those images are new files (JPEG quality 95), each written
to a temporary name and renamed. The whole of OUT is built in a hidden staging folder beside it and renamed into
place at the end, so an interrupted import leaves no half-made data set. Every image the metadata lists must
exist: a missing one is an error naming it, never a silent skip.

Class folders are named ``NNN.<name>`` (official class order, 1-based), with every character that is not a
letter, digit, ``.``, ``+`` or ``-`` replaced by ``_`` (``Ram C/V Cargo Van Minivan 2012`` ->
``176.Ram_C_V_Cargo_Van_Minivan_2012``), so they are valid on every file system and sort in class order.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcr_sdk.errors import DataError, InputError, require
from lcr_sdk.fileio import atomic_path, error_under_target, staging_dir

DATASETS = ("cub", "cars", "aircraft")
AIRCRAFT_BANNER = 20  # px of copyright banner at the bottom of every FGVC-Aircraft image
JPEG_QUALITY = 95
STAGING_PREFIX = ".lcr-import-"


@dataclass
class Item:
    """One image of the benchmark: its source file, split ('train' or 'test') and 0-based class index."""

    src: Path
    split: str
    label: int


@dataclass
class Layout:
    """A benchmark read from its metadata: class names in official order and every image."""

    name: str
    classes: list[str]
    items: list[Item]
    crop_bottom: int = 0  # px to cut off the bottom of every image (0: link the file as it is)
    notes: dict[str, Any] = field(default_factory=dict)


def safe_name(name: str) -> str:
    """A class name as a folder name valid everywhere: letters, digits, '.', '+', '-'; the rest becomes '_'."""
    out = re.sub(r"[^A-Za-z0-9.+-]+", "_", name.strip()).strip("_")
    return out or "class"


def class_folders(classes: list[str]) -> list[str]:
    """``NNN.<safe name>`` for each class (1-based official order); a name that already starts with its number
    (CUB's ``001.Black_footed_Albatross``) keeps it."""
    width = max(3, len(str(len(classes))))
    out = []
    for i, name in enumerate(classes, start=1):
        safe = safe_name(name)
        out.append(safe if re.match(rf"0*{i}\.", safe) else f"{i:0{width}d}.{safe}")
    return out


def _need(path: Path, what: str, dataset: str) -> Path:
    if not path.exists():
        raise DataError(
            f"{path} is missing: not the official {dataset} layout ({what}). Extract the official archive and pass "
            f"its folder as SRC"
        )
    return path


def _lines(path: Path) -> list[list[str]]:
    """Non-empty lines of a whitespace-separated metadata file, each split once on the first space."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}); re-extract the archive") from e
    return [ln.strip().split(" ", 1) for ln in text.splitlines() if ln.strip()]


def _bad_line(path: Path, row: list[str], expected: str) -> DataError:
    return DataError(f"{path}: line {' '.join(row)!r} is not '{expected}'; the file is damaged, re-extract the archive")


# -- CUB-200-2011 ----------------------------------------------------------------------------------------------------


def read_cub(src: Path) -> Layout:
    """CUB_200_2011/: images.txt (id path), train_test_split.txt (id is_train), image_class_labels.txt
    (id class_id), classes.txt (class_id name), images/<path>."""
    root = src / "CUB_200_2011" if (src / "CUB_200_2011" / "images.txt").exists() else src
    files = {
        n: _need(root / n, "CUB_200_2011/" + n, "CUB-200-2011")
        for n in ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
    }
    images_dir = _need(root / "images", "CUB_200_2011/images/", "CUB-200-2011")
    classes: dict[int, str] = {}
    for row in _lines(files["classes.txt"]):
        if len(row) != 2 or not row[0].isdigit():
            raise _bad_line(files["classes.txt"], row, "<class_id> <name>")
        classes[int(row[0])] = row[1]
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        raise DataError(f"{files['classes.txt']}: class ids are not 1..{len(ids)}; re-extract the archive")
    paths = _table(files["images.txt"], "<image_id> <path>")
    is_train = _table(files["train_test_split.txt"], "<image_id> <is_training_image>")
    labels = _table(files["image_class_labels.txt"], "<image_id> <class_id>")
    items = []
    for image_id, rel in paths.items():
        if image_id not in is_train or image_id not in labels:
            raise DataError(
                f"image {image_id} ({rel}) of {files['images.txt']} has no entry in train_test_split.txt or "
                "image_class_labels.txt; re-extract the archive"
            )
        if not labels[image_id].isdigit():
            raise _bad_line(files["image_class_labels.txt"], [image_id, labels[image_id]], "<image_id> <class_id>")
        if is_train[image_id] not in ("0", "1"):
            raise _bad_line(files["train_test_split.txt"], [image_id, is_train[image_id]], "<image_id> <0 or 1>")
        cls = int(labels[image_id])
        if cls not in classes:
            raise DataError(f"image {image_id} has class {cls}, which classes.txt does not list; re-extract")
        items.append(Item(images_dir / rel, "train" if is_train[image_id] == "1" else "test", cls - 1))
    return Layout("cub", [classes[i] for i in ids], items)


def _table(path: Path, expected: str) -> dict[str, str]:
    out = {}
    for row in _lines(path):
        if len(row) != 2:
            raise _bad_line(path, row, expected)
        out[row[0]] = row[1].strip()
    return out


# -- Stanford Cars ---------------------------------------------------------------------------------------------------


def read_cars(src: Path) -> Layout:
    """Stanford Cars: devkit/cars_meta.mat (class_names), devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat
    (annotations: fname, class 1-based, bbox), cars_train/, cars_test/ (torchvision's stanford_cars/ folder works
    too)."""
    scipy_io = require("scipy.io", "train", "Reading the Stanford Cars annotations (.mat)")
    root = src / "stanford_cars" if (src / "stanford_cars" / "devkit").is_dir() else src
    devkit = _need(root / "devkit", "devkit/ from car_devkit.tgz", "Stanford Cars")
    meta = _need(devkit / "cars_meta.mat", "devkit/cars_meta.mat", "Stanford Cars")
    train_annos = _need(devkit / "cars_train_annos.mat", "devkit/cars_train_annos.mat", "Stanford Cars")
    test_annos = next(
        (p for p in (root / "cars_test_annos_withlabels.mat", devkit / "cars_test_annos_withlabels.mat") if p.exists()),
        root / "cars_test_annos_withlabels.mat",
    )
    _need(test_annos, "cars_test_annos_withlabels.mat, the labelled test list", "Stanford Cars")
    folders = {
        s: _need(root / f"cars_{s}", f"cars_{s}/ with the {s} images", "Stanford Cars") for s in ("train", "test")
    }

    def load(path: Path) -> dict[str, Any]:
        try:
            return scipy_io.loadmat(str(path), squeeze_me=True)
        except Exception as e:  # scipy raises ValueError / MatReadError / OSError on damaged files
            raise DataError(f"{path} is not a readable MATLAB file ({e}); re-extract the devkit") from e

    names = load(meta).get("class_names")
    if names is None:
        raise DataError(f"{meta} has no 'class_names'; it is not the devkit's cars_meta.mat")
    listed = names.tolist() if hasattr(names, "tolist") else names
    classes = [listed] if isinstance(listed, str) else [str(n) for n in listed]  # one class squeezes to a str
    items = []
    for split, path in (("train", train_annos), ("test", test_annos)):
        annos = load(path).get("annotations")
        if annos is None or annos.dtype.names is None or not {"fname", "class"} <= set(annos.dtype.names):
            raise DataError(f"{path} has no 'annotations' with 'fname' and 'class'; it is not the devkit's file")
        for a in annos.reshape(-1):
            try:
                cls = int(a["class"])
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}: {a['fname']} has class {a['class']!r}, not a number; re-extract") from e
            if not 1 <= cls <= len(classes):
                raise DataError(f"{path}: {a['fname']} has class {cls}, outside 1..{len(classes)} of {meta}")
            items.append(Item(folders[split] / str(a["fname"]), split, cls - 1))
    return Layout("cars", classes, items)


# -- FGVC-Aircraft ---------------------------------------------------------------------------------------------------


def read_aircraft(src: Path) -> Layout:
    """fgvc-aircraft-2013b/data/: variants.txt, images_variant_trainval.txt and images_variant_test.txt
    (image_id variant), images/<image_id>.jpg. The official trainval list is the training split."""
    official = src / "fgvc-aircraft-2013b" / "data"
    root = next((p for p in (official, src / "data", src) if (p / "variants.txt").exists()), official)
    _need(root / "variants.txt", "fgvc-aircraft-2013b/data/variants.txt", "FGVC-Aircraft")
    classes = [" ".join(row) for row in _lines(root / "variants.txt")]
    index = {name: i for i, name in enumerate(classes)}
    images = _need(root / "images", "data/images/", "FGVC-Aircraft")
    items = []
    for split, name in (("train", "images_variant_trainval.txt"), ("test", "images_variant_test.txt")):
        path = _need(root / name, f"data/{name}", "FGVC-Aircraft")
        for row in _lines(path):
            if len(row) != 2:
                raise _bad_line(path, row, "<image_id> <variant>")
            if row[1] not in index:
                raise DataError(f"{path}: variant {row[1]!r} of image {row[0]} is not in variants.txt; re-extract")
            items.append(Item(images / f"{row[0]}.jpg", split, index[row[1]]))
    return Layout("aircraft", classes, items, crop_bottom=AIRCRAFT_BANNER)


READERS: dict[str, Callable[[Path], Layout]] = {"cub": read_cub, "cars": read_cars, "aircraft": read_aircraft}


# -- writing the ImageFolder -----------------------------------------------------------------------------------------


def _link(src: Path, dst: Path, mode: list[str]) -> None:
    """Hard-link ``src`` to ``dst``; a symbolic link to its absolute path where hard links cannot be made."""
    if mode[0] == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            mode[0] = "symlink"  # another file system (or links not allowed): symlinks from now on
    os.symlink(src.resolve(), dst)
    if not dst.exists():
        raise DataError(f"the link {dst} -> {src.resolve()} does not resolve; check that {src} is readable")


def _crop(src: Path, dst: Path, bottom: int) -> None:
    import cv2
    import numpy as np

    from lcr_sdk.images import image_size, max_pixels

    data = np.fromfile(src, np.uint8)
    size = image_size(data)
    if size is not None and size[1] * size[2] > max_pixels():
        raise DataError(
            f"{src} declares {size[1]} x {size[2]} pixels, more than the {max_pixels():,} an image may decode to; "
            "re-extract the archive (or raise LCR_SDK_MAX_PIXELS)"
        )
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if size is not None else None
    if img is None:
        raise DataError(f"{src} is not a readable image; re-extract the archive")
    if img.shape[0] <= bottom + 8:
        raise DataError(f"{src} is {img.shape[0]} px high, too small to hold the {bottom}-px banner and an image")
    ok, buf = cv2.imencode(".jpg", img[: img.shape[0] - bottom], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DataError(f"could not encode the cropped {src}")
    with atomic_path(dst, fsync=False) as tmp:
        tmp.write_bytes(buf.tobytes())


def import_dataset(
    dataset: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    crop_banner: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Import a benchmark (``cub``, ``cars`` or ``aircraft``) from its official layout into ``out``.

    Args:
        dataset: which benchmark.
        src: the extracted official archive (the folder that holds its metadata files, or its parent).
        out: a new folder (or an empty one) for ``train/<class>/`` and ``test/<class>/``.
        crop_banner: cut FGVC-Aircraft's 20-px copyright banner off (new JPEG files); False links the originals.
        progress: show a progress bar.

    Returns:
        A summary: dataset, source, out, classes, train and test image counts, how images were placed.

    Raises:
        InputError: an unknown dataset, SRC not a folder, or OUT not a new / empty folder.
        DataError: SRC is not the official layout (names the missing or damaged file), or an image the metadata
            lists does not exist.
    """
    src_path, out_path = Path(src), Path(out)
    _check_paths(dataset, src_path, out_path)
    layout = READERS[dataset](src_path)
    missing = [it.src for it in layout.items if not it.src.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed by the {dataset} metadata do not exist, e.g. {missing[0]}; the "
            "archive is incomplete: re-extract it"
        )
    crop = layout.crop_bottom if crop_banner else 0
    with staging_dir(out_path.parent, STAGING_PREFIX) as stage:
        try:
            counts, placed = _write(layout, stage, crop, progress)
            summary = {
                "dataset": dataset,
                "source": str(src_path.resolve()),
                "out": str(out_path),
                "classes": len(layout.classes),
                "train": counts["train"],
                "test": counts["test"],
                "images": placed,
            }
            (stage / "lcr-import.json").write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:  # a full disk: name the user's OUT, never the hidden staging folder
            raise error_under_target(e, stage, out_path) from e
        if out_path.exists():
            out_path.rmdir()  # empty (checked above)
        os.replace(stage, out_path)
    return summary


def _check_paths(dataset: str, src: Path, out: Path) -> None:
    if dataset not in READERS:
        raise InputError(f"data set {dataset!r} is not one of {', '.join(DATASETS)}")
    if not src.is_dir():
        raise InputError(f"SRC {src} is not a folder; pass the extracted official {dataset} archive")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a file" if not out.is_dir() else "is not empty"
        raise InputError(f"OUT {out} {what}; give a new folder (nothing existing is overwritten)")
    if not out.parent.is_dir():
        raise InputError(f"OUT {out}: folder {out.parent} does not exist; create it first")


def _write(layout: Layout, stage: Path, crop: int, progress: bool) -> tuple[dict[str, int], str]:
    """Place every image under ``stage/<split>/<class folder>/``; returns the counts and how images were placed."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    folders = class_folders(layout.classes)
    for split in ("train", "test"):
        for folder in folders:
            (stage / split / folder).mkdir(parents=True)
    mode = ["hardlink"]
    counts = {"train": 0, "test": 0}
    seen: set[Path] = set()
    for it in tqdm(layout.items, desc=f"import {layout.name}", unit="img", disable=not progress, leave=False):
        dst = stage / it.split / folders[it.label] / it.src.name
        if dst in seen:
            raise DataError(f"two {it.split} images of class {folders[it.label]} are named {it.src.name}")
        seen.add(dst)
        if crop:
            _crop(it.src, dst.with_suffix(".jpg"), crop)
        else:
            _link(it.src, dst, mode)
        counts[it.split] += 1
    return counts, f"cropped {crop} px banner (new JPEG files)" if crop else f"{mode[0]}s to the source files"

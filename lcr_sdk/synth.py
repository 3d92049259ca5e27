"""A built-in, deterministic, offline fine-grained data set ("synthetic birds").

Every image shows one object: a body (ellipse) with a head, a tail and a wing. The class is given only by small,
local part details, drawn dark-on-light so they survive colour jitter and grayscale:

    crest on the head   : spike | knob | double spike | none ...   (``CRESTS``)
    wing bar on the body: single bar | double bar | ...             (``WINGS``)
    tail shape          : fan | fork | ...                          (``TAILS``)

Everything else varies per image and carries no class information: background texture (stripes, blobs,
checks, noise) and its colour cast, clutter shapes, the body colour, the object's position, scale, rotation and
mirror. That is the situation LCR addresses: instance discrimination is easy (every background differs),
class recognition needs the common rationale (the parts).

The data set is written as an ImageFolder: ``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png``, plus
``OUT/synth.json`` with the options and per-image object boxes. Same options and seed -> same bytes.

:func:`generate_protocol` writes the two data sets of the built-in benchmark, which emulates the paper's setting
(supervised ImageNet weights, then self-supervised training on a fine-grained set such as CUB): ``OUT/source``
holds other part combinations (classes the target never shows) for supervised pretraining, ``OUT/target`` the
fine-grained classes for the self-supervised stage and the evaluation. Both use the same parts, so what the
source teaches (part detectors) transfers, as ImageNet features transfer to birds.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lcr_sdk.errors import DataError, InputError
from lcr_sdk.fileio import atomic_path, atomic_write_text, error_under_target, remove_stale_staging, staging_dir

log = logging.getLogger(__name__)

CRESTS = ("spike", "knob", "double-spike", "flat")
WINGS = ("single-bar", "double-bar", "spots")
TAILS = ("fan", "fork", "pin")
# Size of the smallest class parts (crest, wing spots) against the body: large enough that a supervised ResNet-18
# learns them at 112 px within the built-in benchmark's pretraining budget (docs/BENCHMARKS.md, "Training").
CREST_SCALE = 1.5
SPOT_SCALE = 1.4
# Bounds of the size options, so that any run fits the memory budget docs/RELIABILITY.md states (512 MB): a run at
# 1024 px peaks at 160 MB resident, and the object boxes kept for synth.json, with their JSON text, take 300 MB at
# the most images (36 classes of 2 x 5000).
MAX_IMAGE_SIZE = 1024
MAX_PER_CLASS = 5000
# Bumped whenever the same options draw other images, so that a set written by an older generator is not reused.
GENERATOR_VERSION = 2


@dataclass
class SynthConfig:
    """Options of the synthetic data set.

    Attributes:
        num_classes: number of classes, at most len(CRESTS) * len(WINGS) * len(TAILS) = 36.
        train_per_class: training images per class.
        test_per_class: test images per class.
        image_size: side of the square images in pixels.
        difficulty: 0 (plain backgrounds, large objects) .. 1 (busy, high-contrast clutter, small objects).
        seed: master seed; every image has its own generator derived from (seed, split, class, index).
        first_class: index of the first class in the fixed class order (:func:`class_names`); a data set of
            classes ``first_class .. first_class + num_classes - 1`` shares no class with one of classes
            ``0 .. first_class - 1``, and each image is the same as in a data set that starts at 0 and holds it.
    """

    num_classes: int = 8
    train_per_class: int = 120
    test_per_class: int = 40
    image_size: int = 112
    difficulty: float = 0.5
    seed: int = 0
    first_class: int = 0


MAX_CLASSES = len(CRESTS) * len(WINGS) * len(TAILS)


def class_names(num_classes: int, first_class: int = 0) -> list[str]:
    """Class names, e.g. ``c03_knob_double-bar_fan``; classes are spread over all three part attributes.

    The order is fixed: class ``i`` is always the same part combination, whatever ``num_classes`` is, and no two
    indices share a combination, so disjoint index ranges are disjoint sets of classes.
    """
    if not 0 <= first_class < MAX_CLASSES:
        raise InputError(f"first_class={first_class} is not valid; choose 0..{MAX_CLASSES - 1}")
    if not 2 <= num_classes <= MAX_CLASSES - first_class:
        after = f" after first_class={first_class}" if first_class else ""
        raise InputError(
            f"num_classes={num_classes} (--classes) is not valid{after}; choose 2..{MAX_CLASSES - first_class} "
            f"(a class is one of {MAX_CLASSES} part combinations, and retrieval needs two classes or more)"
        )
    combos = list(itertools.product(range(len(CRESTS)), range(len(WINGS)), range(len(TAILS))))
    # Spread the chosen classes: step through the combinations so that neighbours differ in several parts.
    step = next(s for s in (7, 5, 11, 13, 1) if math.gcd(s, len(combos)) == 1)
    names = []
    for i in range(first_class, first_class + num_classes):
        c, w, t = combos[(i * step) % len(combos)]
        names.append(f"c{i:02d}_{CRESTS[c]}_{WINGS[w]}_{TAILS[t]}")
    return names


def _parts_of(name: str) -> tuple[str, str, str]:
    _, crest, wing, tail = name.split("_")
    return crest, wing, tail


def _random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    v = rng.integers(lo, hi, size=3)
    return int(v[0]), int(v[1]), int(v[2])


def _background(rng: np.random.Generator, s: int, difficulty: float) -> np.ndarray:
    """Class-irrelevant, instance-specific background: textured, colour-cast, cluttered."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    base = np.array(_random_colour(rng, 40, 216), np.float32)
    other = np.array(_random_colour(rng, 40, 216), np.float32)
    kind = rng.integers(4)
    if kind == 0:  # stripes at a random angle and frequency
        a, f = rng.uniform(0, math.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)) + rng.uniform(0, 6.3))
    elif kind == 1:  # checks
        n = rng.integers(3, 9)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    elif kind == 2:  # smooth blobs
        small = rng.random((4, 4)).astype(np.float32)
        t = cv2.resize(small, (s, s), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    else:  # fine noise
        t = cv2.GaussianBlur(rng.random((s, s)).astype(np.float32), (0, 0), 1.0)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    contrast = 0.3 + 0.7 * difficulty
    t = 0.5 + (t - 0.5) * contrast
    img: np.ndarray = (base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]).astype(np.uint8)
    for _ in range(int(rng.integers(1, 3 + round(6 * difficulty)))):  # clutter shapes
        c = _random_colour(rng)
        x, y = (int(v) for v in rng.integers(0, s, size=2))
        r = int(rng.integers(max(2, s // 20), max(3, s // 7)))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r // 2), c, -1)
        else:
            cv2.line(img, (x - r, y), (int(x + r * rng.uniform(-1, 1)), y + r), c, max(1, s // 48))
    return img


def _rot(points: np.ndarray, angle: float, centre: np.ndarray, mirror: bool) -> np.ndarray:
    """Object-frame points (x right = towards head) -> image coordinates."""
    p = points.copy()
    if mirror:
        p[:, 1] = -p[:, 1]
    c, s = math.cos(angle), math.sin(angle)
    out: np.ndarray = (p @ np.array([[c, s], [-s, c]], np.float32)) + centre
    return out


@dataclass(frozen=True)
class _Pen:
    """Draws in the object's frame (x right = towards the head) onto ``img``, at 1/16 px precision."""

    img: np.ndarray
    angle: float
    centre: np.ndarray
    mirror: bool

    def at(self, *xy: Any) -> np.ndarray:
        """Object-frame points ``(x, y), ...`` -> image coordinates, N x 2."""
        return _rot(np.array(xy, np.float32).reshape(-1, 2), self.angle, self.centre, self.mirror)

    def fill(self, pts: np.ndarray, col: tuple[int, int, int]) -> None:
        cv2.fillPoly(self.img, [np.round(pts * 16).astype(np.int32)], col, cv2.LINE_AA, shift=4)

    def circle(self, c: np.ndarray, radius: float, col: tuple[int, int, int], thickness: int = -1) -> None:
        """A circle around image point ``c`` (filled unless ``thickness`` is given)."""
        cv2.circle(self.img, (round(c[0] * 16), round(c[1] * 16)), round(radius * 16), col, thickness, cv2.LINE_AA, 4)


_INK, _PAPER = (15, 15, 15), (245, 245, 245)


def _draw_tail(pen: _Pen, tail: str, L: float, H: float) -> None:
    """The tail (a class part), behind the body."""
    tx = -L * 0.85
    if tail == "fan":
        pen.fill(pen.at((tx, 0), (tx - L * 0.6, H * 0.9), (tx - L * 0.6, -H * 0.9)), _INK)
    elif tail == "fork":
        pen.fill(pen.at((tx, 0), (tx - L * 0.65, H * 1.0), (tx - L * 0.35, 0), (tx - L * 0.65, -H * 1.0)), _INK)
    else:  # pin: one long thin tail
        pen.fill(pen.at((tx, H * 0.18), (tx - L * 0.8, 0), (tx, -H * 0.18)), _INK)


def _draw_wing(pen: _Pen, wing: str, L: float, H: float) -> None:
    """The wing (a class part): dark marks on a light wing patch."""
    pen.fill(pen.at((-L * 0.45, -H * 0.05), (L * 0.35, -H * 0.05), (L * 0.1, -H * 0.75), (-L * 0.5, -H * 0.7)), _PAPER)
    if wing in ("single-bar", "double-bar"):
        xs = (-0.12,) if wing == "single-bar" else (-0.34, 0.06)
        for x in xs:
            pen.fill(
                pen.at(
                    (L * x, -H * 0.08),
                    (L * (x + 0.2), -H * 0.08),
                    (L * (x + 0.15), -H * 0.72),
                    (L * (x - 0.05), -H * 0.72),
                ),
                _INK,
            )
    else:  # spots
        for x, y in ((-0.3, -0.35), (-0.05, -0.45), (0.15, -0.3)):
            pen.circle(pen.at((L * x, H * y))[0], H * 0.2 * SPOT_SCALE, _INK)


def _draw_crest(pen: _Pen, crest: str, hx: float, hy: float, cr: float) -> None:
    """The crest (a class part) on top of the head at ``(hx, hy)``, in units of ``cr``."""
    if crest == "spike":
        pen.fill(pen.at((hx - cr * 0.35, hy), (hx, hy - cr * 1.3), (hx + cr * 0.35, hy)), _INK)
    elif crest == "double-spike":
        pen.fill(pen.at((hx - cr * 0.6, hy), (hx - cr * 0.35, hy - cr * 1.2), (hx - cr * 0.1, hy)), _INK)
        pen.fill(pen.at((hx + cr * 0.1, hy), (hx + cr * 0.35, hy - cr * 1.2), (hx + cr * 0.6, hy)), _INK)
    elif crest == "knob":
        pen.circle(pen.at((hx, hy - cr * 0.35))[0], cr * 0.45, _INK)
    else:  # flat: a bar along the top of the head
        pen.fill(
            pen.at(
                (hx - cr * 0.7, hy + cr * 0.1),
                (hx + cr * 0.7, hy + cr * 0.1),
                (hx + cr * 0.6, hy - cr * 0.3),
                (hx - cr * 0.6, hy - cr * 0.3),
            ),
            _INK,
        )


def _draw_object(
    img: np.ndarray, rng: np.random.Generator, parts: tuple[str, str, str], difficulty: float
) -> list[int]:
    """Draw the 'bird' and return its bounding box [x0, y0, x1, y1] in pixels."""
    s = img.shape[0]
    crest, wing, tail = parts
    scale = s * rng.uniform(0.48, 0.62) * (1.15 - 0.3 * difficulty)  # body length in px
    angle = rng.uniform(-0.6, 0.6) + (math.pi if rng.random() < 0.5 else 0.0)
    mirror = bool(rng.random() < 0.5)
    margin = 0.55 * scale
    centre = rng.uniform(margin, s - margin, size=2).astype(np.float32)
    body_col = _random_colour(rng, 90, 256)
    L, H = scale / 2, scale / 4.2  # body half-length and half-height (object frame)
    thick = max(1, round(s / 64))
    pen = _Pen(img, angle, centre, mirror)

    _draw_tail(pen, tail, L, H)
    # body: ellipse polygon in the body colour with a dark outline
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    body = pen.at(*np.stack([L * np.cos(t), H * np.sin(t)], 1).ravel())
    pen.fill(body, body_col)
    cv2.polylines(img, [np.round(body * 16).astype(np.int32)], True, _INK, thick, cv2.LINE_AA, shift=4)
    _draw_wing(pen, wing, L, H)
    # head with an eye, then the crest on top of the head
    hc = pen.at((L * 1.0, -H * 0.35))[0]
    hr = H * 0.62
    pen.circle(hc, hr, body_col)
    pen.circle(hc, hr, _INK, thick)
    pen.circle(pen.at((L * 1.12, -H * 0.45))[0], hr * 0.22, _INK)
    hx, hy = L * 1.0, -H * 0.35 - hr * 0.85  # top of the head, object frame
    cr = hr * CREST_SCALE  # the crest's unit
    _draw_crest(pen, crest, hx, hy, cr)
    head = pen.at(*[(L + dx * hr, -H * 0.35 + dy * hr) for dx in (-1, 1) for dy in (-1, 1)])  # head circle's corners
    pts = np.concatenate(
        [body, head, pen.at((L * 1.0, hy - cr * 1.3)), pen.at((-L * 1.6, H * 1.0)), pen.at((-L * 1.6, -H * 1.0))]
    )
    x0, y0 = pts.min(0).clip(0, s)
    x1, y1 = pts.max(0).clip(0, s)
    return [round(float(x0)), round(float(y0)), round(float(x1)), round(float(y1))]


def render(
    name: str, rng: np.random.Generator, image_size: int = 112, difficulty: float = 0.5
) -> tuple[np.ndarray, list[int]]:
    """Render one image of class ``name``; returns ``(bgr_uint8, box)``."""
    img = _background(rng, image_size, difficulty)
    box = _draw_object(img, rng, _parts_of(name), difficulty)
    cast = rng.uniform(1 - 0.25 * difficulty, 1 + 0.25 * difficulty, size=3)  # per-image colour cast
    img = (img.astype(np.float32) * cast).clip(0, 255).astype(np.uint8)
    return img, box


def generate(out: str | Path, cfg: SynthConfig | None = None, progress: bool = True) -> Path:
    """Write the data set to ``out`` (created if needed; existing files with the same names are replaced).

    Returns:
        The data set root (``out``), laid out as ``train/<class>/*.png`` and ``test/<class>/*.png``.
    """
    cfg = cfg or SynthConfig()
    check_config(cfg)
    out = Path(out)
    names = class_names(cfg.num_classes, cfg.first_class)
    jobs = [
        (split, si, ci, i)
        for si, (split, n) in enumerate((("train", cfg.train_per_class), ("test", cfg.test_per_class)))
        for ci in range(len(names))
        for i in range(n)
    ]
    boxes: dict[str, list[int]] = {}
    from tqdm import tqdm  # type: ignore[import-untyped]

    for split in ("train", "test"):
        for name in names:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".*.tmp"):  # temporary files of a killed run: never a finished image
                stale.unlink(missing_ok=True)
    for split, si, ci, i in tqdm(jobs, desc="synth data", unit="img", disable=not progress, leave=False):
        rng = np.random.default_rng([cfg.seed, si, cfg.first_class + ci, i])
        img, box = render(names[ci], rng, cfg.image_size, cfg.difficulty)
        rel = f"{split}/{names[ci]}/{i:05d}.png"
        write_png(out / rel, img)
        boxes[rel] = box
    meta = {
        "generator": "lcr_sdk.synth",
        "generator_version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "classes": names,
        "boxes": boxes,
    }
    atomic_write_text(out / "synth.json", json.dumps(meta, indent=1))
    return out


def check_config(cfg: SynthConfig) -> None:
    """Refuse options outside their bounds (each one says its valid range).

    Raises:
        InputError: naming the option, the value and the valid range.
    """
    if not 32 <= cfg.image_size <= MAX_IMAGE_SIZE:
        raise InputError(
            f"image_size={cfg.image_size} is outside 32..{MAX_IMAGE_SIZE}: smaller hides the parts, larger only "
            "costs memory and disk (training resizes to its own --image-size anyway)"
        )
    if not 0.0 <= cfg.difficulty <= 1.0:  # also refuses NaN
        raise InputError(f"difficulty={cfg.difficulty} must be between 0 and 1")
    if not (1 <= cfg.train_per_class <= MAX_PER_CLASS and 2 <= cfg.test_per_class <= MAX_PER_CLASS):
        raise InputError(
            f"train_per_class={cfg.train_per_class} and test_per_class={cfg.test_per_class} must be 1..{MAX_PER_CLASS} "
            f"and 2..{MAX_PER_CLASS} (retrieval needs a second test image of a class)"
        )
    if not 0 <= cfg.seed < 2**63:
        raise InputError(f"seed={cfg.seed} is not valid; use a whole number 0..{2**63 - 1}")
    class_names(cfg.num_classes, cfg.first_class)  # checks the class range


def write_png(path: Path, image: np.ndarray) -> None:
    """Write one image as PNG under a temporary name, renamed onto ``path`` once whole: a run killed at any moment
    leaves complete images under their final names (and at most a hidden ``.NAME.XXXX.tmp``, removed by the next
    run), never a truncated one. Not flushed to disk one by one (a power cut can still lose recent images)."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise InputError(f"could not encode an image of shape {image.shape} as PNG for {path}")
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_bytes(data.tobytes())


def load_meta(root: str | Path) -> dict[str, Any] | None:
    """The ``synth.json`` of a data set root, checked: None if there is none.

    Raises:
        DataError: the file is unreadable, not JSON, or lacks what it must hold (``config.image_size``, ``boxes``
            of four numbers each); the message says how to fix it.
    """
    meta = Path(root) / "synth.json"
    if not meta.is_file():
        return None
    fix = "regenerate the set with `lcr-sdk data synth`, or delete synth.json (only the attention boxes need it)"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{meta} is damaged ({type(e).__name__}: {str(e)[:80]}); {fix}") from e
    config = info.get("config") if isinstance(info, dict) else None
    size = config.get("image_size") if isinstance(config, dict) else None
    boxes = info.get("boxes") if isinstance(info, dict) else None
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0 and isinstance(boxes, dict)):
        raise DataError(f"{meta} has no valid config.image_size or boxes; {fix}")
    for rel, box in boxes.items():
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            raise DataError(f"{meta}: the box of {rel} is {str(box)[:60]}, not four numbers; {fix}")
    checked: dict[str, Any] = info
    return checked


def matches(root: str | Path, cfg: SynthConfig) -> bool:
    """True if ``root`` holds a data set this module wrote with exactly ``cfg`` (so it can be reused as is)."""
    meta = Path(root) / "synth.json"
    if not meta.is_file():
        return False
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("generator") == "lcr_sdk.synth"
        and info.get("generator_version") == GENERATOR_VERSION
        and info.get("config") == asdict(cfg)
    )


@dataclass
class ProtocolConfig:
    """The two data sets of the built-in benchmark (see :func:`generate_protocol`).

    Attributes:
        target_classes: fine-grained classes of the self-supervised stage and the evaluation (classes 0..N-1).
        source_classes: classes of the supervised pretraining, the next ones in the fixed order (no overlap).
        target_train_per_class, target_test_per_class: target images per class (the validation split is carved
            from the train split by the trainer).
        source_train_per_class, source_test_per_class: source images per class.
        image_size, difficulty, seed: as in :class:`SynthConfig`, shared by both sets.
    """

    target_classes: int = 8
    source_classes: int = 16
    target_train_per_class: int = 100
    target_test_per_class: int = 40
    source_train_per_class: int = 60
    source_test_per_class: int = 10
    image_size: int = 112
    difficulty: float = 0.5
    seed: int = 1234

    def source(self) -> SynthConfig:
        """The source set's options."""
        return SynthConfig(
            num_classes=self.source_classes,
            train_per_class=self.source_train_per_class,
            test_per_class=self.source_test_per_class,
            image_size=self.image_size,
            difficulty=self.difficulty,
            seed=self.seed,
            first_class=self.target_classes,
        )

    def target(self) -> SynthConfig:
        """The target set's options."""
        return SynthConfig(
            num_classes=self.target_classes,
            train_per_class=self.target_train_per_class,
            test_per_class=self.target_test_per_class,
            image_size=self.image_size,
            difficulty=self.difficulty,
            seed=self.seed,
        )


def generate_protocol(out: str | Path, cfg: ProtocolConfig | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Write ``OUT/source`` (supervised pretraining) and ``OUT/target`` (self-supervised stage, evaluation).

    The sets share no class: the target holds classes ``0 .. target_classes - 1`` of :func:`class_names`, the
    source the next ``source_classes``. A set already written with the same options is kept as it is.

    Returns:
        ``(source_root, target_root)``.
    """
    cfg = cfg or ProtocolConfig()
    if cfg.target_classes + cfg.source_classes > MAX_CLASSES:
        raise InputError(
            f"target_classes + source_classes = {cfg.target_classes + cfg.source_classes} exceeds the "
            f"{MAX_CLASSES} part combinations of the generator; use fewer source classes"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return generate_set(out / "source", cfg.source(), progress), generate_set(out / "target", cfg.target(), progress)


def generate_set(root: str | Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write one data set at ``root``, or keep the one already there if it was written with the same options (a
    set written with other options is replaced whole); returns ``root``. :func:`generate_protocol` calls it for
    each of its two sets; a run that needs only one (the quickstart's target) calls it alone."""
    check_config(cfg)  # before any folder is made
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    if matches(root, cfg):
        log.info("reusing the synthetic set in %s", root)
    else:
        log.info("writing the synthetic set to %s", root)
        _replace_set(root, cfg, progress)
    return root


def _is_synth_set(root: Path) -> bool:
    try:
        info = json.loads((root / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("generator") == "lcr_sdk.synth"


STAGING_PREFIX = ".synth-staging-"  # inside the set's own folder: "." and a mount point work too


def _replace_set(root: Path, cfg: SynthConfig, progress: bool) -> None:
    """Write a data set at ``root``: built in a hidden staging folder inside it, then moved into place with
    ``synth.json`` last, so a killed run leaves no half-written set under that record, and a set written earlier
    with other options is replaced whole (no stale images). Staging inside ``root`` (not beside it) lets ``root``
    be the current folder or a mount point, under a parent this process may not write.

    Raises:
        DataError: ``root`` holds files that this module did not write (they are left alone).
        InputError: ``root`` is a file or cannot be created.
    """
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file, not a folder; choose a folder to write the synthetic set into")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {root} ({e.strerror}); choose another output folder") from e
    remove_stale_staging(root, STAGING_PREFIX)
    _earlier_set(root)
    with staging_dir(root, STAGING_PREFIX) as stage:
        new = stage / "set"
        try:
            generate(new, cfg, progress=progress)
        except OSError as e:  # a full disk: name the user's folder, never the hidden staging one
            raise error_under_target(e, new, root) from e
        _install(root, new, stage / "old", cfg)


def _earlier_set(root: Path) -> list[Path]:
    """What ``root`` holds besides staging folders: nothing, or a set this module wrote.

    Raises:
        DataError: anything else (it is left alone).
    """
    entries = [p for p in root.iterdir() if not p.name.startswith(STAGING_PREFIX)]
    if entries and not _is_synth_set(root):
        raise DataError(
            f"{root} holds files that lcr_sdk.synth did not write (no synth.json); they are left alone: "
            "choose another output folder or move them away"
        )
    return entries


def _install(root: Path, new: Path, old: Path, cfg: SynthConfig) -> None:
    """Move the set built at ``new`` into ``root``, the earlier one into ``old`` (removed with the staging folder).

    First the record is replaced by one that says "a synthetic set, incomplete", so a run stopped while the folders
    move leaves a set that is never reused (the next run replaces it whole); the real record comes last. Another run
    may have written ``root`` while this one generated: it is looked at again here.
    """
    if matches(root, cfg):
        return  # another run installed this very set meanwhile
    entries = _earlier_set(root)
    atomic_write_text(root / "synth.json", json.dumps({"generator": "lcr_sdk.synth", "complete": False}))
    old.mkdir()
    try:
        for p in entries:
            if p.name != "synth.json":
                p.rename(old / p.name)
        for p in new.iterdir():
            if p.name != "synth.json":
                p.rename(root / p.name)
    except OSError as e:  # another run moving its set in at the same moment
        raise DataError(
            f"{root} changed while this run moved its set in ({e.strerror}); another run is writing it: run again "
            "when it has finished"
        ) from e
    os.replace(new / "synth.json", root / "synth.json")  # last: the record says the set is complete

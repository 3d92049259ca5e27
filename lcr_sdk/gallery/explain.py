"""Why a gallery item matched a query, and whether an image is worth enrolling: both read the model's attention.

The deployed graph outputs three things per image (docs/DESIGN.md section 2): the embedding e (D), the attention
mask M (h x w, in [0, 1]) and, for LCR models, the K part maps P (K x h x w), with M = minmax(max_k P_k). It does
not output the feature map F, so a similarity of *features* per part (F pooled under each part map) cannot be
computed at run time. What can be computed, and is shown here:

- the two attention masks side by side (where each image was looked at);
- per part k, its strength in each image: the mask-weighted mean of P_k, relative to that image's strongest part,
  and the part's peak (the feature cell where it responds most);
- a per-part similarity: the ratio of the smaller to the larger of the two strengths (1: the part fires as strongly,
  relative to the rest, in both images; 0: only in one). Parts strong in both are the *matched parts*; their peaks
  are joined by lines in the picture. P_k at a cell is a rectified linear projection of F there (the GFB is a
  1 x 1 convolution), so two images whose strong parts agree share those directions of their features; the cosine
  score itself is computed on the full embedding.

A MoCo model has no part maps and an all-ones mask: its explanation is the two images and the score only.

Enrolment quality: an LCR attention mask whose mass is spread over the whole view (:func:`spread_of` close to 1)
means the model found nothing to focus on (blur, an empty scene, an object too small): such an image makes a poor
gallery item. How well this separates good from bad images depends on the model: a model whose attention follows the
object separates them; the short-budget models trained in docs/BENCHMARKS.md barely do (see "Gallery").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, import_platform

MAX_SPREAD = 0.9  # default enrolment limit on spread_of(): the mask covers at most 90% of the view
QUALITY = ("off", "warn", "refuse")  # what an enrolment does with an image whose attention is diffuse
PANEL_HEIGHT = 280
_COLORS = [(66, 135, 245), (245, 66, 90), (80, 200, 120), (240, 200, 40), (200, 90, 220), (40, 200, 220)]


@dataclass
class Quality:
    """Whether an image's attention is focused enough to enrol it.

    Attributes:
        ok: False when the attention is diffuse (``spread`` above ``max_spread``).
        checked: False for models without an attention to check (MoCo: all-ones mask).
        spread: :func:`spread_of` the part maps (1.0 = spread evenly over the view), or None.
        reason: one sentence for the user.
    """

    ok: bool
    checked: bool
    spread: float | None
    reason: str


def spread_of(parts: np.ndarray) -> float:
    """How widely an image's attention mask is spread over the view: 0 (one cell) .. 1 (every cell alike).

    The mask is the graph's M = minmax(max_k P_k) (docs/DESIGN.md section 2), computed here from the part maps on
    the feature grid. Its mass, normalised to sum 1, has an effective area exp(entropy) cells; min-max normalisation
    always leaves one cell at 0, so the effective area is divided by (cells - 1). A flat A (no part responds more
    anywhere) has no mask at all and counts as fully spread.
    """
    a = np.asarray(parts, np.float64).reshape(len(parts), -1).max(axis=0)
    lo, hi = float(a.min()), float(a.max())
    if a.size < 2 or not np.isfinite(hi - lo) or hi - lo <= 1e-9 * max(abs(hi), 1.0):
        return 1.0
    m = (a - lo) / (hi - lo)
    p = m[m > 0] / m.sum()
    return float(min(1.0, np.exp(-(p * np.log(p)).sum()) / (a.size - 1)))


def check_quality_options(quality: Any, max_spread: Any, options: tuple[str, str] = ("quality", "max_spread")) -> None:
    """The one check of the enrolment quality options; the CLI and the examples pass its error through (``options``:
    how the caller spells the two, e.g. ``("--quality", "--max-spread")``).

    Raises:
        InputError: ``quality`` not one of :data:`QUALITY`, or ``max_spread`` not a share in (0, 1].
    """
    if quality not in QUALITY:
        raise InputError(
            f"{options[0]}={quality!r} is not valid; use one of: {', '.join(QUALITY)} (off: no check, warn: keep "
            "diffuse images and report them, refuse: leave them out)"
        )
    if isinstance(max_spread, bool) or not isinstance(max_spread, (int, float)) or not 0 < max_spread <= 1:
        raise InputError(f"{options[1]}={max_spread!r} is not valid; pass a share in (0, 1], e.g. {MAX_SPREAD}")


def check_quality(parts: np.ndarray | None, method: str, max_spread: float = MAX_SPREAD) -> Quality:
    """Judge an image's attention from its part maps (K x h x w, on the model's feature grid).

    Args:
        parts: the raw part maps P; None for a model without them.
        method: the manifest's method (``"lcr"`` or ``"moco"``).
        max_spread: largest acceptable :func:`spread_of`.
    """
    check_quality_options("off", max_spread)
    if method != "lcr" or parts is None:
        return Quality(True, False, None, f"not checked: a {method} model has no part maps (it pools uniformly)")
    s = spread_of(parts)
    if s > max_spread:
        return Quality(
            False,
            True,
            s,
            f"attention is diffuse: spread over {s:.1%} of the view (limit {max_spread:.0%}); the model found no "
            "clear object: frame the object larger and sharper, or raise the limit",
        )
    return Quality(True, True, s, f"attention spread over {s:.1%} of the view (limit {max_spread:.0%})")


def prepare_enrolment(
    embedder: Any, image: Any, metadata: dict[str, Any] | None, quality: str, max_spread: float, color: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Quality]:
    """Embed one image for enrolment and judge its attention: what a local and a fleet gallery's ``enroll`` add.

    Returns:
        (embedding, the image as BGR, the metadata with ``attention_spread`` when measured, the :class:`Quality`).

    Raises:
        InputError: invalid ``quality`` / ``max_spread``, or ``quality="refuse"`` and the attention is diffuse.
    """
    from lcr_sdk.images import to_bgr

    check_quality_options(quality, max_spread)
    img = to_bgr(image, color)
    att = embedder.attend(img)
    q = check_quality(att.part_grid, embedder.manifest.method, max_spread)
    if quality == "off":
        q = Quality(True, False, q.spread, "not checked (quality='off')")
    if not q.ok and quality == "refuse":
        raise InputError(f"not enrolled: {q.reason}")
    meta = dict(metadata or {})
    if q.spread is not None:
        meta.setdefault("attention_spread", round(q.spread, 4))
    return att.embedding, img, meta, q


# -- explanation ----------------------------------------------------------------------------------------------------


@dataclass
class PartMatch:
    """One part map compared between a query and a hit.

    Attributes:
        part: index k of the part map.
        query_strength, hit_strength: mask-weighted mean of P_k relative to the image's strongest part (0..1).
        similarity: min / max of the two strengths (1 = equally strong in both).
        query_peak, hit_peak: (x, y) pixel of the part's strongest response in each image.
    """

    part: int
    query_strength: float
    hit_strength: float
    similarity: float
    query_peak: tuple[int, int]
    hit_peak: tuple[int, int]

    @property
    def matched(self) -> bool:
        """Strong (>= half the strongest part) in both images."""
        return min(self.query_strength, self.hit_strength) >= 0.5


@dataclass
class Explanation:
    """Why a hit matched: scores, per-part comparison and a side-by-side picture (:attr:`image`, BGR)."""

    score: float
    label: str
    id: str
    parts: list[PartMatch]
    image: np.ndarray = field(repr=False)
    note: str = ""

    @property
    def matched_parts(self) -> list[PartMatch]:
        return [p for p in self.parts if p.matched]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :attr:`image` (.png or .jpg) crash-safely."""
        write_image(path, self.image)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "label": self.label,
            "id": self.id,
            "note": self.note,
            "parts": [p.__dict__ for p in self.parts],
        }


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    from pathlib import Path

    from lcr_sdk.fileio import atomic_path

    path = Path(path)
    ok, data = False, None
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        ok, data = import_platform("cv2").imencode(path.suffix, image)
    if not ok or data is None:
        raise InputError(f"cannot write a picture to {path}: use a .png or .jpg name")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def part_strengths(att: Any) -> np.ndarray:
    """Mask-weighted mean of each part map on the feature grid, relative to the strongest part -> (K,)."""
    grid = np.asarray(att.part_grid, np.float64)  # K x h x w
    amax = grid.max(axis=0)
    lo, hi = amax.min(), amax.max()
    mask = (amax - lo) / (hi - lo) if hi > lo else np.ones_like(amax)  # M = minmax(max_k P_k), as in the graph
    pooled = (grid * mask).sum(axis=(1, 2)) / max(mask.sum(), 1e-12)
    top = pooled.max()
    return np.asarray(pooled / top if top > 0 else pooled, np.float64)


def compare_parts(query: Any, hit: Any) -> list[PartMatch]:
    """Per-part comparison of two :class:`~lcr_sdk.embedder.Attention` results (empty for MoCo models)."""
    if query.part_grid is None or hit.part_grid is None:
        return []
    a, b = part_strengths(query), part_strengths(hit)
    out = []
    for k in range(len(a)):
        hi = max(a[k], b[k])
        sim = float(min(a[k], b[k]) / hi) if hi > 0 else 0.0
        out.append(PartMatch(k, float(a[k]), float(b[k]), sim, tuple(query.peaks[k][1:3]), tuple(hit.peaks[k][1:3])))
    return sorted(out, key=lambda p: (-min(p.query_strength, p.hit_strength), p.part))


def _panel(image: np.ndarray, att: Any, height: int) -> tuple[np.ndarray, float]:
    from lcr_sdk.images import heatmap_overlay

    cv2 = import_platform("cv2")
    view = heatmap_overlay(image, att.mask, 0.45)
    scale = height / view.shape[0]
    return cv2.resize(view, (max(1, round(view.shape[1] * scale)), height), interpolation=cv2.INTER_AREA), scale


def draw(
    query: np.ndarray,
    q_att: Any,
    hit: np.ndarray,
    h_att: Any,
    parts: list[PartMatch],
    title: str,
    height: int = PANEL_HEIGHT,
    max_marks: int = 5,
) -> np.ndarray:
    """Query | hit, each with its attention mask; the matched parts' peaks numbered and joined by lines."""
    cv2 = import_platform("cv2")
    left, ls = _panel(query, q_att, height)
    right, rs = _panel(hit, h_att, height)
    gap = 24
    canvas = np.full((height + 64, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    canvas[36 : 36 + height, : left.shape[1]] = left
    x_off = left.shape[1] + gap
    canvas[36 : 36 + height, x_off:] = right
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, _fit(title, canvas.shape[1] - 12, 0.55), (6, 24), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    marks = [p for p in parts if p.matched][:max_marks]
    for i, p in enumerate(marks):
        color = _COLORS[i % len(_COLORS)]
        a = (int(p.query_peak[0] * ls), 36 + int(p.query_peak[1] * ls))
        b = (x_off + int(p.hit_peak[0] * rs), 36 + int(p.hit_peak[1] * rs))
        cv2.line(canvas, a, b, color, 1, cv2.LINE_AA)
        for c in (a, b):
            cv2.circle(canvas, c, 6, color, -1, cv2.LINE_AA)
            cv2.putText(canvas, str(p.part), (c[0] + 7, c[1] - 5), font, 0.45, color, 1, cv2.LINE_AA)
    if parts:
        line = "matched parts: " + (
            ", ".join(f"{p.part} ({p.similarity:.2f})" for p in marks) if marks else "none (no part strong in both)"
        )
    else:
        line = "no part maps (MoCo model): attention is uniform"
    cv2.putText(canvas, _fit(line, canvas.shape[1] - 12, 0.45), (6, height + 56), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _fit(text: str, width: int, scale: float) -> str:
    """``text`` shortened with "..." until it is at most ``width`` pixels wide."""
    cv2 = import_platform("cv2")
    while len(text) > 4 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
        text = text[: len(text) - 4] + "..."
    return text


def stack(rows: list[np.ndarray]) -> np.ndarray:
    """Pictures one under the other, padded with white to the widest."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])

"""Open-set threshold: from the gallery's own scores, the cosine below which a query is "unknown".

On a bounded sample (at most :data:`PROBES` probe items, each with up to :data:`PARTNERS` items of its own label,
found through the label index), every probe gets two scores: its best match among the other sampled items of its
own label (a *genuine* score: what a known query of that label scores) and its best match among the sampled items
of other labels (an *impostor* score: what a query of a label missing from the gallery would score). A probe whose
label has no other item contributes only its impostor score. The threshold is the score that minimises the mean of
the two error rates (genuine scores below it, impostor scores at or above it); where thresholds tie, the highest
(fewer false accepts), so a model that does not separate the labels at all gets a threshold above every impostor
score and calls queries "unknown" rather than accepting all of them (:attr:`Calibration.weak` says so). The cost does
not depend on the gallery's size.

With one label (or none) there are no impostor scores and no threshold; without any genuine score the threshold
is the 95th percentile of the impostor scores. The impostor side is a best match over the sample, not over the
whole gallery: in a very large gallery the true nearest impostor scores a little higher, so the threshold is
slightly permissive there. Pass ``threshold=`` to search to override it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

PROBES = 512
PARTNERS = 4
REFRESH = 0.2  # recalibrate when the number of items changed by this share since the last calibration
REFRESH_MIN = 10  # ... and by at least this many items
WEAK = 0.4  # mean error rate (FAR + FRR) / 2 at or above which the labels are barely separated (chance: 0.5)


@dataclass
class Calibration:
    """A calibrated open-set threshold and what it was computed from.

    Attributes:
        threshold: cosine score below which a query is "unknown" (None: the gallery cannot be calibrated).
        far: share of impostor scores at or above the threshold (false accepts on the sample).
        frr: share of genuine scores below it (false rejects on the sample).
        genuine, impostor: how many scores of each kind were used.
        items: gallery size when calibrated.
        reason: why there is no threshold, or how it was chosen.
    """

    threshold: float | None
    far: float
    frr: float
    genuine: int
    impostor: int
    items: int
    reason: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration | None:
        """A stored calibration; None for one with other fields (an older SDK's: it is computed again).

        Raises:
            ValueError: a field of the wrong type, or a number that is not finite (the message names it).
        """
        try:
            cal = cls(**d)
        except TypeError:
            return None
        numbers = {"far": cal.far, "frr": cal.frr, "seconds": cal.seconds}
        if cal.threshold is not None:
            numbers["threshold"] = cal.threshold
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} is {value!r}, not a finite number")
        for name, count in (("genuine", cal.genuine), ("impostor", cal.impostor), ("items", cal.items)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"{name} is {count!r}, not a count")
        if not isinstance(cal.reason, str):
            raise ValueError(f"reason is {cal.reason!r}, not text")
        return cal

    @property
    def weak(self) -> bool:
        """Whether the model barely separates the gallery's labels: (FAR + FRR) / 2 >= :data:`WEAK` on the sample
        (0.5 is chance). Retrieval still ranks; "unknown" decisions are then little better than a coin."""
        return self.threshold is not None and (self.far + self.frr) / 2 >= WEAK

    def stale(self, items: int) -> bool:
        """Whether the gallery changed enough since (``items`` now) to recalibrate: by a fifth and by at least
        :data:`REFRESH_MIN` items, or in size at all when there is no threshold yet (such a gallery is small or
        unlabelled, so calibrating again is cheap, and the item just added may be its second label; the galleries
        also drop such a calibration at any add or remove, which a count alone would miss)."""
        if self.threshold is None:
            return items != self.items
        return abs(items - self.items) >= max(REFRESH_MIN, REFRESH * self.items)


def auto_threshold(cal: Calibration, stacklevel: int) -> float | None:
    """The cut ``threshold="auto"`` stands for; where the gallery has none, a warning says that every hit is kept
    (shown once per calling line, Python's default for a warning; ``stacklevel`` counts from here to the caller's
    line of the public search)."""
    if cal.threshold is None:
        warnings.warn(
            f"threshold='auto': the gallery has no calibrated threshold ({cal.reason}), so every hit is kept and no "
            "query is unknown; enrol items of two or more labels, or pass a cosine (e.g. threshold=0.7)",
            stacklevel=stacklevel,
        )
    return cal.threshold


def choose_threshold(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float, float, str]:
    """The threshold minimising (FRR + FAR) / 2, with its FAR and FRR; among tied thresholds, the highest run of
    them (fewer false accepts), and within that run the middle of the scores' interval."""
    if len(genuine) == 0:
        t = float(np.quantile(impostor, 0.95))
        return t, float(np.mean(impostor >= t)), 0.0, "no label has two items: 95th percentile of impostor scores"
    cands = np.unique(np.concatenate([genuine, impostor, [np.nextafter(impostor.max(), np.inf)]]))
    g, i = np.sort(genuine), np.sort(impostor)
    frr = np.searchsorted(g, cands, side="left") / len(g)  # share of genuine scores < t
    far = 1.0 - np.searchsorted(i, cands, side="left") / len(i)  # share of impostor scores >= t
    err = (frr + far) / 2
    best = err <= err.min() + 1e-12
    first = last = len(cands) - 1 - int(np.argmax(best[::-1]))
    while first > 0 and best[first - 1]:
        first -= 1
    # errors change only at score values: every t in (cands[first - 1], cands[last]] does as well; take the middle
    t = float((cands[first - 1] + cands[last]) / 2) if first > 0 else float(cands[last])
    far_t, frr_t = float(np.mean(impostor >= t)), float(np.mean(genuine < t))
    return t, far_t, frr_t, "minimum of (false rejects + false accepts) / 2 on the sample"


def calibrate(
    total_slots: int,
    labels_at: Callable[[np.ndarray], dict[int, str]],
    partners: Callable[[str, int, int], list[int]],
    vectors_at: Callable[[np.ndarray], np.ndarray],
    items: int,
    seed: int = 0,
    probes: int = PROBES,
) -> Calibration:
    """Calibrate on a bounded sample.

    Args:
        total_slots: slots of the gallery (live and dead); probes are drawn among them.
        labels_at: slots -> {slot: label} of the live ones.
        partners: (label, start slot, limit) -> up to ``limit`` live slots with that label.
        vectors_at: slots -> float32 unit vectors.
        items: the gallery's size, recorded with the result.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    if total_slots == 0:
        return Calibration(None, 0.0, 0.0, 0, 0, items, "the gallery is empty")
    if total_slots <= 4 * probes:
        draw = np.arange(total_slots)
    else:
        draw = np.unique(rng.integers(0, total_slots, size=4 * probes))
    found = {s: lab for s, lab in labels_at(draw).items() if lab != ""}
    chosen = rng.permutation(np.fromiter(found, dtype=np.int64, count=len(found)))[:probes]
    sample: dict[int, str] = {int(s): found[int(s)] for s in chosen}
    for s in list(sample):
        for p in partners(sample[s], int(rng.integers(0, total_slots)), PARTNERS + 1):
            sample.setdefault(int(p), sample[s])
    slots = np.fromiter(sample, dtype=np.int64, count=len(sample))
    labels = np.array([sample[int(s)] for s in slots])
    if len(set(labels.tolist())) < 2:
        why = "the gallery has fewer than two labels" if len(found) else "no item has a label"
        return Calibration(None, 0.0, 0.0, 0, 0, items, why, time.perf_counter() - t0)
    v = vectors_at(slots)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    same = labels[:, None] == labels[None, :]
    probe = np.isin(slots, chosen)
    gen_all = np.where(same, s, -np.inf).max(axis=1)
    imp_all = np.where(~same, s, -np.inf).max(axis=1)
    genuine = gen_all[probe & np.isfinite(gen_all)]
    impostor = imp_all[probe & np.isfinite(imp_all)]
    t, far, frr, how = choose_threshold(genuine.astype(np.float64), impostor.astype(np.float64))
    return Calibration(float(t), far, frr, len(genuine), len(impostor), items, how, time.perf_counter() - t0)


class Sampled(Protocol):
    """What calibration reads of a gallery's contents (:class:`lcr_sdk.gallery.contents.Contents`)."""

    calibration: Calibration | None

    @property
    def total_slots(self) -> int: ...

    def __len__(self) -> int: ...

    def labels_at(self, slots: np.ndarray) -> dict[int, str]: ...

    def partners(self, label: str, start: int, limit: int) -> list[int]: ...

    def take(self, slots: np.ndarray) -> np.ndarray: ...


def recalibrate(contents: Sampled, seed: int = 0) -> Calibration:
    """Calibrate a gallery's contents now and keep the result with them."""
    cal = calibrate(contents.total_slots, contents.labels_at, contents.partners, contents.take, len(contents), seed)
    contents.calibration = cal
    return cal


def current(contents: Sampled) -> Calibration:
    """The contents' stored calibration, or a fresh one if they changed enough since (:meth:`Calibration.stale`)."""
    cal = contents.calibration
    if cal is None or cal.stale(len(contents)):
        cal = recalibrate(contents)
    return cal

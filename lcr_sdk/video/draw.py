"""Drawing helpers the demos share: text boxes, a frame-rate meter, resizing a frame to a size."""

from __future__ import annotations

import time

import cv2
import numpy as np


def draw_text(
    image: np.ndarray,
    lines: list[str],
    origin: tuple[int, int] = (8, 8),
    scale: float = 0.55,
    color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Draw lines of text on a dark box, in place, top-left at ``origin``; returns ``image``."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    sizes = [cv2.getTextSize(t, font, scale, thick)[0] for t in lines]
    if not sizes:
        return image
    step = max(h for _, h in sizes) + 8
    x, y = origin
    w = max(w for w, _ in sizes) + 10
    cv2.rectangle(image, (x, y), (min(x + w, image.shape[1] - 1), y + step * len(lines) + 4), (0, 0, 0), -1)
    for i, text in enumerate(lines):
        cv2.putText(image, text, (x + 5, y + step * (i + 1) - 2), font, scale, color, thick, cv2.LINE_AA)
    return image


class FpsMeter:
    """Frames per second of a loop, smoothed over recent frames (exponential moving average)."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing, self.fps = smoothing, 0.0
        self._last: float | None = None

    def tick(self) -> float:
        """Call once per frame; returns the smoothed rate."""
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            rate = 1.0 / (now - self._last)
            self.fps = rate if self.fps == 0 else self.smoothing * self.fps + (1 - self.smoothing) * rate
        self._last = now
        return self.fps


def fit_frame(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` resized to ``size`` = (width, height) (None: unchanged)."""
    if size is None or (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

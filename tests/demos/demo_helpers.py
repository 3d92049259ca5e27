"""Helpers for the demo tests: 640 x 480 frames and clips written with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (640, 480)  # width, height of the demo clips


def to_frame(image: np.ndarray) -> np.ndarray:
    """A small data-set image as a 640 x 480 video frame."""
    return cv2.resize(image, FRAME_SIZE, interpolation=cv2.INTER_LINEAR)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10) -> Path:
    """Write frames with OpenCV (.mkv: lossless FFV1, .mp4: mp4v)."""
    fourcc = "FFV1" if path.suffix == ".mkv" else "mp4v"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, FRAME_SIZE)
    assert w.isOpened(), f"OpenCV cannot write {path}"
    for f in frames:
        w.write(f)
    w.release()
    return path

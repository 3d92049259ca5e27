"""Fixtures for the demo tests: an ONNX model exported from the shared random-init checkpoint, and a clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from demo_helpers import to_frame, write_video
from model_helpers import export_onnx


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, lcr_checkpoint) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("demo_model") / "lcr.onnx")


@pytest.fixture(scope="session")
def demo_clip(tmp_path_factory, synth_root) -> Path:
    """An 8-frame 640 x 480 mp4 of synthetic test images."""
    paths = sorted((synth_root / "test").glob("*/*.png"))[::2][:8]
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", [to_frame(cv2.imread(str(p))) for p in paths])

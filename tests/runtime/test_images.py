"""Host-side image helpers shared by the runtime and the training report."""

import numpy as np

from lcr_sdk.images import heatmap_overlay, resize_to


def test_heatmap_overlay_marks_high_values_red_at_any_map_size():
    img = np.full((40, 60, 3), 128, np.uint8)
    heat = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)  # feature-grid size: resized to the image
    out = heatmap_overlay(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    left, right = out[:, :10].reshape(-1, 3).mean(0), out[:, -10:].reshape(-1, 3).mean(0)  # BGR
    assert right[2] > right[0] and left[0] > left[2]  # high = red, low = blue


def test_short_side_center_crop_keeps_the_centre():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square is white
    out = resize_to(img, 50, 50)
    assert out.shape == (50, 50, 3) and out.mean() > 250
    assert resize_to(img, 50, 50, rule="stretch").mean() < 200

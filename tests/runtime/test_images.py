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


def _photo(h: int, w: int) -> np.ndarray:
    """A colour gradient with structure and sensor-like noise (a file of several MB, like a camera's)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 97.0) * np.cos(y / 61.0)], axis=-1)
    img += np.random.default_rng(0).normal(0, 12, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def test_large_file_decodes_reduced_but_never_below_the_size_asked_for(tmp_path):
    import cv2

    from lcr_sdk.images import read_image

    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), _photo(3000, 4000), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert path.stat().st_size > 1 << 20  # large enough for a reduced decode to pay off
    full = read_image(path)
    assert full.shape == (3000, 4000, 3)
    small = read_image(path, min_size=(224, 224))
    assert small.shape == (375, 500, 3)  # 1/8: the largest reduction that still covers 224 x 224
    mid = read_image(path, min_size=(600, 600))
    assert mid.shape == (750, 1000, 3)  # 1/8 would give 375 < 600: 1/4
    assert read_image(path, min_size=(2000, 2000)).shape == full.shape  # no reduction covers it
    # what the model sees is the same picture either way
    a, b = resize_to(full, 224, 224, interpolation="area"), resize_to(small, 224, 224, interpolation="area")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_tiny_image_files_are_refused_like_tiny_arrays(tmp_path):
    import cv2
    import pytest

    from lcr_sdk.errors import InputError
    from lcr_sdk.images import read_image, to_bgr

    path = tmp_path / "dot.png"
    cv2.imwrite(str(path), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputError, match="1x1 image, too small.*>= 8 px"):
        read_image(path)
    with pytest.raises(InputError, match="too small"):
        to_bgr(np.zeros((1, 1, 3), np.uint8))

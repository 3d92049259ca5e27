"""MoCo v2 augmentations (batched) and the learning-rate schedule: shapes, ranges, determinism, whole-image crops."""

import math

import numpy as np
import pytest

pytestmark = pytest.mark.torch


def _images(n=4, h=40, w=40, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def test_moco_v2_shape_range_and_determinism():
    import torch

    from lcr_sdk.manifest import IMAGENET_MEAN, IMAGENET_STD
    from lcr_sdk.train.augment import moco_v2

    x = _images(6, 48, 64)
    a = moco_v2(x, 32, torch.Generator().manual_seed(1))
    b = moco_v2(x, 32, torch.Generator().manual_seed(1))
    c = moco_v2(x, 32, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    for ch, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):  # normalised RGB of values in [0, 1]
        assert a[:, ch].min() >= (0 - m) / s - 1e-5 and a[:, ch].max() <= (1 - m) / s + 1e-5
    assert not torch.equal(a[0], a[1])  # every image draws its own crop and jitter


def test_colour_grayscale_blur_probabilities():
    import torch

    from lcr_sdk.train.augment import colour_jitter, gaussian_blur, random_grayscale

    x = _images(8).float() / 255
    assert torch.equal(colour_jitter(x, p=0.0), x) and torch.equal(gaussian_blur(x, p=0.0), x)
    gray = random_grayscale(x, p=1.0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    torch.testing.assert_close(gray[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.equal(random_grayscale(x, p=0.0), x)
    big = _images(2, 224, 224).float() / 255  # sigma is in pixels of a 224 px image (scaled with the side)
    blurred = gaussian_blur(big, torch.Generator().manual_seed(0), sigma=(2.0, 2.0), p=1.0)
    assert blurred.shape == big.shape and blurred.var() < 0.2 * big.var()  # noise loses most of its variance
    small = gaussian_blur(x, torch.Generator().manual_seed(0), sigma=(2.0, 2.0), p=1.0)  # 40 px: 0.36 px sigma
    assert 0.2 * x.var() < small.var() < x.var()
    jit = colour_jitter(x, torch.Generator().manual_seed(0), p=1.0)
    assert jit.min() >= 0 and jit.max() <= 1 and not torch.equal(jit, x)


def test_crops_keep_the_pixel_aspect_on_wide_images():
    """A square crop (ratio 1) of a 3:1 image is square in pixels, not a third as wide."""
    import torch

    from lcr_sdk.train.augment import resized_crop_flip

    h, w = 40, 120
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    coords = torch.stack([xs, ys, ys]).expand(16, 3, h, w).contiguous()  # channel 0 = x, channel 1 = y in pixels
    out = resized_crop_flip(coords, 32, torch.Generator().manual_seed(0), scale=(0.2, 0.2), ratio=(1.0, 1.0))
    width = out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))
    height = out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))
    torch.testing.assert_close(width, height, rtol=0.02, atol=0.3)
    area = (width + width / 31) * (height + height / 31)  # centre-to-centre span -> crop side
    torch.testing.assert_close(area / (h * w), torch.full((16,), 0.2), rtol=0.03, atol=0)


def test_training_crops_cover_the_whole_wide_image():
    """Left, middle and right thirds of a wide image all appear in training crops, and no crop leaves the image."""
    import torch

    from lcr_sdk.train.augment import resized_crop_flip
    from lcr_sdk.train.data import Split, TrainImages

    bgr = np.zeros((60, 180, 3), np.uint8)
    bgr[:, :60, 2], bgr[:, 60:120, 1], bgr[:, 120:, 0] = 255, 255, 255  # red | green | blue (BGR order)
    split = Split(root=None, paths=[None], labels=[0], classes=["a"], images=[bgr], sizes=[(60, 180)])
    ds = TrainImages(split, 56)  # held with a 64 px short side: canvas 64 x 128 (aspect capped at 2)
    assert ds.canvas == (64, 128)
    img = ds[0][0].float() / 255  # 3 x 64 x 128 RGB
    assert ds.extent[0].tolist() == [0.0, 10 / 64, 1.0, 53 / 64]  # the whole image, 43 px high, centred
    canvas = torch.zeros_like(img)  # black outside the image, so a crop that leaves it would show it
    canvas[:, 10:53] = img[:, 10:53]
    crops = resized_crop_flip(canvas.expand(400, -1, -1, -1), 32, torch.Generator().manual_seed(0), extent=ds.extent)
    share = crops.mean(dim=(2, 3))  # 400 x 3: mean R, G, B of each crop
    assert (share[:, 0] > 0.5).any() and (share[:, 2] > 0.5).any()  # crops of the left and right ends
    assert (crops.amax(dim=1) > 0.3).all()  # every pixel lies on the image (bilinear edges at most half black)


def test_square_images_are_held_as_before():
    """A square image is held at train_side x train_side (a plain resize), and crops draw as for a square."""
    import cv2

    from lcr_sdk.train.data import Split, TrainImages, train_side

    bgr = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    ds = TrainImages(Split(None, [None], [0], ["a"], images=[bgr], sizes=[(100, 100)]), 112)
    side = train_side(112)
    assert ds.canvas == (side, side) and ds.extent[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    expected = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].transpose(2, 0, 1)
    assert np.array_equal(ds[0][0].numpy(), expected)


def test_lr_schedule_warmup_then_cosine():
    from lcr_sdk.train.config import TrainConfig
    from lcr_sdk.train.engine import lr_at

    cfg = TrainConfig(lr=0.1, batch_size=512, warmup_epochs=2, epochs=10)
    base = 0.1 * 512 / 256
    steps, total = 5, 50  # 5 steps an epoch, 10 epochs; warm-up = 10 steps
    assert lr_at(cfg, 0, total, steps) == pytest.approx(base / 10)
    assert lr_at(cfg, 4, total, steps) == pytest.approx(base * 5 / 10)
    assert lr_at(cfg, 9, total, steps) == pytest.approx(base)
    assert lr_at(cfg, 10, total, steps) == pytest.approx(base)  # cosine starts at the peak
    assert lr_at(cfg, 30, total, steps) == pytest.approx(base / 2)  # half-way through the cosine
    assert lr_at(cfg, 40, total, steps) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(cfg, 50, total, steps) == pytest.approx(0.0, abs=1e-12)
    plain = TrainConfig(lr=0.03, batch_size=256)
    assert lr_at(plain, 0, 100) == pytest.approx(0.03)
    lrs = [lr_at(plain, s, 100) for s in range(100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing without warm-up


def test_a_large_training_image_is_block_averaged_before_it_is_fitted_to_the_canvas():
    """Training holds a photo the way the runtime feeds it (InputSpec.antialias): whole blocks averaged by the
    largest power of two first, then one linear resize, so fine noise is averaged out rather than sampled."""
    import cv2

    from lcr_sdk.images import shrink_by_halves
    from lcr_sdk.train.data import fit_to_canvas

    rng = np.random.default_rng(7)
    photo = (128 + rng.normal(0, 40, (480, 640, 3))).clip(0, 255).astype(np.uint8)  # sensor-like noise
    held = fit_to_canvas(photo, 64, 85)  # 480 x 640 -> 64 x 85: by 4 (120 x 160), then linear
    expected = cv2.resize(shrink_by_halves(photo, 64, 85), (85, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(held, expected)
    sampled = cv2.resize(photo, (85, 64), interpolation=cv2.INTER_LINEAR)  # one linear resize alone
    assert held.astype(float).std() < 0.5 * sampled.astype(float).std()  # the noise averaged, not aliased


def test_one_panorama_neither_widens_every_canvas_nor_goes_unmentioned():
    """The canvas follows what 95% of the images need, so one 80:1 banner among square photos leaves the canvas
    square (it is held smaller inside it), and training names such images."""
    from lcr_sdk.train.data import Split, canvas_shape, warn_extreme_aspects

    sizes = [(300, 300)] * 99 + [(50, 4000)]
    assert canvas_shape(sizes, 64) == (64, 64)
    assert canvas_shape([(300, 400)] * 100, 64) == (64, 85)  # a data set of landscape photos keeps its shape
    split = Split(root=None, paths=[f"{i}.jpg" for i in range(100)], labels=[0] * 100, classes=["a"], sizes=sizes)
    with pytest.warns(UserWarning, match=r"1 training image\(s\) are more than 4:1 \(e\.g\. 99\.jpg, 4000 x 50\)"):
        warn_extreme_aspects(split)

"""Shared fixtures: a small synthetic data set and small real checkpoints (random-init ResNet-18, real BN stats)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or OSError when NVIDIA's libraries are missing
        return False
    return True


def _has_cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skips = {
        "torch": (HAS_TORCH, "torch not installed (pip install 'lcr-sdk[train,export]')"),
        "tensorrt": (None, "TensorRT not importable here (JetPack, or pip install 'lcr-sdk[trt-cu12]' with a GPU)"),
        "cuda": (None, "no CUDA GPU"),
    }
    cache = {}
    for item in items:
        for name, (available, why) in skips.items():
            if name in item.keywords:
                if available is None:
                    if name not in cache:
                        cache[name] = _has_tensorrt() if name == "tensorrt" else _has_cuda()
                    available = cache[name]
                if not available:
                    item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic ImageFolder data set: 4 classes, 6 train and 4 test images each, 64 px."""
    from lcr_sdk.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    return generate(
        root, SynthConfig(num_classes=4, train_per_class=6, test_per_class=4, image_size=64, seed=1), progress=False
    )


@pytest.fixture(scope="session")
def lcr_checkpoint(tmp_path_factory) -> Path:
    if not HAS_TORCH:
        pytest.skip("torch not installed")
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    return random_init_checkpoint(tmp_path_factory.mktemp("ckpt") / "lcr.pt", "lcr", num_parts=8)


@pytest.fixture(scope="session")
def moco_checkpoint(tmp_path_factory) -> Path:
    if not HAS_TORCH:
        pytest.skip("torch not installed")
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    return random_init_checkpoint(tmp_path_factory.mktemp("ckpt") / "moco.pt", "moco", num_parts=8)

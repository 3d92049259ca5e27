"""benchmarks/bench_train_step.py times the training step that `lcr-sdk train` runs: it builds the module the same
way (the form's fitting weight, not ``nu=None``) and one step runs."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_builds_the_training_module_and_one_step_runs():
    import torch

    from lcr_sdk.train.config import TrainConfig

    bench = _bench()
    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=8, num_parts=4)
    model, opt = bench.build("lcr", cfg, torch.device("cpu"))
    assert (model.nu, model.fit_grad, model.fit_form) == (cfg.fit_weight, cfg.fit_grad, cfg.fit_form)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bench.step(model, opt, images, cfg, torch.device("cpu"))
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # a real optimiser step

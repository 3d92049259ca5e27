"""PyTorch backend on CUDA: fp32/fp16/CUDA-graph agree with the CPU reference; torch tensors stay on the GPU."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.cuda]


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def reference(lcr_checkpoint):
    from lcr_sdk import Embedder

    with Embedder(lcr_checkpoint, device="cpu") as e:
        yield e


@pytest.mark.parametrize(
    "opts, min_cos", [({}, 0.9999), ({"fp16": True}, 0.995), ({"fp16": True, "cuda_graph": True}, 0.995)]
)
def test_cuda_matches_cpu_reference(lcr_checkpoint, reference, opts, min_cos):
    from lcr_sdk import Embedder

    frames = _frames(5)
    ref = reference.embed(frames)
    with Embedder(lcr_checkpoint, device="cuda", **opts) as e:
        assert e.provider.startswith("torch cuda")
        got = e.embed(frames)
        alone = np.stack([e.embed(f) for f in frames])  # batch 1 (its own graph) vs batch 5
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)
    assert float(np.min(np.sum(got * ref, axis=1))) > min_cos
    assert float(np.min(np.sum(got * alone, axis=1))) > 0.999


def test_cuda_graph_results_are_not_overwritten(lcr_checkpoint):
    """Outputs of one replay are copies: a later call with other images leaves them unchanged."""
    from lcr_sdk import Embedder

    a, b = _frames(3, seed=1), _frames(3, seed=2)
    with Embedder(lcr_checkpoint, device="cuda", fp16=True, cuda_graph=True) as e:
        first = e.embed(a)
        kept = first.copy()
        second = e.embed(b)
        np.testing.assert_array_equal(first, kept)
        assert not np.allclose(first, second, atol=1e-3)
        np.testing.assert_allclose(e.embed(a), kept, atol=1e-5)


def test_torch_tensors_stay_on_gpu(lcr_checkpoint):
    import torch

    from lcr_sdk import Embedder

    x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).cuda()
    with Embedder(lcr_checkpoint, device="cuda") as e:
        out = e.infer(x)
        assert out["embedding"].is_cuda and out["embedding"].shape == (4, 512)
        assert out["parts"].shape[:2] == (4, 8)
        host = e.infer(x.cpu().numpy())
    np.testing.assert_allclose(out["embedding"].cpu().numpy(), host["embedding"], atol=1e-5)

"""TensorRT backend: the engine/system mismatch rule (pure, runs everywhere) and real engines (marked tensorrt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lcr_sdk.backends.tensorrt import engine_mismatch, rebuild_command
from lcr_sdk.errors import InputError, ModelError

RUNNING = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


def test_matching_engine_passes():
    assert engine_mismatch(dict(RUNNING), RUNNING) == []
    assert engine_mismatch({**RUNNING, "version": "10.3.0.26"}, RUNNING) == []  # build number may differ


@pytest.mark.parametrize(
    "built, words",
    [
        ({**RUNNING, "version": "11.4.0.106"}, ["TensorRT 11.4.0.106", "TensorRT 10.3.0"]),
        ({**RUNNING, "version": "10.4.0"}, ["TensorRT 10.4.0"]),
        ({**RUNNING, "gpu": "NVIDIA H100", "compute_capability": "9.0"}, ["compute capability 9.0", "Orin"]),
        ({**RUNNING, "gpu": "Jetson AGX Orin"}, ["built on Jetson AGX Orin", "this GPU is Orin"]),
        (None, ["no 'tensorrt' entry"]),
    ],
)
def test_mismatch_is_described(built, words):
    problems = " ".join(engine_mismatch(built, RUNNING))
    for w in words:
        assert w in problems


def test_both_differences_reported():
    assert len(engine_mismatch({"version": "8.6.1", "gpu": "A100", "compute_capability": "8.0"}, RUNNING)) == 2


def test_rebuild_command_is_torch_free_from_the_onnx():
    """The refusal of a foreign engine names the build from the exported ONNX, which needs no torch or checkpoint."""
    assert (
        rebuild_command("fp16", "model.engine") == "lcr-sdk export model.onnx --trt --precision fp16 --out model.engine"
    )
    assert rebuild_command("int8", "m.plan", "lcr-int8.onnx") == (
        "lcr-sdk export lcr-int8.onnx --trt --precision int8 --out m.plan"
    )


# -- Backend.infer in front of the engine (runs everywhere) ----------------------------------------------------------


def _unloaded_backend(tmp_path: Path, calls: list):
    """A TensorRTBackend whose engine call is a stand-in (TensorRT and a GPU cannot run here): the stand-in records
    what reaches the engine and returns outputs of the manifest's shapes."""
    from lcr_sdk.backends.tensorrt import TensorRTBackend
    from lcr_sdk.manifest import InputSpec, Manifest

    m = Manifest("resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64), batch_min=2, batch_opt=4, batch_max=8)
    backend = TensorRTBackend(tmp_path / "m.engine", m, device="cuda")

    def engine(feed):
        calls.append(feed)
        n = len(feed)
        return {"embedding": np.zeros((n, 512), np.float32), "attention": np.zeros((n, 2, 2), np.float32),
                "parts": np.zeros((n, 8, 2, 2), np.float32)}  # fmt: skip

    backend._infer = engine
    return backend


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((2, 96, 64, 3), np.uint8, "uint8 N x 64 x 64 x 3"),
        ((2, 64, 64, 3), np.float16, "float16"),
        ((64, 64, 3), np.uint8, "uint8 N x 64 x 64 x 3"),
        ((1, 64, 64, 3), np.uint8, "batch of 1 is outside the model's batch range 2..8"),
        ((9, 64, 64, 3), np.uint8, "batch of 9 is outside"),
    ],
)
def test_bad_feed_never_reaches_the_engine(shape, dtype, message, tmp_path):
    calls: list = []
    backend = _unloaded_backend(tmp_path, calls)
    with pytest.raises(InputError, match=message):
        backend.infer(np.zeros(shape, dtype))
    assert calls == []


def test_good_feed_reaches_the_engine_contiguous_and_outputs_are_checked(tmp_path):
    calls: list = []
    backend = _unloaded_backend(tmp_path, calls)
    feed = np.asfortranarray(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    out = backend.infer(feed)
    assert out["embedding"].shape == (3, 512) and calls[0].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(calls[0], feed)
    backend._infer = lambda f: {"embedding": np.zeros((len(f), 256), np.float32)}
    with pytest.raises(ModelError, match="'embedding' of shape"):
        backend.infer(np.zeros((2, 64, 64, 3), np.uint8))


@pytest.mark.torch
def test_torch_tensors_are_checked_before_the_engine(tmp_path):
    """A torch tensor of another H x W (or outside the batch range) is refused like an array; one that fits reaches
    the engine contiguous."""
    import torch

    calls: list = []
    backend = _unloaded_backend(tmp_path, calls)
    with pytest.raises(InputError, match="uint8 N x 64 x 64 x 3"):
        backend.infer(torch.zeros((2, 128, 128, 3), dtype=torch.uint8))
    with pytest.raises(InputError, match="batch of 1 is outside"):
        backend.infer(torch.zeros((1, 64, 64, 3), dtype=torch.uint8))
    assert calls == []
    nchw = torch.zeros((2, 3, 64, 64), dtype=torch.uint8).permute(0, 2, 3, 1)  # NHWC view, not contiguous
    backend.infer(nchw)
    assert calls[0].is_contiguous()


# -- real TensorRT (skipped where `import tensorrt` fails) ----------------------------------------------------------


def _build_engine(onnx_path: Path, out: Path, batch: tuple[int, int, int]) -> Path:
    """Build an fp32 engine with TensorRT's own API (independent of lcr_sdk.export) and write its manifest."""
    import json

    import tensorrt as trt

    from lcr_sdk.backends.tensorrt import running_system
    from lcr_sdk.fileio import sha256_file
    from lcr_sdk.manifest import Manifest, sidecar_path, write_sidecar

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    m = Manifest.from_json(sidecar_path(onnx_path).read_text())
    shape = (m.input.height, m.input.width, 3)
    profile.set_shape(m.input.name, (batch[0], *shape), (batch[1], *shape), (batch[2], *shape))
    config.add_optimization_profile(profile)
    out.write_bytes(builder.build_serialized_network(network, config))
    d = json.loads(m.to_json())
    d.update(
        model_sha256=sha256_file(out),
        model_file=out.name,
        tensorrt=running_system(),
        batch_min=batch[0],
        batch_opt=batch[1],
        batch_max=batch[2],
    )
    write_sidecar(Manifest.from_dict(d), out)
    return out


@pytest.fixture(scope="module")
def engine(lcr_checkpoint, tmp_path_factory):
    from model_helpers import export_onnx

    d = tmp_path_factory.mktemp("trt")
    return _build_engine(export_onnx(lcr_checkpoint, d / "lcr.onnx"), d / "lcr.engine", (1, 4, 8))


@pytest.mark.tensorrt
@pytest.mark.torch
def test_engine_matches_onnx_and_is_batch_invariant(engine):
    from lcr_sdk import Embedder

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(11)]
    with Embedder(engine) as trt_emb, Embedder(engine.with_suffix(".onnx"), device="cpu") as ort_emb:
        assert trt_emb.backend_name == "tensorrt" and "TensorRT" in trt_emb.provider
        batched = trt_emb.embed(frames)  # 11 > batch_max 8: two chunks
        alone = np.stack([trt_emb.embed(f) for f in frames])
        np.testing.assert_allclose(batched, alone, atol=1e-4)
        assert float(np.min(np.sum(batched * ort_emb.embed(frames), axis=1))) > 0.999


@pytest.mark.tensorrt
@pytest.mark.torch
def test_engine_accepts_torch_cuda_tensors(engine):
    import torch

    from lcr_sdk import Embedder

    with Embedder(engine) as e:
        x = torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).cuda()
        out = e.infer(x)
        assert out["embedding"].is_cuda and out["embedding"].shape == (3, 512)
        host = e.infer(x.cpu().numpy())
        np.testing.assert_allclose(out["embedding"].cpu().numpy(), host["embedding"], atol=1e-5)


@pytest.mark.tensorrt
@pytest.mark.torch
def test_engine_from_other_version_is_refused(engine, tmp_path):
    import json
    import shutil

    from lcr_sdk import Embedder
    from lcr_sdk.errors import ModelError
    from lcr_sdk.manifest import sidecar_path

    other = tmp_path / engine.name
    shutil.copy(engine, other)
    d = json.loads(sidecar_path(engine).read_text())
    d["tensorrt"]["version"] = "9.0.0"
    sidecar_path(other).write_text(json.dumps(d))
    with pytest.raises(ModelError, match="lcr-sdk export lcr.onnx --trt --precision fp32 --out lcr.engine"):
        Embedder(other)

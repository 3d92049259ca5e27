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
    backend.loaded = True  # as load() leaves it: the stand-in engine is ready
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


# -- optimisation profiles and the CUDA-graph path (stand-ins: TensorRT and CUDA cannot run here) --------------------


def test_each_batch_runs_on_the_profile_that_fits_it():
    from lcr_sdk.backends.tensorrt import choose_profile

    split = [(1, 1, 1), (2, 8, 32)]
    assert [choose_profile(split, n) for n in (1, 2, 8, 32)] == [0, 1, 1, 1]
    overlapping = [(1, 4, 8), (1, 12, 32)]  # both hold 1..8: the nearer optimal batch decides, the first on a tie
    assert [choose_profile(overlapping, n) for n in (1, 4, 7, 8, 9, 12)] == [0, 0, 0, 0, 1, 1]
    with pytest.raises(InputError, match="batch of 33 fits none of the engine's profiles .1..1, 2..32."):
        choose_profile(split, 33)


class _Context:
    """Stands in for a TensorRT IExecutionContext: records profile switches and enqueues."""

    def __init__(self, capturable: bool = True):
        self.events: list[tuple] = []
        self.shape: tuple = ()
        self.capturing = False
        self.capturable = capturable

    def set_optimization_profile_async(self, index, stream):
        self.events.append(("profile", index))
        return True

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)

    def set_tensor_address(self, name, ptr):
        pass

    def get_tensor_shape(self, name):
        n = self.shape[0]
        return {"embedding": (n, 512), "attention": (n, 2, 2), "parts": (n, 8, 2, 2)}[name]

    def execute_async_v3(self, stream):
        self.events.append(("captured enqueue",) if self.capturing else ("enqueue",))
        return self.capturable or not self.capturing


class _Cudart:
    """Stands in for cuda-python's runtime module: every call succeeds; graph calls are recorded."""

    class cudaMemcpyKind:  # noqa: N801 (cuda-python's names)
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, context: _Context):
        self.context = context

    def cudaMemcpyAsync(self, *args):  # noqa: N802
        return (0,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.context.capturing = True
        self.context.events.append(("begin capture",))
        return (0,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        self.context.capturing = False
        return (0, "graph")

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        self.context.events.append(("instantiate",))
        return (0, "executable")

    def cudaGraphLaunch(self, executable, stream):  # noqa: N802
        self.context.events.append(("launch",))
        return (0,)


class _State:
    """A thread's state (context, stream, buffers) with numpy arrays for pinned memory."""

    def __init__(self, context):
        self.context, self.stream, self.profile, self.graphs = context, 7, 0, {}
        self.buffers = {n: i for i, n in enumerate(("images", "embedding", "attention", "parts"))}
        self.pinned = dict(self.buffers)

    def host_view(self, name, shape, dtype):
        return np.zeros(shape, dtype)


def _engine_backend(tmp_path, monkeypatch, profiles, cuda_graph=False, capturable=True):
    """A TensorRTBackend past load(), over the stand-ins above: what it asks of TensorRT and CUDA is recorded."""
    from lcr_sdk.backends import cuda
    from lcr_sdk.backends.tensorrt import TensorRTBackend
    from lcr_sdk.manifest import InputSpec, Manifest

    lo, hi = min(p[0] for p in profiles), max(p[2] for p in profiles)
    m = Manifest(
        "resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64), batch_min=lo, batch_opt=profiles[0][1], batch_max=hi,
        profiles=[list(p) for p in profiles] if len(profiles) > 1 else None,
    )  # fmt: skip
    backend = TensorRTBackend(tmp_path / "m.engine", m, device="cuda", cuda_graph=cuda_graph)
    context = _Context(capturable)
    state = _State(context)
    monkeypatch.setattr(cuda, "cudart", lambda: _Cudart(context))
    backend.profiles, backend.cuda_graph, backend.device_id = list(profiles), cuda_graph, 0
    backend.inputs, backend.outputs = ["images"], m.output_names
    backend.dtypes = {n: np.dtype(np.float32) for n in m.output_names}
    backend._state = lambda: state
    backend.loaded = True
    return backend, context.events


def test_the_context_switches_profile_only_when_the_batch_needs_another(tmp_path, monkeypatch):
    backend, events = _engine_backend(tmp_path, monkeypatch, [(1, 1, 1), (2, 8, 32)])
    for n in (1, 8, 8, 3, 1, 1):
        out = backend.infer(np.zeros((n, 64, 64, 3), np.uint8))
        assert out["embedding"].shape == (n, 512)
    switches = [e[1] for e in events if e[0] == "profile"]
    assert switches == [1, 0], "batch 1 starts on profile 0; 8 moves to 1; 8 and 3 stay; 1 moves back"
    assert events.count(("enqueue",)) == 6 and ("launch",) not in events


def test_batch_one_replays_a_cuda_graph_captured_once(tmp_path, monkeypatch):
    backend, events = _engine_backend(tmp_path, monkeypatch, [(1, 1, 1), (2, 8, 32)], cuda_graph=True)
    for _ in range(3):
        backend.infer(np.zeros((1, 64, 64, 3), np.uint8))
    # first call: one enqueue before capture (TensorRT settles shapes), the captured enqueue, then a launch
    assert events == [
        ("enqueue",), ("begin capture",), ("captured enqueue",), ("instantiate",), ("launch",), ("launch",),
        ("launch",),
    ]  # fmt: skip
    events.clear()
    backend.infer(np.zeros((4, 64, 64, 3), np.uint8))  # another batch runs the engine directly
    assert events == [("profile", 1), ("enqueue",)]


def test_batch_one_without_the_option_or_with_an_uncapturable_engine_enqueues(tmp_path, monkeypatch):
    backend, events = _engine_backend(tmp_path, monkeypatch, [(1, 8, 32)])
    backend.infer(np.zeros((1, 64, 64, 3), np.uint8))
    assert events == [("enqueue",)]
    backend, events = _engine_backend(tmp_path, monkeypatch, [(1, 8, 32)], cuda_graph=True, capturable=False)
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph"):
        backend.infer(np.zeros((1, 64, 64, 3), np.uint8))
    backend.infer(np.zeros((1, 64, 64, 3), np.uint8))
    assert events == [("enqueue",), ("begin capture",), ("captured enqueue",), ("enqueue",)]

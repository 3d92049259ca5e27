"""Bad inputs and bad model files: one clear error each (InputError / ModelError), through the Embedder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from model_helpers import export_onnx, strip_metadata

from lcr_sdk import Embedder
from lcr_sdk.errors import InputError, MissingDependencyError, ModelError
from lcr_sdk.manifest import sidecar_path

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def lcr_onnx(lcr_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("onnx") / "lcr.onnx")


@pytest.fixture(scope="module")
def emb(lcr_onnx):
    with Embedder(lcr_onnx) as e:
        yield e


@pytest.mark.parametrize(
    "image, message",
    [
        (None, "image is None"),
        (np.zeros((0, 0, 3), np.uint8), "empty array"),
        (np.zeros((32, 32, 3), np.float32), "dtype is float32.*img \\* 255"),
        (np.zeros((32, 32, 3), np.uint16), "dtype is uint16.*img >> 8"),
        (np.zeros((32, 32, 2), np.uint8), r"shape \(32, 32, 2\) is not an image"),
        (np.zeros((1, 1, 3), np.uint8), "too small"),
        (12, "type int is not supported"),
    ],
)
def test_bad_image_arrays(emb, image, message):
    with pytest.raises(InputError, match=message):
        emb.embed(image)
    with pytest.raises(InputError, match=message):
        emb.attend(image)


def test_bad_image_files(emb, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        emb.embed(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(InputError, match="is not an image of a format this reader knows"):
        emb.embed(str(text))
    # each way a file in a real photo folder is not an image says which it is
    good = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble, as macOS copies leave
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    for name, message in [
        ("zero.jpg", r"is empty \(0 bytes"),
        ("cut.jpg", r"has a JPEG header \(64 x 64\) but its image data could not be decoded \(a truncated"),
        ("._photo.jpg", "macOS metadata file"),
        ("link.jpg", r"broken symbolic link \(to .*gone\.jpg"),
    ]:
        with pytest.raises(InputError, match=message):
            emb.embed(tmp_path / name)
    with pytest.raises(InputError, match="empty list"):
        emb.embed([])
    with pytest.raises(InputError, match="color"):
        emb.embed(np.zeros((32, 32, 3), np.uint8), color="hsv")


def test_a_bad_image_in_a_list_is_named_by_its_place_and_a_4d_array_is_a_batch(emb):
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    with pytest.raises(InputError, match=r"^images\[2\]: .*dtype is float32"):
        emb.embed([good[0], good[1], np.zeros((32, 32, 3), np.float32)])
    batch = np.stack(good)  # N x H x W x 3: the same as a list of its images
    np.testing.assert_allclose(emb.embed(batch), emb.embed(good), atol=1e-6)
    assert emb.embed(batch).shape == (3, emb.manifest.embedding_dim)


def test_bad_batch_to_infer(emb):
    with pytest.raises(InputError, match="uint8 N x 64 x 64 x 3"):
        emb.infer(np.zeros((2, 32, 32, 3), np.uint8))


def _feeds(h: int, w: int) -> dict[str, tuple[np.ndarray, str]]:
    """Feeds every backend refuses before it runs, for a model of input h x w and batch range 1..8."""
    return {
        "another H x W": (np.zeros((2, h + 32, w, 3), np.uint8), f"uint8 N x {h} x {w} x 3"),
        "float32": (np.zeros((2, h, w, 3), np.float32), "float32"),
        "rank 3": (np.zeros((h, w, 3), np.uint8), f"uint8 N x {h} x {w} x 3"),
        "NCHW": (np.zeros((2, 3, h, w), np.uint8), f"uint8 N x {h} x {w} x 3"),
        "batch above the range": (
            np.zeros((9, h, w, 3), np.uint8),
            "batch of 9 is outside the model's batch range 1..8",
        ),
        "empty batch": (np.zeros((0, h, w, 3), np.uint8), "batch of 0 is outside"),
    }


@pytest.mark.parametrize("case", sorted(_feeds(64, 64)))
def test_onnxruntime_backend_checks_the_feed(case, lcr_onnx):
    """A real ONNX Runtime session behind Backend.infer: a bad feed is one InputError before the session runs."""
    from lcr_sdk.backends.base import backend_for
    from lcr_sdk.manifest import read_manifest

    feed, message = _feeds(64, 64)[case]
    with backend_for(lcr_onnx)(lcr_onnx, read_manifest(lcr_onnx), device="cpu") as b:
        with pytest.raises(InputError, match=message):
            b.infer(feed)


def test_onnxruntime_backend_takes_any_layout_and_refuses_tensors(lcr_onnx):
    import torch

    from lcr_sdk.backends.base import backend_for
    from lcr_sdk.manifest import read_manifest

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with backend_for(lcr_onnx)(lcr_onnx, read_manifest(lcr_onnx), device="cpu") as b:
        plain = b.infer(batch)
        fortran = b.infer(np.asfortranarray(batch))  # made contiguous by infer, same result
        np.testing.assert_array_equal(plain["embedding"], fortran["embedding"])
        assert plain["parts"].shape == (3, 8, 2, 2)
        with pytest.raises(InputError, match="takes numpy arrays, not torch tensors"):
            b.infer(torch.from_numpy(batch))


@pytest.mark.parametrize("case", sorted(_feeds(64, 64)))
def test_torch_backend_checks_tensors_like_arrays(case, lcr_checkpoint):
    """torch tensors go through the same check as numpy arrays (H x W, batch range included)."""
    import torch

    from lcr_sdk.backends.torch import TorchBackend

    feed, message = _feeds(64, 64)[case]
    manifest = TorchBackend.read_manifest(lcr_checkpoint, batch=(1, 4, 8))
    with TorchBackend(lcr_checkpoint, manifest, device="cpu") as b:
        with pytest.raises(InputError, match=message):
            b.infer(torch.from_numpy(feed))
        with pytest.raises(InputError, match=message):
            b.infer(feed)


def test_torch_backend_returns_tensors_for_tensors(lcr_checkpoint):
    import torch

    from lcr_sdk.backends.torch import TorchBackend

    batch = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    manifest = TorchBackend.read_manifest(lcr_checkpoint, batch=(1, 4, 8))
    with TorchBackend(lcr_checkpoint, manifest, device="cpu") as b:
        t = b.infer(torch.from_numpy(batch))
        a = b.infer(batch)
    assert isinstance(t["embedding"], torch.Tensor) and isinstance(a["embedding"], np.ndarray)
    np.testing.assert_allclose(t["embedding"].numpy(), a["embedding"], atol=1e-6)


def _copy(model: Path, dst: Path, sidecar: bool = True) -> Path:
    out = dst / model.name
    shutil.copy(model, out)
    if sidecar:
        shutil.copy(sidecar_path(model), sidecar_path(out))
    return out


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*lcr-sdk export"):
        Embedder(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        Embedder(tmp_path)


def test_unknown_suffix_and_backend(lcr_onnx, tmp_path):
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ModelError, match="suffix '.bin'"):
        Embedder(odd)
    with pytest.raises(InputError, match="backend 'tflite' is unknown"):
        Embedder(lcr_onnx, backend="tflite")


def test_truncated_model_is_refused(lcr_onnx, tmp_path):
    m = _copy(lcr_onnx, tmp_path)
    m.write_bytes(lcr_onnx.read_bytes()[: m.stat().st_size // 2])
    with pytest.raises(ModelError, match="does not match the sha256 in its manifest"):
        Embedder(m)
    # without a recorded hash onnxruntime itself rejects it, still as one ModelError
    side = sidecar_path(m)
    d = json.loads(side.read_text())
    d["model_sha256"] = ""
    side.write_text(json.dumps(d))
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        Embedder(m)


def test_not_a_model(tmp_path, lcr_onnx):
    m = tmp_path / "model.onnx"
    m.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="no manifest|not a readable ONNX model"):
        Embedder(m)
    shutil.copy(sidecar_path(lcr_onnx), sidecar_path(m))
    d = json.loads(sidecar_path(m).read_text())
    d["model_sha256"] = ""
    sidecar_path(m).write_text(json.dumps(d))
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        Embedder(m)


def test_manifest_missing_or_other_version(lcr_onnx, tmp_path):
    m = _copy(lcr_onnx, tmp_path, sidecar=False)
    Embedder(m).close()  # no sidecar: the manifest embedded in the ONNX metadata_props is used
    m = strip_metadata(lcr_onnx, m)  # neither sidecar nor metadata
    with pytest.raises(ModelError, match="no manifest for .*lcr-sdk export"):
        Embedder(m)
    side = sidecar_path(m)
    d = json.loads(sidecar_path(lcr_onnx).read_text())
    d["format_version"] = 99
    side.write_text(json.dumps(d))
    with pytest.raises(ModelError, match="format_version 99"):
        Embedder(m)


def test_manifest_that_does_not_match_the_graph(lcr_onnx, tmp_path):
    m = _copy(lcr_onnx, tmp_path)
    d = json.loads(sidecar_path(m).read_text())
    d["input"]["name"] = "pixels"
    sidecar_path(m).write_text(json.dumps(d))
    with pytest.raises(ModelError, match="does not match its manifest"):
        Embedder(m)


def test_engine_from_elsewhere_is_refused_before_tensorrt_loads(lcr_onnx, tmp_path):
    """Here TensorRT is not installed: the error names the missing extra, never a traceback from deep inside."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    d = json.loads(sidecar_path(lcr_onnx).read_text())
    d["model_sha256"] = ""
    d["tensorrt"] = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    sidecar_path(engine).write_text(json.dumps(d))
    try:
        import tensorrt  # noqa: F401
    except Exception:
        with pytest.raises(MissingDependencyError, match=r"JetPack.*lcr-sdk\[trt-cu12\]"):
            Embedder(engine)
    else:
        pytest.skip("TensorRT installed: tests/runtime/test_runtime_tensorrt.py covers this")


def test_a_closed_embedder_and_an_unknown_option_are_one_clear_error(lcr_onnx):
    e = Embedder(lcr_onnx, device="cpu")
    img = np.zeros((64, 64, 3), np.uint8)
    assert e.embed(img).shape == (e.manifest.embedding_dim,)
    e.close()
    with pytest.raises(ModelError, match="was closed .*create a new Embedder"):
        e.embed(img)
    with Embedder(lcr_onnx, device="cpu") as e2:
        pass
    with pytest.raises(ModelError, match="was closed"):
        e2.attend(img)
    # a misspelt option is refused, naming the backend's options (it would silently do nothing)
    with pytest.raises(
        InputError, match=r"intra_op_thread are not options of the onnxruntime backend.*intra_op_threads"
    ):
        Embedder(lcr_onnx, intra_op_thread=2)


@pytest.mark.torch
def test_providers_for_a_backend_without_them_is_refused(lcr_checkpoint):
    with pytest.raises(InputError, match="providers= chooses ONNX Runtime execution providers; the torch backend"):
        Embedder(lcr_checkpoint, providers=["CPUExecutionProvider"])

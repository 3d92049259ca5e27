"""The exported ONNX graphs (fp32 / fp16 / int8 / moco) against the PyTorch DeployModel, with real ORT sessions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from lcr_sdk.fileio import sha256_file
from lcr_sdk.images import read_image
from lcr_sdk.manifest import ONNX_METADATA_KEY, Manifest, read_manifest, sidecar_path

pytestmark = pytest.mark.torch
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _images(synth_root: Path, n: int) -> np.ndarray:
    paths = sorted((synth_root / "test").rglob("*.png"))[:n]
    return np.stack([read_image(p) for p in paths])  # 64 px already: the model's size


def _torch_outputs(checkpoint: Path, batch: np.ndarray):
    import torch

    from lcr_sdk.train.checkpoint import load_net
    from lcr_sdk.train.model import DeployModel

    with torch.inference_mode():
        return [t.numpy() for t in DeployModel(load_net(checkpoint)[0])(torch.from_numpy(batch))]


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def fp32_model(lcr_checkpoint, tmp_path_factory) -> Path:
    from lcr_sdk.export import export_model

    return export_model(
        lcr_checkpoint, tmp_path_factory.mktemp("fp32") / "lcr.onnx", verify=False, progress=False, log=None
    )


def test_fp32_graph_has_the_deployed_contract(fp32_model):
    proto = onnx.load(str(fp32_model))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"BatchNormalization", "Dropout"}, "BN must be folded into conv, no training-only nodes"
    assert proto.opset_import[0].version == 17

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    (inp,) = proto.graph.input
    assert (inp.name, inp.type.tensor_type.elem_type) == ("images", onnx.TensorProto.UINT8)
    assert shape(inp) == ["N", 64, 64, 3]
    outs = {o.name: (o.type.tensor_type.elem_type, shape(o)) for o in proto.graph.output}
    f = onnx.TensorProto.FLOAT
    assert outs == {"embedding": (f, ["N", 512]), "attention": (f, ["N", 2, 2]), "parts": (f, ["N", 8, 2, 2])}


def test_fp32_manifest_beside_and_inside_with_hashes(fp32_model, lcr_checkpoint):
    side = json.loads(sidecar_path(fp32_model).read_text())
    assert side["model_sha256"] == sha256_file(fp32_model)
    assert side["checkpoint_sha256"] == sha256_file(lcr_checkpoint)
    meta = {p.key: p.value for p in onnx.load(str(fp32_model)).metadata_props}
    inside = json.loads(meta[ONNX_METADATA_KEY])
    assert inside["model_sha256"] == ""  # a file cannot hold its own hash
    assert {**inside, "model_sha256": side["model_sha256"]} == side
    m = read_manifest(fp32_model)
    assert (m.arch, m.method, m.embedding_dim, m.num_parts, m.feature_size) == ("resnet18", "lcr", 512, 8, (2, 2))
    assert (m.batch_min, m.batch_opt, m.batch_max, m.precision) == (1, 8, 32, "fp32")


@pytest.mark.parametrize("n", [1, 5])
def test_fp32_matches_pytorch_at_any_batch_size(fp32_model, lcr_checkpoint, synth_root, n):
    batch = _images(synth_root, n)
    emb, att, parts = _session(fp32_model).run(None, {"images": batch})
    ref = _torch_outputs(lcr_checkpoint, batch)
    assert emb.shape == (n, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert _cosines(emb, ref[0]).min() >= 0.9999
    assert np.abs(att - ref[1]).max() < 1e-4 and att.min() >= 0 and att.max() <= 1
    assert np.abs(parts - ref[2]).max() < 1e-3


def test_moco_model_has_no_parts_and_all_ones_attention(moco_checkpoint, synth_root, tmp_path):
    from lcr_sdk.export import export_model

    path = export_model(moco_checkpoint, tmp_path / "moco.onnx", verify=False, progress=False, log=None)
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == ["embedding", "attention"]
    emb, att = sess.run(None, {"images": _images(synth_root, 3)})
    assert np.all(att == 1.0)
    assert read_manifest(path).num_parts == 0
    assert _cosines(emb, _torch_outputs(moco_checkpoint, _images(synth_root, 3))[0]).min() >= 0.9999


def test_image_size_override_changes_input_and_feature_size(lcr_checkpoint, tmp_path):
    from lcr_sdk.export import export_model

    path = export_model(
        lcr_checkpoint, tmp_path / "m96.onnx", image_size=96, batch=(1, 2, 4), verify=False, progress=False, log=None
    )
    m = read_manifest(path)
    assert (m.input.height, m.input.width, m.feature_size, m.batch_max) == (96, 96, (3, 3), 4)
    emb, att, _ = _session(path).run(None, {"images": np.zeros((2, 96, 96, 3), np.uint8)})
    assert emb.shape == (2, 512) and att.shape == (2, 3, 3)


def test_fp16_is_half_inside_float32_at_the_edges(fp32_model, lcr_checkpoint, synth_root, tmp_path):
    from lcr_sdk.export import export_model, verify_model

    path = export_model(
        lcr_checkpoint, tmp_path / "lcr16.onnx", precision="fp16", verify=False, progress=False, log=None
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    conv_weights = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"]
    assert conv_weights and all(t == onnx.TensorProto.FLOAT16 for t in conv_weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in proto.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    pooling = [n for n in proto.graph.node if n.op_type in ("ReduceSum", "ReduceL2", "ReduceMin", "Div")]
    assert pooling and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in pooling), "pooling/norm stay fp32"
    report = verify_model(path, lcr_checkpoint, synth_root / "test", progress=False)
    assert report["passed"] and report["cosine_min"] >= 0.999 and report["precision"] == "fp16"
    assert read_manifest(path).precision == "fp16"


def test_int8_is_qdq_per_channel_with_uint8_input_untouched(lcr_checkpoint, synth_root, tmp_path):
    from lcr_sdk.export import export_model

    with pytest.warns(UserWarning, match="at least 300"):
        path = export_model(
            lcr_checkpoint,
            tmp_path / "lcr8.onnx",
            precision="int8",
            calib_dir=synth_root / "train",
            calib_method="minmax",
            verify=False,
            progress=False,
            log=None,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    nodes = proto.graph.node
    assert any(n.op_type == "QuantizeLinear" for n in nodes)
    inits = {t.name: t for t in proto.graph.initializer}
    weight_dq = [
        n
        for n in nodes
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(inits[n.input[0]].dims) == 4
    ]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1 for n in weight_dq)
    assert not [n for n in nodes if "images" in n.input and n.op_type == "QuantizeLinear"], "uint8 input stays"
    producers = {o: n.op_type for n in nodes for o in n.output}
    reduces = [n for n in nodes if n.op_type in ("ReduceSum", "ReduceL2")]
    assert reduces and all(producers.get(n.input[0]) != "DequantizeLinear" for n in reduces)
    m = read_manifest(path)
    assert m.precision == "int8"
    assert m.extra["calibration"] == {"method": "minmax", "images": 24, "unreadable": 0, "bias_correction": True}
    batch = _images(synth_root, 8)
    emb, _, _ = _session(path).run(None, {"images": batch})
    # A random-init net at 64 px (2 x 2 feature map) is the hard case for int8; trained figures: docs/EXPORT.md.
    assert np.median(_cosines(emb, _torch_outputs(lcr_checkpoint, batch)[0])) > 0.95


def test_fewer_unreadable_calibration_images_are_skipped_with_a_warning(lcr_checkpoint, synth_root, tmp_path):
    import shutil

    from lcr_sdk.export import export_model

    calib = tmp_path / "calib"
    shutil.copytree(synth_root / "train", calib)
    (calib / "broken.jpg").write_bytes(b"not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_model(
            lcr_checkpoint,
            tmp_path / "m.onnx",
            precision="int8",
            calib_dir=calib,
            verify=False,
            progress=False,
            log=None,
        )
    assert any("skipped 1 unreadable calibration image" in str(w.message) for w in caught)
    cal = Manifest.from_json(sidecar_path(tmp_path / "m.onnx").read_text()).extra["calibration"]
    assert (cal["images"], cal["unreadable"]) == (24, 1)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_with_a_partial_last_batch(lcr_checkpoint, synth_root, tmp_path, method):
    """21 images = 2 batches of 8 + 5: ORT's histogram collectors fail on a smaller last batch, so it is filled up
    with the first images again: all 21 are calibrated on."""
    import shutil

    from lcr_sdk.export import export_model

    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted((synth_root / "train").rglob("*.png"))[:21]:
        shutil.copy(p, calib / f"{p.parent.name}_{p.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_model(
            lcr_checkpoint,
            tmp_path / "m.onnx",
            precision="int8",
            calib_dir=calib,
            calib_method=method,
            verify=False,
            progress=False,
            log=None,
        )
    assert read_manifest(path).extra["calibration"] == {
        "method": method,
        "images": 21,
        "unreadable": 0,
        "bias_correction": True,
    }

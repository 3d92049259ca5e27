"""The nvinfer configuration for a DeepStream secondary inference: it parses as key=value (the GKeyFile form
nvinfer reads) and agrees with the manifest. No DeepStream pipeline runs here: nvinfer loading it is not tested."""

from __future__ import annotations

import configparser

import numpy as np
import pytest

from lcr_sdk.errors import InputError
from lcr_sdk.export.deepstream import nvinfer_config
from lcr_sdk.manifest import InputSpec, Manifest


def _variant(precision: str = "fp16", method: str = "lcr", color: str = "RGB", resize: str = "stretch") -> Manifest:
    """The manifest of the float planar variant nvinfer feeds, written by hand (its export: tests below)."""
    spec = InputSpec(96, 64, layout="NCHW", color=color, dtype="float32", resize=resize)
    return Manifest(
        "resnet18", method, 512, 8 if method == "lcr" else 0, (3, 2), spec, precision, batch_opt=4, batch_max=16
    )


def _parse(text: str) -> dict[str, str]:
    for line in text.splitlines():  # every line a comment, the group header or key=value
        assert line.startswith("#") or line == "[property]" or ("=" in line and " =" not in line), line
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # keep key case
    parser.read_string(text)
    assert parser.sections() == ["property"]
    return dict(parser["property"])


@pytest.mark.parametrize("precision, mode", [("fp32", "0"), ("fp16", "2"), ("int8", "1")])
def test_config_agrees_with_the_manifest(precision, mode):
    m = _variant(precision)
    c = _parse(nvinfer_config(m, "lcr-ds.onnx", "lcr-ds.engine", gie_id=3, operate_on_gie_id=1))
    assert (c["process-mode"], c["network-type"], c["output-tensor-meta"]) == ("2", "100", "1")
    assert (c["gie-unique-id"], c["operate-on-gie-id"]) == ("3", "1") and "operate-on-class-ids" not in c
    assert (c["onnx-file"], c["model-engine-file"]) == ("lcr-ds.onnx", "lcr-ds.engine")
    assert c["network-mode"] == mode and int(c["batch-size"]) == m.batch_max
    assert c["infer-dims"] == f"3;{m.input.height};{m.input.width}" and c["network-input-order"] == "0"
    assert c["model-color-format"] == "0" and float(c["net-scale-factor"]) == 1.0
    np.testing.assert_allclose([float(v) for v in c["offsets"].split(";")], np.array(m.input.mean) * 255, atol=1e-3)
    assert c["output-blob-names"].split(";") == ["embedding", "attention", "parts"]
    assert (c["maintain-aspect-ratio"], c["symmetric-padding"], c["scaling-filter"]) == ("0", "0", "1")


def test_letterbox_bgr_and_a_moco_model():
    m = _variant(method="moco", color="BGR", resize="letterbox")
    c = _parse(nvinfer_config(m, "/models/moco.onnx", operate_on_class_ids=[0, 2]))
    assert (c["maintain-aspect-ratio"], c["symmetric-padding"]) == ("1", "1")
    assert c["model-color-format"] == "1"
    offsets = [float(v) for v in c["offsets"].split(";")]
    np.testing.assert_allclose(offsets, np.array(m.input.mean[::-1]) * 255, atol=1e-3)  # B, G, R
    assert c["output-blob-names"] == "embedding;attention" and "model-engine-file" not in c
    assert c["operate-on-class-ids"] == "0;2"


def test_the_uint8_centre_crop_export_is_refused_with_what_nvinfer_needs():
    m = Manifest("resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64))  # what `lcr-sdk export` writes today
    with pytest.raises(InputError) as e:
        nvinfer_config(m, "lcr.onnx")
    msg = str(e.value)
    assert "uint8 NHWC BGR" in msg and "float32 planar (NCHW)" in msg and "no centre crop" in msg
    assert "docs/DEEPSTREAM.md" in msg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gie_id": 1, "operate_on_gie_id": 1}, "must be >= 1 and differ"),
        ({"operate_on_class_ids": []}, "operate-on-class-ids"),
        ({"engine_file": "lcr.onnx"}, "must end in .engine"),
        ({"min_object_side": 0}, "smallest object side"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        nvinfer_config(_variant(), "lcr-ds.onnx", **kwargs)


# -- the exported variant: `lcr-sdk export CKPT --resize letterbox --deepstream DIR` -----------------------------------


@pytest.fixture(scope="module")
def exported(lcr_checkpoint, tmp_path_factory):
    """The uint8 model and DeepStream's variant, written by the CLI with a letterbox resize (fp32)."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from lcr_sdk.cli import app

    folder = tmp_path_factory.mktemp("ds")
    args = ["export", str(lcr_checkpoint), "--resize", "letterbox", "--deepstream", str(folder / "ds"), "--no-verify"]
    r = CliRunner().invoke(app, [*args, "--out", str(folder / "lcr.onnx")])
    assert r.exit_code == 0, r.output
    return folder / "lcr.onnx", folder / "ds"


@pytest.mark.torch
def test_the_cli_writes_the_variant_and_its_config(exported):
    import onnx

    from lcr_sdk.export.trt_rules import tensorrt_violations
    from lcr_sdk.manifest import read_manifest

    model, folder = exported
    variant, main = read_manifest(folder / "lcr-deepstream.onnx"), read_manifest(model)
    spec = variant.input
    assert (spec.layout, spec.color, spec.dtype, spec.resize) == ("NCHW", "RGB", "float32", "letterbox")
    assert main.input.resize == "letterbox", "the runtime's model resizes like the pipeline does"
    assert not main.input.antialias and not spec.antialias  # one resize, as nvinfer's scaler does: no block average
    assert (variant.checkpoint_sha256, variant.batch_max) == (main.checkpoint_sha256, main.batch_max)
    c = _parse((folder / "config_infer_secondary_lcr.txt").read_text())
    assert c["onnx-file"] == "lcr-deepstream.onnx" and (c["maintain-aspect-ratio"], c["symmetric-padding"]) == (
        "1",
        "1",
    )
    proto = onnx.load(str(folder / "lcr-deepstream.onnx"))
    assert tensorrt_violations(proto) == []
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 64, 64] and proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.torch
def test_the_variant_gets_a_planar_triton_entry_and_the_runtime_points_to_the_uint8_model(exported, tmp_path):
    from google.protobuf import text_format
    from typer.testing import CliRunner

    from lcr_sdk import Embedder
    from lcr_sdk.cli import app
    from lcr_sdk.errors import ModelError

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    _, folder = exported
    variant = folder / "lcr-deepstream.onnx"
    r = CliRunner().invoke(app, ["export", str(variant), "--triton", str(tmp_path / "repo"), "--triton-name", "ds"])
    assert r.exit_code == 0, r.output
    config = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "repo" / "ds" / "config.pbtxt").read_text(), config)
    [inp] = config.input
    assert model_config_pb2.DataType.Name(inp.data_type) == "TYPE_FP32" and list(inp.dims) == [3, 64, 64]
    r = CliRunner().invoke(app, ["info", str(variant)])
    assert r.exit_code == 0 and "input: images float32 [N, 3, 64, 64] NCHW RGB" in r.output, r.output
    with pytest.raises(ModelError, match="is the DeepStream variant .* through the uint8 model exported beside it"):
        Embedder(variant)


@pytest.mark.torch
def test_nvinfer_preprocessing_into_the_variant_matches_the_uint8_model(exported, synth_root):
    """Each image letterboxed by the runtime's rule, then fed two ways: as uint8 BGR to the runtime's model, and the
    way nvinfer feeds the variant (planar RGB float, minus the config's offsets, times net-scale-factor)."""
    import onnxruntime as ort

    from lcr_sdk.images import read_image, resize_to

    model, folder = exported
    c = _parse((folder / "config_infer_secondary_lcr.txt").read_text())
    offsets = np.array([float(v) for v in c["offsets"].split(";")], np.float32).reshape(1, 3, 1, 1)
    scale = float(c["net-scale-factor"])
    paths = sorted((synth_root / "test").rglob("*.png"))[:6]
    bgr = np.stack([resize_to(read_image(p)[:, 8:], 64, 64, "letterbox") for p in paths])  # not square: padded
    assert (bgr[:, :2] == 0).all() or (bgr[:, :, :2] == 0).all(), "letterbox pads with black"
    planar = scale * (bgr[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) - offsets)
    want = ort.InferenceSession(str(model)).run(["embedding"], {"images": bgr})[0]
    got = ort.InferenceSession(str(folder / "lcr-deepstream.onnx")).run(["embedding"], {"images": planar})[0]
    cosine = np.sum(want * got, axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.9999


def test_letterbox_fits_centres_and_pads_black_and_its_box_reaches_past_the_image():
    from lcr_sdk.images import crop_box, resize_to

    image = np.full((40, 80, 3), 200, np.uint8)  # 2:1 into a square: 16 rows of black above and below
    out = resize_to(image, 64, 64, "letterbox")
    assert out.shape == (64, 64, 3) and (out[:16] == 0).all() and (out[48:] == 0).all() and (out[16:48] == 200).all()
    assert crop_box(40, 80, 64, 64, "letterbox") == pytest.approx((0.0, -20.0, 80.0, 60.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"deepstream": "ds"}, "--deepstream needs --resize stretch or letterbox"),
        ({"deepstream": "ds", "resize": "letterbox", "precision": "int8"}, "fp32 or fp16 model, not int8"),
        ({"resize": "crop"}, "'crop' .--resize. is not one of short_side_center_crop, stretch, letterbox"),
    ],
)
def test_deepstream_options_are_checked_before_any_work(kwargs, message):
    from lcr_sdk.export.pipeline import check_resize_options

    with pytest.raises(InputError, match=message):
        check_resize_options(kwargs.get("resize"), kwargs.get("deepstream"), kwargs.get("precision", "fp16"))


@pytest.mark.torch
def test_exporting_again_into_a_deepstream_folder_says_what_it_replaced_and_what_is_stale(lcr_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from lcr_sdk.cli import app

    args = ["export", str(lcr_checkpoint), "--resize", "stretch", "--deepstream", str(tmp_path / "ds"), "--no-verify"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "lcr.onnx")])
    assert r.exit_code == 0 and "warning" not in r.output, r.output  # a new folder: nothing to say
    (tmp_path / "ds" / "lcr-deepstream.onnx_b32_gpu0_fp32.engine").write_bytes(b"an engine nvinfer built")
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "lcr.onnx")])
    assert r.exit_code == 0, r.output
    assert "config_infer_secondary_lcr.txt was replaced" in r.output
    assert "engine(s) built from an earlier model: lcr-deepstream.onnx_b32_gpu0_fp32.engine" in r.output

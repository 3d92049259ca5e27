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
    """The manifest of the float planar variant nvinfer feeds (written by hand: its export is not built yet)."""
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

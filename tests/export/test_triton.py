"""Triton model repositories: config.pbtxt parsed with the ModelConfig protobuf that tritonclient ships, checked
against the manifest and (for the .onnx) against the model ONNX Runtime actually loads. No Triton server runs here:
that the server loads the entry is not tested."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from model_helpers import export_onnx

from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.export.triton import MANIFEST_FILE, write_triton_repository
from lcr_sdk.manifest import InputSpec, Manifest, read_manifest, write_sidecar

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]'")
text_format = pytest.importorskip("google.protobuf.text_format")

# Triton's platform names (its model_configuration.md); the protobuf accepts any string, so this is checked here.
TRITON_PLATFORMS = {
    "tensorrt_plan",
    "onnxruntime_onnx",
    "pytorch_libtorch",
    "tensorflow_graphdef",
    "tensorflow_savedmodel",
    "ensemble",
}
DTYPE = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


def _parse(folder: Path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)  # raises on anything ModelConfig lacks
    return config


def _check_against_manifest(config, m: Manifest, name: str) -> None:
    data_type = model_config_pb2.DataType.Name
    assert config.name == name and config.platform in TRITON_PLATFORMS
    assert config.max_batch_size == m.batch_max
    [inp] = config.input
    assert (inp.name, data_type(inp.data_type), list(inp.dims)) == (
        m.input.name,
        "TYPE_UINT8",
        [m.input.height, m.input.width, 3],
    )
    outputs = {o.name: (data_type(o.data_type), list(o.dims)) for o in config.output}
    assert outputs == {n: ("TYPE_FP32", shape[1:]) for n, shape in m.output_shapes.items()}
    assert list(config.dynamic_batching.preferred_batch_size) == sorted({m.batch_opt, m.batch_max} - {1})
    assert all(1 <= b <= config.max_batch_size for b in config.dynamic_batching.preferred_batch_size)


@pytest.fixture(scope="module")
def onnx_model(lcr_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("triton") / "lcr.onnx")


@pytest.mark.torch
def test_onnx_repository_matches_the_manifest_and_the_model(onnx_model, tmp_path):
    import onnxruntime as ort

    folder = write_triton_repository(onnx_model, tmp_path / "repo", name="lcr-fp32")
    assert folder == tmp_path / "repo" / "lcr-fp32"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["lcr-fp32"]  # no staging left behind
    config = _parse(folder)
    m = read_manifest(onnx_model)
    assert config.platform == "onnxruntime_onnx"
    _check_against_manifest(config, m, "lcr-fp32")
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    assert json.loads((folder / MANIFEST_FILE).read_text()) == json.loads(m.to_json())
    # what the server will load agrees with the config: names, element types, dims after the batch axis
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    data_type = model_config_pb2.DataType.Name
    real = {t.name: (DTYPE[t.type], list(t.shape[1:])) for t in [*sess.get_inputs(), *sess.get_outputs()]}
    declared = {t.name: (data_type(t.data_type), list(t.dims)) for t in [*config.input, *config.output]}
    assert declared == real


def _engine(folder: Path, version: str = "10.3.0") -> Path:
    """A stand-in engine file (TensorRT cannot build one here) with the manifest `lcr-sdk export --trt` writes."""
    from lcr_sdk.fileio import sha256_file

    engine = folder / "lcr-fp16.engine"
    engine.write_bytes(b"serialized engine bytes")
    tensorrt = {
        "version": version,
        "hardware_compatibility": "none",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "sm_count": 8,
        "memory_mib": 7620,
        "l4t": "36.4.0",
    }
    m = Manifest("resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64), precision="fp16", tensorrt=tensorrt)
    write_sidecar(replace(m, model_file=engine.name, model_sha256=sha256_file(engine)), engine)
    return engine


def test_plan_repository_records_the_tensorrt_it_was_built_with(tmp_path):
    engine = _engine(tmp_path)
    folder = write_triton_repository(engine, tmp_path / "repo")
    config = _parse(folder)
    m = read_manifest(engine)
    assert config.platform == "tensorrt_plan" and config.name == "lcr-fp16"
    _check_against_manifest(config, m, "lcr-fp16")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert json.loads((folder / MANIFEST_FILE).read_text())["tensorrt"]["version"] == "10.3.0"
    header = (folder / "config.pbtxt").read_text().splitlines()[1]
    assert header.startswith("# built with TensorRT 10.3.0 on Orin") and "L4T r36.4.0" in header


def test_an_existing_entry_is_kept_unless_replaced(tmp_path):
    engine = _engine(tmp_path)
    folder = write_triton_repository(engine, tmp_path / "repo")
    with pytest.raises(InputError, match="already exists; pass --replace"):
        write_triton_repository(engine, tmp_path / "repo")
    engine2 = _engine(tmp_path, version="10.3.0.26")
    write_triton_repository(engine2, tmp_path / "repo", replace=True)
    assert json.loads((folder / MANIFEST_FILE).read_text())["tensorrt"]["version"] == "10.3.0.26"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["lcr-fp16"]


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"batch_min": 2, "batch_opt": 4}, InputError, "Triton sends batches of 1"),
        ({"preferred": [64]}, InputError, "outside the model's batch range"),
        ({"name": "../up"}, InputError, "model name '../up' is not valid"),
        ({"corrupt": True}, ModelError, "does not match the sha256"),
        ({"no_tensorrt": True}, ModelError, "no 'tensorrt' entry"),
    ],
    ids=["batch from 2", "preferred above max", "name", "corrupt engine", "engine manifest without tensorrt"],
)
def test_bad_input_is_refused_and_writes_nothing(change, error, message, tmp_path):
    engine = _engine(tmp_path)
    m = read_manifest(engine)
    if "batch_min" in change:
        write_sidecar(replace(m, batch_min=change["batch_min"], batch_opt=change["batch_opt"]), engine)
    if change.get("no_tensorrt"):
        write_sidecar(replace(m, tensorrt=None), engine)
    if change.get("corrupt"):
        engine.write_bytes(b"truncated")
    with pytest.raises(error, match=message):
        write_triton_repository(engine, tmp_path / "repo", name=change.get("name"), preferred=change.get("preferred"))
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").iterdir()) == []


@pytest.mark.torch
def test_cli_writes_the_repository_from_an_exported_onnx(onnx_model, tmp_path):
    from typer.testing import CliRunner

    from lcr_sdk.cli import app

    repo = tmp_path / "models"
    r = CliRunner().invoke(app, ["export", str(onnx_model), "--triton", str(repo), "--triton-name", "lcr"])
    assert r.exit_code == 0, r.output
    _check_against_manifest(_parse(repo / "lcr"), read_manifest(onnx_model), "lcr")
    r = CliRunner().invoke(app, ["export", str(onnx_model), "--triton", str(repo), "--triton-name", "lcr"])
    assert r.exit_code == 1 and "--replace" in r.output
    r = CliRunner().invoke(app, ["export", str(onnx_model), "--triton", str(repo), "--triton-name", "lcr", "--replace"])
    assert r.exit_code == 0, r.output


@pytest.mark.torch
def test_a_triton_entry_that_cannot_be_made_stops_the_export_before_it_runs(lcr_checkpoint, onnx_model, tmp_path):
    from typer.testing import CliRunner

    from lcr_sdk.cli import app

    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(
        app, ["export", str(lcr_checkpoint), "--batch", "2,8,32", "--out", str(out), "--triton", str(tmp_path / "r")]
    )
    assert r.exit_code == 1 and "smallest batch would be 2" in r.output and "--batch 1,8,32" in r.output, r.output
    assert not out.exists() and "wrote" not in r.output  # refused before anything was exported
    (tmp_path / "r" / "m").mkdir(parents=True)  # an entry of that name already there
    r = CliRunner().invoke(app, ["export", str(lcr_checkpoint), "--out", str(out), "--triton", str(tmp_path / "r")])
    assert r.exit_code == 1 and "already exists; pass --replace" in r.output and not out.exists(), r.output

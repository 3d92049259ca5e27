"""Bad model files and manifests: every case a real file on disk and its outcome: one ModelError (never a
TypeError or an onnxruntime traceback) whose message names the fix, and a model that keeps working when an export
is killed while it switches the model/manifest pair."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from model_helpers import export_onnx

from lcr_sdk import Embedder
from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.manifest import Manifest, read_manifest, sidecar_path

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(lcr_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("onnx") / "lcr.onnx")


def _copy_with(model: Path, folder: Path, edit) -> Path:
    """A copy of the model whose sidecar manifest went through ``edit(dict)``."""
    out = folder / model.name
    shutil.copy(model, out)
    d = json.loads(sidecar_path(model).read_text())
    edit(d)
    sidecar_path(out).write_text(json.dumps(d))
    return out


def _set(path: str, value):
    def edit(d: dict) -> None:
        *parents, key = path.split(".")
        for p in parents:
            d = d[p]
        d[key] = value

    return edit


# -- fields of the wrong type: one ModelError naming the field ------------------------------------------------------

WRONG_TYPES = {
    "embedding_dim a string": ("embedding_dim", "512", "'embedding_dim'"),
    "num_parts a float": ("num_parts", 8.5, "'num_parts'"),
    "batch_max a string": ("batch_max", "32", "'batch_max'"),
    "batch_min negative": ("batch_min", -1, "'batch_min'"),
    "input not an object": ("input", "images", "'input'"),
    "input height a string": ("input.height", "64", "'input.height'"),
    "input width too small": ("input.width", 8, "'input.width'"),
    "mean of two numbers": ("input.mean", [0.5, 0.5], "'input.mean'"),
    "std with a string": ("input.std", [0.2, "x", 0.2], "'input.std'"),
    "feature_size one number": ("feature_size", [2], "'feature_size'"),
    "tensorrt a string": ("tensorrt", "10.3", "'tensorrt'"),
    "extra a list": ("extra", [], "'extra'"),
    "precision a number": ("precision", 16, "'precision'"),
    "layout NCHW": ("input.layout", "NCHW", "NHWC/BGR/uint8"),
    "interpolation unknown": ("input.interpolation", "lanczos9", "'input.interpolation'"),
    "antialias a string": ("input.antialias", "yes", "'input.antialias'"),
    "a newer format": ("format_version", 3, "reads versions 1 and 2"),
    "model_sha256 a number": ("model_sha256", 0, "'model_sha256'"),
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_manifest_field_of_wrong_type_is_one_model_error(case, model, tmp_path):
    path, value, named = WRONG_TYPES[case]
    bad = _copy_with(model, tmp_path, _set(path, value))
    with pytest.raises(ModelError) as e:
        Embedder(bad)
    assert named in str(e.value) and "re-export" in str(e.value)
    assert not isinstance(e.value, TypeError)


# -- manifest against the graph's declared inputs and outputs, at load ------------------------------------------------

GRAPH_MISMATCHES = {
    "input size": (lambda d: d["input"].update(height=96, width=96) or d.update(feature_size=[3, 3]), "input 'images'"),
    "input name": (_set("input.name", "pixels"), "inputs ['images'] instead of ['pixels']"),
    "embedding_dim (another arch)": (lambda d: d.update(arch="resnet50", embedding_dim=2048), "'embedding' has shape"),
    "num_parts": (_set("num_parts", 4), "'parts' has shape"),
    "method moco on an lcr graph": (lambda d: d.update(method="moco", num_parts=0), "outputs ['attention', 'embed"),
    "feature size on a bigger input": (
        lambda d: d["input"].update(height=128, width=128) or d.update(feature_size=[4, 4]),
        "[N, 128, 128, 3]",
    ),
}


@pytest.mark.parametrize("case", sorted(GRAPH_MISMATCHES))
def test_manifest_that_does_not_describe_the_graph_is_refused_at_load(case, model, tmp_path):
    edit, named = GRAPH_MISMATCHES[case]

    def unhashed(d: dict) -> None:
        edit(d)
        d["model_sha256"] = ""  # so the graph check, not the file hash, is what refuses it

    bad = _copy_with(model, tmp_path, unhashed)
    with pytest.raises(ModelError, match="does not match its manifest") as e:
        Embedder(bad)
    assert named in str(e.value) and "re-export" in str(e.value).lower()


SIDECAR_EDITS = {
    "another resize rule": (
        _set("input.resize", "stretch"),
        "input.resize 'stretch' (sidecar) vs 'short_side_center_crop'",
    ),
    "another checkpoint's hash": (_set("checkpoint_sha256", "ab" * 32), "checkpoint_sha256 'abab"),
    "other normalisation": (_set("input.mean", [0.5, 0.5, 0.5]), "input.mean [0.5, 0.5, 0.5] (sidecar)"),
    "another interpolation": (_set("input.interpolation", "nearest"), "input.interpolation 'nearest' (sidecar)"),
    "antialias turned off": (_set("input.antialias", False), "input.antialias False (sidecar) vs True"),
}


@pytest.mark.parametrize("case", sorted(SIDECAR_EDITS))
def test_sidecar_that_disagrees_with_the_manifest_inside_the_graph_is_refused(case, model, tmp_path):
    """The model file is untouched (its sha256 still matches), the graph's I/O still fits: only the manifest inside
    the ONNX can tell that the sidecar was edited or belongs to another model. The error names both."""
    edit, named = SIDECAR_EDITS[case]
    bad = _copy_with(model, tmp_path, edit)
    with pytest.raises(ModelError, match="disagrees with the manifest inside the graph") as e:
        Embedder(bad, device="cpu")
    assert named in str(e.value) and str(sidecar_path(bad)) in str(e.value), str(e.value)
    sidecar_path(bad).unlink()  # the fix the message gives: the graph's own manifest is then used
    with Embedder(bad, device="cpu") as emb:
        assert emb.manifest.input.resize == "short_side_center_crop"


def test_derived_fields_that_contradict_each_other_are_refused(model, tmp_path):
    for edit, named in (
        (_set("embedding_dim", 2048), "does not match arch resnet18"),
        (_set("feature_size", [3, 3]), "does not match input 64x64"),
        (_set("num_parts", 0), "needs num_parts >= 1"),
    ):
        with pytest.raises(ModelError, match=named):
            read_manifest(_copy_with(model, tmp_path, edit))


def _rows_graph(path: Path) -> Path:
    """A real ONNX graph that declares embedding [N, 512] but returns 24 rows per image (Reshape of the pixels)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["rows"], value=helper.make_tensor("r", TensorProto.INT64, [2], [-1, 512])),
        helper.make_node("Reshape", ["x", "rows"], ["flat"]),
        helper.make_node("LpNormalization", ["flat"], ["embedding"], axis=1),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("o", TensorProto.FLOAT, [1, 2, 2], [1] * 4)),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("a", TensorProto.INT64, [2], [1, 2])),
        helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]),
        helper.make_node("Mul", ["m3", "one"], ["attention_raw"]),
        helper.make_node("Div", ["attention_raw", "attention_raw"], ["attention"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rows",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 64, 64, 3])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512]),
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["N", 2, 2]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_graph_returning_24_rows_per_image_fails_the_call(tmp_path):
    from lcr_sdk.manifest import InputSpec, write_sidecar

    path = _rows_graph(tmp_path / "rows.onnx")
    write_sidecar(Manifest("resnet18", "moco", 512, 0, (2, 2), InputSpec(64, 64)), path)
    with Embedder(path, device="cpu") as emb:
        img = np.full((64, 64, 3), 100, np.uint8)
        with pytest.raises(
            ModelError, match=r"'embedding' of shape \(72, 512\) for a batch of 3 \(expected \(3, 512\)"
        ):
            emb.embed([img] * 3)


# -- broken files and sidecars --------------------------------------------------------------------------------------


def _empty_model(model: Path, folder: Path) -> Path:
    out = _copy_with(model, folder, _set("model_sha256", ""))
    out.write_bytes(b"")
    return out


def _sidecar_text(text: str):
    def make(model: Path, folder: Path) -> Path:
        out = folder / model.name
        shutil.copy(model, out)
        sidecar_path(out).write_text(text)
        return out

    return make


BROKEN_FILES = {
    "0-byte model": (_empty_model, "onnxruntime cannot load"),
    "sidecar not JSON": (_sidecar_text("{ not json"), "is not valid JSON"),
    "sidecar a JSON list": (_sidecar_text("[1, 2, 3]"), "is not an lcr-sdk manifest"),
    "sidecar of another model": (
        lambda m, f: _copy_with(m, f, _set("model_sha256", "0" * 64)),
        "does not match the sha256",
    ),
    "sidecar without input": (
        lambda m, f: _copy_with(m, f, lambda d: d.pop("input")),
        "lacks input: it was edited or damaged; re-export the model",
    ),
    "sidecar without arch": (lambda m, f: _copy_with(m, f, lambda d: d.pop("arch")), r"\.json lacks arch: it was"),
    "input without height": (lambda m, f: _copy_with(m, f, lambda d: d["input"].pop("height")), "lacks input.height"),
    "unknown field": (lambda m, f: _copy_with(m, f, _set("colour_space", "sRGB")), "has unknown field.s. colour_space"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_model_file_or_sidecar_is_one_model_error(case, model, tmp_path):
    make, named = BROKEN_FILES[case]
    with pytest.raises(ModelError, match=named):
        Embedder(make(model, tmp_path))


def test_model_path_that_is_a_folder_or_odd_suffix(tmp_path):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(ModelError, match="it is a folder"):
        Embedder(tmp_path / "m.onnx")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(ModelError, match="suffix '.tflite'"):
        Embedder(tmp_path / "m.tflite")


def test_tensorrt_engine_on_the_cpu_is_refused_with_the_onnx_route(model, tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00" * 64)
    d = json.loads(sidecar_path(model).read_text())
    d["model_sha256"] = ""
    sidecar_path(engine).write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"runs only on a CUDA GPU.*Embedder\('model.onnx', device='cpu'\)"):
        Embedder(engine, device="cpu")


# -- a killed export never leaves a model that is refused -----------------------------------------------------------

KILL_AT = {
    # the new sidecar (with the old manifest under "previous") is in place, the model not yet renamed
    "before the model rename": "dst.endswith('out.onnx') and not dst.endswith('.json')",
    # the model is renamed, the sidecar still holds both manifests
    "before the sidecar is rewritten": "dst.endswith('out.onnx.json') and state['renamed']",
}


@pytest.mark.parametrize("case", sorted(KILL_AT))
def test_export_killed_while_switching_the_pair_leaves_a_loadable_model(case, lcr_checkpoint, tmp_path):
    """kill -9 inside the switch (the process kills itself at that rename): the model at the path still loads, with
    a manifest that describes it: the old one before the model rename, the new one after it."""
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    out = tmp_path / "out.onnx"
    old_path = export_onnx(lcr_checkpoint, tmp_path / "first.onnx")
    shutil.copy(old_path, out)
    shutil.copy(sidecar_path(old_path), sidecar_path(out))
    old_sha = read_manifest(out).model_sha256
    other = random_init_checkpoint(tmp_path / "other.pt", num_parts=8, seed=3)
    code = textwrap.dedent(f"""
        import os, signal
        import lcr_sdk.manifest as m
        real, state = os.replace, {{"renamed": False}}
        def replace(src, dst):
            src, dst = str(src), str(dst)
            if {KILL_AT[case]}:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            if dst.endswith("out.onnx"):
                state["renamed"] = True
        m.os.replace = replace
        import lcr_sdk.fileio as f
        f.os.replace = replace
        from lcr_sdk.export import export_model
        export_model({str(other)!r}, {str(out)!r}, verify=False, progress=False, log=None)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == -9, r.stderr[-2000:]
    with Embedder(out, device="cpu") as emb:  # no "does not match the sha256"
        v = emb.embed(np.full((64, 64, 3), 90, np.uint8))
    assert v.shape == (512,)
    loaded = read_manifest(out).model_sha256
    if case == "before the model rename":
        assert loaded == old_sha
    else:
        assert loaded != old_sha and json.loads(sidecar_path(out).read_text())["previous"]["model_sha256"] == old_sha
    assert [p.name for p in tmp_path.glob(".lcr-export-*")], "the killed export's staging folder is still there"
    from lcr_sdk.export import export_model

    export_model(other, tmp_path / "again.onnx", verify=False, progress=False, log=None)  # cleans the folder up
    assert not list(tmp_path.glob(".lcr-export-*"))


def test_export_stopped_at_the_model_rename_keeps_an_old_model_without_sidecar_loadable(lcr_checkpoint, tmp_path):
    """The old model carries its manifest only inside the graph (no sidecar). SIGTERM arrives at the model rename:
    exit 130, and the untouched old model still loads, with the manifest that describes it."""
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    out = tmp_path / "out.onnx"
    shutil.copy(export_onnx(lcr_checkpoint, tmp_path / "first.onnx"), out)  # no sidecar copied
    old_bytes, old_ckpt = out.read_bytes(), read_manifest(out).checkpoint_sha256
    other = random_init_checkpoint(tmp_path / "other.pt", num_parts=8, seed=3)
    code = textwrap.dedent(f"""
        import os, signal, sys
        import lcr_sdk.manifest as m
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith("out.onnx"):
                os.kill(os.getpid(), signal.SIGTERM)
            real(src, dst)
        m.os.replace = replace
        sys.argv = ["lcr-sdk", "export", {str(other)!r}, "--no-verify", "--out", {str(out)!r}]
        from lcr_sdk.cli import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert out.read_bytes() == old_bytes
    with Embedder(out, device="cpu") as emb:  # no "does not match the sha256"
        assert emb.manifest.checkpoint_sha256 == old_ckpt
        assert emb.embed(np.full((64, 64, 3), 90, np.uint8)).shape == (512,)


def test_manifest_reads_fast_path_without_previous(model):
    """After a completed export the sidecar holds one manifest (no 'previous' left behind)."""
    assert "previous" not in json.loads(sidecar_path(model).read_text())
    assert os.path.getsize(sidecar_path(model)) < 4096

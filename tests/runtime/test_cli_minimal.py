"""The CLI on a minimal install: OpenCV, onnxruntime, torch and TensorRT cannot be imported (a TensorRT container
without OpenCV, a Jetson venv made without --system-site-packages, the core install). Every command still starts;
the torch-free ones run; one that needs a missing package says, in one line, what to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_helpers import export_onnx

BLOCKED = ("cv2", "onnxruntime", "torch", "torchvision", "tensorrt")
# sys.modules[name] = None makes `import name` fail as a missing package does (tests/runtime/test_runtime_imports.py)
PRELUDE = f"import sys\nfor m in {BLOCKED!r}:\n    sys.modules[m] = None\n"
RUN_CLI = PRELUDE + "sys.argv = ['lcr-sdk'] + sys.argv[1:]\nfrom lcr_sdk.cli import main\nmain()\n"


def _cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_every_command_starts_without_optional_packages():
    """`--help` of the app and of every command and sub-command, in a process where none of them can be imported."""
    code = PRELUDE + (
        "import typer\n"
        "from typer.testing import CliRunner\n"
        "from lcr_sdk.cli import app\n"
        "root = typer.main.get_command(app)\n"
        "paths, todo = [], [((), root)]\n"
        "while todo:\n"
        "    path, cmd = todo.pop()\n"
        "    paths.append(path)\n"
        "    if hasattr(cmd, 'commands'):\n"
        "        todo += [((*path, n), c) for n, c in cmd.commands.items()]\n"
        "bad = {}\n"
        "for path in paths:\n"
        "    r = CliRunner().invoke(app, [*path, '--help'])\n"
        "    if r.exit_code != 0:\n"
        "        bad[' '.join(path)] = repr(r.exception)\n"
        "print(json.dumps({'commands': [' '.join(p) for p in paths], 'failed': bad}))\n"
    )
    r = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    for command in ("export", "verify", "info", "embed", "gallery build", "gallery search", "train", "data synth"):
        assert command in result["commands"]


@pytest.fixture(scope="module")
def onnx_model(lcr_checkpoint, tmp_path_factory) -> Path:
    """A real exported model with its sidecar manifest (exported here, where torch is installed)."""
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("minimal") / "lcr.onnx")


@pytest.mark.torch
def test_info_reads_the_manifest_without_optional_packages(onnx_model):
    from lcr_sdk.manifest import read_manifest

    r = _cli("info", onnx_model, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(read_manifest(onnx_model).to_json())
    r = _cli("info", onnx_model)
    assert r.returncode == 0 and "resnet18 lcr, fp32" in r.stdout


@pytest.mark.torch
def test_engine_build_reaches_the_tensorrt_check_without_optional_packages(onnx_model, tmp_path):
    """`lcr-sdk export model.onnx --trt` needs neither OpenCV, onnxruntime nor torch: it reads the manifest, checks
    the model and stops only at TensorRT, naming how to get it on a desktop and on a Jetson."""
    r = _cli("export", onnx_model, "--trt", "--out", tmp_path / "lcr.engine")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT is not importable" in r.stderr and "pip install 'lcr-sdk[trt-cu12]'" in r.stderr
    assert "nvidia-jetpack" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "lcr.engine").exists()


@pytest.mark.torch
def test_triton_repository_is_written_without_optional_packages(onnx_model, tmp_path):
    r = _cli("export", onnx_model, "--triton", tmp_path / "models")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models" / onnx_model.stem / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()


@pytest.mark.torch
@pytest.mark.parametrize(
    "args, fix",
    [
        (["embed", "{model}", "{model}"], "pip install 'lcr-sdk[cpu]'"),
        (["data", "synth", "{tmp}/synth"], "JetPack's OpenCV"),
        (["gallery", "search", "{tmp}/g", "{model}", "{model}"], "pip install 'lcr-sdk[cpu]'"),
        (["train", "{tmp}"], "pip install 'lcr-sdk[train]'"),
    ],
    ids=["embed", "data synth", "gallery search", "train"],
)
def test_command_needing_a_missing_package_names_it(args, fix, onnx_model, tmp_path):
    argv = [a.format(model=onnx_model, tmp=tmp_path) for a in args]
    r = _cli(*argv)
    assert r.returncode == 1, r.stderr
    assert fix in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_an_unknown_import_error_is_not_hidden():
    """Only optional packages get the install line: any other ImportError is a bug and keeps its traceback."""
    from lcr_sdk.cli import missing_package_line

    assert missing_package_line(ModuleNotFoundError("No module named 'lcr_sdk.nope'", name="lcr_sdk.nope")) is None
    line = missing_package_line(ModuleNotFoundError("No module named 'cuda'", name="cuda"))
    assert line is not None and "pip install 'lcr-sdk[trt-cu12]'" in line


def test_an_opencv_missing_a_system_library_names_it_at_the_command_line():
    """opencv-python installed, libGL absent (a headless box): the CLI's line names the library and its package,
    not the extra that is already installed."""
    from lcr_sdk.cli import missing_package_line

    err = ImportError("libGL.so.1: cannot open shared object file: No such file or directory", name="cv2")
    line = missing_package_line(err)
    assert line is not None and "libGL.so.1" in line and "apt install libgl1" in line and "lcr-sdk[cpu]" not in line

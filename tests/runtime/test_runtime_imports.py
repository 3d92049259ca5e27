"""The runtime never imports torch: `import lcr_sdk` and every runtime module work on a Jetson without it."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lcr_sdk

RUNTIME_MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(lcr_sdk.__path__, "lcr_sdk.")
    if not m.name.startswith(("lcr_sdk.train", "lcr_sdk.export")) and m.name != "lcr_sdk.cli.__main__"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_runtime_modules_leave_torch_unimported():
    assert "lcr_sdk.manifest" in RUNTIME_MODULES and "lcr_sdk.cli" in RUNTIME_MODULES
    code = (
        "import importlib, sys\n"
        f"for m in {RUNTIME_MODULES!r}:\n"
        "    importlib.import_module(m)\n"
        "import lcr_sdk\n"
        "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"torch was imported by a runtime module: {r.stdout}"


BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"


def test_cli_help_lists_every_command_without_torch():
    r = _run(BLOCK_TORCH + "import sys; sys.argv = ['lcr-sdk', '--help']\nfrom lcr_sdk.cli import main\nmain()")
    assert r.returncode == 0, r.stderr
    for command in ("quickstart", "train", "eval", "data"):
        assert command in r.stdout


def test_command_needing_torch_names_the_extra(tmp_path):
    r = _run(
        BLOCK_TORCH + f"import sys; sys.argv = ['lcr-sdk', 'train', {str(tmp_path)!r}]\n"
        "from lcr_sdk.cli import main\nmain()"
    )
    assert r.returncode == 1
    assert "pip install 'lcr-sdk[train]'" in r.stderr
    assert "Traceback" not in r.stderr


BLOCK_PLATFORM = "import sys; sys.modules['cv2'] = None; sys.modules['onnxruntime'] = None\n"


def test_without_opencv_or_onnxruntime_the_sdk_imports_and_names_the_fix():
    """On a platform whose OpenCV / onnxruntime are missing (a Jetson venv without --system-site-packages, a core
    install without an extra): `import lcr_sdk`, the manifest and the engine builder import, and the first use
    names the extra (desktop) and the system package (Jetson) to install."""
    r = _run(BLOCK_PLATFORM + "import lcr_sdk, lcr_sdk.manifest, lcr_sdk.backends.tensorrt, lcr_sdk.export.trt")
    assert r.returncode == 0, r.stderr
    r = _run(BLOCK_PLATFORM + "from lcr_sdk import Embedder")
    assert r.returncode == 1 and "MissingDependencyError" in r.stderr
    assert "pip install 'lcr-sdk[cpu]'" in r.stderr and "JetPack's OpenCV" in r.stderr and "docs/JETSON.md" in r.stderr
    r = _run(BLOCK_PLATFORM.replace("sys.modules['cv2'] = None; ", "") + "from lcr_sdk.manifest import read_manifest\n"
             "read_manifest('no-sidecar.onnx')")  # fmt: skip
    assert r.returncode == 1 and "ModelError" in r.stderr  # no manifest: refused before onnxruntime is needed


@pytest.mark.parametrize("example", ["camera_attention", "camera_retrieval", "build_gallery"])
def test_a_demo_without_opencv_says_how_to_get_it_in_one_line(example, tmp_path):
    """A device without OpenCV (or without a system library it loads): the demo's first words are the fix."""
    script = Path(__file__).resolve().parents[2] / "examples" / f"{example}.py"
    code = (
        "import sys, runpy\n"
        "sys.modules['cv2'] = None\n"
        f"sys.argv = [{str(script)!r}, 'model.onnx', 'x', 'y']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: OpenCV (cv2) is not importable") and "pip install" in lines[0]

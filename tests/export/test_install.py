"""The documented installs resolve to what each platform needs (benchmarks/check_install.py), without its machine.

The resolution needs the package index; where it cannot be reached the resolving test skips. The rule checks run
everywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import check_install  # noqa: E402


def test_jetson_rules_catch_wheels_that_shadow_jetpack():
    """What the core dependencies used to resolve to on a Jetson is refused, point by point."""
    old = {"numpy": "2.2.6", "opencv-python": "4.12.0", "onnxruntime": "1.23.2", "cuda-python": "13.0.1"}
    problems = " | ".join(check_install.problems_of("jetson", old))
    for word in ("numpy 2.2.6", "cuda-python 13.0.1", "opencv-python", "onnxruntime 1.23.2"):
        assert word in problems
    assert check_install.problems_of("jetson", {"numpy": "1.26.4", "cuda-python": "12.9.0", "typer": "0.15"}) == []


def test_desktop_gpu_rule_refuses_both_onnxruntimes():
    both = {"opencv-python": "5.0", "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    assert any("shadow" in p for p in check_install.problems_of("desktop-gpu", both))


def _index_reachable() -> bool:
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "cuda-python"], capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.slow
def test_documented_installs_resolve_right(tmp_path):
    """`pip install 'lcr-sdk[jetson]'` on JetPack 6.1+ (aarch64, Python 3.10) keeps numpy 1.x, brings cuda-python 12.x
    and no OpenCV / onnxruntime / TensorRT / torch wheel; `[cpu]` and `[gpu]` bring one onnxruntime each."""
    if not _index_reachable():
        pytest.skip("the package index cannot be reached from here")
    wheel = check_install.build_wheel(tmp_path)
    resolved = {t: check_install.resolve(wheel, t) for t in ("jetson", "desktop-cpu", "desktop-gpu")}
    for target, found in resolved.items():
        assert check_install.problems_of(target, found) == [], (target, found)
    jetson = resolved["jetson"]
    assert jetson["numpy"].startswith("1.") and jetson["cuda-python"].startswith("12.")
    assert check_install.trt_extra_problems(wheel) == []

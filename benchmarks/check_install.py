"""Resolve the documented install of each platform without its machine, and check what pip would put there.

    .venv/bin/python benchmarks/check_install.py            # all platforms; exit 1 on a failed check
    .venv/bin/python benchmarks/check_install.py jetson     # one

Builds a wheel of this checkout, then asks pip for the install report (``pip install --dry-run --report``) of
``lcr-sdk[EXTRAS]``, the command the user runs on that machine, and asserts on the resolved set. The Jetson is
resolved for its own platform and Python (``--only-binary=:all: --platform manylinux2014_aarch64 --python-version
3.10``), the desktop targets for this x86_64 machine:

- jetson (JetPack 6.1+: aarch64, Python 3.10, ``pip install 'lcr-sdk[jetson]'`` in a ``--system-site-packages`` venv):
  numpy < 2, cuda-python 12.x, and no opencv-python*, onnxruntime*, tensorrt* or torch wheel (JetPack provides
  OpenCV with GStreamer, onnxruntime-gpu and TensorRT; a wheel would shadow them);
- desktop-cpu (x86_64, ``[cpu]``): opencv-python and onnxruntime, no onnxruntime-gpu, no torch;
- desktop-gpu (x86_64, ``[gpu]``): onnxruntime-gpu and not onnxruntime.
- the ``trt-cu12`` / ``trt-cu13`` extras are checked in the wheel's metadata (cuda-python pinned to the CUDA major of
  the tensorrt-cuXX package): NVIDIA's tensorrt-cu12/-cu13 packages build their metadata by downloading from
  NVIDIA's own index, which this check does not reach.

Needs the package index (a few MB of metadata, no install). Run time: one to two minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (extras, platform tags, python version). The Jetson is resolved for its own platform (aarch64, JetPack 6.1+'s
# Python 3.10) from binary wheels, as pip requires for a foreign platform; the desktop targets are resolved for this
# machine (x86_64 Linux), because the tensorrt-cu12/-cu13 packages are source distributions that pull NVIDIA's wheels.
TARGETS: dict[str, tuple[str, list[str], str]] = {
    "jetson": ("jetson", ["manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_35_aarch64"], "3.10"),
    "desktop-cpu": ("cpu", [], ""),
    "desktop-gpu": ("gpu", [], ""),
}


def _major(version: str) -> int:
    return int(version.split(".")[0])


def problems_of(target: str, resolved: dict[str, str]) -> list[str]:
    """What is wrong with a resolved install set ({normalised name: version}) for ``target``; [] if it is right."""
    names = set(resolved)
    out = []

    def absent(prefixes: tuple[str, ...]) -> None:
        for n in sorted(names):
            if n.startswith(prefixes):
                out.append(f"{n} {resolved[n]} would be installed")

    if target == "jetson":
        if "numpy" in resolved and _major(resolved["numpy"]) >= 2:
            out.append(f"numpy {resolved['numpy']} (JetPack's wheels need numpy 1.x)")
        if "cuda-python" not in resolved or _major(resolved["cuda-python"]) != 12:
            out.append(f"cuda-python {resolved.get('cuda-python')} (JetPack 6.1+ has a CUDA 12 driver: need 12.x)")
        absent(("opencv-python", "onnxruntime", "tensorrt", "torch", "nvidia-"))
    elif target == "desktop-cpu":
        for need in ("opencv-python", "onnxruntime"):
            if need not in names:
                out.append(f"{need} missing")
        absent(("onnxruntime-gpu", "torch", "tensorrt"))
    else:
        for need in ("opencv-python", "onnxruntime-gpu"):
            if need not in names:
                out.append(f"{need} missing")
        if "onnxruntime" in names:
            out.append("onnxruntime (CPU) would shadow onnxruntime-gpu")
    return out


def trt_extra_problems(wheel: Path) -> list[str]:
    """The trt-cuXX extras pin cuda-python to the CUDA major of their tensorrt-cuXX (read from the wheel)."""
    import re
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    out = []
    for cuda in (12, 13):
        extra = [r for r in requires if f'extra == "trt-cu{cuda}"' in r]
        if not any(f"tensorrt-cu{cuda}" in r for r in extra):
            out.append(f"trt-cu{cuda} does not require tensorrt-cu{cuda}")
        pins = [re.sub(r"\s+", "", r) for r in extra if "cuda-python" in r]
        if not any(f">={cuda}" in r and f"<{cuda + 1}" in r for r in pins):
            out.append(f"trt-cu{cuda} does not pin cuda-python to {cuda}.x: {pins}")
    return out


def build_wheel(folder: Path) -> Path:
    """A wheel of this checkout (no dependencies resolved)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    return next(folder.glob("lcr_sdk-*.whl"))


def resolve(wheel: Path, target: str, timeout: float = 600) -> dict[str, str]:
    """{normalised name: version} pip would install for ``target`` (dry run, binary wheels for its platform)."""
    extras, platforms, python = TARGETS[target]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
    if platforms:  # pip wants --target with --platform; --dry-run installs nothing there
        cmd += ["--target", tempfile.mkdtemp(prefix="lcr-install-check-")]
        cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        for tag in platforms:
            cmd += ["--platform", tag]
    cmd.append(f"{wheel}[{extras}]")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"pip could not resolve {target}: {run.stderr.strip().splitlines()[-1:]}")
    report = json.loads(run.stdout)
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in report["install"]
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"{', '.join(TARGETS)} (default: all)")
    targets = ap.parse_args(argv).targets or list(TARGETS)
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        wheel = build_wheel(Path(d))
        for target in targets:
            resolved = resolve(wheel, target)
            problems = problems_of(target, resolved)
            shown = ", ".join(
                f"{n} {v}"
                for n, v in sorted(resolved.items())
                if n.startswith(("numpy", "cuda", "opencv", "onnxruntime", "tensorrt", "torch"))
            )
            print(f"{target} [{TARGETS[target][0]}]: {'OK' if not problems else 'FAILED'}: {shown}")
            for p in problems:
                print(f"  - {p}")
            failed += bool(problems)
        problems = trt_extra_problems(wheel)
        print(f"trt-cu12 / trt-cu13 extras (wheel metadata): {'OK' if not problems else 'FAILED'}")
        for p in problems:
            print(f"  - {p}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

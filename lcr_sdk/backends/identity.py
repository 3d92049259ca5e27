"""What a TensorRT engine is tied to, and whether one may run on this machine (docs/EXPORT.md, "Engine identity").

An engine records, in its manifest's ``tensorrt`` entry, the system it was built on:

    version                 TensorRT version (``trt.__version__``)
    hardware_compatibility  the builder's hardware-compatibility level: ``none`` (lcr-sdk's builds),
                            ``ampere_plus`` or ``same_compute_capability`` (``trtexec --hardwareCompatibilityLevel``)
    gpu, compute_capability GPU name and major.minor
    sm_count, memory_mib    streaming multiprocessors and device memory: every Orin module reports "Orin" 8.7,
                            these tell an AGX Orin (16 SMs) from an Orin NX or Nano (8 or 4 SMs, less memory)
    l4t                     the L4T release on a Jetson (``/etc/nv_tegra_release``), absent elsewhere

:func:`check_engine` compares that with the running system. It refuses what TensorRT itself refuses to
deserialize (another TensorRT version; another compute capability unless the engine was built hardware-compatible
for this one) and warns on the rest: an engine tuned for another GPU model, SM count, memory size or L4T release
runs, but with tactics timed on other hardware (slower, and a workspace sized for more memory may not fit). Both
name the torch-free rebuild command (the caller adds it). Pure: no TensorRT or GPU needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# hardware_compatibility values (TensorRT's HardwareCompatibilityLevel names, lower case)
HW_NONE, HW_AMPERE_PLUS, HW_SAME_CC = "none", "ampere_plus", "same_compute_capability"
MEMORY_TOLERANCE = 0.05  # device memory within 5 %: the same module (drivers reserve slightly different amounts)
RECORDED = ("version", "hardware_compatibility", "gpu", "compute_capability", "sm_count", "memory_mib", "l4t")


@dataclass(frozen=True)
class EngineCheck:
    """The verdict on an engine for this machine: ``refuse`` (TensorRT would not run it) and ``warn`` (it runs, but
    was built for other hardware); one sentence each."""

    refuse: list[str] = field(default_factory=list)
    warn: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Runs here as built: nothing to refuse or warn about."""
        return not self.refuse and not self.warn


def _version_key(version: Any) -> tuple[str, ...]:
    """Engines are tied to major.minor.patch of TensorRT (build numbers may differ)."""
    return tuple(str(version).split(".")[:3])


def _cc(value: Any) -> tuple[int, int] | None:
    parts = str(value).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def hardware_level(value: Any) -> str:
    """A TensorRT ``HardwareCompatibilityLevel`` (or its name) as recorded: ``none``, ``ampere_plus``, ..."""
    name = getattr(value, "name", None) or str(value).rsplit(".", 1)[-1]
    return str(name).lower()


def check_engine(built: dict[str, Any] | None, running: dict[str, Any]) -> EngineCheck:
    """Compare the system an engine was built on (the manifest's ``tensorrt`` entry) with the running one.

    Args:
        built: the manifest's ``tensorrt`` entry (see the module docstring for its keys; older manifests have only
            version, gpu and compute_capability).
        running: the same keys for this process (:func:`lcr_sdk.backends.tensorrt.running_system`).

    Returns:
        What to refuse and what to warn about; both empty when the engine was built on this kind of machine.
    """
    if not built:
        return EngineCheck(
            refuse=["the manifest has no 'tensorrt' entry (TensorRT version, GPU), so the engine cannot be checked"]
        )
    refuse: list[str] = []
    warn: list[str] = []
    if _version_key(built.get("version", "")) != _version_key(running["version"]):
        refuse.append(f"built with TensorRT {built.get('version')}, this is TensorRT {running['version']}")

    level = hardware_level(built.get("hardware_compatibility", HW_NONE))
    b_cc, r_cc = str(built.get("compute_capability")), str(running["compute_capability"])
    b_gpu, r_gpu = built.get("gpu"), running["gpu"]
    if b_cc != r_cc:
        here = f"this GPU is {r_gpu} with compute capability {r_cc}"
        running_cc = _cc(r_cc)
        if level == HW_AMPERE_PLUS and running_cc is not None and running_cc >= (8, 0):
            warn.append(
                f"built for compute capability {b_cc} ({b_gpu}) as an Ampere+ hardware-compatible engine, {here}: "
                "it runs, slower than an engine built for this GPU"
            )
        else:
            why = (
                " (hardware compatibility Ampere+ needs compute capability 8.0 or newer)"
                if level == HW_AMPERE_PLUS
                else ""
            )
            refuse.append(f"built for compute capability {b_cc} ({b_gpu}), {here}{why}")
    elif b_gpu != r_gpu:
        warn.append(f"built on {b_gpu}, this GPU is {r_gpu} (same compute capability {r_cc}): tuned for the other GPU")

    if not refuse:
        warn += _tuning_differences(built, running)
    return EngineCheck(refuse=refuse, warn=warn)


def _tuning_differences(built: dict[str, Any], running: dict[str, Any]) -> list[str]:
    """Differences TensorRT accepts but that make the engine's tactics a guess for this machine."""
    warn = []
    gpu = running["gpu"]
    if "sm_count" in running and "sm_count" not in built:
        warn.append(
            "the manifest does not record the SM count and memory of the GPU it was built on (an older lcr-sdk), "
            f"so a build on a larger {gpu} cannot be told apart"
        )
    elif "sm_count" in running and built.get("sm_count") != running["sm_count"]:
        warn.append(
            f"tuned on {built.get('gpu')} with {built.get('sm_count')} SMs, this {gpu} has {running['sm_count']} "
            "(another module of the same family): it runs, slower than an engine built here"
        )
    b_mem, r_mem = built.get("memory_mib"), running.get("memory_mib")
    if isinstance(b_mem, int) and isinstance(r_mem, int) and abs(b_mem - r_mem) > MEMORY_TOLERANCE * max(b_mem, r_mem):
        warn.append(
            f"built on a GPU with {b_mem} MiB of memory, this one has {r_mem} MiB: the build's workspace and tactics "
            "assumed the other size"
        )
    if "l4t" in built or "l4t" in running:
        b_l4t, r_l4t = built.get("l4t"), running.get("l4t")
        if b_l4t != r_l4t:
            warn.append(
                f"built on {_l4t(b_l4t)}, this is {_l4t(r_l4t)}: the JetPack libraries it was timed with differ"
            )
    return warn


def running_identity(version: str, device: int = 0) -> dict[str, Any]:
    """This machine's side of :func:`check_engine`: the TensorRT ``version`` given, the GPU's identity (through
    cuda-python) and, on a Jetson, the L4T release.

    Raises:
        MissingDependencyError: cuda-python is not installed. DeviceError: no such GPU, or no usable driver.
    """
    from lcr_sdk.backends import cuda

    system: dict[str, Any] = {"version": str(version), **cuda.gpu_identity(device)}
    l4t = cuda.l4t_release()
    if l4t is not None:
        system["l4t"] = l4t
    return system


def _l4t(release: Any) -> str:
    return f"L4T r{release}" if release else "a machine without L4T (not a Jetson)"


def engine_entry(system: dict[str, Any], hardware_compatibility: str = HW_NONE) -> dict[str, Any]:
    """The manifest's ``tensorrt`` entry for an engine built on ``system`` (the keys of :data:`RECORDED` it has)."""
    entry = {k: system[k] for k in RECORDED if k in system and system[k] is not None}
    entry["hardware_compatibility"] = hardware_level(hardware_compatibility)
    return entry

"""An exported model -> a Triton Inference Server model repository entry (docs/EXPORT.md, "Triton").

Torch-free and TensorRT-free: it works from an exported ``.onnx`` or a built ``.engine`` and its manifest.

    REPO/<name>/config.pbtxt          platform, max_batch_size, inputs/outputs, dynamic batching, instances
    REPO/<name>/1/model.onnx          (platform onnxruntime_onnx), or
    REPO/<name>/1/model.plan          (platform tensorrt_plan)
    REPO/<name>/lcr-sdk.json          the model's manifest: input size and resize rule for clients; for a plan the
                                      TensorRT version, GPU and L4T release it was built with

Triton batches requests along a first dimension it adds itself, so ``dims`` leave out the batch axis and
``max_batch_size`` is the manifest's largest batch. A ``.plan`` is a TensorRT engine: it runs only on a server
whose TensorRT version (major.minor.patch) and GPU match the ones it was built with, which the config's header
comment and ``lcr-sdk.json`` record; the ``.onnx`` runs on any server (ONNX Runtime, with or without its TensorRT
execution provider).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from lcr_sdk.backends.base import ENGINE_SUFFIXES
from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.fileio import atomic_write_text, fsync_dir, sha256_file, staging_dir
from lcr_sdk.manifest import Manifest, read_manifest

# Triton's platform names for the two model kinds (its model_configuration.md), and the file each one loads.
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan")}
# manifest dtype -> Triton data_type (the graph's input is uint8; its outputs are float32 at every precision)
DATA_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
MANIFEST_FILE = "lcr-sdk.json"
STAGING_PREFIX = ".lcr-triton-"
DEFAULT_QUEUE_DELAY_US = 100
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def model_kind(path: str | os.PathLike[str]) -> str:
    """``"onnx"`` or ``"plan"`` from the file suffix.

    Raises:
        InputError: any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "plan"
    raise InputError(
        f"{path} is not an exported model: a Triton repository is made from an .onnx or an engine "
        f"({', '.join(ENGINE_SUFFIXES)}) with its manifest"
    )


def preferred_batch_sizes(manifest: Manifest) -> list[int]:
    """The batch sizes dynamic batching aims for: the manifest's optimal and largest batch (those above 1)."""
    return sorted({b for b in (manifest.batch_opt, manifest.batch_max) if b > 1})


def config_pbtxt(
    manifest: Manifest,
    name: str,
    kind: str,
    preferred: Sequence[int] | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``) for a model and its manifest.

    Args:
        manifest: the model's manifest (input, outputs, batch range; ``tensorrt`` for a plan).
        name: the model name (the repository folder's name).
        kind: ``"onnx"`` or ``"plan"``.
        preferred: dynamic batching's preferred batch sizes (default :func:`preferred_batch_sizes`).
        queue_delay_us: how long the server may hold a request to fill a batch, in microseconds.
        instances: model instances per GPU.

    Raises:
        InputError: a batch range Triton cannot serve, preferred sizes outside it, or a bad delay / count.
    """
    platform = PLATFORMS[kind][0]
    _check_smallest_batch(manifest.batch_min, manifest.batch_opt, manifest.batch_max)
    sizes = list(preferred) if preferred is not None else preferred_batch_sizes(manifest)
    bad = [b for b in sizes if not 1 <= b <= manifest.batch_max]
    if bad:
        raise InputError(f"preferred batch sizes {bad} are outside the model's batch range 1..{manifest.batch_max}")
    if queue_delay_us < 0 or instances < 1:
        raise InputError(f"queue delay {queue_delay_us} us and {instances} instances: need a delay >= 0, >= 1 instance")
    spec = manifest.input
    lines = [f"# lcr-sdk {manifest.arch} {manifest.method}, {manifest.precision}; manifest in {MANIFEST_FILE}"]
    if kind == "plan":
        t = manifest.tensorrt or {}
        lines.append(
            f"# built with TensorRT {t.get('version')} on {t.get('gpu')} (compute capability "
            f"{t.get('compute_capability')}" + (f", L4T r{t['l4t']}" if t.get("l4t") else "") + "): the server "
            "must run this TensorRT version on this GPU"
        )
    lines += [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {manifest.batch_max}",
        "input [",
        "  {",
        f'    name: "{spec.name}"',
        f"    data_type: {DATA_TYPES[spec.dtype]}",
        f"    dims: [ {', '.join(map(str, spec.dims))} ]",
        "  }",
        "]",
        "output [",
    ]
    outputs = manifest.output_shapes
    for i, (out_name, shape) in enumerate(outputs.items()):
        dims = ", ".join(str(d) for d in shape[1:])  # without the batch axis, which Triton adds
        lines += [
            "  {",
            f'    name: "{out_name}"',
            f"    data_type: {DATA_TYPES['float32']}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if i < len(outputs) - 1 else ""),
        ]
    lines += ["]", "dynamic_batching {"]
    if sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in sizes)} ]")
    lines += [f"  max_queue_delay_microseconds: {queue_delay_us}", "}"]
    kind_name = "KIND_GPU" if kind == "plan" else "KIND_AUTO"  # an ONNX model runs on a GPU where there is one
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind_name}", "  }", "]"]
    return "\n".join(lines) + "\n"


def check_triton_target(
    repo: str | os.PathLike[str], name: str, replace: bool, batch_min: int = 1, batch_opt: int = 8, batch_max: int = 32
) -> None:
    """What :func:`write_triton_repository` would refuse about the target and the batch range, checked before a
    model is exported for it (so an export is not done, and its file not replaced, for an entry that cannot be made).

    Raises:
        InputError: a bad name, a repository whose parent is missing, an existing entry without ``replace``, or a
            smallest batch other than 1.
    """
    _check_entry(repo, name, replace)
    _check_smallest_batch(batch_min, batch_opt, batch_max, "would be")


def _check_entry(repo: str | os.PathLike[str], name: str, replace: bool) -> None:
    """A valid model name, a repository that exists or can be made, no entry of that name unless ``replace``."""
    if not _NAME.match(name):
        raise InputError(f"model name {name!r} is not valid; use letters, digits, '_', '-' and '.', e.g. lcr-fp16")
    root = Path(repo)
    if not root.is_dir() and not root.parent.is_dir():
        raise InputError(f"the parent of the repository {root} does not exist; create it or choose another path")
    if (root / name).exists() and not replace:
        raise InputError(f"{root / name} already exists; pass --replace to overwrite it, or choose another name")


def _check_smallest_batch(batch_min: int, batch_opt: int, batch_max: int, verb: str = "is") -> None:
    """Triton sends batches from 1 up to max_batch_size: a model must take a batch of 1."""
    if batch_min != 1:
        raise InputError(
            f"the model's smallest batch {verb} {batch_min}, but Triton sends batches of 1 up to max_batch_size; "
            f"export it with --batch 1,{batch_opt},{batch_max}"
        )


def write_triton_repository(
    model: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    name: str | None = None,
    preferred: Sequence[int] | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    replace: bool = False,
) -> Path:
    """Write ``repo/<name>/`` (config.pbtxt, ``1/model.onnx`` or ``1/model.plan``, the manifest) for a model.

    The entry is built in a hidden folder inside ``repo`` and renamed into place, so a server never sees half an
    entry; an existing entry is only replaced with ``replace``.

    Args:
        model: an exported ``.onnx`` or a built engine, with its manifest (sidecar, or the ONNX's metadata).
        repo: the model repository folder (created if missing; its parent must exist).
        name: the model name (default: the model file's stem).
        preferred, queue_delay_us, instances: see :func:`config_pbtxt`.
        replace: replace an existing ``repo/<name>``.

    Returns:
        The model's folder ``repo/<name>``.

    Raises:
        InputError: a missing model, a bad name, an existing entry without ``replace``, or bad batching options.
        ModelError: no manifest, a model that does not match its manifest's sha256, an engine manifest without
        its TensorRT entry.
    """
    src = Path(model)
    kind = model_kind(src)
    if not src.is_file():
        raise InputError(f"model {src} does not exist; export it first (lcr-sdk export)")
    manifest = read_manifest(src)
    if kind == "plan" and not manifest.tensorrt:
        raise ModelError(f"{src}'s manifest has no 'tensorrt' entry; build the engine with lcr-sdk export --trt")
    if kind == "onnx" and manifest.tensorrt:
        raise ModelError(f"{src} is described by an engine's manifest; pass the .onnx with its own .json")
    if manifest.model_sha256 and sha256_file(src) != manifest.model_sha256:
        raise ModelError(f"{src} does not match the sha256 in its manifest (truncated or replaced); copy it again")
    name = name or src.stem
    _check_entry(repo, name, replace)
    text = config_pbtxt(manifest, name, kind, preferred, queue_delay_us, instances)

    root = Path(repo)
    root.mkdir(exist_ok=True)
    dest = root / name
    with staging_dir(root, STAGING_PREFIX) as stage:
        entry = stage / name
        (entry / "1").mkdir(parents=True)
        shutil.copyfile(src, entry / "1" / PLATFORMS[kind][1])
        atomic_write_text(entry / MANIFEST_FILE, manifest.to_json() + "\n")
        atomic_write_text(entry / "config.pbtxt", text)
        if dest.exists():
            old = stage / f"{name}.old"
            os.replace(dest, old)  # removed with the staging folder
        os.replace(entry, dest)
        fsync_dir(root)
    return dest

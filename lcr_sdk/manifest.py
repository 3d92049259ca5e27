"""The manifest: the metadata that travels with every deployed model (docs/DESIGN.md section 2).

It is written beside the model (``model.onnx.json``, ``model.engine.json``) and, for ONNX, also into the graph's
``metadata_props`` under the key ``lcr_sdk.manifest``. The runtime reads it and never guesses input size, colour
order or normalisation from tensor names or shapes.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lcr_sdk._version import __version__
from lcr_sdk.errors import ModelError
from lcr_sdk.fileio import atomic_write_text

FORMAT = "lcr-sdk-manifest"
FORMAT_VERSION = 2  # 2 added input.antialias
READABLE_VERSIONS = (1, 2)  # a version-1 manifest reads with antialias off: what its runtime did
ONNX_METADATA_KEY = "lcr_sdk.manifest"
METHODS = ("lcr", "moco")
PRECISIONS = ("fp32", "fp16", "int8")
RESIZE_RULES = ("short_side_center_crop", "stretch", "letterbox")
# The one input an lcr-sdk model takes, and the DeepStream variant's (nvinfer feeds float planar RGB, mean removed).
INPUTS = (("NHWC", "BGR", "uint8"), ("NCHW", "RGB", "float32"))

# Input normalisations in RGB order on the 0..1 scale: (x - mean) / std. The normalisation belongs to the weights
# (the one they were trained with), so each arch carries its own and the manifest records it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics: the ResNets
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (127.0 / 255.0,) * 3  # (x - 127) / 128 on the 0..255 scale: TensorFlow's EfficientNet-Lite preprocessing
TF_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ArchSpec:
    """What the manifest and the runtime know of a backbone: embedding width D (channels of its last feature map,
    stride 32) and the input normalisation of its weights."""

    dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# Supported backbones. The training code builds exactly these (docs/DESIGN.md, backbone section).
ARCH_SPECS = {
    "resnet18": ArchSpec(512),
    "resnet34": ArchSpec(512),
    "resnet50": ArchSpec(2048),
    "resnet101": ArchSpec(2048),
    "efficientnet_lite0": ArchSpec(1280, TF_MEAN, TF_STD),
    "efficientnet_lite1": ArchSpec(1280, TF_MEAN, TF_STD),
    "efficientnet_lite2": ArchSpec(1280, TF_MEAN, TF_STD),
}
ARCH_DIMS = {arch: spec.dim for arch, spec in ARCH_SPECS.items()}  # arch -> embedding dimension D
DEFAULT_BATCH = (1, 8, 32)  # min, opt, max batch a model is declared (and a TensorRT engine optimised) for
MIN_INPUT_SIDE = 32  # every backbone downsamples by 32: smaller inputs leave no feature map
DEFAULT_IMAGE_SIZE = 224  # training and deployment input side when none is given (the paper's)


def normalisation(arch: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of ``arch``'s input, RGB on the 0..1 scale; ImageNet statistics for an unknown arch."""
    spec = ARCH_SPECS.get(arch)
    return (spec.mean, spec.std) if spec is not None else (IMAGENET_MEAN, IMAGENET_STD)


def feature_size(height: int, width: int) -> tuple[int, int]:
    """h, w of the last feature map (and attention map) for an input size: stride 32, each stride-2 step rounding
    up (a ResNet's padding and TensorFlow's "SAME" padding of EfficientNet-Lite both give ceil(n / 2))."""

    def down(n: int) -> int:
        for _ in range(5):
            n = (n + 1) // 2
        return n

    return down(height), down(width)


@dataclass
class InputSpec:
    """How the graph input ``images`` is laid out and how a frame is brought to it on the host."""

    height: int
    width: int
    name: str = "images"
    layout: str = "NHWC"
    color: str = "BGR"
    dtype: str = "uint8"
    resize: str = "short_side_center_crop"
    interpolation: str = "linear"
    # An image at least twice the input size is first shrunk by the largest power of two that keeps both sides >=
    # the input, averaging blocks (cv2.INTER_AREA), so a photo is not aliased by the rule's resize, and a large JPEG
    # decoded at reduced size (which averages the same way) gives what its decoded array gives. Off: the rule's
    # resize alone (manifests before format 2, and the DeepStream variant, whose resizing nvinfer does).
    antialias: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def dims(self) -> tuple[int, int, int]:
        """One image's shape in the graph input, without the batch axis: (H, W, 3) for NHWC, (3, H, W) for NCHW."""
        return (3, self.height, self.width) if self.layout == "NCHW" else (self.height, self.width, 3)


@dataclass
class Manifest:
    """Everything a runtime needs to know about a deployed model. See docs/DESIGN.md section 2."""

    arch: str
    method: str
    embedding_dim: int
    num_parts: int  # K; 0 for a moco model (no `parts` output, all-ones `attention`)
    feature_size: tuple[int, int]  # h, w of the attention map
    input: InputSpec
    precision: str = "fp32"
    batch_min: int = 1
    batch_opt: int = 8
    batch_max: int = 32
    # Optimisation profiles [[min, opt, max], ...] when more than one (batch_min/batch_max then span them all and
    # batch_opt is the first profile's); None: the one profile batch_min/opt/max (every older manifest).
    profiles: list[list[int]] | None = None
    checkpoint_sha256: str = ""
    model_sha256: str = ""  # of the model file; empty inside ONNX metadata_props (a file cannot hold its own hash)
    model_file: str = ""
    opset: int | None = None
    tensorrt: dict[str, Any] | None = None  # an engine's build identity: lcr_sdk.backends.identity.RECORDED
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    sdk_version: str = __version__

    @property
    def output_names(self) -> list[str]:
        """Graph output names in order: a moco model has no ``parts``."""
        return ["embedding", "attention", "parts"] if self.num_parts else ["embedding", "attention"]

    @property
    def output_shapes(self) -> dict[str, list[Any]]:
        """Output shapes with ``"N"`` for the dynamic batch axis."""
        h, w = self.feature_size
        shapes = {"embedding": ["N", self.embedding_dim], "attention": ["N", h, w]}
        if self.num_parts:
            shapes["parts"] = ["N", self.num_parts, h, w]
        return shapes

    @property
    def batch_profiles(self) -> list[tuple[int, int, int]]:
        """The optimisation profiles as (min, opt, max) batches: ``profiles``, or the one batch range."""
        if self.profiles:
            return [(p[0], p[1], p[2]) for p in self.profiles]
        return [(self.batch_min, self.batch_opt, self.batch_max)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["profiles"] is None:
            del d["profiles"]  # a one-profile manifest reads as before, also by older lcr-sdk releases
        d["outputs"] = self.output_shapes  # written for readers; derived, so ignored on read
        d["format_version"] = FORMAT_VERSION  # what is written holds every field of this format (antialias too)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        """Validate and build a manifest; raise :class:`ModelError` naming ``source`` on any problem."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"{source} is not an lcr-sdk manifest (no 'format': '{FORMAT}' field)")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
            fix = (
                "it was written by a newer lcr-sdk: upgrade (pip install -U lcr-sdk), or re-export the model with "
                "this one (lcr-sdk export CHECKPOINT ...)"
                if newer
                else "re-export the model with this SDK (lcr-sdk export CHECKPOINT ...)"
            )
            raise ModelError(
                f"{source} has manifest format_version {version!r}; this lcr-sdk {__version__} reads versions "
                f"{' and '.join(map(str, READABLE_VERSIONS))}: {fix}"
            )
        d = {k: v for k, v in d.items() if k not in ("outputs", "previous")}
        for spec, given, where in ((cls, d, ""), (InputSpec, d.get("input"), "input.")):
            if not isinstance(given, dict):
                continue
            names = {f.name for f in fields(spec)}
            needed = {f.name for f in fields(spec) if f.default is MISSING and f.default_factory is MISSING}
            lacks, unknown = sorted(needed - set(given)), sorted(set(given) - names)
            if lacks or unknown:
                what = f"lacks {', '.join(where + k for k in lacks)}" if lacks else ""
                what += ("; " if lacks and unknown else "") + (
                    f"has unknown field(s) {', '.join(where + k for k in unknown)}" if unknown else ""
                )
                raise ModelError(f"{source} {what}: it was edited or damaged; re-export the model to rewrite it")
        try:
            inp = d["input"]
            if not isinstance(inp, dict):
                raise TypeError(f"'input' is {type(inp).__name__}, not an object")
            d["input"] = InputSpec(**{**inp, "mean": tuple(inp["mean"]), "std": tuple(inp["std"])})
            d["feature_size"] = tuple(d["feature_size"])
            m = cls(**d)
        except (KeyError, TypeError) as e:
            raise ModelError(f"{source} is missing or has an unknown field ({e}); re-export the model") from e
        _check_types(m, source)
        _check_values(m, source)
        return m

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            d = json.loads(text)
        except RecursionError:
            raise ModelError(f"{source} is nested too deeply to be a manifest; re-export the model") from None
        except json.JSONDecodeError as e:
            raise ModelError(f"{source} is not valid JSON ({e}); re-export the model to rewrite it") from e
        return cls.from_dict(d, source)


def profiles_problem(profiles: Any) -> str:
    """Why ``profiles`` is not a list of [min, opt, max] batches (1 <= min <= opt <= max) covering every batch from
    the smallest min to the largest max; '' when it is."""
    ok = isinstance(profiles, (list, tuple)) and len(profiles) >= 1
    ok = ok and all(
        isinstance(p, (list, tuple))
        and len(p) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
        and 1 <= p[0] <= p[1] <= p[2]
        for p in profiles
    )
    if not ok:
        return "are not [[min, opt, max], ...] with 1 <= min <= opt <= max"
    reach = 0
    for lo, _, hi in sorted(profiles):
        if lo > reach + 1 and reach > 0:
            return f"leave batches {reach + 1}..{lo - 1} without a profile"
        reach = max(reach, hi)
    return ""


_INT_FIELDS = ("embedding_dim", "num_parts", "batch_min", "batch_opt", "batch_max")
_STR_FIELDS = ("arch", "method", "precision", "checkpoint_sha256", "model_sha256", "model_file", "sdk_version")


def _check_values(m: Manifest, source: str) -> None:
    """The manifest's values are ones this runtime knows (method, precision, resize rule, batch profiles)."""
    if m.method not in METHODS:
        raise ModelError(f"{source}: method {m.method!r} is not one of {METHODS}")
    if m.precision not in PRECISIONS:
        raise ModelError(f"{source}: precision {m.precision!r} is not one of {PRECISIONS}")
    if m.input.resize not in RESIZE_RULES:
        raise ModelError(f"{source}: resize rule {m.input.resize!r} is not one of {RESIZE_RULES}")
    if not 1 <= m.batch_min <= m.batch_opt <= m.batch_max:
        raise ModelError(f"{source}: batch range min/opt/max {m.batch_min}/{m.batch_opt}/{m.batch_max} is invalid")
    if m.profiles is not None:
        problem = profiles_problem(m.profiles)
        span = (m.batch_min, m.batch_max) == (min(p[0] for p in m.profiles), max(p[2] for p in m.profiles))
        if problem or not span:
            raise ModelError(
                f"{source}: profiles {m.profiles} {problem or 'do not span batch_min..batch_max'}; re-export it"
            )


def _check_types(m: Manifest, source: str) -> None:  # noqa: C901 (one check per field: the branching is the schema)
    """Every field of the type the runtime relies on; one ModelError naming the field otherwise."""

    def bad(field_name: str, value: Any, want: str) -> ModelError:
        return ModelError(
            f"{source}: field {field_name!r} is {value!r} ({type(value).__name__}), expected {want}; the manifest was "
            "edited or damaged: re-export the model (lcr-sdk export) to rewrite it"
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for f in _INT_FIELDS:
        if not is_int(getattr(m, f)) or getattr(m, f) < 0:
            raise bad(f, getattr(m, f), "an integer >= 0")
    for f in _STR_FIELDS:
        if not isinstance(getattr(m, f), str):
            raise bad(f, getattr(m, f), "a string")
    if len(m.feature_size) != 2 or not all(is_int(v) and v > 0 for v in m.feature_size):
        raise bad("feature_size", list(m.feature_size), "[h, w], two positive integers")
    spec = m.input
    for f in ("height", "width"):
        if not is_int(getattr(spec, f)) or getattr(spec, f) < MIN_INPUT_SIDE:
            raise bad(f"input.{f}", getattr(spec, f), f"an integer >= {MIN_INPUT_SIDE}")
    for f in ("name", "layout", "color", "dtype", "resize", "interpolation"):
        if not isinstance(getattr(spec, f), str):
            raise bad(f"input.{f}", getattr(spec, f), "a string")
    for f in ("mean", "std"):
        values = getattr(spec, f)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise bad(f"input.{f}", list(values), "three numbers")
    if (spec.layout, spec.color, spec.dtype) not in INPUTS:
        raise ModelError(
            f"{source}: input layout/color/dtype {spec.layout}/{spec.color}/{spec.dtype} is not NHWC/BGR/uint8, the "
            "input lcr-sdk models take (or NCHW/RGB/float32, the DeepStream variant's); re-export the model"
        )
    if spec.interpolation not in ("linear", "area", "cubic", "nearest"):
        raise bad("input.interpolation", spec.interpolation, "linear, area, cubic or nearest")
    if not isinstance(spec.antialias, bool):
        raise bad("input.antialias", spec.antialias, "true or false")
    if m.opset is not None and not is_int(m.opset):
        raise bad("opset", m.opset, "an integer or null")
    if m.tensorrt is not None and not isinstance(m.tensorrt, dict):
        raise bad("tensorrt", m.tensorrt, "an object or null")
    if not isinstance(m.extra, dict):
        raise bad("extra", m.extra, "an object")
    if m.method == "moco" and m.num_parts != 0:
        raise ModelError(f"{source}: a moco model has no part maps, but num_parts is {m.num_parts}; re-export it")
    if m.method == "lcr" and m.num_parts == 0:
        raise ModelError(f"{source}: an lcr model needs num_parts >= 1 (the GFB's K); re-export it")
    if m.arch in ARCH_DIMS and m.embedding_dim != ARCH_DIMS[m.arch]:
        raise ModelError(
            f"{source}: embedding_dim {m.embedding_dim} does not match arch {m.arch} (D = {ARCH_DIMS[m.arch]}); "
            "re-export the model"
        )
    if tuple(m.feature_size) != feature_size(spec.height, spec.width):
        raise ModelError(
            f"{source}: feature_size {list(m.feature_size)} does not match input {spec.height}x{spec.width} "
            f"(stride 32 gives {list(feature_size(spec.height, spec.width))}); re-export the model"
        )


def manifest_for_checkpoint(
    config: dict[str, Any],
    checkpoint_sha256: str,
    image_size: int | tuple[int, int] | None = None,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    precision: str = "fp32",
) -> Manifest:
    """The manifest of a model made from a checkpoint's training ``config`` (never guessed from the weights).

    Export writes it; the PyTorch backend uses the same one, so a ``.pt`` and its exported ``.onnx`` declare the
    same input, outputs and batch range.

    Args:
        config: the checkpoint's ``config`` dict (arch, method, num_parts, image_size).
        checkpoint_sha256: sha256 of the checkpoint file.
        image_size: input side (or (H, W)); default the training ``image_size``.
        batch: (min, opt, max) batch sizes.
        precision: fp32, fp16 or int8.

    Raises:
        ModelError: an unknown arch or method, an input smaller than 32 px, or an invalid batch range.
    """
    arch, method = config.get("arch"), config.get("method")
    if arch not in ARCH_DIMS:
        raise ModelError(f"checkpoint arch {arch!r} is not one of {sorted(ARCH_DIMS)}; retrain or re-copy it")
    if method not in METHODS:
        raise ModelError(f"checkpoint method {method!r} is not one of {METHODS}; retrain or re-copy it")
    size = image_size if image_size is not None else config.get("image_size", DEFAULT_IMAGE_SIZE)
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < MIN_INPUT_SIDE:
        raise ModelError(
            f"image size {height}x{width} is too small for a {arch} (stride 32); use at least {MIN_INPUT_SIDE} px"
        )
    bmin, bopt, bmax = batch
    if not 1 <= bmin <= bopt <= bmax:
        raise ModelError(f"batch range min/opt/max {bmin}/{bopt}/{bmax} is invalid; need 1 <= min <= opt <= max")
    return Manifest(
        arch=arch,
        method=method,
        embedding_dim=ARCH_DIMS[arch],
        num_parts=int(config.get("num_parts", 32)) if method == "lcr" else 0,
        feature_size=feature_size(height, width),
        input=InputSpec(
            height=height, width=width, antialias=True, mean=normalisation(arch)[0], std=normalisation(arch)[1]
        ),
        precision=precision,
        batch_min=bmin,
        batch_opt=bopt,
        batch_max=bmax,
        checkpoint_sha256=checkpoint_sha256,
    )


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def write_sidecar(manifest: Manifest, model_path: str | os.PathLike[str], previous: Manifest | None = None) -> Path:
    """Write the manifest beside the model, atomically. Returns the sidecar path.

    Args:
        previous: the manifest of the model file this one replaces, kept under ``"previous"`` while the pair is
            switched (see :func:`install_model`).
    """
    path = sidecar_path(model_path)
    d = manifest.to_dict()
    if previous is not None:
        d["previous"] = previous.to_dict()
    atomic_write_text(path, json.dumps(d, indent=2, sort_keys=True) + "\n")
    return path


def install_model(staged: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Move a staged model file and its sidecar onto ``dest`` so that a process killed at any moment leaves a
    consistent pair: the old model with a manifest that describes it, or the new one.

    Two files cannot be renamed at once, so the sidecar carries both manifests while they switch:

    1. ``dest.json`` is replaced by the new manifest with the old one (if ``dest`` had a matching manifest: its
       sidecar, or the one inside an ONNX without a sidecar) under ``"previous"``;
    2. the model file is renamed onto ``dest``;
    3. ``dest.json`` is rewritten with the new manifest alone.

    :func:`read_manifest` picks whichever of the two manifests matches the model file's sha256, so after a kill
    between 1 and 2 the old model still loads, and after one between 2 and 3 the new one does.
    """
    from lcr_sdk.fileio import fsync_dir, fsync_file, sha256_file

    staged, dest = Path(staged), Path(dest)
    new = Manifest.from_json(sidecar_path(staged).read_text(encoding="utf-8"), source=str(sidecar_path(staged)))
    old = None
    if dest.is_file():
        try:
            old = read_manifest(dest)  # its sidecar, or the manifest inside an ONNX that has none
        except ModelError:
            old = None  # an unreadable old manifest protects nothing
        if old is not None and not sidecar_path(dest).is_file():
            old = replace(old, model_sha256=sha256_file(dest))  # the one inside the graph has no hash
        elif old is not None and old.model_sha256 and old.model_sha256 != sha256_file(dest):
            old = None
    fsync_file(staged)
    write_sidecar(new, dest, previous=old)
    os.replace(staged, dest)
    fsync_dir(dest.parent)
    write_sidecar(new, dest)
    sidecar_path(staged).unlink(missing_ok=True)
    return dest


def read_manifest(model_path: str | os.PathLike[str]) -> Manifest:
    """Read the manifest of a model: the sidecar if present, else the ONNX ``metadata_props``.

    Raises:
        ModelError: no manifest found, or it is invalid / of another format version.
    """
    model_path = Path(model_path)
    side = sidecar_path(model_path)
    if side.exists():
        try:
            text = side.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ModelError(f"{side} is not UTF-8 text ({e.reason} at byte {e.start}); re-export the model") from None
        manifest = Manifest.from_json(text, source=str(side))
        previous = json.loads(text).get("previous")
        if isinstance(previous, dict) and model_path.is_file():  # a pair switch was interrupted: pick the match
            from lcr_sdk.fileio import sha256_file

            if sha256_file(model_path) != manifest.model_sha256:
                old = Manifest.from_dict(previous, source=f"{side} (previous)")
                if old.model_sha256 == sha256_file(model_path):
                    return old
        return manifest
    if model_path.suffix == ".onnx" and model_path.exists():
        meta = _onnx_metadata(model_path)
        if meta is not None:
            return Manifest.from_json(meta, source=f"{model_path} (metadata_props)")
    raise ModelError(
        f"no manifest for {model_path}: expected {side} beside it"
        + (" or an 'lcr_sdk.manifest' entry in its metadata_props" if model_path.suffix == ".onnx" else "")
        + ". Export the model with `lcr-sdk export`, which writes both."
    )


def check_model_file(model_path: str | os.PathLike[str], manifest: Manifest) -> None:
    """Refuse a model file whose sha256 is not the one its manifest records (a manifest without one, such as the
    copy inside an ONNX graph, is not checked): the check every reader of a model makes before an engine, or the
    user, trusts the file.

    Raises:
        ModelError: the file is truncated, corrupt or was replaced after export.
    """
    from lcr_sdk.fileio import sha256_file

    path = Path(model_path)
    want = manifest.model_sha256
    if want and sha256_file(path) != want:
        raise ModelError(
            f"{path} ({path.stat().st_size} bytes) does not match the sha256 in its manifest: the file "
            "is truncated, corrupt or was replaced after export. Re-copy it with its .json, or re-export it"
        )


def _onnx_metadata(model_path: Path) -> str | None:
    """The manifest JSON stored in an ONNX file's metadata_props, read through onnxruntime (no onnx needed)."""
    from lcr_sdk.errors import import_platform

    ort = import_platform("onnxruntime")
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"{model_path} is not a readable ONNX model ({e}); re-export it with `lcr-sdk export`") from e
    text = sess.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    return None if text is None else str(text)

"""Embedder: images in, unit embeddings and part-attention maps out, on any backend (docs/DESIGN.md section 2).

    from lcr_sdk import Embedder
    with Embedder("model.onnx") as emb:              # .engine -> TensorRT, .pt -> PyTorch
        v = emb.embed(cv2.imread("bird.jpg"))         # float32 (D,), unit length
        V = emb.embed(["a.jpg", "b.jpg"])              # (2, D), batched within the model's batch range
        r = emb.attend(frame)                         # embedding + mask + part maps at the frame's size
        cv2.imwrite("overlay.png", r.overlay(frame))

Host work is only: bring each image to uint8 BGR (:func:`lcr_sdk.images.to_bgr`) and resize it by the manifest's
rule (:func:`lcr_sdk.images.resize_to`); cast, colour order and normalisation live inside the model.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, ModelError, import_platform

cv2 = import_platform("cv2")  # OpenCV: the cpu/gpu extra, or the platform's own (JetPack); named if missing

from lcr_sdk.backends.base import Backend, backend_for  # noqa: E402
from lcr_sdk.images import check_color, crop_box, heatmap_overlay, resize_for, to_bgr  # noqa: E402
from lcr_sdk.manifest import Manifest, check_model_file  # noqa: E402


@dataclass
class Attention:
    """Where the model looked, mapped onto the input image (``size`` = its H, W).

    The maps live on the model's feature grid and are brought to image size only when asked for, by one bilinear
    rule (OpenCV's ``INTER_LINEAR`` convention) onto the crop box the model saw: ``mask`` and ``parts`` on first
    access, ``part_map(k)`` one map, and ``overlay`` in strips of rows, so a 20000 x 20000 frame never holds a
    full-size float map (docs/BENCHMARKS.md, "Runtime", for the measured peaks).

    Attributes:
        embedding: float32 (D,) unit embedding.
        mask: float32 (H, W) attention mask M in [0, 1] (0 outside the region the model saw, for a centre crop).
        parts: float32 (K, H, W) part maps P, or None for a ``moco`` model (K maps at frame size cost ~20 ms at
            640x480, more than inference on a GPU: use ``part_map(k)`` or ``part_grid`` where one will do).
        peaks: one ``(part_index, x, y, score)`` per part: the pixel of its strongest response and its value.
        mask_grid: float32 (h, w) mask on the model's feature grid.
        part_grid: float32 (K, h, w) part maps on the model's feature grid, or None.
        box: the region ``(x0, y0, x1, y1)`` of the image the model saw (:func:`lcr_sdk.images.crop_box`).
        size: ``(H, W)`` of the image.
    """

    embedding: np.ndarray
    mask_grid: np.ndarray
    peaks: list[tuple[int, int, int, float]]
    part_grid: np.ndarray | None = None
    box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0), repr=False)
    size: tuple[int, int] = (0, 0)

    @cached_property
    def mask(self) -> np.ndarray:
        full: np.ndarray = _to_image(self.mask_grid[None], *self.size, self.box)[0]
        return full

    @cached_property
    def parts(self) -> np.ndarray | None:
        if self.part_grid is None:
            return None
        return _to_image(self.part_grid, *self.size, self.box)

    def part_map(self, k: int) -> np.ndarray:
        """Part map ``k`` at the image's size (H, W)."""
        self._check_part(k)
        assert self.part_grid is not None  # _check_part refused a moco model
        if "parts" in self.__dict__ and self.parts is not None:  # already resized
            resized: np.ndarray = self.parts[k]
            return resized
        one: np.ndarray = _to_image(self.part_grid[k : k + 1], *self.size, self.box)[0]
        return one

    def _check_part(self, k: int) -> None:
        n = 0 if self.part_grid is None else len(self.part_grid)
        if not 0 <= k < n:
            why = f" (0..{n - 1})" if n else " (a MoCo v2 model pools uniformly and has none; an LCR model has them)"
            raise InputError(f"part={k} is not valid: this model has {n} part maps{why}")

    def overlay(self, image: Any, part: int | None = None, alpha: float = 0.5, color: str = "bgr") -> np.ndarray:
        """A BGR uint8 picture of the image with the mask (or part ``part``, its peak marked) as a heatmap;
        ``alpha`` in [0, 1] is the heatmap's weight (0: the image alone, 1: the heatmap alone)."""
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
            raise InputError(f"alpha={alpha!r} is not valid; give the heatmap's weight in [0, 1] (e.g. 0.5)")
        img = to_bgr(image, color)
        h, w = self.size
        if img.shape[:2] != (h, w):
            raise InputError(
                f"overlay image is {img.shape[1]}x{img.shape[0]} but the attention was computed for "
                f"{w}x{h}; pass the same image given to attend()"
            )
        if part is None:
            grid = self.mask_grid[None]
        else:
            self._check_part(part)
            g = self.part_grid[part : part + 1]  # type: ignore[index]
            peak = float(g.max())
            grid = g / peak if peak > 0 else g
        out = np.empty_like(img)
        for r0 in range(0, h, OVERLAY_ROWS):  # strips bound the float temporaries of a huge frame
            rows = np.arange(r0, min(h, r0 + OVERLAY_ROWS))
            heat = _to_image(grid, h, w, self.box, rows)[0]
            out[rows[0] : rows[-1] + 1] = heatmap_overlay(img[rows[0] : rows[-1] + 1], heat, alpha)
        if part is not None:
            _, x, y, _ = self.peaks[part]
            size = max(8, min(img.shape[:2]) // 12)
            cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, size, max(1, size // 6))
        return out


OVERLAY_ROWS = 1024


def _axis(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a bilinear resize along one axis (OpenCV INTER_LINEAR: half-pixel centres,
    edges clamped): ``dst[i] = src[i0] * (1 - f) + src[i1] * f``."""
    x = (np.arange(n_dst) + 0.5) * (n_src / max(n_dst, 1)) - 0.5
    i0 = np.floor(x).astype(np.int64)
    f = (x - i0).astype(np.float32)
    f[i0 < 0] = 0.0
    i0 = np.clip(i0, 0, n_src - 1)
    f[i0 >= n_src - 1] = 0.0
    return i0, np.minimum(i0 + 1, n_src - 1), f


def _to_image(
    maps: np.ndarray, h: int, w: int, box: tuple[float, float, float, float], rows: np.ndarray | None = None
) -> np.ndarray:
    """Resize (C, fh, fw) feature-grid maps onto the crop box of an h x w image, 0 outside it -> (C, h, w), or only
    the image rows ``rows`` -> (C, len(rows), w)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    maps = np.asarray(maps, np.float32)
    c, fh, fw = maps.shape
    xi0, xi1, fx = _axis(fw, x1 - x0)
    # a letterbox's box reaches past the image (x0 < 0 or x1 > w): keep the columns inside it
    cx0, cx1 = max(x0, 0), min(x1, w)
    xi0, xi1, fx = xi0[cx0 - x0 : cx1 - x0], xi1[cx0 - x0 : cx1 - x0], fx[cx0 - x0 : cx1 - x0]
    horizontal = maps[:, :, xi0] * (1 - fx) + maps[:, :, xi1] * fx  # C x fh x (cx1 - cx0): small
    rows = np.arange(h) if rows is None else rows
    out = np.zeros((c, len(rows), w), np.float32)
    inside = (rows >= y0) & (rows < y1)
    if inside.any() and cx1 > cx0:
        yi0, yi1, fy = _axis(fh, y1 - y0)
        local = rows[inside] - y0
        wy = fy[local][None, :, None]
        out[:, inside, cx0:cx1] = horizontal[:, yi0[local]] * (1 - wy) + horizontal[:, yi1[local]] * wy
    return out


def _concat(arrays: list[Any]) -> Any:
    """Concatenate numpy arrays or torch tensors along the batch axis."""
    if isinstance(arrays[0], np.ndarray):
        return np.concatenate(arrays)
    import torch  # only reached when the caller passed torch tensors

    return torch.cat(arrays)


class Embedder:
    """Runs a deployed model (or a checkpoint) on images.

    Args:
        path: model file: ``.onnx`` (ONNX Runtime), ``.engine``/``.plan``/``.trt`` (TensorRT) or ``.pt``/``.pth``
            (PyTorch).
        backend: backend name to override the suffix table: ``onnxruntime``, ``tensorrt`` or ``torch``.
        device: ``None`` (best available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        providers: ONNX Runtime execution providers, in order of preference (the first is the one wanted).
        **options: backend options (ONNX Runtime: ``strict``, ``intra_op_threads``; TensorRT: ``force``,
            ``cuda_graph``; PyTorch: ``fp16``, ``batch``, ``cuda_graph``, ``compile``); any other is refused.

    Attributes:
        manifest: the model's :class:`~lcr_sdk.manifest.Manifest`.
        backend_name: ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``.
        provider: what actually runs, e.g. ``"CPUExecutionProvider"``.

    Raises:
        ModelError: the file is missing, truncated, not a model, has no (or another version of) manifest, or is an
            engine from another TensorRT version or GPU.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        backend: str | None = None,
        device: str | None = None,
        providers: Sequence[Any] | None = None,
        **options: Any,
    ):
        path = Path(path)
        if not path.is_file():
            raise ModelError(
                f"model file {path} does not exist"
                + (" (it is a folder)" if path.is_dir() else "")
                + "; export one with `lcr-sdk export CKPT --out model.onnx` or pass a .pt checkpoint"
            )
        cls = backend_for(path, backend)
        if providers is not None and "providers" not in cls.OPTIONS:
            raise InputError(
                f"providers= chooses ONNX Runtime execution providers; the {cls.name} backend that runs {path.name} "
                "has none (leave it out, or use device=)"
            )
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise InputError(
                f"Embedder option(s) {', '.join(unknown)} are not options of the {cls.name} backend; its options: "
                f"{', '.join(o for o in cls.OPTIONS if o != 'providers') or 'none'}"
            )
        self.path = path
        self.manifest: Manifest = cls.read_manifest(path, **options)
        if self.manifest.input.layout != "NHWC":
            raise ModelError(
                f"{path} is the DeepStream variant (float planar RGB with the mean removed, as nvinfer feeds it): the "
                "runtime takes images as they come, through the uint8 model exported beside it (the --out model of "
                "the same `lcr-sdk export --deepstream` command)"
            )
        check_model_file(self.path, self.manifest)
        if providers is not None:
            options["providers"] = list(providers)
        self._backend: Backend = cls(path, self.manifest, device=device, **options)
        self._backend.load()
        self.backend_name = cls.name

    @property
    def provider(self) -> str:
        return self._backend.provider

    @property
    def model_id(self) -> str:
        """Identity of the weights for gallery compatibility: the source checkpoint's sha256, else the model's."""
        return self.manifest.checkpoint_sha256 or self.manifest.model_sha256

    # -- host preprocessing -------------------------------------------------------------------------------------

    def prepare(self, image: Any, color: str = "bgr") -> np.ndarray:
        """One image (array, path, file bytes or PIL) -> uint8 H x W x 3 BGR at the model's input size.

        A JPEG file (or its bytes) much larger than the input is decoded at reduced size (``read_image``'s
        ``min_size``), so a huge photo never costs its full-size pixels: with ``input.antialias`` in whole blocks,
        as arrays are block-averaged; for a manifest before that field as its release did; for one with it off (a
        DeepStream export: nvinfer resizes once) never, so a file gives what its decoded array gives.
        """
        spec, color = self.manifest.input, check_color(color)
        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):  # a file decodes to BGR
            legacy = self.manifest.format_version < 2
            min_size = (spec.height, spec.width) if spec.antialias or legacy else None
            return resize_for(to_bgr(image, min_size=min_size, whole_blocks=spec.antialias), spec)
        return resize_for(to_bgr(image, color), spec)

    def infer(self, batch: Any) -> dict[str, Any]:
        """Run ready batches (uint8 N x H x W x 3 BGR at the model size, numpy or a torch tensor): raw outputs.

        Batches larger than the model's ``batch_max`` are split; the outputs are concatenated.

        Raises:
            InputError: not a N x H x W x 3 uint8 batch at the model's size (checked by the backend).
            ModelError: NaN or infinite outputs (numpy outputs; see :meth:`_finite`).
        """
        m = self.manifest
        if not hasattr(batch, "shape") or len(batch.shape) != 4:
            raise InputError(
                f"infer() takes a N x H x W x 3 batch; got {type(batch).__name__} "
                f"{getattr(batch, 'shape', '')}. Use embed() for single images or lists"
            )
        n = batch.shape[0]
        if n == 0:
            raise InputError("batch is empty; pass at least one image")
        if m.batch_min <= n <= m.batch_max:
            return self._finite(self._backend.infer(batch))
        chunks = [self._run_chunk(batch[i : i + m.batch_max]) for i in range(0, n, m.batch_max)]
        return {k: _concat([c[k] for c in chunks]) for k in m.output_names}

    def _run_chunk(self, chunk: Any) -> dict[str, Any]:
        """Run one chunk of at most batch_max images; a chunk under batch_min is padded by repeating its last image."""
        n, bmin = chunk.shape[0], self.manifest.batch_min
        if n >= bmin:
            return self._finite(self._backend.infer(chunk))
        pad = chunk[-1:].repeat(bmin - n, 0) if isinstance(chunk, np.ndarray) else chunk[-1:].repeat(bmin - n, 1, 1, 1)
        padded = _concat([chunk, pad])
        return self._finite({k: v[:n] for k, v in self._backend.infer(padded).items()})

    def _finite(self, out: dict[str, Any]) -> dict[str, Any]:
        """Refuse NaN or infinite outputs (host arrays; torch tensors stay unchecked, so the GPU is never synced).

        Raises:
            ModelError: a model whose weights are finite but overflow (a diverged or damaged checkpoint) returns
                NaN; an embedding of NaN would rank nowhere, or everywhere, and poison a gallery.
        """
        bad = [k for k, v in out.items() if isinstance(v, np.ndarray) and not np.isfinite(v).all()]
        if bad:
            rows = ~np.isfinite(out[bad[0]].reshape(len(out[bad[0]]), -1)).all(axis=1)
            raise ModelError(
                f"{self.path} outputs NaN or inf ({', '.join(bad)}) for {int(rows.sum())} of {len(rows)} images: its "
                "weights are finite but overflow (a diverged or damaged checkpoint); export refuses such a "
                "checkpoint: retrain with a smaller --lr, or use an earlier checkpoint"
            )
        return out

    # -- user API -----------------------------------------------------------------------------------------------

    def embed(self, images: Any, color: str = "bgr") -> np.ndarray:
        """Unit embeddings.

        Args:
            images: one image (BGR uint8 array, gray/BGRA array, path or PIL image) -> (D,), or a list of them
                (or an N x H x W x C array) -> (N, D).
            color: ``"rgb"`` when 3/4-channel arrays are in RGB(A) order.

        Raises:
            InputError: an image that cannot be used; for a list, the message starts with its index.
        """
        batch_array = isinstance(images, np.ndarray) and images.ndim == 4
        single = not isinstance(images, (list, tuple)) and not batch_array
        items = [images] if single else list(images)
        if not items:
            raise InputError("embed() got an empty list; pass one image or a non-empty list of images")
        bmax, out = self.manifest.batch_max, []
        for i in range(0, len(items), bmax):
            batch = np.stack(
                [self._prepare_item(im, color, None if single else i + j) for j, im in enumerate(items[i : i + bmax])]
            )
            out.append(self._run_chunk(batch)["embedding"])
        emb = np.concatenate(out).astype(np.float32, copy=False)
        return emb[0] if single else emb

    def _prepare_item(self, image: Any, color: str, index: int | None) -> np.ndarray:
        """:meth:`prepare`, its error naming the item's place in the list given (``index``) if there was a list."""
        try:
            return self.prepare(image, color)
        except InputError as e:
            if index is None:
                raise
            raise InputError(f"images[{index}]: {e}") from e

    def attend(self, image: Any, color: str = "bgr") -> Attention:
        """Embedding, attention mask and part maps of one image, resized to the image's own size."""
        img = to_bgr(image, color)
        return self._attention(img, self._run_chunk(self.prepare(img)[None]))

    def _attention(self, img: np.ndarray, out: dict[str, Any]) -> Attention:
        """The host work of :meth:`attend` on one image's outputs (the first of each): peaks and the lazy maps."""
        spec = self.manifest.input
        h, w = img.shape[:2]
        box = crop_box(h, w, spec.height, spec.width, spec.resize)
        mask_grid = np.asarray(out["attention"][0], np.float32)  # h x w on the feature grid; resized lazily
        grid, peaks = None, []
        if "parts" in out:
            grid = np.asarray(out["parts"][0], np.float32)  # K x fh x fw; resized lazily (Attention.parts)
            fh, fw = grid.shape[1:]
            x0, y0, x1, y1 = box
            for k, g in enumerate(grid):
                iy, ix = np.unravel_index(int(np.argmax(g)), g.shape)  # the feature cell with the strongest response
                x = int(np.clip(x0 + (ix + 0.5) * (x1 - x0) / fw, 0, w - 1))  # a letterbox cell may be padding
                y = int(np.clip(y0 + (iy + 0.5) * (y1 - y0) / fh, 0, h - 1))
                peaks.append((k, x, y, float(g[iy, ix])))
        return Attention(out["embedding"][0].astype(np.float32), mask_grid, peaks, grid, box, (h, w))

    def close(self) -> None:
        """Release the backend."""
        self._backend.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Embedder({str(self.path)!r}, backend={self.backend_name!r}, provider={self.provider!r}, "
            f"arch={m.arch}, method={m.method}, D={m.embedding_dim}, input={m.input.height}x{m.input.width})"
        )

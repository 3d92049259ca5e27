"""Embedder on real ONNX Runtime sessions (and the PyTorch reference backend): shapes, batching, inputs, attention."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from model_helpers import export_onnx

from lcr_sdk import Embedder
from lcr_sdk.backends.onnxruntime import ProviderFallbackWarning
from lcr_sdk.errors import InputError, ModelError

pytestmark = pytest.mark.torch  # the fixture models are exported from torch checkpoints
ATOL = 1e-5  # float32 noise between batch sizes (different kernels / summation order)


@pytest.fixture(scope="module")
def lcr_onnx(lcr_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("onnx") / "lcr.onnx")


@pytest.fixture(scope="module")
def moco_onnx(moco_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(moco_checkpoint, tmp_path_factory.mktemp("onnx") / "moco.onnx")


@pytest.fixture(scope="module")
def emb(lcr_onnx):
    with Embedder(lcr_onnx, device="cpu") as e:
        yield e


@pytest.fixture(scope="module")
def frames(synth_root) -> list[np.ndarray]:
    """Real images of varied sizes (the synthetic test split, resized/cropped to non-square frames)."""
    paths = sorted((synth_root / "test").glob("*/*.png"))
    out = []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p))
        out.append(cv2.resize(img, (64 + 16 * (i % 5), 48 + 8 * (i % 3))))
    return out


def test_embed_single_is_unit_float32(emb, frames):
    v = emb.embed(frames[0])
    assert v.shape == (emb.manifest.embedding_dim,) and v.dtype == np.float32
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    assert emb.backend_name == "onnxruntime" and emb.provider == "CPUExecutionProvider"


def test_embedding_same_alone_or_in_any_batch(emb, frames):
    """batch_max is 8 here: lists of 1, 3, 8 and 16 (two chunks) give each image the same embedding."""
    alone = np.stack([emb.embed(f) for f in frames])
    for n in (3, 8, 16):
        batched = emb.embed(frames[:n])
        assert batched.shape == (n, emb.manifest.embedding_dim)
        np.testing.assert_allclose(batched, alone[:n], atol=ATOL)
    # the same image at different positions of a batch
    mixed = emb.embed([frames[5], frames[1], frames[5]])
    np.testing.assert_allclose(mixed[0], mixed[2], atol=ATOL)
    np.testing.assert_allclose(mixed[0], alone[5], atol=ATOL)


def test_different_images_give_different_embeddings(emb, frames):
    e = emb.embed(frames[:4])
    sims = e @ e.T
    assert np.all(sims[~np.eye(4, dtype=bool)] < 0.9999)


def test_batch_min_is_respected_by_padding(lcr_checkpoint, tmp_path, frames):
    """A model whose profile starts at batch 4 still embeds one image, and gets the same vector."""
    m = export_onnx(lcr_checkpoint, tmp_path / "b4.onnx", batch=(4, 4, 8))
    with Embedder(m) as e4, Embedder(export_onnx(lcr_checkpoint, tmp_path / "b1.onnx")) as e1:
        np.testing.assert_allclose(e4.embed(frames[0]), e1.embed(frames[0]), atol=ATOL)
        np.testing.assert_allclose(e4.embed(frames[:5]), e1.embed(frames[:5]), atol=ATOL)


def test_input_kinds_agree(emb, frames, tmp_path):
    """BGR array, RGB array with color='rgb', BGRA, a file path and a PIL image of one picture embed alike."""
    from PIL import Image

    bgr = frames[2]
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), bgr)
    ref = emb.embed(bgr)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    for v in (
        emb.embed(rgb, color="rgb"),
        emb.embed(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        emb.embed(str(path)),
        emb.embed(path),
        emb.embed(Image.fromarray(rgb)),
        emb.embed(path.read_bytes()),  # an image file's bytes, as an HTTP upload gives them
    ):
        np.testing.assert_allclose(v, ref, atol=ATOL)
    assert not np.allclose(emb.embed(rgb), ref, atol=1e-3)  # colour order matters: the default is BGR
    # color= names an array's channel order: a file decodes to BGR whatever it says, alone or in a list
    np.testing.assert_allclose(emb.embed(path, color="rgb"), ref, atol=ATOL)
    np.testing.assert_allclose(emb.embed([rgb, path], color="RGB"), np.stack([ref, ref]), atol=ATOL)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(emb.embed(gray), emb.embed(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)), atol=ATOL)


def test_a_pil_image_embeds_as_its_file_does(emb, frames, tmp_path):
    """A 16-bit PNG and an EXIF-rotated JPEG opened with PIL give the vector their file paths give."""
    from PIL import Image

    gray16 = (frames[2][:, :, 1].astype(np.uint16) * 257)[:, :-3]  # 16-bit gray with the full range used
    png = tmp_path / "gray16.png"
    cv2.imwrite(str(png), gray16)
    with Image.open(png) as im:
        assert im.mode.startswith("I")
        np.testing.assert_allclose(emb.embed(im), emb.embed(png), atol=ATOL)

    jpg = tmp_path / "rotated.jpg"
    Image.fromarray(cv2.cvtColor(frames[3], cv2.COLOR_BGR2RGB)).save(jpg, exif=_orientation(6), quality=95)
    with Image.open(jpg) as im:
        assert im.size == frames[3].shape[1::-1]  # stored unrotated; the tag says "rotate 90"
        np.testing.assert_allclose(emb.embed(im), emb.embed(jpg), atol=ATOL)
    assert cv2.imread(str(jpg)).shape[:2] == frames[3].shape[1::-1]  # OpenCV applies the tag

    with pytest.raises(InputError, match="mode 'F'"):
        emb.embed(Image.fromarray(np.ones((32, 32), np.float32)))
    # 8-bit values held in PIL's 32-bit mode "I" stay as they are (only 16-bit ranges are scaled down)
    gray8 = frames[2][:, :, 1]
    np.testing.assert_allclose(
        emb.embed(Image.fromarray(gray8.astype(np.int32), mode="I")), emb.embed(gray8), atol=ATOL
    )


def _orientation(value: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_non_uint8_arrays_get_the_conversion_that_fits_their_values(emb):
    cases = [
        (np.full((32, 32, 3), 200.0, np.float32), r"0\.\.255 use img\.clip"),
        (np.full((32, 32, 3), 0.5, np.float32), r"0\.\.1 use \(img \* 255\)"),
        (np.full((32, 32, 3), 7, np.int64), r"img\.astype\(np\.uint8\)"),
    ]
    for img, hint in cases:
        with pytest.raises(InputError, match=hint):
            emb.embed(img)


def _photo(h: int, w: int) -> np.ndarray:
    """A camera-like picture: gradients, structure and sensor noise (seeded), several MB as a JPEG."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 97.0) * np.cos(y / 61.0)], axis=-1)
    img += np.random.default_rng(0).normal(0, 12, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def _as_format_1(model: Path, out: Path) -> Path:
    """A copy of ``model`` as an export before manifest format 2 wrote it: no input.antialias, inside and beside."""
    import onnx

    from lcr_sdk.fileio import sha256_file
    from lcr_sdk.manifest import ONNX_METADATA_KEY

    def older(d: dict) -> dict:
        del d["input"]["antialias"]
        return {**d, "format_version": 1}

    proto = onnx.load(str(model))
    entry = next(p for p in proto.metadata_props if p.key == ONNX_METADATA_KEY)
    entry.value = json.dumps(older(json.loads(entry.value)))
    onnx.save(proto, str(out))
    side = older(json.loads(Path(f"{model}.json").read_text()))
    Path(f"{out}.json").write_text(json.dumps({**side, "model_sha256": sha256_file(out)}))
    return out


def test_a_large_photo_gives_one_input_by_path_array_or_attend(emb, lcr_onnx, tmp_path):
    """A big JPEG by path decodes at reduced size (memory); the decoded array is block-averaged the same way
    (input.antialias), so both give the model the same picture; the rule's plain resize of the array would not."""
    from lcr_sdk.images import REDUCED_DECODE_BYTES, resize_to

    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), _photo(1500, 2000), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert path.stat().st_size > REDUCED_DECODE_BYTES  # the reduced decode applies
    arr = cv2.imread(str(path))
    spec = emb.manifest.input
    assert spec.antialias
    by_path, by_array = emb.prepare(path).astype(int), emb.prepare(arr).astype(int)
    plain = resize_to(arr, spec.height, spec.width, spec.resize, spec.interpolation).astype(int)
    near, far = np.abs(by_path - by_array).mean(), np.abs(by_path - plain).mean()
    assert near < 1.0 and far > 4 * near, (near, far)
    assert float(emb.embed(path) @ emb.embed(arr)) > 0.999
    np.testing.assert_allclose(emb.attend(path).embedding, emb.embed(arr), atol=ATOL)  # attend reads it whole

    np.testing.assert_array_equal(emb.prepare(path.read_bytes()), by_path)  # the file's bytes decode as the file

    # a model exported before manifest format 2 (no input.antialias) prepares images exactly as its release did:
    # a big JPEG by path decoded at reduced size, then one resize; an array resized once
    from lcr_sdk.images import read_image

    old = _as_format_1(lcr_onnx, tmp_path / "old.onnx")
    with Embedder(old, device="cpu") as e1:
        assert not e1.manifest.input.antialias
        reduced = read_image(path, min_size=(spec.height, spec.width))
        assert reduced.shape[:2] == (188, 250)  # 1/8 of 1500 x 2000, the partial last block row kept
        np.testing.assert_array_equal(e1.prepare(path), resize_to(reduced, spec.height, spec.width, spec.resize))
        np.testing.assert_array_equal(e1.prepare(arr), plain.astype(np.uint8))
    # written again (an engine's sidecar, a Triton entry), it is a format-2 manifest that says antialias is off
    from lcr_sdk.manifest import Manifest, read_manifest

    again = json.loads(read_manifest(old).to_json())
    assert again["format_version"] == 2 and again["input"]["antialias"] is False
    assert Manifest.from_dict(again).input == read_manifest(old).input


def test_attend_lcr(emb, frames):
    img = frames[3]  # non-square: exercises the centre-crop mapping
    h, w = img.shape[:2]
    r = emb.attend(img)
    k = emb.manifest.num_parts
    np.testing.assert_allclose(r.embedding, emb.embed(img), atol=ATOL)
    assert r.mask.shape == (h, w) and r.mask.dtype == np.float32
    assert r.mask.min() >= 0 and r.mask.max() <= 1 + 1e-6 and r.mask.max() > 0.9
    one = r.part_map(k - 1)  # resized alone, before the K maps are resized on first access of .parts
    assert r.parts.shape == (k, h, w) and len(r.peaks) == k
    np.testing.assert_array_equal(one, r.parts[k - 1])
    for part, x, y, score in r.peaks:
        assert 0 <= x < w and 0 <= y < h
        assert score == pytest.approx(float(r.parts[part].max()), rel=1e-4, abs=1e-6)
        assert r.parts[part][y, x] >= 0.5 * score  # the marked pixel sits on the part's strongest response
    over = r.overlay(img)
    assert over.shape == img.shape and over.dtype == np.uint8 and not np.array_equal(over, img)
    best = max(r.peaks, key=lambda p: p[3])[0]
    assert not np.array_equal(r.overlay(img, part=best), over)
    with pytest.raises(ValueError, match="part"):
        r.overlay(img, part=k)
    np.testing.assert_array_equal(r.overlay(img, alpha=0), img)  # alpha is the heatmap's weight
    np.testing.assert_array_equal(r.overlay(img, alpha=np.float32(0.5)), over)  # numpy numbers are numbers
    for alpha in (5.0, -1, float("nan")):
        with pytest.raises(InputError, match=r"alpha=.* give the heatmap's weight in \[0, 1\]"):
            r.overlay(img, alpha=alpha)


def test_attend_moco_has_no_parts(moco_onnx, frames):
    with Embedder(moco_onnx) as e:
        r = e.attend(frames[0])
    assert e.manifest.method == "moco" and r.parts is None and r.peaks == []
    h, w = frames[0].shape[:2]
    assert (h, w) == (48, 64)  # centre crop 48 x 48 at x = 8..56: the model sees only that part
    np.testing.assert_allclose(r.mask[:, 8:56], 1.0)
    np.testing.assert_allclose(r.mask[:, :8], 0.0)
    np.testing.assert_allclose(r.mask[:, 56:], 0.0)
    assert r.overlay(frames[0]).shape == frames[0].shape


def test_torch_backend_matches_onnx(lcr_checkpoint, emb, frames):
    """The PyTorch reference and the exported ONNX model give the same embeddings and masks."""
    with Embedder(lcr_checkpoint, device="cpu") as ref:
        assert ref.backend_name == "torch" and ref.model_id == emb.model_id
        np.testing.assert_allclose(ref.embed(frames[:5]), emb.embed(frames[:5]), atol=1e-4)
        np.testing.assert_allclose(ref.attend(frames[0]).mask, emb.attend(frames[0]).mask, atol=1e-4)


def test_threads_give_same_results_as_one_thread(emb, frames):
    expected = emb.embed(frames)
    results, errors = {}, []

    def work(t: int) -> None:
        try:
            order = np.random.default_rng(t).permutation(len(frames))
            for _ in range(3):
                for i in order:
                    results.setdefault((t, i), []).append(emb.embed(frames[i]))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 4 * len(frames)
    for (_, i), vs in results.items():
        for v in vs:
            np.testing.assert_allclose(v, expected[i], atol=ATOL)


def test_provider_fallback_is_loud(lcr_onnx):
    """Asking for CUDA on a CPU-only onnxruntime: a warning naming both providers, or an error with strict."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider available here: no fallback to observe")
    with pytest.warns(ProviderFallbackWarning, match="CUDAExecutionProvider.*CPUExecutionProvider"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="onnxruntime")
            e = Embedder(lcr_onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert e.provider == "CPUExecutionProvider"
    with pytest.raises(ModelError, match="could not use CUDAExecutionProvider"):
        Embedder(lcr_onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], strict=True)
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        Embedder(lcr_onnx, device="cuda")


def test_embed_and_attend_work_without_torch(lcr_onnx, synth_root):
    """Acceptance: a process where torch cannot be imported runs Embedder('model.onnx') on cv2.imread images."""
    img = next((synth_root / "test").glob("*/*.png"))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' now raises ImportError
        import cv2, numpy as np
        from lcr_sdk import Embedder
        e = Embedder({str(lcr_onnx)!r})
        img = cv2.imread({str(img)!r})
        v = e.embed(img)
        r = e.attend(img)
        assert v.shape == (512,) and abs(np.linalg.norm(v) - 1) < 1e-5
        assert r.mask.shape == img.shape[:2] and r.overlay(img).shape == img.shape
        print("ok", e.provider)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok CPUExecutionProvider" in out.stdout


# -- ONNX Runtime provider choice -----------------------------------------------------------------------------------
# onnxruntime here is the CPU build, so lists of GPU providers are stand-ins for what onnxruntime-gpu reports
# (it lists TensorrtExecutionProvider whether or not TensorRT is installed); the real API is used where it runs.

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _names(providers):
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def test_tensorrt_provider_only_when_tensorrt_is_importable():
    from lcr_sdk.backends.onnxruntime import choose_providers

    assert _names(choose_providers(GPU_BUILD, None, tensorrt=False)) == GPU_BUILD[1:]
    chosen = choose_providers(GPU_BUILD, None, tensorrt=True, trt_provider_options={"trt_engine_cache_enable": True})
    assert _names(chosen) == GPU_BUILD and chosen[0][1] == {"trt_engine_cache_enable": True, "device_id": 0}
    assert choose_providers(GPU_BUILD, "cuda:1", tensorrt=False)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert choose_providers(GPU_BUILD, "cpu", tensorrt=True) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"], None, tensorrt=True) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], "cuda", tensorrt=False)
    with pytest.raises(ValueError, match="'gpu' is not valid"):
        choose_providers(GPU_BUILD, "gpu")


def test_strict_keeps_a_working_cuda_provider():
    """TensorRT asked for (because importable) but CUDA running: a warning, never a strict error; CPU instead of a
    GPU provider: an error under strict."""
    from lcr_sdk.backends.onnxruntime import fallback

    requested = [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    msg, is_error = fallback(requested, ["CUDAExecutionProvider", "CPUExecutionProvider"], explicit=False)
    assert "TensorrtExecutionProvider" in msg and not is_error
    msg, is_error = fallback(requested, ["CPUExecutionProvider"], explicit=False)
    assert "runs on CPUExecutionProvider" in msg and is_error
    assert fallback(requested, ["TensorrtExecutionProvider", "CUDAExecutionProvider"], explicit=False) == (None, False)
    assert fallback(["CPUExecutionProvider"], ["CPUExecutionProvider"], explicit=False) == (None, False)
    msg, is_error = fallback(["TensorrtExecutionProvider"], ["CUDAExecutionProvider"], explicit=True)
    assert is_error  # an explicit list: its first entry is what was asked for


def test_tensorrt_provider_options_cache_beside_the_model(lcr_onnx):
    from lcr_sdk.backends.onnxruntime import trt_cache_dir, trt_options
    from lcr_sdk.manifest import read_manifest

    cache = trt_cache_dir(lcr_onnx)
    assert cache.parent == lcr_onnx.parent.resolve() and cache.name == f".{lcr_onnx.name}.ort-trt" and cache.is_dir()
    opts = trt_options(read_manifest(lcr_onnx), cache)
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(cache)
    assert opts["trt_timing_cache_enable"] and opts["trt_timing_cache_path"] == str(cache)
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_opt_shapes"], opts["trt_profile_max_shapes"]) == (
        "images:1x64x64x3",
        "images:4x64x64x3",
        "images:8x64x64x3",
    )
    assert not opts["trt_fp16_enable"] and not opts["trt_int8_enable"]


def test_auto_device_on_the_real_cpu_build_is_quiet_even_strict(lcr_onnx):
    """The real onnxruntime here offers only the CPU: auto picks it, with no fallback warning, strict or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderFallbackWarning)
        with Embedder(lcr_onnx, strict=True) as e:
            assert e.provider == "CPUExecutionProvider"


def test_overlay_in_row_strips_equals_the_whole_frame_at_once(emb, frames, monkeypatch):
    """Huge frames are blended in strips of rows; the picture is the same as blending the full-size mask."""
    import lcr_sdk.embedder as embedder_module
    from lcr_sdk.images import heatmap_overlay

    img = cv2.resize(frames[3], (90, 70))
    r = emb.attend(img)
    whole = heatmap_overlay(img, r.mask, 0.5)
    monkeypatch.setattr(embedder_module, "OVERLAY_ROWS", 16)
    np.testing.assert_array_equal(r.overlay(img), whole)
    k = emb.manifest.num_parts - 1
    p = r.part_map(k)
    marked = r.overlay(img, part=k)
    assert marked.shape == img.shape and p.shape == img.shape[:2]


def test_mask_matches_opencv_bilinear_resize_onto_the_crop(emb, frames):
    img = frames[3]
    h, w = img.shape[:2]
    r = emb.attend(img)
    x0, y0, x1, y1 = (int(round(v)) for v in r.box)
    ref = cv2.resize(r.mask_grid, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(r.mask[y0:y1, x0:x1], ref, atol=1e-5)
    assert r.mask.shape == (h, w) and not r.mask[:, :x0].any() and not r.mask[:, x1:].any()


@pytest.mark.parametrize("size", [(40, 80), (80, 40), (64, 64)])
def test_letterbox_maps_of_wide_tall_and_square_images_are_transposes_of_each_other(size):
    """A letterbox model's box reaches past a narrow side of the image; the maps keep the part inside it."""
    from lcr_sdk.embedder import Attention
    from lcr_sdk.images import crop_box

    h, w = size
    grid = np.random.default_rng(0).random((3, 7, 7)).astype(np.float32)
    wide = Attention(np.ones(4, np.float32), grid[0], [], grid, crop_box(h, w, 224, 224, "letterbox"), (h, w))
    tall = Attention(
        np.ones(4, np.float32),
        grid[0].T.copy(),
        [],
        grid.transpose(0, 2, 1).copy(),
        crop_box(w, h, 224, 224, "letterbox"),
        (w, h),
    )
    np.testing.assert_allclose(tall.mask, wide.mask.T, atol=1e-6)
    np.testing.assert_allclose(tall.parts, wide.parts.transpose(0, 2, 1), atol=1e-6)
    assert wide.mask.shape == (h, w) and wide.mask.min() > 0  # the whole image is inside the letterbox
    picture = tall.overlay(np.zeros((w, h, 3), np.uint8))
    assert picture.shape == (w, h, 3) and picture.any()

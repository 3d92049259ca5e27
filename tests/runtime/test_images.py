"""Host-side image helpers shared by the runtime and the training report."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lcr_sdk.images import heatmap_overlay, resize_to


def test_heatmap_overlay_marks_high_values_red_at_any_map_size():
    img = np.full((40, 60, 3), 128, np.uint8)
    heat = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)  # feature-grid size: resized to the image
    out = heatmap_overlay(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    left, right = out[:, :10].reshape(-1, 3).mean(0), out[:, -10:].reshape(-1, 3).mean(0)  # BGR
    assert right[2] > right[0] and left[0] > left[2]  # high = red, low = blue


def test_short_side_center_crop_keeps_the_centre():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square is white
    out = resize_to(img, 50, 50)
    assert out.shape == (50, 50, 3) and out.mean() > 250
    assert resize_to(img, 50, 50, rule="stretch").mean() < 200


def test_shrink_by_halves_averages_whole_blocks_down_to_at_least_the_size_asked_for():
    from lcr_sdk.images import shrink_by_halves

    img = np.random.default_rng(3).integers(0, 256, (37, 70, 3), dtype=np.uint8)
    out = shrink_by_halves(img, 8, 8)  # 37 // 4 = 9 >= 8, 37 // 8 = 4 < 8: by 4
    assert out.shape == (9, 17, 3)
    blocks = img[:36, :68].reshape(9, 4, 17, 4, 3).mean(axis=(1, 3))  # the 4 x 4 blocks; a partial edge is dropped
    assert np.abs(out - blocks).max() <= 0.5 + 1e-9
    assert shrink_by_halves(img, 19, 8) is img  # under twice the size on one side: left as it is
    assert resize_to(img, 8, 8, antialias=True).shape == (8, 8, 3)
    assert not np.array_equal(resize_to(img, 8, 8, antialias=True), resize_to(img, 8, 8))


def _photo(h: int, w: int) -> np.ndarray:
    """A colour gradient with structure and sensor-like noise (a file of several MB, like a camera's)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 97.0) * np.cos(y / 61.0)], axis=-1)
    img += np.random.default_rng(0).normal(0, 12, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def test_large_file_decodes_reduced_but_never_below_the_size_asked_for(tmp_path):
    import cv2

    from lcr_sdk.images import read_image

    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), _photo(3000, 4000), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert path.stat().st_size > 1 << 20  # large enough for a reduced decode to pay off
    full = read_image(path)
    assert full.shape == (3000, 4000, 3)
    small = read_image(path, min_size=(224, 224))
    assert small.shape == (375, 500, 3)  # 1/8: the largest reduction that still covers 224 x 224
    mid = read_image(path, min_size=(600, 600))
    assert mid.shape == (750, 1000, 3)  # 1/8 would give 375 < 600: 1/4
    assert read_image(path, min_size=(2000, 2000)).shape == full.shape  # no reduction covers it
    # what the model sees is the same picture either way
    a, b = resize_to(full, 224, 224, interpolation="area"), resize_to(small, 224, 224, interpolation="area")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_tiny_image_files_are_refused_like_tiny_arrays(tmp_path):
    import cv2
    import pytest

    from lcr_sdk.errors import InputError
    from lcr_sdk.images import read_image, to_bgr

    path = tmp_path / "dot.png"
    cv2.imwrite(str(path), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputError, match="1x1 image, too small.*>= 8 px"):
        read_image(path)
    with pytest.raises(InputError, match="too small"):
        to_bgr(np.zeros((1, 1, 3), np.uint8))


def forged_png(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width x height`` pixels (its pixel data is missing)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_header_size_is_read_in_every_format_without_decoding(tmp_path):
    import cv2

    from lcr_sdk.images import image_size

    img = np.zeros((37, 53, 3), np.uint8)
    for ext, fmt in [
        (".png", "PNG"),
        (".jpg", "JPEG"),
        (".bmp", "BMP"),
        (".webp", "WebP"),
        (".tif", "TIFF"),
        (".ppm", "PNM"),
        (".pgm", "PNM"),
    ]:
        ok, data = cv2.imencode(ext, img[:, :, 0] if ext == ".pgm" else img)
        assert ok, ext
        assert image_size(data) == (fmt, 53, 37), ext
    ok, data = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless: VP8L
    assert image_size(data) == ("WebP", 53, 37)
    assert image_size(b"not an image") is None and image_size(b"\x89PNG\r\n\x1a\n") is None


def test_a_header_cut_short_is_not_an_image_in_any_format(tmp_path):
    """A file that starts like an image but whose header is incomplete gets the reader's one error, never a crash."""
    import cv2

    from lcr_sdk.errors import InputError
    from lcr_sdk.images import image_size, read_image

    ok, pam = cv2.imencode(".pam", np.zeros((37, 53, 3), np.uint8))
    assert ok and image_size(pam) == ("PAM", 53, 37)
    for name, data in [("no-width.pam", b"P7\nHEIGHT 37\n"), ("no-height.pam", b"P7\nWIDTH 53\n")]:
        assert image_size(data) is None, name
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match="is not an image of a format this reader knows"):
            read_image(tmp_path / name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_a_device_or_a_folder_is_refused_without_reading(tmp_path):
    """A named pipe given as an image would block the read until something writes to it (a device may never end): the
    reader refuses each at once in one line. It runs in a process of its own with a time limit, so a hang fails."""
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    code = (
        "import sys\nfrom lcr_sdk.errors import InputError\nfrom lcr_sdk.images import read_image\n"
        "for p in sys.argv[1:]:\n    try:\n        read_image(p)\n    except InputError as e:\n        print(e)\n"
    )
    paths = [fifo, Path(os.devnull), tmp_path]
    r = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    for line, path, what in zip(lines, paths, ["a FIFO (named pipe)", "a device", "a folder"]):
        assert line.startswith(f"{path} is {what}, not an image file; give the path of an image file (.jpg, "), line


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    import cv2
    import pytest

    from lcr_sdk.errors import InputError
    from lcr_sdk.images import MAX_PIXELS, read_image

    forged = tmp_path / "bomb.png"
    forged.write_bytes(forged_png(50000, 50000))
    assert forged.stat().st_size < 200
    with pytest.raises(InputError, match=r"bomb.png is a PNG of 50000 x 50000 pixels, more than the 100,000,000"):
        read_image(forged)
    real = tmp_path / "real.png"
    cv2.imwrite(str(real), np.zeros((200, 300, 3), np.uint8))
    with pytest.raises(InputError, match=r"more than the 50,000 pixels.*at most 273 x 182"):
        read_image(real, limit=50_000)
    assert read_image(real, limit=60_000).shape == (200, 300, 3)
    monkeypatch.setenv("LCR_SDK_MAX_PIXELS", "50000")
    with pytest.raises(InputError, match="LCR_SDK_MAX_PIXELS"):
        read_image(real)
    monkeypatch.setenv("LCR_SDK_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match=r"LCR_SDK_MAX_PIXELS='lots' is not a pixel count"):
        read_image(real)
    assert MAX_PIXELS == 100_000_000  # the limit docs/RELIABILITY.md states


def test_the_limit_counts_a_jpeg_at_its_reduced_decode_size(tmp_path):
    import cv2
    import pytest

    from lcr_sdk.errors import InputError
    from lcr_sdk.images import read_image

    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), _photo(3000, 4000), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert read_image(path, min_size=(224, 224), limit=200_000).shape == (375, 500, 3)  # 1/8 decode fits
    with pytest.raises(InputError, match=r"decoded at 1/8: 500 x 375"):
        read_image(path, min_size=(224, 224), limit=100_000)


def test_a_skip_list_shows_each_file_whole_even_with_a_semicolon_in_its_name():
    from lcr_sdk.images import skip_list

    skipped = [(f"d/{n}.jpg", f"d/{n}.jpg is empty (0 bytes: an interrupted copy or download?); re-copy or remove it")
               for n in ("a", "b;c", "e", "f", "g", "h")]  # fmt: skip
    line = skip_list(skipped)
    assert line.startswith("d/a.jpg is empty (0 bytes: an interrupted copy or download?); re-copy or remove it; ")
    assert "; d/b;c.jpg is empty (0 bytes: an interrupted copy or download?); d/e.jpg" in line  # first clause only
    assert line.endswith("; and 1 more") and line.count("re-copy") == 1
    # a report that lists files by their path relative to a folder, while each reason names the whole path
    rel = [
        ("robin/b; c.jpg", "/data/robin/b; c.jpg is empty (0 bytes: a copy?); re-copy"),
        ("e.jpg", "/data/e.jpg is empty"),
    ]
    assert skip_list([("a.jpg", "a.jpg is bad; fix it"), *rel]).endswith(
        "; /data/robin/b; c.jpg is empty (0 bytes: a copy?); /data/e.jpg is empty"
    )


def test_labelled_images_reads_a_label_folders_sub_folders_as_training_does(tmp_path):
    import cv2

    from lcr_sdk.images import labelled_images

    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    for rel in ["robin/a.png", "robin/2024/b.jpg", "wren/c.JFIF", "loose.png", ".hidden/d.png", "robin/.e.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(jpeg)  # content decides the format; the suffix only selects the file
    paths, labels = labelled_images(tmp_path)
    found = {p.relative_to(tmp_path).as_posix(): lab for p, lab in zip(paths, labels, strict=True)}
    assert found == {"loose.png": "", "robin/a.png": "robin", "robin/2024/b.jpg": "robin", "wren/c.JFIF": "wren"}


def test_a_reduced_decode_in_whole_blocks_never_shrinks_a_turned_photo_below_the_size_asked_for(tmp_path):
    """The JPEG header gives the sides before the EXIF turn, so the decode factor keeps both sides above the larger
    need (an array of the turned picture is then shrunk the rest of the way), and only whole blocks are kept, by
    each side's own count even where both sides round to the same number of blocks."""
    from PIL import Image

    from lcr_sdk.images import read_image, shrink_by_halves

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": stored 4000 wide x 1800 high, shown 1800 wide x 4000 high
    turned = tmp_path / "turned.jpg"
    Image.fromarray(_photo(1800, 4000)).save(turned, exif=exif.tobytes(), quality=95)
    assert turned.stat().st_size > 1 << 20
    img = read_image(turned, min_size=(448, 224), whole_blocks=True)  # a portrait input: 448 high, 224 wide
    assert img.shape[0] >= 448 and img.shape[1] >= 224, img.shape  # 1/8 of the stored sides would give 500 x 225
    full = read_image(turned)
    assert full.shape[:2] == (4000, 1800)
    assert shrink_by_halves(full, 448, 224).shape[:2] == shrink_by_halves(img, 448, 224).shape[:2]

    # the orientation read as the decoder reads it: after large segments and fill bytes; a block that is not TIFF
    # ignored; a flip or half turn of sides that are not whole blocks decoded whole (its partial block would lie where
    # the array's blocks start)
    from lcr_sdk.images import jpeg_orientation

    data = turned.read_bytes()
    icc = b"\xff\xe2" + (65533).to_bytes(2, "big") + bytes(65531)  # an APP2 segment of 64 KiB, before the EXIF
    assert jpeg_orientation(data[:2] + icc * 2 + b"\xff\xff" + data[2:]) == 6
    assert jpeg_orientation(data.replace(b"Exif\0\0MM\0*", b"Exif\0\0MM\0+", 1)) == 1
    for orientation, (rows, cols) in [(3, (1801, 4001)), (6, (1801, 4001))]:
        exif[0x0112] = orientation
        odd = tmp_path / f"odd{orientation}.jpg"
        Image.fromarray(_photo(rows, cols)).save(odd, exif=exif.tobytes(), quality=95)
        arr, by_path = read_image(odd), read_image(odd, min_size=(224, 224), whole_blocks=True)
        a, b = shrink_by_halves(arr, 224, 224), shrink_by_halves(by_path, 224, 224)
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1.5, (orientation, a.shape, b.shape)

    square = tmp_path / "square.jpg"  # 1999 x 2000: both sides are 250 blocks of 8, rounded up
    Image.fromarray(_photo(1999, 2000)).save(square, quality=95)
    assert read_image(square, min_size=(64, 64), whole_blocks=True).shape[:2] == (249, 250)


def test_class_folders_are_listed_through_linked_sub_folders_each_real_folder_once(tmp_path):
    """A sub-folder that is a link (images kept elsewhere) is read, as torchvision's ImageFolder reads it; a link
    back up to the class folder cannot loop; hidden folders stay out."""
    from lcr_sdk.images import list_images

    extra = tmp_path / "elsewhere"
    extra.mkdir()
    for name in ("a.png", "b.jpg"):
        (extra / name).write_bytes(b"x")
    cls = tmp_path / "class"
    (cls / ".hidden").mkdir(parents=True)
    (cls / "own.png").write_bytes(b"x")
    (cls / ".hidden" / "c.png").write_bytes(b"x")
    (cls / "linked").symlink_to(extra, target_is_directory=True)
    (cls / "loop").symlink_to(cls, target_is_directory=True)
    found = [p.relative_to(cls).as_posix() for p in list_images(cls, recursive=True)]
    assert found == ["linked/a.png", "linked/b.jpg", "own.png"]

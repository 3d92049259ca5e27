"""Host-side image handling shared by training evaluation and every runtime backend.

Everything after this (cast, BGR->RGB, mean/std, NCHW) happens inside the model graph; here we only bring an
image to a uint8 BGR H x W x 3 array of the model's size, by the resize rule the manifest names.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lcr_sdk.errors import DataError, InputError, import_platform

if TYPE_CHECKING:
    import cv2
else:  # JetPack's OpenCV on a Jetson, opencv-python elsewhere: a missing one is an error naming the fix
    cv2 = import_platform("cv2")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
MIN_SIDE = 8  # smaller images carry no usable detail


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
REDUCED_DECODE_BYTES = 1 << 20  # files smaller than this decode fully (fast anyway)
# Most pixels one image may decode to (after a JPEG's reduced decode): 100 MP is 300 MB of BGR pixels, about 0.6 GB
# at the peak of a decode. Checked from the file's header before anything is decoded; LCR_SDK_MAX_PIXELS changes it.
MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "LCR_SDK_MAX_PIXELS"
MAX_FILE_BYTES = 1 << 30  # no image file this reader accepts is larger (it is read whole before decoding)


def max_pixels() -> int:
    """The pixel limit in force: ``LCR_SDK_MAX_PIXELS`` if set (a positive integer), else :data:`MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return MAX_PIXELS
    if not text.isdigit() or int(text) < MIN_SIDE * MIN_SIDE:
        raise InputError(
            f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a pixel count; give a positive integer such "
            f"as {MAX_PIXELS} (the default), or unset it"
        )
    return int(text)


def image_size(data: bytes | np.ndarray) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from an image file's header, without decoding it; None if not found.

    Reads PNG (IHDR), JPEG (the SOF marker), BMP, WebP (VP8, VP8L, VP8X), TIFF (the first IFD) and PNM (P1-P7):
    every format of :data:`IMAGE_SUFFIXES`.
    """
    b = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        return _header_size(b)
    except (IndexError, KeyError, ValueError, struct.error):  # a header cut short (KeyError: a PAM without WIDTH)
        return None


def _header_size(b: bytes) -> tuple[str, int, int] | None:
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
        w, h = struct.unpack(">II", b[16:24])
        return "PNG", w, h
    if b[:2] == b"\xff\xd8":
        return _jpeg_size(b)
    if b[:2] == b"BM":
        return _bmp_size(b)
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return _webp_size(b)
    if b[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(b)
    if len(b) > 2 and b[:1] == b"P" and b[1:2] in b"1234567" and b[2:3].isspace():
        return _pnm_size(b)
    return None


def _bmp_size(b: bytes) -> tuple[str, int, int]:
    if struct.unpack("<I", b[14:18])[0] == 12:  # OS/2 core header: 16-bit sides
        w, h = struct.unpack("<HH", b[18:22])
    else:
        w, h = struct.unpack("<ii", b[18:26])
    return "BMP", abs(w), abs(h)  # a negative height means top-down rows


def _webp_size(b: bytes) -> tuple[str, int, int] | None:
    kind = b[12:16]
    if kind == b"VP8X":
        return "WebP", 1 + int.from_bytes(b[24:27], "little"), 1 + int.from_bytes(b[27:30], "little")
    if kind == b"VP8L":
        bits = int.from_bytes(b[21:25], "little")
        return "WebP", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 ":
        w, h = struct.unpack("<HH", b[26:30])
        return "WebP", w & 0x3FFF, h & 0x3FFF
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(b: bytes) -> tuple[str, int, int] | None:
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return ("JPEG", w, h) if h else None  # height 0: given later (DNL), not read here
        i += 2 + length
    return None


def jpeg_orientation(b: bytes | np.ndarray) -> int:
    """A JPEG's EXIF orientation (APP1 ``Exif``, IFD0 tag 0x0112: 1 upright ... 8), read from the markers before the
    frame header as a decoder does (fill bytes skipped, a TIFF header checked); 1 where there is none or it cannot
    be read."""
    i = 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD9, 0xDA) or marker in _SOF:
            return 1  # the EXIF block comes before the frame header, when there is one
        (length,) = struct.unpack(">H", bytes(b[i + 2 : i + 4]))
        if marker == 0xE1 and bytes(b[i + 4 : i + 10]) == b"Exif\0\0":
            return _exif_orientation(bytes(b[i + 10 : i + 2 + length]))
        i += 2 + length
    return 1


def _exif_orientation(tiff: bytes) -> int:
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(tiff[:4])
    if order is None:
        return 1  # not a TIFF header: decoders ignore such a block
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for k in range(count):
            tag, _, _, value = struct.unpack(order + "HHIH", tiff[ifd + 2 + 12 * k : ifd + 12 + 12 * k])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def _tiff_size(b: bytes) -> tuple[str, int, int] | None:
    end = "<" if b[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", b[4:8])
    (count,) = struct.unpack(end + "H", b[ifd : ifd + 2])
    found: dict[int, int] = {}
    for k in range(count):
        tag, kind, _, value = struct.unpack(end + "HHI4s", b[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
        if tag in (256, 257):
            found[tag] = struct.unpack(end + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    return ("TIFF", found[256], found[257]) if len(found) == 2 else None


def _pnm_size(b: bytes) -> tuple[str, int, int] | None:
    head = b[:4096]
    if head[1:2] == b"7":  # PAM: WIDTH and HEIGHT lines
        fields = dict(ln.split(None, 1) for ln in head.decode("latin-1").splitlines() if len(ln.split(None, 1)) == 2)
        return "PAM", int(fields["WIDTH"]), int(fields["HEIGHT"])
    tokens: list[bytes] = []
    for line in head.split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 3:
            return "PNM", int(tokens[1]), int(tokens[2])
    return None


def read_image(
    path: str | os.PathLike[str],
    min_size: tuple[int, int] | None = None,
    limit: int | None = None,
    whole_blocks: bool = False,
) -> np.ndarray:
    """Read an image file as uint8 BGR H x W x 3.

    The size is read from the file's header first (:func:`image_size`): a file that would decode to more than
    ``limit`` pixels is refused before anything is decoded, so a small file that declares 50000 x 50000 pixels
    costs nothing.

    Args:
        path: an image file OpenCV reads (:data:`IMAGE_SUFFIXES`).
        min_size: ``(height, width)`` the caller needs at least, e.g. the model input. A large JPEG is then decoded
            at 1/2, 1/4 or 1/8 of its size (``cv2.IMREAD_REDUCED_COLOR_*``: JPEG decodes straight to the smaller
            size) as long as both sides stay >= ``min_size``, so a 20000 x 20000 photo never needs 1.2 GB of
            pixels to make a 224 px input. Without it the full image is decoded.
        limit: most pixels to decode (after that reduction); None: :func:`max_pixels`.
        whole_blocks: with ``min_size``, decode as :func:`shrink_by_halves` would shrink the decoded array: the
            factor chosen on the sides as shown (after the EXIF turn, read from the header), only whole blocks kept
            (a partial last row or column of blocks dropped), and a flipped or turned photo whose sides are not
            whole blocks decoded whole (its partial block would lie where the array's blocks start). What a model
            with ``input.antialias`` reads; without it, the reduced decode of manifests before that field.

    Raises:
        InputError: the file is missing, not a regular file (a folder, or a FIFO or device, which would block the
            read), larger than :data:`MAX_FILE_BYTES`, not a decodable image of a format this reader knows, above
            the pixel limit, or smaller than 8 px on a side.
    """
    p = check_image_file(path)
    data = np.fromfile(p, dtype=np.uint8)
    return decode_image(data, str(p), min_size, limit, whole_blocks)


def check_image_file(path: str | os.PathLike[str]) -> Path:
    """What :func:`read_image` checks before it reads: the path exists, is a regular file (a folder cannot be
    decoded; a FIFO or device would block the read) and is at most :data:`MAX_FILE_BYTES`. Nothing is opened.
    Callers that take many images check them all this way before loading a model.

    Raises:
        InputError: naming the path, what it is and what to give instead.
    """
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise InputError(
                f"image file {p} is a broken symbolic link (to {os.readlink(p)}, which does not exist); fix or "
                "remove the link"
            )
        raise InputError(
            f"image file {p} does not exist; pass the path of a readable image ({', '.join(IMAGE_SUFFIXES)})"
        )
    st = p.stat()  # never blocks, where opening a FIFO waits for a writer
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"{p} is {_file_kind(st.st_mode)}, not an image file; give the path of an image file "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    if st.st_size > MAX_FILE_BYTES:
        raise InputError(
            f"{p} is {st.st_size / 2**30:.1f} GiB, larger than any image this reader accepts "
            f"({MAX_FILE_BYTES / 2**30:.0f} GiB); downscale it or pass a smaller copy"
        )
    return p


def _file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for a message."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def decode_image(
    data: bytes | np.ndarray,
    name: str,
    min_size: tuple[int, int] | None = None,
    limit: int | None = None,
    whole_blocks: bool = False,
) -> np.ndarray:
    """Decode an encoded image (the bytes of a file) as uint8 BGR H x W x 3, within the pixel limit.

    What :func:`read_image` does after reading the file; for images held in memory (a gallery's stored crops).

    Args:
        data: the encoded bytes.
        name: what to call the image in messages (its path).
        min_size, limit, whole_blocks: as for :func:`read_image`.

    Raises:
        InputError: as :func:`read_image`.
    """
    arr = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    header = image_size(arr[:65536]) if arr.size else None
    if header is None and arr.size and image_size(arr) is not None:  # a JPEG whose frame header comes late
        header = image_size(arr)
    if header is None or min(header[1:]) < 1:
        raise InputError(_not_an_image(arr, name))
    fmt, w, h = header
    factor, turned = _decode_factor(arr, fmt, w, h, min_size, whole_blocks)
    cap = max_pixels() if limit is None else limit
    dw, dh = -(-w // factor), -(-h // factor)
    if dw * dh > cap:
        scaled = f" (decoded at 1/{factor}: {dw} x {dh})" if factor > 1 else ""
        raise InputError(
            f"{name} is a {fmt} of {w} x {h} pixels{scaled}, more than the {cap:,} pixels an image may decode to; "
            f"downscale it (e.g. to at most {_side(cap, w, h)}), or raise the limit with {MAX_PIXELS_ENV}=N "
            f"(each pixel takes 3 bytes of memory)"
        )
    try:
        img = cv2.imdecode(arr, _REDUCED[factor] if factor > 1 else cv2.IMREAD_COLOR)
    except cv2.error as e:  # a header that OpenCV's own limits or checks refuse
        raise InputError(
            f"{name} ({arr.size} bytes) could not be decoded as an image ({str(e).strip().splitlines()[-1]}); "
            "re-save or remove it"
        ) from e
    if img is None:
        raise InputError(
            f"{name} ({arr.size} bytes) has a {fmt} header ({w} x {h}) but its image data could not be decoded "
            "(a truncated or damaged file, such as an interrupted copy); re-save or remove it"
        )
    if factor > 1 and whole_blocks:  # a partial last block row or column dropped, as shrink_by_halves does
        img = _whole_blocks(img, h, w, factor, turned)
    if min(img.shape[:2]) < MIN_SIDE:
        raise InputError(
            f"{name} is a {img.shape[1]}x{img.shape[0]} image, too small to embed; each side must be >= {MIN_SIDE} px"
        )
    return img


def _not_an_image(arr: np.ndarray, name: str) -> str:
    """Why bytes without an image header of a known format are not an image, as precisely as the bytes tell."""
    if arr.size == 0:
        return f"{name} is empty (0 bytes: an interrupted copy or download?); re-copy or remove it"
    if os.path.basename(name).startswith("._") and bytes(arr[:4]) == b"\x00\x05\x16\x07":
        return (
            f"{name} is a macOS metadata file (AppleDouble, '._' prefix), not an image; delete such files "
            "(e.g. find DIR -name '._*' -delete)"
        )
    return (
        f"{name} ({arr.size} bytes) is not an image of a format this reader knows; valid inputs are image files "
        f"OpenCV reads ({', '.join(IMAGE_SUFFIXES)}); re-save or remove it"
    )


def _side(cap: int, w: int, h: int) -> str:
    """The largest size of the same aspect ratio within ``cap`` pixels, as ``W x H``."""
    s = (cap / (w * h)) ** 0.5
    return f"{max(1, int(w * s))} x {max(1, int(h * s))}"


def _decode_factor(
    arr: np.ndarray, fmt: str, w: int, h: int, min_size: tuple[int, int] | None, whole_blocks: bool
) -> tuple[int, bool]:
    """(reduced-decode factor, whether the EXIF orientation turns the picture) for :func:`decode_image`."""
    orientation = jpeg_orientation(arr) if whole_blocks and fmt == "JPEG" else 1
    turned = orientation >= 5  # shown with the header's height as its width
    factor = _reduction(fmt, w, h, arr.size, min_size, turned)
    if factor > 1 and orientation not in (1, 5) and (h % factor or w % factor):
        factor = 1  # a flip or turn puts the partial block at the top or left, where the array's blocks start: whole
    return factor, turned


def _whole_blocks(img: np.ndarray, h: int, w: int, factor: int, turned: bool) -> np.ndarray:
    """A reduced decode without its partial last block row and column (the header's sides ``h`` x ``w``, before
    any EXIF turn): the decoded shape says which way it was turned, the EXIF reading only where both ways give the
    same shape."""
    upright, sideways = (-(-h // factor), -(-w // factor)), (-(-w // factor), -(-h // factor))
    if img.shape[:2] == upright and (upright != sideways or not turned):
        keep = (h // factor, w // factor)
    elif img.shape[:2] == sideways:
        keep = (w // factor, h // factor)
    else:
        keep = img.shape[:2]
    return img[: max(1, keep[0]), : max(1, keep[1])]


def _reduction(fmt: str, w: int, h: int, nbytes: int, min_size: tuple[int, int] | None, turned: bool = False) -> int:
    """The reduced-decode factor: the largest of 8, 4, 2 that keeps both sides >= ``min_size`` (JPEG only: other
    formats decode at full size and shrink afterwards, which saves nothing); 1 for a full decode. ``turned``: the
    EXIF orientation turns the picture by 90 degrees, so the header's width is the height shown."""
    if min_size is None or fmt != "JPEG" or nbytes < REDUCED_DECODE_BYTES:
        return 1
    need_h, need_w = min_size[::-1] if turned else min_size
    return next((f for f in (8, 4, 2) if h // f >= need_h and w // f >= need_w), 1)


def to_bgr(
    image: Any, color: str = "bgr", min_size: tuple[int, int] | None = None, whole_blocks: bool = False
) -> np.ndarray:
    """Bring one image to a uint8 BGR H x W x 3 array.

    Args:
        image: an OpenCV BGR uint8 H x W x 3 array (default), an RGB array with ``color="rgb"``, a grayscale
            H x W (or H x W x 1) array, a BGRA/RGBA H x W x 4 array, a file path, the bytes of an image file (as
            an HTTP upload gives them; decoded as the file would be), or a PIL image.
        color: channel order of a 3/4-channel array: ``"bgr"`` (OpenCV) or ``"rgb"``.
        min_size, whole_blocks: for a file path or its bytes, as for :func:`read_image`.

    Raises:
        InputError: naming what was given and what is valid.
    """
    color = check_color(color)
    if image is None:
        raise InputError("image is None (cv2.imread returns None for a missing or unreadable file); check the path")
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, min_size, whole_blocks=whole_blocks)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) > MAX_FILE_BYTES:
            raise InputError(
                f"image bytes of {len(image) / 2**30:.1f} GiB are larger than any image this reader accepts "
                f"({MAX_FILE_BYTES / 2**30:.0f} GiB); downscale it"
            )
        return decode_image(bytes(image), f"image bytes ({len(image)})", min_size, whole_blocks=whole_blocks)
    array, color = _as_uint8_array(image, color)
    out = _channels_to_bgr(array, color)
    if min(out.shape[:2]) < MIN_SIDE:
        raise InputError(
            f"image of size {out.shape[1]}x{out.shape[0]} is too small; each side must be >= {MIN_SIDE} px"
        )
    return np.ascontiguousarray(out)


def check_color(color: Any) -> str:
    """``color`` as ``"bgr"`` or ``"rgb"`` (any case); InputError for anything else."""
    if isinstance(color, str) and color.lower() in ("bgr", "rgb"):
        return color.lower()
    raise InputError(f"color={color!r} is not valid; use 'bgr' (OpenCV arrays) or 'rgb'")


def _from_pil(image: Any) -> tuple[np.ndarray, str]:
    """A PIL image as a uint8 array and its channel order, the way :func:`read_image` would read its file: the EXIF
    orientation applied, 16-bit and 32-bit integer gray scaled to 8 bits (``>> 8``, as OpenCV reads a 16-bit PNG)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I": 16-bit gray (0..65535), or 8-bit values held as "I"
        values = np.asarray(image).astype(np.int64)
        wide = image.mode.startswith("I;16") or values.max(initial=0) > 255
        return ((values >> 8) if wide else values).clip(0, 255).astype(np.uint8), "bgr"
    if image.mode == "F":
        raise InputError(
            "PIL image of mode 'F' (32-bit float) is not supported; convert it to 8 bits first "
            "(e.g. image.point(lambda v: v * 255).convert('L') for values in 0..1), or pass its file path"
        )
    return np.asarray(image.convert("RGB")), "rgb"


def _as_uint8_array(image: Any, color: str) -> tuple[np.ndarray, str]:
    """A PIL image or a numpy array as a non-empty uint8 array and its channel order; InputError for anything else."""
    if type(image).__module__.startswith("PIL."):
        image, color = _from_pil(image)
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"image of type {type(image).__name__} is not supported; pass a uint8 numpy array (H x W x 3 BGR), "
            "a file path, the bytes of an image file or a PIL image"
        )
    if image.size == 0:
        raise InputError(f"image is an empty array of shape {image.shape}; check the frame source")
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            fix = "For a 16-bit image use (img >> 8).astype(np.uint8), or pass its file path (read as 8-bit)"
        elif image.dtype.kind == "f" and np.nanmax(image) > 1.0:
            fix = "For a float image in 0..255 use img.clip(0, 255).astype(np.uint8)"
        elif image.dtype.kind == "f":
            fix = "For a float image in 0..1 use (img * 255).clip(0, 255).astype(np.uint8)"
        else:
            fix = "For an image whose values are 0..255 use img.astype(np.uint8)"
        raise InputError(f"image dtype is {image.dtype}; uint8 (0..255) is required. {fix}")
    return image, color


def _channels_to_bgr(image: np.ndarray, color: str) -> np.ndarray:
    """A gray, 3- or 4-channel uint8 array in ``color`` order as BGR H x W x 3; InputError for another shape."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image if color == "bgr" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR if color == "bgr" else cv2.COLOR_RGBA2BGR)
    raise InputError(
        f"image shape {image.shape} is not an image; valid shapes are H x W (gray), H x W x 3 (BGR/RGB) "
        "or H x W x 4 (BGRA/RGBA)"
    )


RULES = ("short_side_center_crop", "stretch", "letterbox")


def _letterbox(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Size (nh, nw) of an h x w image fitted inside height x width, and its (top, left) offset, centred."""
    scale = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    return nh, nw, (height - nh) // 2, (width - nw) // 2


def _cover_scale(h: int, w: int, height: int, width: int) -> float:
    """Scale at which an h x w image just covers height x width (the short side fits, the long side overhangs)."""
    return max(height / h, width / w)


def crop_box(
    h: int, w: int, height: int, width: int, rule: str = "short_side_center_crop"
) -> tuple[float, float, float, float]:
    """The region ``(x0, y0, x1, y1)`` of an ``h x w`` image that becomes the ``height x width`` model input.

    ``short_side_center_crop`` keeps the aspect ratio: the image is scaled to cover ``height x width`` and the
    centre is cut out; ``stretch`` uses the whole image; ``letterbox`` (what DeepStream's nvinfer does with
    maintain-aspect-ratio and symmetric-padding) scales the whole image to fit inside and pads both sides with black,
    so its box reaches past the image. :func:`resize_to` cuts this box, and :class:`~lcr_sdk.embedder.Embedder` maps
    attention maps back onto it.
    """
    if rule == "stretch":
        return 0.0, 0.0, float(w), float(h)
    if rule == "letterbox":
        nh, nw, top, left = _letterbox(h, w, height, width)
        sx, sy = nw / w, nh / h
        return -left / sx, -top / sy, (width - left) / sx, (height - top) / sy
    if rule != "short_side_center_crop":
        raise InputError(f"resize rule {rule!r} is unknown; valid: {', '.join(RULES)}")
    scale = _cover_scale(h, w, height, width)
    cw, ch = width / scale, height / scale
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return x0, y0, x0 + cw, y0 + ch


def shrink_by_halves(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` shrunk by the largest power of two F that keeps both sides >= ``height`` x ``width`` (its sides
    floor(h / F), floor(w / F)), each output pixel the average of its F x F block (``cv2.INTER_AREA``); the image
    itself when F is 1. The same rule as a JPEG's reduced decode (:func:`read_image` with ``min_size``), which
    averages the same blocks in the DCT, so a file and its decoded array come out alike."""
    h, w = image.shape[:2]
    f = 1
    while h // (2 * f) >= height and w // (2 * f) >= width:
        f *= 2
    if f == 1:
        return image
    hh, ww = h // f, w // f  # whole blocks only (fewer than f edge pixels dropped), as the reduced decode keeps
    return cv2.resize(image[: hh * f, : ww * f], (ww, hh), interpolation=cv2.INTER_AREA)


def resize_to(
    image: np.ndarray,
    height: int,
    width: int,
    rule: str = "short_side_center_crop",
    interpolation: str = "linear",
    antialias: bool = False,
) -> np.ndarray:
    """Resize a BGR image to ``height x width`` by a manifest resize rule (the region :func:`crop_box` names); with
    ``antialias`` (the manifest's ``input.antialias``), :func:`shrink_by_halves` first."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if antialias:
        image = shrink_by_halves(image, height, width)
        h, w = image.shape[:2]
    interp = _INTERP[interpolation]
    if rule == "stretch":
        return cv2.resize(image, (width, height), interpolation=interp)
    if rule == "letterbox":  # fit inside, centred, black (0) around; nvinfer's symmetric padding
        nh, nw, top, left = _letterbox(h, w, height, width)
        out = np.zeros((height, width, *image.shape[2:]), image.dtype)
        fitted = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=interp)
        out[top : top + nh, left : left + nw] = fitted
        return out
    if rule != "short_side_center_crop":
        raise InputError(f"resize rule {rule!r} is unknown; valid: {', '.join(RULES)}")
    # Scale the whole image to cover height x width, then cut the centre: the box crop_box() describes.
    scale = _cover_scale(h, w, height, width)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return image[top : top + height, left : left + width]


def resize_for(image: np.ndarray, spec: Any) -> np.ndarray:
    """:func:`resize_to` by a manifest's input spec (:class:`~lcr_sdk.manifest.InputSpec`: its size, resize rule,
    interpolation and ``antialias``): the host preprocessing every reader of a model shares."""
    return resize_to(image, spec.height, spec.width, spec.resize, spec.interpolation, spec.antialias)


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and its sub-folders with ``recursive``), sorted by path.

    The one rule for "which files are images" (by suffix, :data:`IMAGE_SUFFIXES`, any case); hidden files and
    folders (a leading ``.``, such as staging folders or editor backups) are left out.
    """
    folder = Path(folder)
    found = _walk(folder) if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _walk(folder: Path) -> Iterator[Path]:
    """Every file below ``folder``, following links to folders as torchvision's ImageFolder does (``rglob`` does not
    before Python 3.13), each real folder once (a link back up cannot loop); hidden folders are not entered."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (Path(root) / f for f in files)


def skip_list(skipped: Sequence[tuple[Any, str]], most: int = 5) -> str:
    """The first ``most`` files left out, each with why (each reason names its file; after the first, only the
    reason's first clause, without the advice it would repeat), and how many more: for one line of a report."""
    more = f"; and {len(skipped) - most} more" if len(skipped) > most else ""
    shown = [reason if i == 0 else _first_clause(str(path), reason) for i, (path, reason) in enumerate(skipped[:most])]
    return "; ".join(shown) + more


def _first_clause(path: str, reason: str) -> str:
    """``reason`` up to its first "; " after the file's name (a name may hold a semicolon itself)."""
    at = reason.find(path)  # the reason may name the file by a longer path than the caller's (relative) one
    start = at + len(path) if at >= 0 else 0
    cut = reason.find("; ", start)
    return reason if cut < 0 else reason[:cut]


def labelled_images(folder: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """Images of a labelled folder: ``folder/<label>/**`` (label = sub-folder name; its own sub-folders too, as an
    ImageFolder reads them) and ``folder/*`` (label ``""``).

    The layout galleries are built from (the ImageFolder layout of a data set split).

    Raises:
        DataError: ``folder`` is not a folder or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass a folder with one sub-folder of images per label")
    paths = list_images(folder)
    labels = [""] * len(paths)
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        found = list_images(sub, recursive=True)
        paths += found
        labels += [sub.name] * len(found)
    if not paths:
        raise DataError(f"no images in {folder} or its sub-folders; valid files end with {', '.join(IMAGE_SUFFIXES)}")
    return paths, labels


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map over a BGR uint8 image as a JET heatmap (red = high); a map of another size is resized."""
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, colored, alpha, 0)

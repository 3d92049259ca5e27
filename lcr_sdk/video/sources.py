"""Frame sources: cameras (USB/V4L2, Jetson CSI), network streams, video files, images, folders and globs.

Live sources are read on a background thread that keeps only the newest frame and reconnects with backoff; files
are read on demand and end the iteration. See :func:`open_source` for the URI forms.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.images import IMAGE_SUFFIXES, MIN_SIDE, list_images, read_image
from lcr_sdk.redact import redact
from lcr_sdk.video.draw import draw_text, fit_frame

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".h264", ".h265")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
SOURCE_FORMS = (
    "0 | /dev/video0 (USB camera), csi://0 (Jetson CSI camera), rtsp://host/path, clip.mp4, image.jpg, "
    "a folder of images, 'glob/*.png'"
)
# Frames are bounded so that a demo's worst case fits its memory budget (docs/RELIABILITY.md, 1 GB above the
# model): a frame of at most 8K UHD's 33 MP is 100 MB of BGR pixels, and the attention demo on 8K video peaks 0.8 GB
# above its loaded model. Each side of a requested size is MIN_FRAME_SIDE..MAX_FRAME_SIDE: the least is the
# smallest image the model embeds (lcr_sdk.images.MIN_SIDE), so a size the options accept is one the demos can run.
MIN_FRAME_SIDE = MIN_SIDE
MAX_FRAME_SIDE = 8192
MAX_FRAME_PIXELS = 7680 * 4320
MAX_FPS = 1000.0
MIN_FPS = 0.01  # one frame every 100 s: the slowest rate a demo or a source is asked for


@dataclass
class Frame:
    """One captured frame.

    Attributes:
        image: BGR uint8 H x W x 3.
        index: increases by one per captured frame of this source, from 0 (frames dropped by the newest-frame
            reader leave gaps); a placeholder repeats the last index, so it never goes backwards.
        timestamp: ``time.monotonic()`` at capture.
        ok: False for a placeholder yielded while a live source is down; its image shows the status.
    """

    image: np.ndarray
    index: int
    timestamp: float
    ok: bool = True


class Reader(Protocol):
    """What a source reads from: ``read()`` returns a BGR image or None (end of file, or a dropped stream)."""

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


Opener = Callable[[], Reader]


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: int | None = None


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log (``[ WARN:0 ...]`` lines on stderr) within this block, and restore its level after.

    Opening a camera that is not there, or writing to a full disk, makes OpenCV print warnings before the SDK's one
    error line says what happened and how to fix it. Blocks may nest and overlap across threads: the level is
    saved by the first to enter and restored by the last to leave. An OpenCV without ``cv2.utils.logging`` is left
    as it is.
    """
    global _quiet_depth, _quiet_saved
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None or not hasattr(log, "setLogLevel"):
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = log.getLogLevel()
            log.setLogLevel(log.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                log.setLogLevel(_quiet_saved)
                _quiet_saved = None


class CaptureReader:
    """A :class:`Reader` over ``cv2.VideoCapture``."""

    def __init__(self, cap: cv2.VideoCapture):
        self.cap = cap
        self.fps = cap.get(cv2.CAP_PROP_FPS) or None  # nominal rate the file or device reports

    def read(self) -> np.ndarray | None:
        ok, image = self.cap.read()
        return image if ok else None

    def close(self) -> None:
        self.cap.release()


class ImageListReader:
    """A :class:`Reader` over image files, in order."""

    def __init__(self, paths: list[Path]):
        self.paths, self.pos = paths, 0

    def read(self) -> np.ndarray | None:
        if self.pos >= len(self.paths):
            return None
        self.pos += 1
        return read_image(self.paths[self.pos - 1], limit=MAX_FRAME_PIXELS)

    def close(self) -> None:
        self.pos = len(self.paths)


class Source:
    """Frames from somewhere; iterate it, or call :meth:`read`. Close it (or use ``with``) when done."""

    live = False

    def __init__(self, uri: str):
        self.uri = redact(uri)  # for messages and the screen: never the password of a stream URL
        self.fps: float | None = None  # nominal frame rate (file header, camera setting), if known
        self._ended = False

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None at the end of the stream (a live source: also when ``timeout`` passed)."""
        raise NotImplementedError

    @property
    def ended(self) -> bool:
        """True once the stream is over (end of a file; a live source that was closed or gave up)."""
        return self._ended

    @property
    def status(self) -> str:
        """One line for the screen: what the source is doing."""
        return "ended" if self._ended else "ok"

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def close(self) -> None:
        self._ended = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, status={self.status!r})"


class FileSource(Source):
    """A video file or a list of images, read on demand (no frame is skipped); the end stops the iteration.

    Args:
        opener: returns a fresh :class:`Reader` positioned at the start (called again to loop).
        uri: for messages.
        size: (width, height) to resize frames to, or None.
        fps: pace reading to this rate (real-time playback); None reads as fast as the consumer asks.
        loop: start again at the end instead of ending.
    """

    def __init__(
        self,
        opener: Opener,
        uri: str,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        loop: bool = False,
    ):
        super().__init__(uri)
        self._opener, self._size, self._loop = opener, size, loop
        self._period = 1.0 / fps if fps else 0.0
        self._reader: Reader | None = opener()
        self.fps = fps or getattr(self._reader, "fps", None)
        self._index = 0
        self._due = time.monotonic()

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._ended or self._reader is None:
            return None
        image = self._reader.read()
        if image is None and self._loop and self._index > 0:
            self._reader.close()
            self._reader = self._opener()
            image = self._reader.read()
        if image is None:
            self.close()
            return None
        if self._period:
            self._due += self._period
            time.sleep(max(0.0, self._due - time.monotonic()))
        frame = Frame(fit_frame(image, self._size), self._index, time.monotonic())
        self._index += 1
        return frame

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class LiveSource(Source):
    """A camera or stream read on a background thread that keeps only the newest frame.

    :meth:`read` returns a frame newer than the last one it returned (never an older one or the same one); a
    consumer slower than the camera skips frames instead of falling behind. When a read fails or raises, the
    reader is closed and reopened with exponential backoff (``backoff[0]`` doubling up to ``backoff[1]`` seconds),
    forever or up to ``max_retries`` attempts in a row, after which the source ends.

    Args:
        opener: returns a fresh :class:`Reader`; may raise. Called once here (errors propagate, so a wrong camera
            index fails at once) and again for each reconnection.
        uri: for messages.
        size: (width, height) of placeholder frames before the first real frame.
        backoff: first and largest wait between reconnection attempts, seconds.
        max_retries: reconnection attempts in a row before giving up; None retries forever.
        gap: while no new frame arrives for this long, iteration yields a placeholder (``ok=False``).
    """

    live = True

    def __init__(
        self,
        opener: Opener,
        uri: str,
        size: tuple[int, int] | None = None,
        backoff: tuple[float, float] = (0.5, 8.0),
        max_retries: int | None = None,
        gap: float = 0.5,
    ):
        super().__init__(uri)
        self._opener, self._backoff, self._max_retries, self.gap = opener, backoff, max_retries, gap
        self._size = size or (640, 480)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._returned = -1  # index of the last frame read() returned
        self._status, self._status_reason = "ok", "source lost"
        self.reconnects = 0  # successful reopenings, for status and tests
        reader = opener()
        self.fps = getattr(reader, "fps", None)
        self._thread = threading.Thread(target=self._run, args=(reader,), name=f"LiveSource({self.uri})", daemon=True)
        self._thread.start()

    def _run(self, reader: Reader | None) -> None:
        index, attempt = 0, 0
        while not self._stop.is_set():
            if reader is None:
                delay = min(self._backoff[0] * 2**attempt, self._backoff[1])  # 0.5, 1, 2, ... s by default
                if self._max_retries is not None and attempt >= self._max_retries:
                    self._set_status(f"gave up after {attempt} reconnection attempts")
                    break
                attempt += 1
                self._set_status(f"{self._status_reason}; reconnecting (attempt {attempt}) in {delay:.1f} s")
                if self._stop.wait(delay):
                    break
                try:
                    reader = self._opener()
                except Exception as e:  # any opener failure means "still down": retry with a longer wait
                    self._status_reason = f"reopen failed: {_short(e)}"
                    continue
                self.reconnects += 1
            try:
                image = reader.read()
                why = "no frame (stream dropped)"
            except Exception as e:  # a failing device/stream must not kill the thread; reopen instead
                image, why = None, f"read failed: {_short(e)}"
            if image is None:
                reader.close()
                reader, self._status_reason = None, why
                continue
            attempt = 0
            with self._cond:
                self._latest = Frame(image, index, time.monotonic())
                self._status = "ok"
                self._cond.notify_all()
            index += 1
        if reader is not None:
            reader.close()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _set_status(self, text: str) -> None:
        with self._cond:
            self._status = text

    @property
    def status(self) -> str:
        if self._ended and not self._stop.is_set():
            return f"ended: {self._status}"
        return "ended" if self._ended else self._status

    def read(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            fresh = self._cond.wait_for(
                lambda: self._ended or (self._latest is not None and self._latest.index > self._returned), timeout
            )
            if not fresh or self._latest is None or self._latest.index <= self._returned:
                return None  # timed out, or ended with nothing new
            self._returned = self._latest.index
            return self._latest

    def placeholder(self) -> Frame:
        """A frame that shows the status (the last image darkened, or grey), with the last index returned."""
        last = self._latest
        image = (last.image // 3) if last is not None else np.full((self._size[1], self._size[0], 3), 64, np.uint8)
        draw_text(image, [f"{self.uri}: {self.status}"], origin=(8, image.shape[0] // 2))
        return Frame(image, max(self._returned, 0), time.monotonic(), ok=False)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read(timeout=self.gap)
            if frame is not None:
                yield frame
            elif self.ended:
                return
            else:
                yield self.placeholder()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)  # a blocked stream read returns within its own timeout
        self._ended = True


def has_gstreamer() -> bool:
    """Whether this OpenCV was built with GStreamer (needed for ``csi://`` cameras)."""
    m = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(m and m.group(1).upper() == "YES")


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: float = 30) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) ending in a BGR appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
        f"framerate={round(fps)}/1, format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
        "video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def _capture_opener(
    target: int | str,
    api: int,
    what: str,
    hint: str,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
) -> Callable[[], CaptureReader]:
    """An opener for ``cv2.VideoCapture(target, api)``; raises :class:`InputError` if it does not open."""

    def opener() -> CaptureReader:
        with quiet_opencv():  # a failed open is the one error line below, not OpenCV's warnings before it
            cap = cv2.VideoCapture(target, api)
            if not cap.isOpened():
                cap.release()
                raise InputError(f"could not open {what}; {hint}")
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, width),
                (cv2.CAP_PROP_FRAME_HEIGHT, height),
                (cv2.CAP_PROP_FPS, fps),
            ):
                if value:
                    cap.set(prop, value)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver queue short; the thread keeps the newest anyway
        return CaptureReader(cap)

    return opener


def open_source(
    uri: str | int | os.PathLike[str],
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    loop: bool = False,
    opener: Opener | None = None,
    backoff: tuple[float, float] = (0.5, 8.0),
    max_retries: int | None = None,
) -> Source:
    """Open a frame source by URI (see the module docstring for the forms).

    Args:
        uri: camera index / device, ``csi://N``, stream URL, video file, image file, folder or glob.
        width, height: requested capture size of a camera; frames of a file or images are resized to it.
        fps: requested camera frame rate; for a file, plays it back at this rate instead of as fast as possible.
        loop: start a file or image list again at its end.
        opener: replaces how the source is opened (tests simulate failing devices with it).
        backoff: first and largest wait between reconnections of a live source, seconds.
        max_retries: reconnection attempts in a row before a live source gives up (None: forever).

    Raises:
        InputError: the URI names nothing that exists or can be opened; the message lists the valid forms.
    """
    uri = str(os.fspath(uri)) if not isinstance(uri, int) else str(uri)
    check_frame_options(width, height, fps)
    size = (width, height) if width and height else None
    if opener is not None:
        live = uri.isdigit() or uri.startswith(("/dev/video", "v4l2://", "csi://", *STREAM_SCHEMES))
        if live:
            return LiveSource(opener, uri, size, backoff, max_retries)
        return FileSource(opener, uri, size, fps, loop)
    if uri.isdigit() or uri.startswith(("/dev/video", "v4l2://")):
        return _open_camera(uri, width, height, fps, backoff, max_retries)
    if uri.startswith("csi://"):
        return _open_csi(uri, width, height, fps, backoff, max_retries)
    if uri.startswith(STREAM_SCHEMES):
        return _open_stream(uri, size, fps, loop, backoff, max_retries)
    return _open_local(uri, size, fps, loop)


def _open_camera(
    uri: str,
    width: int | None,
    height: int | None,
    fps: float | None,
    backoff: tuple[float, float],
    max_retries: int | None,
) -> Source:
    """A V4L2 camera: an index, ``/dev/videoN`` or ``v4l2://DEVICE``."""
    linux_v4l2 = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    target: int | str = int(uri) if uri.isdigit() else uri.removeprefix("v4l2://")
    hint = (
        "check that the camera is plugged in and not used by another program (`ls /dev/video*`, "
        "`v4l2-ctl --list-devices`), and that you may read it (the `video` group)"
    )
    size = (width, height) if width and height else None
    camera = _capture_opener(target, linux_v4l2, f"camera {uri}", hint, width, height, fps)
    return LiveSource(camera, uri, size, backoff, max_retries)


def _open_csi(
    uri: str,
    width: int | None,
    height: int | None,
    fps: float | None,
    backoff: tuple[float, float],
    max_retries: int | None,
) -> Source:
    """A Jetson CSI camera, ``csi://N``, through GStreamer."""
    if not has_gstreamer():
        raise InputError(
            f"{uri} needs OpenCV built with GStreamer, and this OpenCV {cv2.__version__} has none "
            "(cv2.getBuildInformation() says 'GStreamer: NO'; the pip wheel opencv-python never has it). On a "
            "Jetson use JetPack's OpenCV: `pip uninstall -y opencv-python opencv-python-headless` in a venv made "
            "with `python3 -m venv --system-site-packages`, so that `import cv2` finds the system OpenCV "
            "(`sudo apt install python3-opencv` or `nvidia-opencv`). Or use a USB camera (0 or /dev/video0)."
        )
    pipe = csi_pipeline(int(uri.removeprefix("csi://") or 0), width or 1280, height or 720, fps or 30)
    hint = (
        "check the ribbon cable and `nvgstcapture-1.0`; if another process holds the camera, "
        "`sudo systemctl restart nvargus-daemon`"
    )
    size = (width, height) if width and height else None
    csi = _capture_opener(pipe, cv2.CAP_GSTREAMER, f"CSI camera {uri}", hint)
    return LiveSource(csi, uri, size, backoff, max_retries)


def _open_stream(
    uri: str,
    size: tuple[int, int] | None,
    fps: float | None,
    loop: bool,
    backoff: tuple[float, float],
    max_retries: int | None,
) -> Source:
    """A network stream (:data:`STREAM_SCHEMES`); a video file served over HTTP plays as a file."""
    hint = (
        "check the URL, credentials (rtsp://user:pass@host/path) and that the stream plays in "
        "`ffplay URL`; for RTSP over TCP set OPENCV_FFMPEG_CAPTURE_OPTIONS='rtsp_transport;tcp'"
    )
    opener = _capture_opener(uri, cv2.CAP_FFMPEG, f"stream {redact(uri)}", hint)
    if uri.startswith(("http://", "https://")):
        first = opener()  # fails here, with the hint, if the URL does not open
        if first.cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0:  # a video file served over HTTP: play it once
            _check_frame_size(first.cap, redact(uri))
            readers: list[Reader] = [first]
            return FileSource(lambda: readers.pop() if readers else opener(), uri, size, fps, loop)
        first.close()  # a live HTTP stream (MJPEG and the like): reconnect when it drops
    return LiveSource(opener, uri, size, backoff, max_retries)


def _open_local(uri: str, size: tuple[int, int] | None, fps: float | None, loop: bool) -> Source:
    """A glob of images, a folder of images, an image file or a video file."""
    path = Path(uri)
    if any(c in uri for c in "*?[") and not path.exists():
        paths = sorted(Path(p) for p in glob.glob(uri) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"the pattern {uri!r} matches no image files ({', '.join(IMAGE_SUFFIXES)})")
        return FileSource(lambda: ImageListReader(paths), uri, size, fps, loop)
    if path.is_dir():
        paths = list_images(path)
        if not paths:
            raise InputError(
                f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); valid sources: {SOURCE_FORMS}"
            )
        return FileSource(lambda: ImageListReader(paths), uri, size, fps, loop)
    if not path.is_file():
        raise InputError(
            f"source {redact(uri)!r} is not a camera, stream, file or folder that exists; valid sources: {SOURCE_FORMS}"
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        read_image(path)  # fail now, with the image reader's message, if it is not an image
        return FileSource(lambda: ImageListReader([path]), uri, size, fps, loop)
    return FileSource(lambda: _open_video_file(path), uri, size, fps, loop)


def _open_video_file(path: Path) -> CaptureReader:
    with quiet_opencv():
        cap = cv2.VideoCapture(str(path), cv2.CAP_ANY)
    if not cap.isOpened():
        cap.release()
        raise InputError(
            f"{path} ({path.stat().st_size} bytes) could not be opened as a video; it may be "
            f"truncated or in a format this OpenCV cannot decode. Valid sources: {SOURCE_FORMS}"
        )
    _check_frame_size(cap, str(path))
    return CaptureReader(cap)


def bounded_arg(kind: type, low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse ``type`` for the demos: a number of ``kind`` in [low, high] (``what`` says what it counts);
    e.g. ``bounded_arg(int, MIN_FRAME_SIDE, MAX_FRAME_SIDE, "pixels")`` for ``--width``."""
    import argparse

    def parse(text: str) -> float:
        try:
            value: float = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g} {what}")
        return value

    return parse


def add_frame_options(parser: Any) -> None:
    """The demos' ``--width``, ``--height`` and ``--fps`` (a camera mode; for files, a resize and real-time
    playback) on an argparse ``parser``, bounded as :func:`check_frame_options` bounds them."""
    side = bounded_arg(int, MIN_FRAME_SIDE, MAX_FRAME_SIDE, "pixels")
    sides = f"{MIN_FRAME_SIDE}..{MAX_FRAME_SIDE}"
    parser.add_argument("--width", type=side, help=f"capture width (cameras) / resize width (files), {sides}")
    parser.add_argument("--height", type=side, help=f"capture height (cameras) / resize height (files), {sides}")
    parser.add_argument(
        "--fps",
        type=bounded_arg(float, MIN_FPS, MAX_FPS, "frames per second"),
        help="camera frame rate; for a file, play it back in real time",
    )


def check_frame_options(width: int | None, height: int | None, fps: float | None) -> None:
    """Refuse a requested frame size or rate outside the bounds (each side MIN_FRAME_SIDE..MAX_FRAME_SIDE, at most
    MAX_FRAME_PIXELS in all; fps MIN_FPS..MAX_FPS), before anything is opened.

    Raises:
        InputError: naming the option, the value and the valid range.
    """
    for name, value in (("width", width), ("height", height)):
        if value is not None and not MIN_FRAME_SIDE <= value <= MAX_FRAME_SIDE:
            raise InputError(
                f"--{name} {value} is not a frame size; give {MIN_FRAME_SIDE}..{MAX_FRAME_SIDE} pixels (the model "
                f"embeds no smaller image; or leave it out for the source's own size)"
            )
    if width and height and width * height > MAX_FRAME_PIXELS:
        raise InputError(
            f"--width {width} --height {height} is {width * height:,} pixels a frame, more than the "
            f"{MAX_FRAME_PIXELS:,} (8K UHD, 7680 x 4320) a demo handles within its memory budget; ask for less"
        )
    if fps is not None and not (MIN_FPS <= fps <= MAX_FPS):  # also refuses NaN
        raise InputError(f"--fps {fps} is not a frame rate; give a number from {MIN_FPS:g} to {MAX_FPS:g}")


def _check_frame_size(cap: cv2.VideoCapture, name: str) -> None:
    """Refuse a video whose frames are larger than MAX_FRAME_PIXELS (each is decoded at full size before any
    resizing, so the bound is on the file's own frame size)."""
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if w * h > MAX_FRAME_PIXELS:
        cap.release()
        raise InputError(
            f"{name} has frames of {w} x {h} pixels, more than the {MAX_FRAME_PIXELS:,} (8K UHD, 7680 x 4320) a "
            "demo handles within its memory budget; downscale the video (e.g. ffmpeg -vf scale=3840:-2)"
        )


def _short(e: BaseException) -> str:
    return redact(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")[:120]

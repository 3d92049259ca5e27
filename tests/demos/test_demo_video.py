"""Frame sources and sinks (lcr_sdk.video): files end cleanly, bad inputs fail clearly, live sources reconnect and
never go back in time. Real files are written with OpenCV; live devices (which CI lacks) are simulated with
injected readers, which is the only way to make a camera fail on cue."""

from __future__ import annotations

import threading
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

from lcr_sdk.errors import InputError
from lcr_sdk.images import IMAGE_SUFFIXES
from lcr_sdk.video import LiveSource, has_gstreamer, open_sink, open_source


def numbered(i: int, size=(64, 48)) -> np.ndarray:
    """A frame whose pixels encode ``i`` (survives no codec; used with injected readers only)."""
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[..., 0], img[..., 1] = i % 256, (i // 256) % 256
    return img


def number_of(img: np.ndarray) -> int:
    return int(img[0, 0, 0]) + 256 * int(img[0, 0, 1])


def write_clip(path: Path, n: int, size=(160, 120)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), 20 + 25 * i, np.uint8))
    w.release()
    return path


class Counter:
    """A fake camera: frame k shows number k; optionally raises after ``fail_after`` reads."""

    def __init__(self, start: int = 0, fail_after: int | None = None, delay: float = 0.0):
        self.k, self.fail_after, self.delay, self.reads, self.closed = start, fail_after, delay, 0, False

    def read(self):
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise OSError("simulated: camera unplugged")
        self.reads += 1
        if self.delay:
            time.sleep(self.delay)
        self.k += 1
        return numbered(self.k)

    def close(self):
        self.closed = True


def test_video_file_ends_cleanly_with_every_frame(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 7)
    with open_source(clip) as src:
        frames = list(src)
        assert src.ended and src.read() is None
    assert [f.index for f in frames] == list(range(7))
    assert all(f.ok and f.image.shape == (120, 160, 3) for f in frames)
    means = [f.image.mean() for f in frames]
    assert means == sorted(means) and means[-1] - means[0] > 100  # the frames in file order


def test_file_resize_and_loop(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 3)
    with open_source(clip, width=64, height=32, loop=True) as src:
        frames = list(islice(src, 8))
    assert [f.index for f in frames] == list(range(8))
    assert all(f.image.shape == (32, 64, 3) for f in frames)
    assert abs(frames[3].image.mean() - frames[0].image.mean()) < 3  # frame 3 is frame 0 again


def test_image_folder_and_glob(tmp_path, synth_root):
    folder = next((synth_root / "test").iterdir())
    with open_source(folder) as src:
        names = [f.image.sum() for f in src]
    assert len(names) == 4
    with open_source(str(synth_root / "test" / "*" / "*.png")) as src:
        assert len(list(src)) == 16
    with open_source(sorted(folder.iterdir())[0]) as src:
        assert len(list(src)) == 1


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda p: (p / "bad.mp4").write_bytes(b"not a video" * 50) and p / "bad.mp4",
            "could not be opened as a video",
        ),
        (lambda p: p / "missing.mp4", "not a camera, stream, file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no image files"),
        (lambda p: str(p / "*.jpg"), "matches no image files"),
        (lambda p: (p / "bad.png").write_bytes(b"xx") and p / "bad.png", "is not an image"),
    ],
)
def test_unreadable_sources_fail_with_a_clear_error(tmp_path, make, match):
    with pytest.raises(InputError, match=match):
        open_source(make(tmp_path))


def test_missing_camera_fails_at_open_with_no_opencv_warnings(capfd):
    level = cv2.utils.logging.getLogLevel()
    with pytest.raises(InputError, match="could not open camera 57"):
        open_source("57")
    assert "WARN" not in capfd.readouterr().err  # OpenCV's "[ WARN:0 ...] cap_v4l" lines would precede the error
    assert cv2.utils.logging.getLogLevel() == level  # restored after the open


def test_opencv_quiet_blocks_nest_and_restore_the_level():
    from lcr_sdk.video import quiet_opencv

    log = cv2.utils.logging
    level = log.getLogLevel()
    with quiet_opencv():
        with quiet_opencv():
            assert log.getLogLevel() == log.LOG_LEVEL_SILENT
        assert log.getLogLevel() == log.LOG_LEVEL_SILENT  # the outer block still holds it
    assert log.getLogLevel() == level


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer")
def test_csi_without_gstreamer_says_how_to_get_it():
    with pytest.raises(InputError, match="GStreamer") as e:
        open_source("csi://0")
    assert "JetPack" in str(e.value) and "opencv-python" in str(e.value)


def test_live_source_recovers_after_failing_mid_stream():
    attempts = []

    def opener():  # first connection dies after 5 frames; two reopen attempts fail; then a healthy stream
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return Counter(0, fail_after=5, delay=0.005)
        if len(attempts) in (2, 3):
            raise ConnectionError("simulated: host unreachable")
        return Counter(1000, delay=0.005)

    src = open_source("rtsp://camera.invalid/stream", opener=opener, backoff=(0.05, 0.2))
    src.gap = 0.03
    seen, placeholders, statuses = [], [], set()
    try:
        for frame in src:
            if frame.ok:
                seen.append((frame.index, number_of(frame.image)))
            else:
                placeholders.append(frame)
                statuses.add(src.status)
            if seen and seen[-1][1] > 1000 and len(seen) > 8:
                break
    finally:
        src.close()
    indices = [i for i, _ in seen]
    assert indices == sorted(set(indices))  # strictly increasing across the reconnection
    assert any(n <= 5 for _, n in seen) and any(n > 1000 for _, n in seen)  # frames from both connections
    assert src.reconnects == 1 and len(attempts) == 4
    # exponential backoff: the waits before the second and third reopening are 0.1 and 0.2 s (the first 0.05 s);
    # a wait can end late on a busy machine but never early, so only lower bounds are asserted
    gaps = np.diff(attempts[1:])
    assert gaps[0] >= 0.098 and gaps[1] >= 0.196, gaps
    assert placeholders and all(p.index <= indices[-1] for p in placeholders)
    assert any("reconnecting" in s and "simulated" in s for s in statuses), statuses
    assert src.ended and not src._thread.is_alive()


def test_live_source_gives_up_after_max_retries_and_iteration_stops():
    calls = []

    def opener():
        calls.append(1)
        if len(calls) == 1:
            return Counter(0, fail_after=2)
        raise ConnectionError("simulated: gone")

    src = open_source("0", opener=opener, backoff=(0.01, 0.02), max_retries=3)
    frames = [f for f in src if f.ok]
    assert len(frames) <= 2 and src.ended and "gave up after 3" in src.status
    assert len(calls) == 4


def test_newest_frame_reader_skips_ahead_and_never_goes_back():
    cam = Counter(0, delay=0.001)  # ~1000 frames/s camera
    src = LiveSource(lambda: cam, "fake://cam")
    got = []
    try:
        for _ in range(15):
            f = src.read(timeout=2.0)
            assert f is not None and number_of(f.image) == f.index + 1
            got.append((f.index, time.monotonic() - f.timestamp))
            time.sleep(0.02)  # a slow model: ~50 frames/s
    finally:
        src.close()
    idx = [i for i, _ in got]
    assert all(b > a for a, b in zip(idx, idx[1:], strict=False))
    assert max(np.diff(idx)) > 3  # frames were dropped, not queued
    assert idx[-1] >= cam.reads - 40  # the consumer sees current frames, not a backlog
    assert cam.closed


def test_concurrent_readers_never_see_an_older_frame():
    src = LiveSource(lambda: Counter(0, delay=0.0005), "fake://cam")
    bad = []

    def consume():
        last = -1
        for _ in range(200):
            f = src.read(timeout=1.0)
            if f is not None:
                if f.index < last:
                    bad.append((last, f.index))
                last = f.index

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    src.close()
    assert not bad


def test_video_sink_is_written_under_a_temporary_name_then_renamed(tmp_path):
    out = tmp_path / "out" / "result.mp4"
    sink = open_sink(out, fps=10)
    for i in range(6):
        sink.render(np.full((120, 160, 3), 30 * i, np.uint8))
    assert not out.exists() and sink.tmp.exists()  # mid-run only the hidden partial file exists
    sink.close()
    assert out.exists() and not sink.tmp.exists()
    with open_source(out) as src:
        assert len(list(src)) == 6


def test_video_sink_crash_leaves_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "result.mp4"
    with pytest.raises(RuntimeError), open_sink(out) as sink:
        sink.render(np.zeros((48, 64, 3), np.uint8))
        raise RuntimeError("model crashed")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_video_sink_that_cannot_finish_its_file_keeps_the_old_one(tmp_path, monkeypatch):
    """OpenCV's writer reports no failure, so a file it could not finish (its index lost at close to a disk quota or
    a disk that filled at that moment) must be caught by the sink before the rename. A disk with room cannot lose
    a file's end on cue: the fault is injected by cutting the file in half after OpenCV finished it."""
    real = cv2.VideoWriter

    class LosesItsEnd:
        fourcc = staticmethod(real.fourcc)

        def __init__(self, path, *args):
            self.path, self.writer = Path(path), real(path, *args)

        def isOpened(self):
            return self.writer.isOpened()

        def write(self, frame):
            self.writer.write(frame)

        def release(self):
            self.writer.release()
            data = self.path.read_bytes()
            self.path.write_bytes(data[: len(data) // 2])

    out = tmp_path / "out.mp4"
    with open_sink(out) as sink:
        for i in range(3):
            sink.render(np.full((120, 160, 3), 40 * i, np.uint8))
    before = out.read_bytes()
    monkeypatch.setattr(cv2, "VideoWriter", LosesItsEnd)
    sink = open_sink(out)
    for i in range(6):
        sink.render(np.full((120, 160, 3), 30 * i, np.uint8))
    with pytest.raises(OSError, match="does not play back") as e:
        sink.close()
    assert e.value.filename == str(out) and "\n" not in str(e.value)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with open_source(out) as src:
        assert len(list(src)) == 3  # the previous recording, still playable


def test_png_folder_and_image_sinks(tmp_path):
    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(3)]
    with open_sink(tmp_path / "frames") as sink:
        for f in frames:
            sink.render(f)
    files = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in files] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert np.array_equal(cv2.imread(str(files[2])), frames[2])
    with open_sink(tmp_path / "last.png") as sink:
        for f in frames:
            sink.render(f)
    assert np.array_equal(cv2.imread(str(tmp_path / "last.png")), frames[2])


def test_display_sink_without_display_errors_and_headless_never_opens_a_window(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(InputError, match="--headless"):
        open_sink("display://0")
    with open_sink("display://0", headless=True) as sink:
        assert sink.render(np.zeros((48, 64, 3), np.uint8)) == -1 and sink.count == 1


def test_bad_sink_suffix(tmp_path):
    with pytest.raises(InputError, match="valid outputs"):
        open_sink(tmp_path / "out.txt")


@pytest.mark.parametrize("name, instead", [("last.jfif", ".jpg"), ("last.pgm", ".ppm or .png")])
def test_image_names_a_colour_frame_cannot_be_written_as_are_refused_at_open(tmp_path, name, instead):
    # both are readable images (inputs), but no colour frame can be written under them: refused before any frame
    with pytest.raises(InputError, match=f"name it {instead}"):
        open_sink(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [s for s in IMAGE_SUFFIXES if s not in (".jfif", ".pgm")])
def test_every_image_sink_suffix_writes_the_frame(tmp_path, suffix):
    frame = np.full((16, 24, 3), (10, 120, 240), np.uint8)
    with open_sink(tmp_path / f"last{suffix}") as sink:
        sink.render(frame)
    back = cv2.imread(str(tmp_path / f"last{suffix}"))
    assert back is not None and back.shape == frame.shape


def test_window_mouse_drag_draws_a_query_box():
    # No display in CI, so the window itself cannot open; the mouse handler is exercised on a sink without one.
    from lcr_sdk.video import Sink, WindowSink

    sink = object.__new__(WindowSink)
    Sink.__init__(sink, "display://0")
    sink._drag = None
    sink.on_mouse(cv2.EVENT_LBUTTONDOWN, 300, 200)
    sink.on_mouse(cv2.EVENT_LBUTTONUP, 100, 50)  # dragged up-left: the box is normalised
    assert sink.box == (100, 50, 300, 200)
    sink.on_mouse(cv2.EVENT_LBUTTONDOWN, 10, 10)
    sink.on_mouse(cv2.EVENT_LBUTTONUP, 14, 12)  # a click, not a box: the old box stays
    assert sink.box == (100, 50, 300, 200)
    sink.on_mouse(cv2.EVENT_RBUTTONDOWN, 0, 0)
    assert sink.box is None

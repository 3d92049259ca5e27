"""`lcr-sdk embed / gallery / attention / bench / info` through typer's CliRunner against the real app."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from model_helpers import export_onnx
from typer.testing import CliRunner

from lcr_sdk.cli import app

pytestmark = pytest.mark.torch
runner = CliRunner()


@pytest.fixture(scope="module")
def model(lcr_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("onnx") / "lcr.onnx")


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "cmd", [["embed"], ["gallery", "build"], ["gallery", "search"], ["attention"], ["bench"], ["info"]]
)
def test_every_command_help_has_an_example(cmd):
    r = _run(*cmd, "--help")
    assert r.exit_code == 0 and "Example: lcr-sdk " + " ".join(cmd) in " ".join(r.output.split())


def test_embed_writes_npy_matching_the_library(model, synth_root, tmp_path):
    from lcr_sdk import Embedder

    imgs = sorted((synth_root / "test").glob("*/*.png"))[:3]
    out = tmp_path / "e.npy"
    r = _run("embed", model, *imgs, "--out", out)
    assert r.exit_code == 0, r.output
    with Embedder(model) as e:
        np.testing.assert_allclose(np.load(out), e.embed(imgs), atol=1e-6)
    r = _run("embed", model, imgs[0])
    assert r.exit_code == 0 and "D=512" in r.output

    # --on-bad skip: a folder's bad files are left out and named; the rows are the images kept, in order
    (tmp_path / "empty.png").write_bytes(b"")
    args = ["embed", model, imgs[0], tmp_path / "empty.png", tmp_path / "gone.png", imgs[2]]
    r = _run(*args, "--out", out)
    assert r.exit_code == 1 and "does not exist" in r.output and "--on-bad" not in r.output.split("gone.png")[0]
    r = _run(*args, "--out", out, "--on-bad", "skip")
    assert r.exit_code == 0 and "2 unreadable image(s) left out (--on-bad skip)" in r.output, r.output
    assert "empty.png is empty" in r.output and "gone.png does not exist" in r.output
    with Embedder(model) as e:
        np.testing.assert_allclose(np.load(out), e.embed([imgs[0], imgs[2]]), atol=1e-6)
    r = _run(*args, "--json", "--on-bad", "skip")
    doc = json.loads(r.output)
    assert [x["image"] for x in doc["embeddings"]] == [str(imgs[0]), str(imgs[2])]
    assert [x["image"] for x in doc["unreadable"]] == [str(tmp_path / "empty.png"), str(tmp_path / "gone.png")]


def test_gallery_build_and_search(model, synth_root, tmp_path):
    g = tmp_path / "g"
    r = _run("gallery", "build", model, synth_root / "train", "--out", g)
    assert r.exit_code == 0, r.output
    assert "24 images, 4 labels" in r.output
    query = sorted((synth_root / "train").glob("*/*.png"))[5]
    r = _run("gallery", "search", g, model, query, "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == 3 and hits[0]["id"] == f"{query.parent.name}/{query.name}"
    assert hits[0]["label"] == query.parent.name and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # the image's path is stored relative to the folder the gallery was built from, which the gallery records
    assert hits[0]["metadata"]["path"] == query.relative_to(synth_root / "train").as_posix()
    from lcr_sdk.gallery import Gallery

    assert Gallery.load(g).image_root == str((synth_root / "train").resolve())
    table = _run("gallery", "search", g, model, query)
    assert table.exit_code == 0 and table.output.count("\n") == 6 and "score" in table.output


def test_gallery_build_warns_of_unlabelled_images_and_search_marks_matches(model, synth_root, tmp_path):
    import shutil

    folder = tmp_path / "imgs"
    for i, p in enumerate(sorted((synth_root / "train").glob("*/*.png"))[:8]):
        target = folder / p.parent.name if i % 2 else folder  # half of them directly in the folder: no label
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target / f"{i}.png")
    r = _run("gallery", "build", model, folder, "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    labelled = {p.parent.name for p in folder.glob("*/*.png")}
    assert f"8 images, {len(labelled)} labels" in r.output
    assert f"warning: 4 image(s) directly in {folder} have no label" in r.stderr
    query = next(folder.glob("*/*.png"))
    r = _run("gallery", "search", tmp_path / "g", model, query, "-k", "8", "--threshold", "0.999")
    assert r.exit_code == 0 and r.output.splitlines()[0].split()[:3] == ["rank", "score", "match"], r.output
    rows = r.output.splitlines()[1:]  # the query itself scores 1.0, the only one at or above 0.999
    assert len(rows) == 8 and rows[0].split()[2] == "yes" and all(row.split()[2] == "no" for row in rows[1:])
    r = _run("gallery", "search", tmp_path / "g", model, query, "--label", "no-such-bird")
    assert r.exit_code == 0 and r.output.startswith("no items: the gallery has no label 'no-such-bird' (its labels: ")


def test_gallery_build_names_the_files_it_leaves_out(model, synth_root, tmp_path):
    """Files that are not of an image format are not embedded, and the build's summary says which (as `embed` does),
    with a count, a few names and every one in --json; hidden files are not counted."""
    import shutil

    folder = Path(shutil.copytree(synth_root / "test", tmp_path / "imgs"))
    label = sorted(p.name for p in folder.iterdir())[0]
    others = [f"{label}/anim{i}.gif" for i in range(6)] + ["notes.txt"]
    for name in [*others, f"{label}/.DS_Store"]:
        (folder / name).write_bytes(b"GIF89a")
    r = _run("gallery", "build", model, folder, "--out", tmp_path / "g")
    assert r.exit_code == 0 and "16 images" in r.output, r.output
    lines = [ln for ln in r.stderr.splitlines() if "left out" in ln]
    assert len(lines) == 1 and lines[0].startswith("7 file(s) left out, not of an image format the build reads ("), (
        r.stderr
    )
    assert f"{label}/anim0.gif, {label}/anim1.gif" in lines[0] and "and 2 more (--json lists all)" in lines[0]
    r = _run("gallery", "build", model, folder, "--out", tmp_path / "g2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["not_images"] == sorted(others), r.output


def test_gallery_search_warns_when_auto_has_no_threshold(model, synth_root, tmp_path):
    """A gallery of one label has no calibrated threshold: `--threshold auto` keeps every hit and says so on stderr
    in one line, as Gallery.search(threshold="auto") warns; with a threshold, or --threshold none, nothing is said."""
    import shutil

    one = sorted((synth_root / "test").iterdir())[0]
    shutil.copytree(one, tmp_path / "imgs" / one.name)
    assert _run("gallery", "build", model, tmp_path / "imgs", "--out", tmp_path / "g").exit_code == 0
    query = sorted(one.glob("*.png"))[1]
    for extra in ([], ["--json"]):
        r = _run("gallery", "search", tmp_path / "g", model, query, "-k", "2", *extra)
        assert r.exit_code == 0, r.output
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
        assert len(warned) == 1 and warned[0].startswith(
            "warning: --threshold auto: the gallery has no calibrated threshold (the gallery has fewer than two labels)"
        ), r.stderr
        assert "--threshold 0.7" in warned[0]
    assert json.loads(r.stdout)[0]["match"] is True  # every hit kept
    r = _run("gallery", "search", tmp_path / "g", model, query, "--threshold", "none")
    assert r.exit_code == 0 and "warning" not in r.stderr
    assert _run("gallery", "build", model, synth_root / "test", "--out", tmp_path / "g4").exit_code == 0
    r = _run("gallery", "search", tmp_path / "g4", model, query)
    assert r.exit_code == 0 and "--threshold auto" not in r.stderr, r.stderr


def test_gallery_search_refuses_other_model(model, moco_checkpoint, synth_root, tmp_path):
    g = tmp_path / "g"
    assert _run("gallery", "build", model, synth_root / "test", "--out", g).exit_code == 0
    other = export_onnx(moco_checkpoint, tmp_path / "moco.onnx")
    query = next((synth_root / "test").glob("*/*.png"))
    r = _run("gallery", "search", g, other, query)
    assert r.exit_code == 1 and "not comparable" in r.output and "Traceback" not in r.output
    assert _run("gallery", "search", g, other, query, "--force").exit_code == 0


def test_attention_writes_overlay(model, synth_root, tmp_path):
    img = next((synth_root / "test").glob("*/*.png"))
    out = tmp_path / "o.png"
    r = _run("attention", model, img, "--out", out)
    assert r.exit_code == 0, r.output
    over = cv2.imread(str(out))
    assert over.shape == cv2.imread(str(img)).shape and "peak at" in r.output
    assert f"wrote {out} (the attention mask)" in r.output
    r = _run("attention", model, img, "--out", tmp_path / "p.png", "--part", "2")
    assert r.exit_code == 0 and "(part map 2, its peak marked)" in r.output
    assert not np.array_equal(cv2.imread(str(tmp_path / "p.png")), over)  # another map drawn


def test_bench_and_info(model):
    r = _run("bench", model, "--batch", "1,2", "--iters", "2")
    assert r.exit_code == 0, r.output
    assert "CPUExecutionProvider" in r.output and "with host preprocessing" in r.output
    assert r.output.count("| 2 |") == 2
    r = _run("info", model, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["arch"] == "resnet18"
    r = _run("info", model)
    assert r.exit_code == 0 and "resnet18 lcr, fp32, embedding D=512, parts K=8" in r.output
    assert "input: images uint8 [N, 64, 64, 3] NHWC BGR" in r.output and "engine:" not in r.output


def test_info_checks_the_file_against_its_manifest(model, synth_root, tmp_path):
    """`info` is the check after a copy: a truncated model beside its copied sidecar is refused as `embed` refuses
    it (exit 1, one line), a whole copy passes."""
    import shutil

    data = model.read_bytes()
    for name, content in (("whole.onnx", data), ("cut.onnx", data[:1_000_000])):
        (tmp_path / name).write_bytes(content)
        shutil.copyfile(model.with_name(model.name + ".json"), tmp_path / f"{name}.json")
    assert _run("info", tmp_path / "whole.onnx").exit_code == 0
    image = next((synth_root / "test").glob("*/*.png"))
    for args in (["info"], ["info", "--json"], ["embed", image]):
        r = _run(args[0], tmp_path / "cut.onnx", *args[1:])
        assert r.exit_code == 1 and r.output.count("\n") == 1, (args, r.output)
        assert "cut.onnx (1000000 bytes) does not match the sha256 in its manifest" in r.output, r.output


def test_domain_errors_are_one_line(model, tmp_path):
    for args in (
        ["embed", tmp_path / "none.onnx", "x.jpg"],
        ["embed", model, tmp_path / "none.jpg"],
        ["gallery", "build", model, tmp_path / "nope", "--out", tmp_path / "g"],
        ["gallery", "search", tmp_path, model, "x.jpg"],
        ["bench", model, "--batch", "a,b"],
    ):
        r = _run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.startswith("Error: ") and r.output.count("\n") == 1 and "Traceback" not in r.output

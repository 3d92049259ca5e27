"""`lcr-sdk quickstart --fast`: the README's main job, end to end on a tiny budget, and its report."""

import csv
import json
import logging
import re
import sys

import cv2
import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app

pytestmark = [pytest.mark.torch]

ROWS = {"random init", "pretrained only", "moco", "lcr", "lcr uniform", "chance"}


@pytest.mark.slow
def test_fast_quickstart_runs_the_protocol_and_reports_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lcr_sdk")
    out = tmp_path / "qs"
    out.mkdir()  # an existing folder is fine
    r = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out)])
    assert r.exit_code == 0, r.output
    # stage 1 is the ImageNet Lite0 backbone (no source training), stage 2 trains on the target set from it
    assert not (out / "runs" / "pretrain").exists()
    # so only the target set is written: the benchmark's source set would be unused
    assert (out / "data" / "target" / "synth.json").is_file() and not (out / "data" / "source").exists()
    for name in ("pretrained", "moco", "lcr"):
        assert (out / f"{name}.pt").is_file()
    assert not (out / "supervised.pt").exists()  # the quickstart drops the supervised-on-target row
    for stage in ("moco", "lcr"):
        cfg = json.loads((out / "runs" / stage / "config.json").read_text())
        assert cfg["pretrained"] == str(out / "pretrained.pt") and cfg["arch"] == "efficientnet_lite0"

    rep = out / "report"
    saved = json.loads((rep / "metrics.json").read_text())
    rows = saved["rows"]
    assert set(rows) == ROWS
    assert all(0 <= rows[m]["mAP"] <= 1 for m in ROWS - {"chance"})
    from lcr_sdk.metrics import chance_retrieval

    test = sorted((out / "data" / "target" / "test").glob("*/*.png"))
    expected = chance_retrieval([p.parent.name for p in test])
    assert rows["chance"]["mAP"] == pytest.approx(expected["mAP"]) and rows["chance"]["knn_top1"] == 0.25
    assert rows["chance"]["mAP"] > 0.25  # a random ranking's mAP is above 1 / classes
    lcr, moco = 100 * rows["lcr"]["mAP"], 100 * rows["moco"]["mAP"]
    sentence = saved["verdict"]
    assert sentence.startswith("LCR beat" if lcr > moco else "LCR did not beat")
    assert f"{lcr - moco:+.1f} points" in sentence and "no reference seed spread" in sentence  # --fast: none

    page = (rep / "index.html").read_text()
    table = page[page.index("<table>") : page.index("</table>")]
    for title in ("random init", "ImageNet only", "MoCo v2", "LCR", "LCR backbone, uniform pooling", "chance"):
        assert f"<td>{title}</td>" in table
    assert page.index("</table>") < page.index(sentence.split(":")[0]) < page.index("<ul>")  # right under it
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(len(i) > 1000 for i in images)  # self-contained, real pictures
    # the kNN monitor ran at these settings, so its panel is drawn with data
    logged = list(csv.DictReader(open(out / "runs" / "lcr" / "log.csv")))
    assert logged and all(row["knn_top1"] for row in logged)
    assert "kNN monitor" in page

    # deployed through the runtime: the gallery is the target's train split, built from its folder
    from lcr_sdk import Gallery

    gallery = Gallery.load(out / "gallery")
    assert len(gallery) == 4 * 32
    assert gallery.image_root == str((out / "data" / "target" / "train").resolve())
    assert "deploy: exported lcr.onnx" in page
    assert "LCR" in caplog.text and sentence in caplog.text  # the table and verdict are logged
    assert "ImageNet only" in r.output and sentence in r.output  # and printed in the terminal


@pytest.mark.slow
def test_quickstart_without_the_export_extra_skips_deploy_and_says_how_to_get_it(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lcr_sdk")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as on an install without the extra
    out = tmp_path / "qs"
    r = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    page = (out / "report" / "index.html").read_text()
    assert "deploy: skipped" in page and "pip install &#x27;lcr-sdk[export]&#x27;" in page
    assert not (out / "lcr.onnx").exists() and not (out / "gallery").exists()
    assert (out / "lcr.pt").is_file() and "<table>" in page  # the training part still ran and reported
    assert "export step will be skipped" in caplog.text  # said up front, before the slow work


def test_quickstart_reuses_its_data_sets(tmp_path, caplog):
    from lcr_sdk.synth import generate_protocol
    from lcr_sdk.train.quickstart import FAST

    caplog.set_level(logging.INFO, logger="lcr_sdk")
    generate_protocol(tmp_path, FAST.data, progress=False)
    stamp = (tmp_path / "target" / "synth.json").stat().st_mtime_ns
    generate_protocol(tmp_path, FAST.data, progress=False)
    assert (tmp_path / "target" / "synth.json").stat().st_mtime_ns == stamp
    assert f"reusing the synthetic set in {tmp_path / 'target'}" in caplog.text


def _log(path, knn: bool):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss_nce", "loss_fit", "knn_top1"])
        for e in (1, 2, 3):
            w.writerow([e, 6.0 - e / 10, 0.1, 0.3 + e / 20 if knn else ""])


def test_curves_draw_no_empty_knn_panel(tmp_path):
    from lcr_sdk.train.report import curves_figure

    _log(tmp_path / "a.csv", knn=False)
    panels = curves_figure({"LCR": tmp_path / "a.csv"}, tmp_path / "a.png")
    assert panels == ["training loss"]
    _log(tmp_path / "b.csv", knn=True)
    panels = curves_figure({"LCR": tmp_path / "b.csv"}, tmp_path / "b.png", start={"knn_top1": 0.25})
    assert len(panels) == 2 and panels[1].startswith("kNN monitor")
    one, two = cv2.imread(str(tmp_path / "a.png")), cv2.imread(str(tmp_path / "b.png"))
    assert two.shape[1] > 1.8 * one.shape[1]  # a second panel only when it has data


def _entry(key, gap=(0.5, 0.8), sds=(1.1, 0.6)):
    return {
        "key": key,
        "seeds": [0, 1, 2],
        "lcr_minus_moco_map": {"mean": gap[0], "sd": gap[1], "per_seed": {}},
        "rows_map": {"lcr": {"mean": 30.0, "sd": sds[0]}, "moco": {"mean": 29.5, "sd": sds[1]}},
    }


def test_verdict_reads_the_gap_against_the_benchmark_spread():
    from lcr_sdk.train.quickstart import verdict

    rows = {"lcr": {"mAP": 0.452}, "moco": {"mAP": 0.431}}
    ref = _entry({})
    s = verdict(rows, ref)
    assert s.startswith("LCR beat MoCo v2 here") and "+2.1 points" in s and "larger than the seed spread" in s
    assert "1.1 points over 3 seeds" in s and "averaged +0.5 points" in s
    s = verdict({"lcr": {"mAP": 0.43}, "moco": {"mAP": 0.435}}, ref)
    assert s.startswith("LCR did not beat") and "-0.5 points" in s and "within the seed spread" in s
    assert "no reference seed spread" in verdict(rows, None)
    # what the other rows say: the backbone both started from, and where LCR's mask put its weight
    rows = {
        "lcr": {"mAP": 0.171, "attention_on_object": 0.508},
        "moco": {"mAP": 0.168},
        "pretrained only": {"mAP": 0.172},
        "lcr uniform": {"mAP": 0.168, "attention_on_object": 0.395},
    }
    s = verdict(rows, ref)
    assert "Neither beat the ImageNet backbone they started from (mAP 17.2%)" in s
    assert "50.8% of its weight on the object against 39.5% for uniform pooling (more than uniform)" in s
    assert "smoke run" not in s and "smoke run" in verdict(rows, ref, smoke=True)
    rows["pretrained only"]["mAP"] = 0.15
    assert "Neither beat" not in verdict(rows, ref)


def test_reference_is_the_results_file_entry_of_the_runs_protocol(tmp_path):
    """The verdict's figures come from the results file the benchmark writes, picked by the run's protocol (backbone,
    start weights, budget); another protocol's entry, or none, gives no reference."""
    from dataclasses import replace

    from lcr_sdk.train.quickstart import DEFAULT, FAST, load_reference, quickstart_key

    path = tmp_path / "reference_results.json"
    assert load_reference(quickstart_key(DEFAULT), path) is None  # no file
    other = {**quickstart_key(DEFAULT), "arch": "resnet18", "start": "synthetic source, supervised"}
    entries = [_entry(other, gap=(9.0, 1.0)), _entry(quickstart_key(DEFAULT))]
    path.write_text(json.dumps({"entries": entries}))
    assert load_reference(quickstart_key(DEFAULT), path) == entries[1]
    assert load_reference(quickstart_key(FAST), path) is None
    assert load_reference(quickstart_key(replace(DEFAULT, epochs=8)), path) is None  # another budget
    # the key names the LCR options: the entry stops matching if a default changes
    assert quickstart_key(DEFAULT)["lcr"]["fit_grad"] == "gfb"


def test_the_shipped_reference_file_is_read_and_a_missing_entry_is_said_plainly():
    from lcr_sdk.train.quickstart import DEFAULT, REFERENCE_FILE, load_reference, quickstart_key, verdict

    doc = json.loads(REFERENCE_FILE.read_text())  # shipped beside the module (package data)
    assert isinstance(doc["entries"], list)
    for entry in doc["entries"]:
        assert {"key", "seeds", "lcr_minus_moco_map", "rows_map"} <= set(entry)
    entry = load_reference(quickstart_key(DEFAULT))
    sentence = verdict({"lcr": {"mAP": 0.30}, "moco": {"mAP": 0.29}}, entry)
    if entry is None:
        assert "have no entry for this budget" in sentence
    else:
        assert f"over {len(entry['seeds'])} seeds" in sentence

"""`lcr-sdk quickstart --fast`: the README's main job, end to end on a tiny budget."""

import json
import re

import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_fast_quickstart_writes_data_checkpoints_model_gallery_and_report(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()  # an existing folder is fine
    r = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "data" / "train").is_dir() and (out / "data" / "test").is_dir()
    for method in ("lcr", "moco", "supervised"):
        assert (out / f"{method}.pt").is_file()
    assert (out / "lcr.onnx").is_file() and (out / "lcr.onnx.json").is_file()
    from lcr_sdk import Gallery

    assert len(Gallery.load(out / "gallery")) == 4 * 32

    rep = out / "report"
    metrics = json.loads((rep / "metrics.json").read_text())
    assert set(metrics) == {"lcr", "moco", "supervised", "chance"}
    assert all(0 <= metrics[m]["rank1"] <= 1 for m in ("lcr", "moco", "supervised"))
    assert metrics["chance"]["rank1"] == 0.25
    page = (rep / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(len(i) > 1000 for i in images)  # self-contained, real pictures
    assert "<table>" in page and "lcr" in page and "deploy: exported lcr.onnx" in page
    assert "rank1" in r.output  # the metrics table is printed

    # a second run reuses the data set instead of writing it again
    r2 = CliRunner().invoke(app, ["quickstart", "--fast", "--out", str(out), "--epochs", "1"])
    assert r2.exit_code == 0, r2.output
    assert "data: reusing" in r2.output

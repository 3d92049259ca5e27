"""ImageFolder data sets: clear errors for a missing split, an empty class, unreadable images."""

import shutil

import pytest

from lcr_sdk.errors import DataError

pytestmark = pytest.mark.torch


@pytest.fixture()
def data_copy(synth_root, tmp_path):
    return shutil.copytree(synth_root, tmp_path / "data")


def test_scan_reads_every_class(synth_root):
    from lcr_sdk.train.data import scan_split

    s = scan_split(synth_root, "train", size=64)
    assert len(s.classes) == 4 and len(s) == 24 and len(s.images) == 24
    assert sorted(set(s.labels)) == [0, 1, 2, 3]


def test_missing_split_names_the_layout(data_copy):
    from lcr_sdk.train.data import scan_split

    shutil.rmtree(data_copy / "test")
    with pytest.raises(DataError, match=r"no 'test' folder \(found: \['train'\]\).*ROOT/train/<class>"):
        scan_split(data_copy, "test")


def test_empty_class_is_an_error(data_copy):
    from lcr_sdk.train.data import scan_split

    (data_copy / "train" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class has no images"):
        scan_split(data_copy, "train")


def test_unreadable_image_is_skipped_and_reported_or_fails(data_copy):
    from lcr_sdk.train.data import scan_split

    cls = sorted((data_copy / "train").iterdir())[0]
    bad = cls / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="1 unreadable image"):
        s = scan_split(data_copy, "train", on_bad="skip")
    assert len(s) == 24 and s.skipped[0][0] == bad
    with pytest.raises(DataError, match="broken.png"):
        scan_split(data_copy, "train", on_bad="fail")

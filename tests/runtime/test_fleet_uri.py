"""Fleet gallery addresses and the optional extra: what runs without a server (and without the fleet extra)."""

from __future__ import annotations

import sys

import pytest

from lcr_sdk.errors import InputError, MissingDependencyError
from lcr_sdk.gallery.fleet import connect, split_uri
from lcr_sdk.redact import redact


def test_without_the_fleet_extra_one_error_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'lcr-sdk\[fleet\]'"):
        connect("http://127.0.0.1:19530", dim=8)


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("http://robot:s3cret@milvus.site:19530", "http://robot:***@milvus.site:19530"),
        ("milvus://s3cret@milvus.site:19530", "milvus://***@milvus.site:19530"),
        ("https://milvus.site:443/?token=s3cret&db_name=x", "https://milvus.site:443/?token=***&db_name=x"),
        ("milvus://milvus.site:19530", "milvus://milvus.site:19530"),
        ("site/gallery.db", "site/gallery.db"),
    ],
)
def test_credentials_are_redacted(uri, shown):
    assert redact(uri) == shown


def test_uris_become_an_address_and_a_token():
    assert split_uri("milvus://robot:s3cret@milvus.site:19530") == ("http://milvus.site:19530", "robot:s3cret")
    assert split_uri("milvuss://milvus.site:443?token=abc") == ("https://milvus.site:443", "abc")
    assert split_uri("http://10.0.0.5:19530") == ("http://10.0.0.5:19530", "")
    address, token = split_uri("gallery.db")
    assert address.endswith("/gallery.db") and token == ""
    assert split_uri("gallery.db/")[0] == address  # the slash shell completion adds to a folder
    with pytest.raises(InputError, match="ending in .db") as e:
        split_uri("ftp://robot:s3cret@milvus.site")
    assert "s3cret" not in str(e.value)


def test_a_plain_file_named_db_is_refused_before_anything_is_opened(tmp_path):
    pytest.importorskip("pymilvus")
    from lcr_sdk.gallery.fleet import connect

    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(InputError, match="it is a file, and a milvus-lite database is a folder"):
        connect(str(tmp_path / "notes.db"), "lcr_gallery", dim=8)

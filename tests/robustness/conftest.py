"""Fixtures the bad-input tests share."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture
def readonly(tmp_path):
    """A folder nobody may write: a read-only tmpfs (as root, who ignores permissions), else a chmod-ed folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)]).returncode != 0:
            pytest.skip("a read-only folder for root needs a tmpfs mount, which this kernel refuses")
        yield folder
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # lazy: never leave a mount behind
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)

"""Fixtures shared by the IHE transaction tests: an empty archive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ihe.dicom.archive import Archive
from tests.ihe.dicom.dicom_support import open_archive


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """An empty archive under the test's temporary directory."""
    archive, db = open_archive(tmp_path)
    yield archive
    db.dispose()

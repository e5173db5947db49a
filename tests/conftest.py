from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Real processes on loopback, sharing a private file-discovery directory and namespace."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()

from __future__ import annotations

from pathlib import Path

import pytest

from tests.util import Volume, make_volume


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return make_volume(tmp_path / "dms")

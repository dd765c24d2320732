from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.reconcile import FULL_PROOF_ENV
from tests.support.util import Volume, make_volume

# Every apply in the suite (in-process and in the CLI processes it starts) also makes the whole
# convergence plan and fails when the byte proof disagrees with it: see reconciler/reconcile.py.
os.environ[FULL_PROOF_ENV] = "1"


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return make_volume(tmp_path / "dms")

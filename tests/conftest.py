from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import reconcile
from tests.support import fullproof
from tests.support.util import Volume, make_volume

# Every apply in the suite (in-process and in the CLI processes it starts) also makes the whole
# convergence plan and fails when the byte proof disagrees with it: see tests/support/fullproof.py.
os.environ[fullproof.FULL_PROOF_ENV] = "1"
fullproof.install(reconcile)


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return make_volume(tmp_path / "dms")

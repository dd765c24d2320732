"""Fixtures of the real-DMS group: one engine and one image build per session; containers are
removed by the fixture that started them, and the engine is stopped if this session started it.

`realdms_timings` collects build and start-up times; they are printed at the end of the session
(`pytest -s` or the terminal summary) and written to $DMS_IMAGE_WORK/results/timings.txt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realdms import harness
from tests.realdms.harness import DmsVolume, RealDms, RealEngine

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def realdms_timings() -> dict[str, float]:
    return TIMINGS


@pytest.fixture(scope="session")
def real_engine() -> Iterator[RealEngine]:
    engine = RealEngine().start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def real_client(real_engine: RealEngine) -> Iterator[Any]:
    client = real_engine.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def dms_image(real_engine: RealEngine) -> str:
    """`dms-local:15.1.0`, built by ../shared/dms-image/build.sh (cached in $DMS_IMAGE_WORK)."""
    TIMINGS["dms image build (build.sh)"] = harness.build_dms_image(real_engine)
    return harness.DMS_IMAGE


@pytest.fixture(scope="session")
def sidecar_image(real_engine: RealEngine, real_client: Any, dms_image: str) -> str:
    """`dms-reconciler:local` from this repository's Dockerfile on a locally made Python base."""
    TIMINGS["python base image"] = harness.build_python_base(real_engine)
    TIMINGS["sidecar image build (Dockerfile)"] = harness.build_sidecar_image(real_client)
    return harness.SIDECAR_IMAGE


@pytest.fixture(scope="module")
def start_real_dms(real_client: Any, dms_image: str) -> Iterator[Callable[..., RealDms]]:
    """`start_real_dms(volume, name=..., env={...})` starts DMS and waits until it is up; every
    container started through it is removed when the module is done."""
    started: list[RealDms] = []

    def start(volume: DmsVolume, *, name: str, env: dict[str, str] | None = None,
              **options: Any) -> RealDms:
        dms = harness.start_dms(real_client, volume, name=name, env=env, **options)
        started.append(dms)
        if dms.started:
            TIMINGS.setdefault("dms start-up (docker run -> 'is up and running')", dms.started)
        return dms

    yield start
    for dms in started:
        dms.remove()


@pytest.fixture(scope="module")
def realdms_root() -> Iterator[Path]:
    """A folder for the module's volumes (removed afterwards, after the containers)."""
    import shutil

    root = harness.temp_root("realdms-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    lines = [f"{what}: {seconds:.1f} s" for what, seconds in TIMINGS.items()]
    terminalreporter.write_sep("-", "real DMS timings")
    for line in lines:
        terminalreporter.write_line(line)
    try:
        results = harness.WORK / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "timings.txt").write_text(
            time.strftime("%Y-%m-%d %H:%M:%S\n") + "\n".join(lines) + "\n")
    except OSError:
        pass

"""Fixtures of the real-DMS group: one engine and one build of each DMS image per session;
containers are removed by the fixture that started them, and the engine is stopped if this session
started it.

Every scenario runs against each image in `harness.IMAGES` (v15.1.0 and v16): `dms_image` is
parametrized with their ids, so `-k v16` runs one half. pytest runs one image's tests together
(the module fixtures are rebuilt for the next image, each on fresh folders).

`realdms_timings` collects build and start-up times and how long each half took (setup, call and
teardown of its tests); they are printed at the end of the session (`pytest -s` or the terminal
summary) and written to $DMS_IMAGE_WORK/results/timings.txt.
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
def dms_images(real_engine: RealEngine) -> dict[str, harness.DmsImage]:
    """Both DMS images, built by ../shared/dms-image/build.sh and `build.sh 16-edge` (cached in
    $DMS_IMAGE_WORK; the Python base image reuses build.sh's debootstrap, so both come first)."""
    for image in harness.IMAGES.values():
        TIMINGS[f"dms image build (build.sh {image.build_arg})"] = harness.build_dms_image(
            real_engine, image.build_arg)
    return harness.IMAGES


@pytest.fixture(scope="session", params=list(harness.IMAGES))
def dms_image(request: pytest.FixtureRequest,
              dms_images: dict[str, harness.DmsImage]) -> harness.DmsImage:
    """The DMS version this run of a scenario uses (test ids `v15.1.0`, `v16`)."""
    return dms_images[request.param]


@pytest.fixture(scope="session")
def sidecar_image(real_engine: RealEngine, real_client: Any,
                  dms_images: dict[str, harness.DmsImage]) -> str:
    """`dms-reconciler:local` from this repository's Dockerfile on a locally made Python base."""
    TIMINGS["python base image"] = harness.build_python_base(real_engine)
    TIMINGS["sidecar image build (Dockerfile)"] = harness.build_sidecar_image(real_client)
    return harness.SIDECAR_IMAGE


@pytest.fixture(scope="module")
def start_real_dms(real_client: Any,
                   dms_image: harness.DmsImage) -> Iterator[Callable[..., RealDms]]:
    """`start_real_dms(volume, name=..., env={...})` starts DMS and waits until it is up; every
    container started through it is removed when the module is done."""
    started: list[RealDms] = []

    def start(volume: DmsVolume, *, name: str, env: dict[str, str] | None = None,
              **options: Any) -> RealDms:
        dms = harness.start_dms(real_client, volume, name=name, env=env, image=dms_image.image,
                                **options)
        started.append(dms)
        if dms.started:
            TIMINGS.setdefault(f"dms {dms_image.id} start-up (docker run -> 'is up and running')",
                               dms.started)
        return dms

    yield start
    for dms in started:
        dms.remove()


@pytest.fixture(scope="module")
def realdms_root(dms_image: harness.DmsImage) -> Iterator[Path]:
    """A folder for the module's volumes, one per image (removed afterwards, after the
    containers)."""
    import shutil

    root = harness.temp_root(f"realdms-{dms_image.id}-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase of a real-DMS test to its image's half (`[v15.1.0]`, `[v16]` in its id)."""
    for image in harness.IMAGES:
        if f"[{image}]" in report.nodeid or f"[{image}-" in report.nodeid \
                or f"-{image}]" in report.nodeid:
            key = f"tests on {image} (setup + call + teardown, incl. its image's start-ups)"
            TIMINGS[key] = TIMINGS.get(key, 0.0) + report.duration


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

"""The real-DMS harness carries a 10,000-account server: start-up may take ~400 s there, and
waiting for it must not re-read the whole `docker logs` at every look. (No engine needed: the
container here is a stand-in that records how its log is read.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.realdms import harness


def test_start_timeout_grows_with_the_accounts(tmp_path: Path) -> None:
    volume = harness.DmsVolume(tmp_path, state=False)
    assert harness.start_timeout(volume) == 180.0
    (volume.config / "postfix-accounts.cf").write_text("a@d.test|{SHA512-CRYPT}x\n" * 10_000)
    assert harness.start_timeout(volume) >= 700  # DMS start-up measured 393-417 s there


class _Container:
    """Logs a few megabytes of start-up lines, then 'is up and running'."""

    status = "running"

    def __init__(self) -> None:
        self.whole_reads = 0
        self.streams = 0

    def reload(self) -> None:
        pass

    def logs(self, stream: bool = False, follow: bool = False) -> Any:
        if not stream:
            self.whole_reads += 1
            return b"x\n" * 1_000_000
        self.streams += 1
        return self._stream()

    def _stream(self) -> Iterator[bytes]:
        for _ in range(1000):
            yield b"Creating user 'someone' for domain 'example.test'\n"
        yield b"[ INF ] mail.example.test is up and ru"
        yield b"nning\n"


def test_wait_up_follows_the_log_instead_of_reading_it_again() -> None:
    container = _Container()
    harness.RealDms(container, harness.DmsVolume.__new__(harness.DmsVolume)).wait_up(timeout=30)
    assert container.streams == 1
    assert container.whole_reads == 0

"""The DMS confirmer alone: its state machine driven by an injected clock and a DMS double that
answers as the real `dms.Dms` does (the real container is in tests/sidecar/test_dms_watch.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler.watch import dms
from reconciler.watch.confirm import RECONFIRM_MAX_SECONDS, Confirmer
from reconciler.watch.fastapply import Result
from reconciler.watch.health import Metrics, Status

ACCOUNTS = "postfix-accounts.cf"
WRITTEN = {ACCOUNTS: "a" * 128, "cron": "c" * 128}  # cron is not DMS's to confirm


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeDms:
    """Answers from a script: `reachable` False makes every call fail as an absent engine does;
    `applied` is what DMS's checksum file records."""

    def __init__(self) -> None:
        self.reachable = True
        self.applied: dict[str, str] | None = None  # None: the checksum file does not exist yet
        self.reload_state = "ok"
        self.rspamd = True  # ENABLE_RSPAMD=1 in the container: DMS hashes rspamd/
        self.calls: list[str] = []

    def find(self) -> Any:
        self.calls.append("find")
        if not self.reachable:
            raise dms.DmsUnavailable("the Docker engine does not answer")
        return object()

    def check_applied(
        self, expected: Mapping[str, str], current: Callable[[str], str | None]
    ) -> dms.Report:
        self.calls.append("check")
        if not self.reachable:
            return dms.Report("unconfirmed", "could not confirm: the engine does not answer")
        if self.applied is None:
            return dms.Report("waiting", "no checksum file yet")
        if dms.is_applied(expected, self.applied, current):
            return dms.Report("confirmed", "DMS applied the change")
        return dms.Report("waiting", "DMS has not applied the change yet")

    def rspamd_on(self) -> bool:
        self.calls.append("rspamd_on")
        if not self.reachable:
            raise dms.DmsUnavailable("the Docker engine does not answer")
        return self.rspamd

    def reload_amavis(self, dms_will_reload: Mapping[str, str] | None = None) -> dms.Report:
        self.calls.append("reload")
        state = self.reload_state if self.reachable else "unconfirmed"
        return dms.Report(state, f"amavis: {state}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> FakeDms:
    return FakeDms()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def confirmer(tmp_path: Path, fake: FakeDms, clock: Clock, metrics: Metrics) -> Confirmer:
    return Confirmer(fake, config_dir=str(tmp_path), metrics=metrics, status=Status(),
                     log=logging.getLogger("test.confirm"), clock=clock, poll_seconds=1.0,
                     environ={"DMS_RECONCILER_CONFIRM_TIMEOUT": "30"})


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_write_is_awaited_then_confirmed_with_its_duration(
        confirmer: Confirmer, fake: FakeDms, clock: Clock, metrics: Metrics) -> None:
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    awaiting = confirmer.awaiting
    assert awaiting is not None and awaiting.expected == {ACCOUNTS: "a" * 128}
    assert awaiting.next_poll == clock.now + 1.0 and awaiting.deadline == clock.now + 30
    assert confirmer.status.dms == "waiting" and confirmer.reconfirm_at is None

    clock.now += 1.0
    confirmer.poll()  # DMS has not applied it yet: the next look comes a little later
    assert confirmer.awaiting is awaiting and awaiting.next_poll == pytest.approx(clock.now + 1.1)

    fake.applied = {ACCOUNTS: "a" * 128}
    clock.now += 1.5
    confirmer.poll()
    assert confirmer.awaiting is None
    assert confirmer.status.dms == "confirmed"
    assert sample(metrics, "dms_reconciler_dms_confirmed") == 1
    assert sample(metrics, "dms_reconciler_dms_confirm_duration_seconds") == 2.5


def test_a_write_dms_never_applies_times_out_and_writing_is_allowed_again(
        confirmer: Confirmer, clock: Clock, metrics: Metrics) -> None:
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    while confirmer.awaiting is not None:
        clock.now = confirmer.awaiting.next_poll
        confirmer.poll()
        assert clock.now < 1000 + 30 + 5  # polls grow to 5 s at most
    assert confirmer.status.dms == "timed_out"
    assert "changedetector.log" in confirmer.status.dms_message
    assert sample(metrics, "dms_reconciler_dms_confirmation",
                  dms_reconciler_dms_confirmation="timed_out") == 1


def test_one_failed_look_is_a_hiccup_three_in_a_row_are_unconfirmed(
        confirmer: Confirmer, fake: FakeDms, clock: Clock) -> None:
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    fake.reachable = False
    for _ in range(2):
        clock.now += 2
        confirmer.poll()
        assert confirmer.awaiting is not None
    fake.reachable = True  # a good answer resets the count
    clock.now += 2
    confirmer.poll()
    fake.reachable = False
    for _ in range(3):
        clock.now += 2
        confirmer.poll()
    assert confirmer.awaiting is None
    assert confirmer.status.dms == "unconfirmed"
    assert confirmer.unconfirmed == {ACCOUNTS: "a" * 128}
    assert confirmer.reconfirm_at == clock.now + 1.0


def test_dms_out_of_reach_is_asked_again_with_a_growing_delay_until_it_answers(
        confirmer: Confirmer, fake: FakeDms, clock: Clock) -> None:
    fake.reachable = False
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    assert confirmer.awaiting is None and confirmer.status.dms == "unconfirmed"
    delays = []
    for _ in range(6):
        assert confirmer.reconfirm_at is not None
        delays.append(confirmer.reconfirm_at - clock.now)
        clock.now = confirmer.reconfirm_at
        confirmer.reconfirm()
    assert delays == [1, 2, 4, 8, RECONFIRM_MAX_SECONDS, RECONFIRM_MAX_SECONDS]

    fake.reachable = True
    fake.applied = {ACCOUNTS: "a" * 128}
    assert confirmer.reconfirm_at is not None
    clock.now = confirmer.reconfirm_at
    confirmer.reconfirm()
    assert confirmer.status.dms == "confirmed"
    assert confirmer.unconfirmed == {} and confirmer.reconfirm_at is None


def test_a_write_while_dms_is_out_of_reach_is_not_asked_about_on_its_own(
        confirmer: Confirmer, fake: FakeDms, clock: Clock, tmp_path: Path) -> None:
    fake.reachable = False
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    fake.calls.clear()
    virtual = {"postfix-virtual.cf": "v" * 128}
    confirmer.after_write(virtual, virtual, accounts=3)
    assert fake.calls == []  # a hung engine must not hold the loop for each write
    assert confirmer.unconfirmed == {ACCOUNTS: "a" * 128, **virtual}  # asked about together

    fake.reachable = True  # DMS answers but has not applied it: awaited as after any write
    fake.applied = {}
    assert confirmer.reconfirm_at is not None
    clock.now = confirmer.reconfirm_at
    confirmer.reconfirm()
    assert confirmer.awaiting is not None
    assert confirmer.awaiting.expected == {ACCOUNTS: "a" * 128, **virtual}
    assert confirmer.reconfirm_at is None


def test_an_amavis_restart_that_could_not_be_done_stays_owed_and_is_counted_once(
        confirmer: Confirmer, fake: FakeDms, clock: Clock, metrics: Metrics) -> None:
    fake.reachable = False
    written = {"amavis.cf": "m" * 128}
    confirmer.after_write(written, written, accounts=3)
    assert confirmer.reload_owed and confirmer.reconfirm_at is not None
    for _ in range(3):  # retries while DMS is away are not counted
        assert confirmer.reconfirm_at is not None
        clock.now = confirmer.reconfirm_at
        confirmer.reconfirm()
    assert sample(metrics, "dms_reconciler_dms_reloads_total",
                  service="amavis", result="unconfirmed") == 1
    fake.reachable = True
    assert confirmer.reconfirm_at is not None
    clock.now = confirmer.reconfirm_at
    confirmer.reconfirm()
    assert not confirmer.reload_owed and confirmer.reconfirm_at is None
    assert sample(metrics, "dms_reconciler_dms_reloads_total", service="amavis", result="ok") == 1
    assert fake.calls.count("reload") == 5


def test_the_same_problem_is_a_warning_once(
        confirmer: Confirmer, fake: FakeDms, caplog: pytest.LogCaptureFixture) -> None:
    fake.reachable = False
    caplog.set_level(logging.INFO, logger="test.confirm")
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    confirmer.publish("unconfirmed", "applied, but DMS is away")
    confirmer.publish("unconfirmed", "applied, but DMS is away")
    levels = [r.levelname for r in caplog.records if r.message == "applied, but DMS is away"]
    assert levels == ["WARNING", "INFO"]


def test_without_dms_nothing_is_awaited(tmp_path: Path, clock: Clock, metrics: Metrics) -> None:
    confirmer = Confirmer(None, config_dir=str(tmp_path), metrics=metrics, status=Status(),
                          log=logging.getLogger("test.confirm"), clock=clock)
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    assert confirmer.awaiting is None and confirmer.reconfirm_at is None
    assert confirmer.status.dms == "none"


def test_a_timeout_is_notified(tmp_path: Path, fake: FakeDms, clock: Clock,
                                    metrics: Metrics) -> None:
    events: list[tuple[str, str]] = []
    confirmer = Confirmer(fake, config_dir=str(tmp_path), metrics=metrics, status=Status(),
                          log=logging.getLogger("test.confirm"), clock=clock, poll_seconds=1.0,
                          environ={"DMS_RECONCILER_CONFIRM_TIMEOUT": "30"},
                          notify=lambda kind, text: events.append((kind, text)))
    confirmer.after_write(WRITTEN, WRITTEN, accounts=3)
    while confirmer.awaiting is not None:
        clock.now = confirmer.awaiting.next_poll
        confirmer.poll()
    assert [kind for kind, _ in events] == ["failed"]  # not "waiting", which is no failure
    assert "DMS did not confirm the change within 30 s" in events[0][1]


ACTIONS = "rspamd/override.d/actions.conf"


@pytest.mark.parametrize(("value", "hashed"), [
    ("1", True), ("01", True), ("+1", True), (" 1 ", True), ("0x1", True),
    (None, False), ("", False), ("0", False), ("true", False), ("10", False), ("2", False),
])
def test_rspamd_files_are_hashed_by_dms_when_enable_rspamd_is_an_arithmetic_one(
        value: str | None, hashed: bool) -> None:
    # change-detection.sh: `[[ ${ENABLE_RSPAMD} -eq 1 ]] && [[ -d ${RSPAMD_DMS_D} ]]`
    assert dms.rspamd_hashed(value) is hashed


def test_with_rspamd_on_rspamd_files_are_awaited_and_the_confirmation_says_rspamd_reloaded(
        confirmer: Confirmer, fake: FakeDms, clock: Clock) -> None:
    written = {ACCOUNTS: "a" * 128, ACTIONS: "r" * 128}
    confirmer.after_write(written, written, accounts=3)
    assert confirmer.awaiting is not None and confirmer.awaiting.expected == written
    fake.applied = {ACCOUNTS: "a" * 128}  # DMS has not recorded the Rspamd file yet
    clock.now += 1
    confirmer.poll()
    assert confirmer.awaiting is not None
    fake.applied = dict(written)
    clock.now += 2
    confirmer.poll()
    assert confirmer.status.dms == "confirmed"
    assert confirmer.status.dms_message.endswith(
        f"; it reloaded Rspamd (SIGHUP) for {ACTIONS}"), confirmer.status.dms_message


def test_with_rspamd_off_rspamd_files_are_not_awaited_and_the_log_says_they_have_no_effect(
        confirmer: Confirmer, fake: FakeDms, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    fake.rspamd = False
    fake.applied = {}  # DMS never records rspamd/ with Rspamd off
    caplog.set_level(logging.INFO, logger="test.confirm")
    only = {ACTIONS: "r" * 128}
    confirmer.after_write(only, only, accounts=3)
    assert confirmer.awaiting is None and confirmer.reconfirm_at is None  # nothing to time out
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{ACTIONS} written, but Rspamd is off")
    assert "no effect until Rspamd is enabled" in warnings[0]
    assert confirmer.status.dms_message == warnings[0]

    mixed = {ACCOUNTS: "a" * 128, ACTIONS: "s" * 128}  # the rest of a write is awaited as always
    confirmer.after_write(mixed, mixed, accounts=3)
    assert confirmer.awaiting is not None and confirmer.awaiting.expected == {ACCOUNTS: "a" * 128}
    fake.applied = {ACCOUNTS: "a" * 128}
    clock.now += 1
    confirmer.poll()
    assert confirmer.status.dms == "confirmed" and "Rspamd" not in confirmer.status.dms_message


def test_rspamd_files_written_while_dms_was_away_are_not_awaited_once_it_says_rspamd_is_off(
        confirmer: Confirmer, fake: FakeDms, clock: Clock) -> None:
    fake.reachable = False
    written = {ACCOUNTS: "a" * 128, ACTIONS: "r" * 128}
    confirmer.after_write(written, written, accounts=3)
    assert confirmer.unconfirmed == written
    fake.reachable, fake.rspamd, fake.applied = True, False, {ACCOUNTS: "a" * 128}
    assert confirmer.reconfirm_at is not None
    clock.now = confirmer.reconfirm_at
    confirmer.reconfirm()
    assert confirmer.status.dms == "confirmed" and confirmer.unconfirmed == {}
    assert "Rspamd" not in confirmer.status.dms_message


def test_fast_apply_leaving_rspamd_files_to_dms_is_confirmed_once_dms_records_them(
        confirmer: Confirmer, fake: FakeDms, clock: Clock) -> None:
    """Fast apply wrote DMS's record with our config files new and the rspamd/ file as DMS last
    applied it: the write is confirmed once DMS's change detector records that too, and the
    confirmation says which path applied which file."""
    written = {ACCOUNTS: "a" * 128, ACTIONS: "r" * 128}
    fake.applied = {ACCOUNTS: "a" * 128}  # what fast apply's record holds
    fast = Result("fast", "fast apply applied postfix-accounts.cf", others=(ACTIONS,))
    confirmer.after_write(written, written, accounts=3, applied_by=fast)
    assert confirmer.awaiting is not None and confirmer.status.dms == "waiting"
    fake.applied = dict(written)
    clock.now += 2
    confirmer.poll()
    assert confirmer.status.dms == "confirmed"
    assert (f"(by fast apply, and DMS's change detector for {ACTIONS}); it reloaded Rspamd"
            in confirmer.status.dms_message), confirmer.status.dms_message

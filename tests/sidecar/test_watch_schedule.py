"""The loop's scheduler alone: what `Schedule.next_step` picks at each moment of an injected clock
(the real loop, with real events and a real DMS container, is in tests/sidecar/test_watch.py and
tests/sidecar/test_dms_watch.py)."""

from __future__ import annotations

import pytest

from reconciler.watch.health import Status
from reconciler.watch.heartbeat import Heartbeat
from reconciler.watch.loop import Schedule, Step


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def schedule(clock: Clock) -> Schedule:
    schedule = Schedule(60.0, clock=clock)
    schedule.resync_done()  # what run() does after the startup reconcile
    return schedule


def step(schedule: Schedule, now: float, *, change_due: float | None = None,
         dms_poll_at: float | None = None, reconfirm_at: float | None = None) -> Step:
    return schedule.next_step(now, change_due=change_due, dms_poll_at=dms_poll_at,
                              reconfirm_at=reconfirm_at)


def test_the_timer_resyncs_at_the_interval_and_sleeps_until_then(schedule: Schedule,
                                                                 clock: Clock) -> None:
    assert step(schedule, 10) == Step("sleep", 60)
    assert step(schedule, 60).action == "resync"
    schedule.resync_started()
    clock.now = 61.5  # the reconcile took 1.5 s: the next one is an interval after it ended
    schedule.resync_done()
    assert step(schedule, 62) == Step("sleep", 121.5)


def test_a_change_waits_for_its_debounce_then_comes_before_the_timer(schedule: Schedule) -> None:
    assert step(schedule, 10, change_due=10.25) == Step("sleep", 10.25)
    assert step(schedule, 10.25, change_due=10.25).action == "change"
    assert step(schedule, 60, change_due=59).action == "change"


def test_a_resync_asked_for_runs_at_once(schedule: Schedule) -> None:
    schedule.resync_requested = True
    assert step(schedule, 1).action == "resync"
    schedule.resync_started()
    assert not schedule.resync_requested


def test_failures_are_retried_sooner_doubling_up_to_the_interval(schedule: Schedule,
                                                                 clock: Clock) -> None:
    waits = []
    for _ in range(8):  # what the loop does for each try: started, failed, timer restarted
        schedule.resync_started()
        schedule.finished("error")
        schedule.resync_done()
        assert schedule.retry_at is not None
        waits.append(schedule.retry_at - clock.now)
        assert step(schedule, clock.now) == Step("sleep", schedule.retry_at)
        assert schedule.next_retry_delay() == min(60, 2 ** len(waits))
        clock.now = schedule.retry_at
        assert step(schedule, clock.now).action == "resync"
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    schedule.finished("changed")
    assert schedule.failures == 0 and schedule.retry_at is None


def test_a_reconcile_that_found_nothing_to_look_at_leaves_the_retry_alone(
        schedule: Schedule) -> None:
    schedule.finished("error")
    retry_at = schedule.retry_at
    schedule.finished(None)
    assert schedule.failures == 1 and schedule.retry_at == retry_at


@pytest.mark.parametrize("result", ["changed", "unchanged", "invalid", "refused"])
def test_only_errors_are_retried_early(schedule: Schedule, result: str) -> None:
    schedule.finished(result)
    assert schedule.retry_at is None and step(schedule, 1) == Step("sleep", 60)


def test_while_dms_applies_a_change_is_only_previewed_and_the_timer_waits(
        schedule: Schedule) -> None:
    assert step(schedule, 100, dms_poll_at=101) == Step("sleep", 101)  # the timer is overdue
    assert step(schedule, 101, dms_poll_at=101).action == "poll_dms"
    assert step(schedule, 100, change_due=100, dms_poll_at=101).action == "preview"
    assert step(schedule, 100, change_due=100.5, dms_poll_at=101) == Step("sleep", 100.5)
    assert step(schedule, 101, change_due=100, dms_poll_at=101).action == "poll_dms"


def test_a_change_deferred_while_dms_applied_is_reconciled_once_it_confirmed(
        schedule: Schedule) -> None:
    schedule.deferred = True
    assert step(schedule, 5, dms_poll_at=6) == Step("sleep", 6)
    assert step(schedule, 6).action == "change"  # confirmed: nothing awaited any more


def test_asking_dms_again_comes_before_a_change(schedule: Schedule) -> None:
    assert step(schedule, 5, change_due=6, reconfirm_at=7) == Step("sleep", 6)
    assert step(schedule, 7, change_due=6, reconfirm_at=7).action == "reconfirm"
    assert step(schedule, 6.5, reconfirm_at=7) == Step("sleep", 7)


def test_a_change_still_settling_is_looked_at_again_when_its_settle_period_ends(
        schedule: Schedule) -> None:
    schedule.settle_at = 10.5
    assert step(schedule, 10) == Step("sleep", 10.5)
    assert step(schedule, 10.5).action == "settle"
    assert step(schedule, 10.5, change_due=10.4).action == "change"  # a new burst comes first
    assert step(schedule, 10.5, dms_poll_at=11) == Step("sleep", 11)  # not while DMS applies


def test_the_heartbeat_fails_liveness_for_a_step_or_a_sleep_that_overruns(clock: Clock) -> None:
    beat = Heartbeat(5.0, clock=clock)
    status = Status(stuck=beat.stuck)
    assert status.live()  # not started yet
    beat.busy("reconciling (change)")
    clock.now += 5
    assert status.live() and beat.step() == "reconciling (change)"
    clock.now += 0.5
    assert not status.live()
    assert "reconciling (change) for 6 s" in (status.not_live() or "")
    beat.idle(until=clock.now + 60)  # a long sleep is progress
    clock.now += 64
    assert status.live() and beat.step() is None
    clock.now += 2  # but not one that overran its wake-up by the bound
    assert "sleeping" in (status.not_live() or "")

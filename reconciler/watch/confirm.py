"""The DMS confirmer: after a write, did DMS's change detector apply it?

DMS needs time to regenerate after a write (minutes on a big server). The confirmer holds the
state machine that the loop drives; it never writes the volume:

- `awaiting`: a write DMS has not confirmed yet, polled (`poll`) until DMS confirms it
  (confirmed), the wait times out (timed_out), or three looks in a row cannot ask DMS;
- `unconfirmed`: writes DMS could not be asked about (no engine, no container) and an Amavis
  restart owed for a new amavis.cf; looked at again (`reconfirm`, 1 s doubling up to 15 s)
  until DMS answers, quietly.

Files under rspamd/ are awaited only while DMS's change detector hashes them (ENABLE_RSPAMD=1 in
the DMS container); their confirmation says that DMS reloaded Rspamd. With Rspamd off DMS never
records them: they are not awaited, and the log says the change has no effect until Rspamd is
enabled.

While a write is awaited, the loop only plans new changes (to report them) and writes them
together once this says DMS confirmed or the wait timed out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.formats import amavis, registry
from reconciler.watch import dms as dms_mod
from reconciler.watch.fastapply import Result
from reconciler.watch.health import Metrics, Status

UNCONFIRMED_GIVE_UP = 3
RECONFIRM_MAX_SECONDS = 15.0  # DMS could not be asked: look again, 1 s doubling up to this


def services_to_reload(written: Collection[str]) -> set[str]:
    """Services whose files DMS reads only at start-up, among the files just written."""
    return registry.reloads(written) - {registry.AMAVIS}  # Amavis: its own state machine


class DmsClient(Protocol):
    """What the confirmer needs of `dms.Dms` (a double in unit tests)."""

    def find(self) -> Any: ...

    def check_applied(
        self, expected: Mapping[str, str], current: Callable[[str], str | None]
    ) -> dms_mod.Report: ...

    def reload_amavis(self, dms_will_reload: Mapping[str, str] | None = None) -> dms_mod.Report: ...

    def reload_restrictions(self) -> dms_mod.Report: ...

    def reload_opendkim(self) -> dms_mod.Report: ...

    def rspamd_on(self) -> bool: ...


@dataclass
class Awaiting:
    """A write DMS has not confirmed yet."""

    expected: dict[str, str]  # monitored file -> sha512 we wrote
    started: float
    deadline: float
    next_poll: float
    polls: int = 0
    failures: int = 0  # looks in a row that could not ask DMS
    accounts: int = 0  # how big the write was (the timeout grows with it)
    applied_by: str = "DMS's change detector"  # or "fast apply"
    rspamd: tuple[str, ...] = ()  # the files under rspamd/ among `expected`: DMS reloads Rspamd


class Confirmer:
    """Follows our writes until DMS applied them; publishes the DMS state to metrics and status.

    With `dms` None (no DMS to ask) every method is a no-op and nothing is ever awaited.
    """

    def __init__(
        self,
        dms: DmsClient | None,
        *,
        config_dir: str,
        metrics: Metrics,
        status: Status,
        log: logging.Logger,
        clock: Callable[[], float],
        poll_seconds: float = 1.0,
        environ: Mapping[str, str] = os.environ,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self.dms = dms
        self.notify = notify or (lambda kind, text: None)  # `Notifier.event`: never blocks
        self.config_dir = config_dir
        self.metrics = metrics
        self.status = status
        self.log = log
        self.clock = clock
        self.poll_seconds = poll_seconds  # first interval between looks (grows to 5 s)
        self.environ = environ  # DMS_RECONCILER_CONFIRM_TIMEOUT
        self.awaiting: Awaiting | None = None
        # Writes DMS could not be asked about (no engine, no container), and an Amavis restart
        # that could not be done: looked at again until DMS answers.
        self.unconfirmed: dict[str, str] = {}
        self.unconfirmed_accounts = 0
        self.reload_owed = False
        # Other reloads DMS's change detector does not run: "postfix" for the access files,
        # "opendkim" for opendkim/ (both read at DMS's start-up only)
        self.reloads_owed: set[str] = set()
        self.reconfirm_at: float | None = None
        self._reconfirm_tries = 0
        self._note: str | None = None  # the last problem logged as a warning

    def after_write(
        self,
        written: Collection[str],
        sha512: Mapping[str, str],
        accounts: int,
        *,
        applied_by: Result | None = None,
    ) -> None:
        """Files were written (`sha512` by name); `accounts` is how big the server is;
        `applied_by`: fast apply's result, when it ran for this write."""
        if self.dms is None:
            return
        # DMS could not be asked after an earlier write and the re-check asks again on its own
        # schedule: do not ask now too. A hung engine would hold the loop for each write.
        out_of_reach = self.reconfirm_at is not None
        if amavis.FILENAME in written:
            self.reload_owed = True
            if not out_of_reach:
                # DMS reloads Amavis itself for these: one restart, not two
                vhost = {
                    n: sha512[n]
                    for n in dms_mod.AMAVIS_RELOADED_BY_DMS
                    if n in written and n in sha512
                }
                self._reload_amavis(retry=False, dms_will_reload=vhost)
        owed = services_to_reload(written)
        self.reloads_owed |= owed
        if owed and not out_of_reach:
            self._reload_services(retry=False)
        # what DMS could not be asked about earlier is asked about together with this write
        expected = {**self.unconfirmed, **dms_mod.monitored_checksums(sha512)}
        self.unconfirmed = {}
        if out_of_reach:
            assert self.reconfirm_at is not None
            self.unconfirmed, self.unconfirmed_accounts = expected, accounts
            wait = max(0.0, self.reconfirm_at - self.clock())
            self.publish(
                "unconfirmed",
                "applied, but could not confirm that DMS picked the "
                f"change up: DMS is still out of reach (asked again in {wait:.0f} s)",
                quiet=True,
            )
            return
        if expected:
            try:
                self.dms.find()
                expected = self._hashed_by_dms(expected)
            except dms_mod.DmsUnavailable as exc:
                self._could_not_ask(
                    expected,
                    accounts,
                    f"applied, but could not confirm that DMS picked the change up: {exc}",
                )
            else:
                if expected:
                    self._await(expected, accounts)
                if self.awaiting is not None and applied_by is not None:
                    if applied_by.path == "fast":
                        self.awaiting.applied_by = "fast apply"
                        if applied_by.others:  # rspamd/ or certificates: DMS applies those
                            self.awaiting.applied_by += (
                                f", and DMS's change detector for {', '.join(applied_by.others)}"
                            )
                        self.poll()  # DMS's record already holds it (or ours): confirm now
                    else:
                        self.awaiting.applied_by = f"DMS's change detector ({applied_by.message})"
        self._schedule_reconfirm(first=True)

    def poll(self) -> None:
        """One look at DMS for the awaited write."""
        awaiting = self.awaiting
        assert awaiting is not None and self.dms is not None
        awaiting.polls += 1
        report = self.dms.check_applied(awaiting.expected, self._current_sha512)
        now = self.clock()
        if report.state == "confirmed":
            took = now - awaiting.started
            self.metrics.dms_confirm_seconds.set(took)
            self.awaiting = None
            self.publish(
                "confirmed",
                f"DMS applied the change in {took:.1f} s (by {awaiting.applied_by})"
                + _rspamd_reloaded(awaiting.rspamd),
            )
            return
        awaiting.failures = awaiting.failures + 1 if report.state == "unconfirmed" else 0
        if awaiting.failures >= UNCONFIRMED_GIVE_UP:  # one failed look may be a hiccup; three not
            self.awaiting = None
            self._could_not_ask(
                awaiting.expected, awaiting.accounts, f"applied, but {report.message}"
            )
            self._schedule_reconfirm(first=True)
            return
        if now >= awaiting.deadline:
            self.awaiting = None
            waited = awaiting.deadline - awaiting.started
            self.publish(
                "timed_out",
                f"DMS did not confirm the change within {waited:.0f} s "
                f"({report.message}); its change detector may be stuck: see "
                "/var/log/supervisor/changedetector.log in the DMS container. Writing "
                "again is allowed now",
            )
            return
        step = min(5.0, self.poll_seconds * (1 + awaiting.polls / 10))
        awaiting.next_poll = now + step

    def reconfirm(self) -> None:
        """DMS could not be asked after a write (the engine stopped, the container gone or
        replaced): look again, quietly, until it answers. Then the owed Amavis restart is done,
        and the confirmation is read as after any write (or waited for, if DMS is still busy)."""
        assert self.dms is not None
        self.reconfirm_at = None
        if self.reload_owed:
            self._reload_amavis(retry=True)
        if self.reloads_owed:
            self._reload_services(retry=True)
        if self.unconfirmed:
            try:
                self.unconfirmed = self._hashed_by_dms(self.unconfirmed)
            except dms_mod.DmsUnavailable:
                pass  # check_applied says so
        if self.unconfirmed:
            report = self.dms.check_applied(self.unconfirmed, self._current_sha512)
            if report.state == "confirmed":
                rspamd = tuple(dms_mod.rspamd_names(self.unconfirmed))
                self.unconfirmed = {}
                self.publish(
                    "confirmed",
                    "DMS applied the change (confirmed once DMS could be asked again)"
                    + _rspamd_reloaded(rspamd),
                )
            elif report.state == "waiting":  # DMS answers, but has not applied it (yet)
                expected, self.unconfirmed = self.unconfirmed, {}
                self._await(expected, self.unconfirmed_accounts)
            else:
                message = f"applied, but {report.message}"
                self.status.update(dms_message=message)
                self.log.debug(message, extra={"fields": {"dms": "unconfirmed"}})
        self._schedule_reconfirm()

    def publish(self, state: str, message: str, *, quiet: bool = False) -> None:
        """The DMS state to metrics, /healthz's body and the log."""
        self.metrics.dms_state.state(state)
        self.metrics.dms_confirmed.set(1 if state == "confirmed" else 0)
        self.status.update(dms=state, dms_message=message)
        # A problem is a warning the first time; the same one on every apply is only noise.
        if not quiet and state != "confirmed" and message != self._note:
            self.log.warning(message, extra={"fields": {"dms": state}})
            if state == "timed_out":
                self.notify("failed", message)
        else:
            self.log.info(message, extra={"fields": {"dms": state}})
        self._note = message if state != "confirmed" else None

    # --- inside ---------------------------------------------------------------------------------

    def _reload_amavis(
        self, *, retry: bool, dms_will_reload: Mapping[str, str] | None = None
    ) -> None:
        """Restart Amavis for a new amavis.cf. When DMS cannot be asked it stays owed, and is
        done by `reconfirm` once it can (counted and logged then, not on every try)."""
        assert self.dms is not None
        report = self.dms.reload_amavis(dms_will_reload)
        if report.state == "unconfirmed" and retry:
            self.log.debug(report.message, extra={"fields": {"service": "amavis"}})
            return
        self.reload_owed = report.state == "unconfirmed"
        self.metrics.dms_reloads.labels(service="amavis", result=report.state).inc()
        level = self.log.info if report.ok else self.log.warning
        level(report.message, extra={"fields": {"service": "amavis", "result": report.state}})

    def _reload_services(self, *, retry: bool) -> None:
        """The reloads `setup` would run for the access files and opendkim/; like Amavis's, one
        that cannot be done now stays owed until DMS can be asked."""
        assert self.dms is not None
        for service in sorted(self.reloads_owed):
            reload = (
                self.dms.reload_restrictions if service == "postfix" else self.dms.reload_opendkim
            )
            report = reload()
            if report.state == "unconfirmed" and retry:
                self.log.debug(report.message, extra={"fields": {"service": service}})
                continue
            if report.state != "unconfirmed":
                self.reloads_owed.discard(service)
            self.metrics.dms_reloads.labels(service=service, result=report.state).inc()
            level = self.log.info if report.ok else self.log.warning
            level(report.message, extra={"fields": {"service": service, "result": report.state}})

    def _hashed_by_dms(self, expected: dict[str, str]) -> dict[str, str]:
        """`expected` without the files under rspamd/ when DMS's change detector does not hash
        them (Rspamd off): it would never record them. Says so: the change has no effect there.
        Raises `DmsUnavailable` when the container cannot be asked."""
        assert self.dms is not None
        names = dms_mod.rspamd_names(expected)
        if not names or self.dms.rspamd_on():
            return expected
        message = (
            f"{', '.join(names)} written, but Rspamd is off in the DMS container "
            "(ENABLE_RSPAMD is not 1): DMS neither reads rspamd/ nor reloads Rspamd, so the "
            "change has no effect until Rspamd is enabled (DMS reads rspamd/ at its start-up)"
        )
        rest = {name: digest for name, digest in expected.items() if name not in names}
        if not rest:  # nothing else to wait for: what /healthz says about the last write
            self.status.update(dms_message=message)
        self.log.warning(message, extra={"fields": {"rspamd": "off", "files": names}})
        return rest

    def _await(self, expected: dict[str, str], accounts: int) -> None:
        timeout = dms_mod.confirm_timeout(accounts, self.environ)
        now = self.clock()
        self.awaiting = Awaiting(
            expected,
            now,
            now + timeout,
            now + self.poll_seconds,
            accounts=accounts,
            rspamd=tuple(dms_mod.rspamd_names(expected)),
        )
        self.publish(
            "waiting",
            f"waiting for DMS to apply {', '.join(sorted(expected))} (up to {timeout:.0f} s)",
            quiet=True,
        )

    def _could_not_ask(self, expected: dict[str, str], accounts: int, message: str) -> None:
        self.unconfirmed = dict(expected)
        self.unconfirmed_accounts = accounts
        self.publish("unconfirmed", message)

    def _schedule_reconfirm(self, *, first: bool = False) -> None:
        if not (self.unconfirmed or self.reload_owed or self.reloads_owed):
            self.reconfirm_at, self._reconfirm_tries = None, 0
            return
        self._reconfirm_tries = 0 if first else self._reconfirm_tries + 1
        delay = min(RECONFIRM_MAX_SECONDS, self.poll_seconds * 2 ** min(self._reconfirm_tries, 20))
        self.reconfirm_at = self.clock() + delay

    def _current_sha512(self, name: str) -> str | None:
        return dms_mod.file_sha512(os.path.join(self.config_dir, name))


def _rspamd_reloaded(names: Collection[str]) -> str:
    """What DMS's change detector did for the files under rspamd/ it applied (check-for-changes.sh
    `_rspamd_changes`, before it records the checksums): reloaded Rspamd."""
    if not names:
        return ""
    return f"; it reloaded Rspamd (SIGHUP) for {', '.join(sorted(names))}"

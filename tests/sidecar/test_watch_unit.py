"""Pure parts of the sidecar: which folders are watched, DMS's checksum lines, the confirmation
rule and its timeout, --listen parsing, and that no failure inside a reconcile stops the loop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.configvolume import Volume as ConfigVolume
from reconciler.reconcile import Target
from reconciler.watch import cycle, dms, events
from reconciler.watch.events import watch_dirs
from reconciler.watch.health import parse_listen
from reconciler.watch.loop import Watcher, WatchOptions
from tests.support.util import Volume, sha512_hash


def test_a_plain_file_is_watched_through_its_folder(tmp_path: Path) -> None:
    (tmp_path / "mailserver.yaml").write_text("version: 1\n")
    assert watch_dirs(str(tmp_path / "mailserver.yaml")) == {str(tmp_path)}


def test_configmap_layout_watches_the_folder_where_the_data_link_swaps(tmp_path: Path) -> None:
    (tmp_path / "..2024_01").mkdir()
    (tmp_path / "..2024_01" / "mailserver.yaml").write_text("version: 1\n")
    (tmp_path / "..data").symlink_to("..2024_01")
    (tmp_path / "mailserver.yaml").symlink_to("..data/mailserver.yaml")
    assert watch_dirs(str(tmp_path / "mailserver.yaml")) == {str(tmp_path),
                                                             str(tmp_path / "..2024_01")}


def test_gitsync_layout_watches_the_link_folder_and_the_current_worktree(tmp_path: Path) -> None:
    worktree = tmp_path / ".worktrees" / "abc123"
    worktree.mkdir(parents=True)
    (worktree / "mailserver.yaml").write_text("version: 1\n")
    (tmp_path / "current").symlink_to(".worktrees/abc123")
    assert watch_dirs(str(tmp_path / "current" / "mailserver.yaml")) == {str(tmp_path),
                                                                         str(worktree)}


def test_a_missing_folder_is_replaced_by_its_nearest_existing_ancestor(tmp_path: Path) -> None:
    assert watch_dirs(str(tmp_path / "not" / "yet" / "mailserver.yaml")) == {str(tmp_path)}


def test_a_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert str(tmp_path) in watch_dirs(str(tmp_path / "a" / "mailserver.yaml"))


def test_the_parents_of_watched_folders_guard_them_and_only_events_naming_them_count() -> None:
    folders = {"/desired", "/git/.worktrees/abc"}
    assert events.guard_dirs(folders | {"/"}) == {"/", "/git/.worktrees"}
    watched = frozenset(folders)
    assert events.relevant(("/desired/mailserver.yaml",), watched)  # inside a folder
    assert events.relevant(("/desired",), watched)  # the folder itself, seen from its parent
    assert events.relevant(("/desired.new", "/desired"), watched)  # renamed into place
    assert not events.relevant(("/tmp",), watched)  # a sibling in the parent
    assert not events.relevant(("/desired/sub/file",), watched)  # not recursive
    assert not events.relevant(("",), watched)


def test_failed_reconciles_are_retried_sooner_than_the_interval(tmp_path: Path) -> None:
    target = Target(str(tmp_path / "m.yaml"), ConfigVolume(str(tmp_path), str(tmp_path / "cron")))
    sidecar = Watcher(target, WatchOptions(interval=60))
    assert [sidecar.schedule.retry_delay(n) for n in (1, 2, 3, 6, 7, 100)] == [1, 2, 4, 32, 60, 60]
    assert Watcher(target, WatchOptions(interval=0.5)).schedule.retry_delay(1) == 1


def test_the_debug_traceback_keeps_frames_and_types_but_no_message() -> None:
    from reconciler.log import safe_traceback

    stored, password = sha512_hash("hunter-2"), "hunter-" + str(2)  # not in the source

    def inner() -> None:
        raise KeyError(stored)

    try:
        try:
            inner()
        except KeyError as exc:
            raise ValueError(f"password {password}") from exc
    except ValueError as exc:
        text = safe_traceback(exc)
    assert "in inner" in text and "KeyError" in text and "ValueError" in text
    assert text.index("KeyError") < text.index("which led to:") < text.index("ValueError")
    assert password not in text and stored.split("$")[-1] not in text


def test_checksum_lines_are_parsed_like_dms_writes_them() -> None:
    a, b = "a" * 128, "b" * 128
    text = (f"{a}  /tmp/docker-mailserver/postfix-accounts.cf\n"
            f"{b}  /tmp/docker-mailserver/postfix-virtual.cf\n"
            f"{'c' * 128}  /tmp/docker-mailserver/rspamd/override.d/x.conf\n"  # rspamd: ours
            f"{'e' * 128}  /tmp/docker-mailserver/ssl/cert.pem\n"  # not ours
            f"{'f' * 128}  /tmp/docker-mailserver/rspamd/../postfix-virtual.cf\n"  # no ..
            f"{'d' * 128}  /etc/letsencrypt/live/mail/postfix-accounts.cf\n"  # another folder
            "garbage line\n")
    assert dms.parse_chksum(text) == {"postfix-accounts.cf": a, "postfix-virtual.cf": b,
                                      "rspamd/override.d/x.conf": "c" * 128}


def test_applied_means_our_hash_or_the_current_one_for_every_file() -> None:
    expected = {"postfix-accounts.cf": "1" * 128, "postfix-virtual.cf": "2" * 128}
    current = {"postfix-accounts.cf": "1" * 128, "postfix-virtual.cf": "3" * 128}
    assert dms.is_applied(expected, expected, current.get)
    assert not dms.is_applied(expected, {"postfix-accounts.cf": "1" * 128}, current.get)
    newer = {"postfix-accounts.cf": "1" * 128, "postfix-virtual.cf": "3" * 128}
    assert dms.is_applied(expected, newer, current.get)  # DMS applied an even newer version
    older = {"postfix-accounts.cf": "1" * 128, "postfix-virtual.cf": "0" * 128}
    assert not dms.is_applied(expected, older, current.get)


def test_the_confirmation_timeout_grows_with_the_server() -> None:
    small, big = dms.confirm_timeout(10, {}), dms.confirm_timeout(10_000, {})
    assert small >= 60
    assert big >= 2 * 6 * 60  # DMS needs about 6 minutes at 10,000 accounts: twice that
    assert dms.confirm_timeout(10_000, {"DMS_RECONCILER_CONFIRM_TIMEOUT": "5"}) == 5


def test_only_change_detector_files_are_confirmed() -> None:
    written = {"postfix-accounts.cf": "a", "amavis.cf": "b", "cron": "c", "dovecot-quotas.cf": "d"}
    monitored = {"postfix-accounts.cf": "a", "dovecot-quotas.cf": "d"}
    assert dms.monitored_checksums(written) == monitored


@pytest.mark.parametrize("text,expected", [
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    (":9000", ("0.0.0.0", 9000)),
    ("9000", ("0.0.0.0", 9000)),
    ("[::]:9100", ("::", 9100)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["localhost", "1.2.3.4:http", "1.2.3.4:99999"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


def test_an_internal_error_in_a_reconcile_is_reported_and_the_loop_goes_on(
        tmp_path: Path, volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real code has no such bug to trigger; this stands in for one.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret-looking local data")

    path = tmp_path / "mailserver.yaml"
    path.write_text("version: 1\ndomains: [example.com]\naccounts:\n"
                    f"  a@example.com: {{password_hash: '{sha512_hash('pw')}'}}\n")
    loop = Watcher(Target(str(path), volume.value), WatchOptions())
    monkeypatch.setattr(cycle, "apply_once", broken)
    loop.reconcile("startup")
    assert loop.status.last_result == "error"
    assert "RuntimeError" in loop.status.last_message
    assert "secret-looking" not in loop.status.last_message
    assert not loop.status.ready()
    monkeypatch.undo()
    loop.reconcile("interval")
    assert loop.status.last_result == "changed" and loop.status.ready()
    assert sorted(os.listdir(volume.config)) == ["dms-reconciler.state.json", "postfix-accounts.cf"]


def test_the_timer_skips_the_plan_only_while_inputs_and_volume_are_byte_identical(
        tmp_path: Path, volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[str] = []
    real = cycle.plan_once

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        planned.append("plan")
        return real(*args, **kwargs)

    monkeypatch.setattr(cycle, "plan_once", counting)
    path = tmp_path / "mailserver.yaml"
    path.write_text("version: 1\ndomains: [example.com]\naccounts:\n"
                    f"  a@example.com: {{password_hash: '{sha512_hash('pw')}'}}\n"
                    "aliases:\n  b@example.com: a@example.com\n")
    loop = Watcher(Target(str(path), volume.value), WatchOptions())
    loop.reconcile("startup")
    loop.reconcile("interval")  # plans once and finds the volume clean
    planned.clear()
    loop.reconcile("interval")
    loop.reconcile("interval")
    assert planned == []  # same bytes everywhere: nothing to plan
    assert loop.status.last_result == "unchanged"

    text = volume.read("postfix-virtual.cf") or ""
    volume.write("postfix-virtual.cf", text.replace("b@example.com a@example.com",
                                                    "b@example.com evil@elsewhere.net"))
    loop.reconcile("interval")
    assert planned and loop.status.last_result == "changed"  # the hand edit is repaired
    assert "b@example.com a@example.com" in (volume.read("postfix-virtual.cf") or "")


def test_each_warning_is_logged_once_while_it_stands(
        tmp_path: Path, volume: Volume, caplog: pytest.LogCaptureFixture) -> None:
    """A save logs the warnings that are new, not every standing one again (10,000 accounts may
    carry 10,000): a line added above moves every position, yet a warning is known by what it
    says; a warning that went away and comes back is new again."""
    hashed = sha512_hash("pw")

    def save(*locals_with_quota: str, plain: str = "") -> None:
        lines = [f"  {plain}@example.com: {{password_hash: '{hashed}'}}"] if plain else []
        lines += [f"  {local}@example.com: {{password_hash: '{hashed}', quota: 5G}}"
                  for local in locals_with_quota]
        path.write_text("version: 1\ndomains: [example.com]\naccounts:\n" + "\n".join(lines) + "\n")

    def warned() -> list[str]:
        found = [r.getMessage() for r in caplog.records
                 if r.levelname == "WARNING" and "quota" in r.getMessage()]
        caplog.clear()
        return found

    path = tmp_path / "mailserver.yaml"
    save("a", "b")
    loop = Watcher(Target(str(path), volume.value), WatchOptions())
    caplog.set_level("INFO")
    loop.reconcile("startup")
    first = warned()
    assert len(first) == 2 and any("accounts.a@example.com.quota" in w for w in first), first
    save("a", "b", plain="above")  # every warning moves down a line
    loop.reconcile("change")
    assert warned() == []
    save("a", "b", "c", plain="above")
    loop.reconcile("change")
    new = warned()
    assert len(new) == 1 and "c@example.com" in new[0], new
    save("a", "c", plain="above")  # b's warning goes away ...
    loop.reconcile("change")
    save("a", "b", "c", plain="above")  # ... and comes back: logged again
    loop.reconcile("change")
    again = warned()
    assert len(again) == 1 and "b@example.com" in again[0], again

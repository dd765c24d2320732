"""The notifier against real targets on 127.0.0.1: Apprise's JSON webhook to an HTTP server,
e-mail to a real SMTP server, a port that refuses and one that hangs. Bursts become one message;
a slow or failing target never holds up the caller or another target."""

from __future__ import annotations

import email
import logging

import pytest

from reconciler.errors import ReconcilerError
from reconciler.watch.notify import Notifier, compose, read_urls, split_urls
from tests.support.receivers import HangingServer, JsonReceiver, SmtpReceiver, refusing_url
from tests.support.util import sha512_hash
from tests.support.watch_process import wait_until


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def logger() -> tuple[logging.Logger, Lines]:
    log = logging.getLogger(f"test-notify-{id(object())}")
    lines = Lines()
    log.addHandler(lines)
    log.propagate = False
    return log, lines


@pytest.fixture
def receiver():
    server = JsonReceiver()
    yield server
    server.close()


def test_urls_come_from_the_variable_and_the_file(tmp_path):
    assert split_urls("json://a/ , mailto://h?to=a@x,b@x  slack://t/u/v") == [
        "json://a/", "mailto://h?to=a@x,b@x", "slack://t/u/v"]
    urls = tmp_path / "notify"
    urls.write_text("# the team\njson://127.0.0.1:1/\n\n  mailto://h?to=p@x\n")
    found = read_urls({"DMS_RECONCILER_NOTIFY": "json://a/"}, str(urls))
    assert found == [("DMS_RECONCILER_NOTIFY entry 1", "json://a/"),
                     (f"{urls}:2", "json://127.0.0.1:1/"), (f"{urls}:4", "mailto://h?to=p@x")]
    with pytest.raises(ReconcilerError, match="cannot read it"):
        read_urls({}, str(tmp_path / "missing"))


def test_a_url_apprise_cannot_use_is_refused_without_showing_it():
    log, _ = logger()
    env = {"DMS_RECONCILER_NOTIFY": "json://127.0.0.1:1/ nosuchservice://s3cr3t-token@host/"}
    with pytest.raises(ReconcilerError) as caught:
        Notifier.from_config(env, None, log=log)
    message = str(caught.value)
    assert "DMS_RECONCILER_NOTIFY entry 2 (nosuchservice://)" in message
    assert "s3cr3t-token" not in message
    assert Notifier.from_config({}, None, log=log) is None


def test_a_burst_becomes_one_message(receiver):
    log, _ = logger()
    notifier = Notifier([("t", receiver.url)], log=log, gather=0.0, every=3600).start()
    try:
        notifier.event("applied", "first")
        receiver.wait_for("first")
        for n in range(3):  # within the window: held, then sent together
            notifier.event("applied", f"burst {n}")
        notifier.event("failed", "refused: too many deletions")
        assert len(receiver.messages) == 1
    finally:
        notifier.close()  # flushes what is held
    wait_until(lambda: len(receiver.messages) == 2, 10, "the flushed message")
    second = receiver.messages[1]
    assert second["title"] == "dms-reconciler: failed (+3 more)"
    assert [line.split(" ", 1)[1] for line in second["message"].splitlines()[:4]] == [
        "applied: burst 0", "applied: burst 1", "applied: burst 2",
        "failed: refused: too many deletions"]


def test_no_hash_reaches_a_message(receiver):
    log, _ = logger()
    leaked = sha512_hash("secret-password", salt="leaksalt")
    notifier = Notifier([("t", receiver.url)], log=log, gather=0.0, every=0).start()
    try:
        notifier.event("failed", f"reconcile failed: odd value {leaked}")
        receiver.wait_for("reconcile failed")
    finally:
        notifier.close()
    text = "\n".join(receiver.texts())
    assert "$6$" not in text and leaked.split("$")[-1] not in text and "(sensitive)" in text


def test_a_hanging_and_a_refusing_target_hold_up_neither_the_caller_nor_others(receiver):
    log, lines = logger()
    hanging = HangingServer()
    results: list[str] = []
    notifier = Notifier(
        [("good", receiver.url), ("hang", hanging.url(60)), ("refuse", refusing_url())],
        log=log, gather=0.0, every=0, flush_seconds=0.5, on_result=results.append,
    ).start()
    try:
        notifier.event("applied", "one")
        receiver.wait_for("one")
        wait_until(lambda: hanging.open_connections == 1, 10, "the hanging target's connection")
        wait_until(lambda: any("refuse (json://) failed" in line for line in lines.lines), 20,
                   "the refused target's warning")
        notifier.event("applied", "two")  # the caller goes on while `hang` is still waiting
        receiver.wait_for("two")
        assert hanging.open_connections == 1 and hanging.accepted == 1  # still the first send
        assert results.count("sent") == 2 and "failed" in results
    finally:
        notifier.close()  # bounded by flush_seconds although `hang` never answers
        hanging.close()
    assert not any("127.0.0.1" in line for line in lines.lines)  # targets named by place only


def test_email_to_the_postmaster_over_real_smtp():
    log, _ = logger()
    smtp = SmtpReceiver()
    notifier = Notifier([("mail", smtp.url)], log=log, gather=0.0, every=0).start()
    try:
        notifier.event("suspended", "suspended since 2024-05-01T10:00:00Z by ops@host: upgrade")
        wait_until(lambda: smtp.messages, 20, "the e-mail")
    finally:
        notifier.close()
        smtp.close()
    message = email.message_from_bytes(smtp.messages[0])
    assert message["To"] == "postmaster@example.com"
    assert message["Subject"] == "dms-reconciler: suspended"
    plain = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    assert "by ops@host: upgrade" in plain.get_payload(decode=True).decode()


def test_compose_names_the_worst_event_first():
    from reconciler.watch.notify import Event

    title, body = compose([Event("applied", "a", 0.0), Event("drift", "b", 1.0)])
    assert title == "dms-reconciler: drift (+1 more)"
    assert body.splitlines()[0].endswith("applied: a")

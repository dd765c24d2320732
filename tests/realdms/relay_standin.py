"""A relay host stand-in run inside the DMS container (aiosmtpd on 127.0.0.1:2525).

It offers STARTTLS (DMS requires TLS towards relays once postfix-sasl-password.cf exists) and
AUTH, accepts only the credentials given in RELAY_USER / RELAY_PASSWORD (from its environment,
never its command line) and stores each message it accepts in /tmp/relay-inbox with a JSON note
of who logged in. Started by tests/realdms/test_setup_features.py; aiosmtpd and its two
dependencies are copied into the container from the test machine.
"""

import json
import os
import signal
import ssl
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

INBOX = Path("/tmp/relay-inbox")
USER = os.environ["RELAY_USER"].encode()
PASSWORD = os.environ["RELAY_PASSWORD"].encode()


class Inbox:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        number = len(list(INBOX.glob("*.eml")))
        login = session.auth_data.login.decode() if session.authenticated else None
        note = {"login": login,
                "tls": session.ssl is not None, "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos}
        (INBOX / f"{number}.json").write_text(json.dumps(note))  # first: the test looks for .eml
        (INBOX / f"{number}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 OK stored"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER
          and auth_data.password == PASSWORD)
    if not ok:
        (INBOX / "refused.log").open("a").write(f"{mechanism}\n")
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def main() -> None:
    INBOX.mkdir(exist_ok=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain("/tmp/relay-standin.crt", "/tmp/relay-standin.key")
    controller = Controller(Inbox(), hostname="127.0.0.1", port=2525, tls_context=context,
                            require_starttls=True, authenticator=authenticate,
                            auth_required=True, auth_require_tls=True)
    controller.start()
    (INBOX / "ready").write_text("ready\n")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


if __name__ == "__main__":
    main()

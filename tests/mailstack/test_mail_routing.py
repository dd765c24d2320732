"""End-to-end: what `dms-reconciler apply` writes routes mail exactly as mailserver.yaml says.

The real CLI writes a DMS config volume; `tests.mailstack` turns it into Postfix and Dovecot tables
the way DMS does and runs both servers for real. Each test sends over SMTP and looks in every
Maildir on disk (`copies`), or logs in over IMAP. One stack serves the whole module: a test states
the desired file it needs (`Site.ensure`), which re-applies and rebuilds only when it differs;
the order of the tests only saves re-applies.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mailstack import MailStack, mail_stack  # noqa: F401 - the module-scoped fixture
from tests.support.util import run_cli, sha512_hash

pytestmark = pytest.mark.mailstack

ADMIN_PASSWORD = "admin-from-hash"  # password_hash
CAROL_PASSWORD = "carol-from-hash"  # password_hash
# Non-ASCII, quotes, spaces and backslashes: the hash the tool makes must match Dovecot's UTF-8.
BOB_PASSWORD = 'bob from env "ü€"'  # password_env
JANE_PASSWORD = "jane from file ß\\ $6$"  # password_file


def desired_yaml(secret_file: Path, *, removed: frozenset[str] = frozenset()) -> str:
    """The base mailserver.yaml, optionally without some accounts (and out of the team alias)."""
    accounts = {
        "admin@example.com": f'password_hash: "{sha512_hash(ADMIN_PASSWORD, salt="adminsalt")}"',
        "bob@example.com": "password_env: BOB_PASSWORD",
        "jane@example.org": f"password_file: {secret_file}",
        "carol@example.org": f'password_hash: "{sha512_hash(CAROL_PASSWORD, salt="carolsalt")}"',
    }
    team = ["jane@example.org", "carol@example.org", "admin@example.com", "partner@elsewhere.net"]
    account_lines = "".join(f"  {address}:\n    {source}\n"
                            for address, source in accounts.items() if address not in removed)
    return (
        "version: 1\n"
        "domains: [example.com, example.org]\n"
        "accounts:\n" + account_lines + textwrap.dedent(f"""\
        aliases:
          info@example.org: jane@example.org
          team@example.org: [{", ".join(t for t in team if t not in removed)}]
        catch_all:
          example.com: admin@example.com
        devnull:
          - noreply@example.org
          - bounces@example.com
        """)
    )


class Site:
    """The desired file, its secrets, and the stack built from what the CLI wrote."""

    def __init__(self, stack: MailStack, folder: Path) -> None:
        self.stack = stack
        self.desired = folder / "mailserver.yaml"
        self.secret = folder / "jane.secret"
        self._current: tuple[str, str, str] | None = None

    def apply(self, *extra: str, removed: frozenset[str] = frozenset(),
              jane: str = JANE_PASSWORD, bob: str = BOB_PASSWORD) -> str:
        """Write the desired file and secrets, run the real `apply`, rebuild the servers."""
        text = desired_yaml(self.secret, removed=removed)
        self.desired.write_text(text)
        self.secret.write_text(jane + "\n")  # a trailing newline is ignored
        done = run_cli("apply", "-f", str(self.desired), *self.stack.volume.args(), *extra,
                       env={"BOB_PASSWORD": bob})
        assert done.returncode == 0, done.stdout + done.stderr
        self.stack.rebuild()
        self._current = (text, jane, bob)
        return done.stdout

    def ensure(self) -> None:
        """Route the base file; apply only if the stack was last built from something else."""
        if self._current != (desired_yaml(self.secret), JANE_PASSWORD, BOB_PASSWORD):
            self.apply()


@pytest.fixture(scope="module")
def site(mail_stack: MailStack, tmp_path_factory: pytest.TempPathFactory) -> Site:  # noqa: F811
    return Site(mail_stack, tmp_path_factory.mktemp("desired"))


@pytest.fixture
def base(site: Site) -> Iterator[MailStack]:
    """The stack routing the base mailserver.yaml."""
    site.ensure()
    yield site.stack


# --- routing ----------------------------------------------------------------------------------

def test_mail_to_an_account_lands_in_its_maildir(base: MailStack) -> None:
    sent = base.send("jane@example.org")
    assert sent.code == 250, sent.reply
    assert base.copies(sent.token) == {"jane@example.org": 1}
    subjects = [m["Subject"] for m in base.maildir_messages("jane@example.org")]
    assert any(sent.token in s for s in subjects)


def test_an_alias_delivers_to_its_target(base: MailStack) -> None:
    sent = base.send("info@example.org")
    assert sent.code == 250, sent.reply
    assert base.copies(sent.token) == {"jane@example.org": 1}


def test_a_multi_target_alias_gives_each_target_one_copy(base: MailStack) -> None:
    sent = base.send("team@example.org")
    assert sent.code == 250, sent.reply
    assert base.copies(sent.token) == {
        "jane@example.org": 1, "carol@example.org": 1, "admin@example.com": 1,
    }
    # The outside target is a forward: Postfix tried to relay it (outbound is disabled here).
    forwarded = [d for d in sent.deliveries if d.to == "partner@elsewhere.net"]
    assert [d.orig_to for d in forwarded] == ["team@example.org"]


def test_an_unknown_address_in_a_catch_all_domain_reaches_the_catch_all_target(
        base: MailStack) -> None:
    sent = base.send("whoever@example.com")
    assert sent.code == 250, sent.reply
    assert base.copies(sent.token) == {"admin@example.com": 1}


@pytest.mark.parametrize("rcpt", ["bob@example.com", "bob+newsletter@example.com"])
def test_a_real_account_in_a_catch_all_domain_keeps_its_own_mail(base: MailStack,
                                                                 rcpt: str) -> None:
    # Without its self-route (exact patterns in postfix-regexp.cf) the catch-all would take it.
    sent = base.send(rcpt)
    assert sent.code == 250, sent.reply
    assert base.copies(sent.token) == {"bob@example.com": 1}


@pytest.mark.parametrize("rcpt", ["noreply@example.org", "bounces@example.com"])
def test_a_devnull_address_is_accepted_and_stored_nowhere(base: MailStack, rcpt: str) -> None:
    # bounces@example.com is in the catch-all domain: its devnull entry must beat `@example.com`.
    sent = base.send(rcpt)
    assert sent.code == 250, sent.reply
    assert base.copies(sent.token) == {}
    assert [(d.orig_to, d.status, d.detail) for d in sent.deliveries] == [
        (rcpt, "sent", "delivered to file: /dev/null")
    ]


def test_an_unknown_user_in_a_hosted_domain_is_rejected_with_550(base: MailStack) -> None:
    sent = base.send("nobody@example.org")
    assert sent.code == 550, sent.reply
    assert "User unknown" in sent.reply
    assert base.copies(sent.token) == {}


# --- idempotence ------------------------------------------------------------------------------

def test_applying_twice_changes_no_server_table_and_mail_still_routes(site: Site) -> None:
    site.ensure()
    stack = site.stack
    tables = stack.tables()
    volume = stack.volume.snapshot()

    output = site.apply()  # the same file again

    assert "No changes" in output
    assert stack.volume.snapshot() == volume
    assert stack.tables() == tables
    for rcpt, owner in [("jane@example.org", "jane@example.org"),
                        ("whoever@example.com", "admin@example.com"),
                        ("bob@example.com", "bob@example.com")]:
        sent = stack.send(rcpt)
        assert stack.copies(sent.token) == {owner: 1}, rcpt


# --- IMAP logins ------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "password"), [
    ("admin@example.com", ADMIN_PASSWORD),  # password_hash
    ("bob@example.com", BOB_PASSWORD),  # password_env
    ("jane@example.org", JANE_PASSWORD),  # password_file
], ids=["password_hash", "password_env", "password_file"])
def test_imap_login_works_with_the_password_from_each_source(base: MailStack, address: str,
                                                             password: str) -> None:
    assert base.imap_login(address, password)
    assert not base.imap_login(address, password + "-wrong")


# --- removal ----------------------------------------------------------------------------------

def test_removed_accounts_lose_their_mail_routing_but_keep_their_maildirs(site: Site) -> None:
    site.ensure()
    stack = site.stack
    before = {rcpt: stack.send(rcpt) for rcpt in ("carol@example.org", "bob@example.com")}
    assert stack.copies(before["carol@example.org"].token) == {"carol@example.org": 1}
    assert stack.copies(before["bob@example.com"].token) == {"bob@example.com": 1}

    output = site.apply(removed=frozenset({"carol@example.org", "bob@example.com"}))
    assert "carol@example.org" in output and "bob@example.com" in output

    # carol's domain has no catch-all: her address is unknown now.
    carol = stack.send("carol@example.org")
    assert carol.code == 550, carol.reply
    assert not stack.imap_login("carol@example.org", CAROL_PASSWORD)
    # bob's domain has one: his self-route went with him, so the catch-all takes his mail.
    bob = stack.send("bob@example.com")
    assert bob.code == 250, bob.reply
    assert stack.copies(bob.token) == {"admin@example.com": 1}
    # Nothing was deleted on disk.
    for address, sent in before.items():
        kept = stack.maildir_messages(address)
        assert any(sent.token in m["Subject"] for m in kept), address
    # The multi-target alias no longer names carol: the others still get one copy each.
    team = stack.send("team@example.org")
    assert stack.copies(team.token) == {"jane@example.org": 1, "admin@example.com": 1}


# --- entries this tool did not write ----------------------------------------------------------

def test_a_hand_added_account_in_a_catch_all_domain_keeps_its_own_mail(site: Site) -> None:
    """`setup email add` accounts are kept (unmanaged): the catch-all must not take their mail,
    and a hand-written alias for such an account keeps routing it where the admin said."""
    site.ensure()
    stack = site.stack
    config = stack.volume.config
    with (config / "postfix-accounts.cf").open("a") as f:  # what `setup email add` appends
        f.write(f"carl@example.com|{sha512_hash('carl-pw', salt='carlsalt')}\n")
        f.write(f"dora@example.com|{sha512_hash('dora-pw', salt='dorasalt')}\n")
    with (config / "postfix-virtual.cf").open("a") as f:  # what `setup alias add` appends
        f.write("dora@example.com jane@example.org\n")
    try:
        output = site.apply()

        carl = stack.send("carl@example.com")
        assert stack.copies(carl.token) == {"carl@example.com": 1}
        dora = stack.send("dora@example.com")
        assert stack.copies(dora.token) == {"jane@example.org": 1}
        assert r"self-route /^carl@example\.com$/ -> carl@example.com" in output
        assert "dora" not in (config / "postfix-regexp.cf").read_text()
        assert "dora@example.com jane@example.org\n" in (config / "postfix-virtual.cf").read_text()
    finally:
        site.apply("--prune")  # back to exactly the base file for any later test
    assert "carl" not in (config / "postfix-regexp.cf").read_text()


def test_self_routes_stand_where_the_self_alias_stood_among_regexp_aliases(site: Site) -> None:
    """Postfix tries the full address in postfix-virtual.cf, then in postfix-regexp.cf, then
    (+extension stripped) the fixed tables only, then `@domain`. A declared pattern that also
    matches bob's address does not take his mail (his full-address route comes first, where
    postfix-virtual.cf stood); one for `bob+sales@` does (his +extension route comes last, where
    the stripped lookup stood); other +extensions stay his, other addresses the pattern's."""
    site.ensure()
    stack = site.stack
    patterns = ("regexp_aliases:\n"
                "  - {pattern: '^bo[a-z]*@example\\.com$', to: jane@example.org}\n"
                "  - {pattern: '^bob\\+sales@example\\.com$', to: jane@example.org}\n")
    site.desired.write_text(desired_yaml(site.secret) + patterns)
    try:
        done = run_cli("apply", "-f", str(site.desired), *stack.volume.args(),
                       env={"BOB_PASSWORD": BOB_PASSWORD})
        assert done.returncode == 0, done.stdout + done.stderr
        stack.rebuild()
        lines = (stack.volume.config / "postfix-regexp.cf").read_text().splitlines()[1:]
        assert lines == [r"/^bob@example\.com$/ bob@example.com",
                         r"/^bo[a-z]*@example\.com$/ jane@example.org",
                         r"/^bob\+sales@example\.com$/ jane@example.org",
                         r"/^bob\+(.*)@example\.com$/ bob+${1}@example.com"]
        for rcpt, owner in [("bob@example.com", "bob@example.com"),
                            ("bob+sales@example.com", "jane@example.org"),
                            ("bob+other@example.com", "bob@example.com"),
                            ("boz@example.com", "jane@example.org"),
                            ("whoever@example.com", "admin@example.com")]:
            sent = stack.send(rcpt)
            assert sent.code == 250, sent.reply
            assert stack.copies(sent.token) == {owner: 1}, rcpt
    finally:
        site.apply("--allow-deletions", "2")  # back to the base file: both patterns go


# --- password rotation ------------------------------------------------------------------------

def test_after_a_password_change_only_the_new_password_works(site: Site) -> None:
    site.ensure()
    stack = site.stack
    assert stack.imap_login("jane@example.org", JANE_PASSWORD)
    assert stack.imap_login("bob@example.com", BOB_PASSWORD)

    site.apply(jane="jane-rotated", bob="bob-rotated")

    assert stack.imap_login("jane@example.org", "jane-rotated")
    assert not stack.imap_login("jane@example.org", JANE_PASSWORD)
    assert stack.imap_login("bob@example.com", "bob-rotated")
    assert not stack.imap_login("bob@example.com", BOB_PASSWORD)
    assert stack.imap_login("admin@example.com", ADMIN_PASSWORD)  # untouched

"""Unit tests for each mail-aware rule: the mistake is caught, and the correct form is accepted."""

from __future__ import annotations

import pytest

from reconciler.errors import InvalidDesiredState, Severity
from reconciler.load.desired import load_desired_bytes

HEAD = """\
version: 1
domains: [example.com, example.org]
accounts:
  admin@example.com: {password_env: ADMIN}
  jane@example.org: {password_file: /run/secrets/jane}
"""


def problems(body: str, head: str = HEAD) -> list[tuple[int | None, str]]:
    """(line, message) of every error; [] when the file is valid."""
    text = head + body
    try:
        load_desired_bytes(text.encode(), "m.yaml")
    except InvalidDesiredState as exc:
        return [(d.line, d.message) for d in exc.diagnostics if d.severity is Severity.ERROR]
    return []


def only(body: str, head: str = HEAD) -> tuple[int | None, str]:
    found = problems(body, head)
    assert len(found) == 1, found
    return found[0]


def test_valid_file_has_no_problems() -> None:
    assert problems("aliases:\n  info@example.com: admin@example.com\n") == []


@pytest.mark.parametrize(("address", "words"), [
    ("Info@example.com", "write 'info@example.com'"),
    ("info+x@example.com", "sub-addressing"),
    ("in fo@example.com", "a space"),
    ("info@@example.com", "more than one '@'"),
    ("info", "has no '@'"),
    (".info@example.com", "dot at the start"),
    ("in..fo@example.com", "two in a row"),
    ("info@example", "at least two labels"),
    ("info@-example.com", "invalid label"),
    ("in/fo@example.com", "'/'"),
    ("in:fo@example.com", "':'"),
    ("in#fo@example.com", "'#'"),
    ("inf\u00f6@example.com", "before the '@'"),
    ("a" * 65 + "@example.com", "longer than 64"),
    ("info@" + "a" * 64 + ".com", "at most 63 characters"),
    ("info@example.123", "looks like an IP address"),
])
def test_address_rule(address: str, words: str) -> None:
    line, message = only(f"aliases:\n  '{address}': admin@example.com\n")
    assert line == 7 and words in message


def test_length_limits_hold_on_the_fast_path_and_the_schema() -> None:
    """The one-regex fast path of check_address and the schema pattern (checked by jsonschema-rs
    for valid-looking files) enforce the same limits as the slow path: 64 before the @."""
    from reconciler.addresses import check_address
    from reconciler.load import desired

    assert check_address("a" * 64 + "@example.com") is None
    assert "longer than 64" in (check_address("a" * 65 + "@example.com") or "")
    for doc_address in ("a" * 65 + "@example.com", "a@example.123"):
        doc = {"version": 1, "domains": ["example.com"],
               "accounts": {doc_address: {"password_env": "X"}}}
        assert not desired._fast_says_valid(doc)
        assert not desired._validator().is_valid(doc)


@pytest.mark.parametrize("domain", ["10.0.0.1", "example.123", "mail.example.0"])
def test_ip_addresses_and_numeric_tlds_are_not_hosted_domains(domain: str) -> None:
    """Decided (SECURITY.md, README): no top-level domain is all digits, so such a 'domain' is
    an IP address or a typo; DMS hosts mail for domain names. IP literals ([10.0.0.1]) are
    refused by the character rules already."""
    head = HEAD.replace("domains: [example.com, example.org]", f"domains: [example.org, {domain}]")
    found = problems("", head)
    assert any("looks like an IP address" in m for _, m in found), found
    assert any("looks like an IP address" in m for _, m in problems(f"hostname: {domain}\n"))
    assert problems("hostname: mail.1example.com\n") == []  # digits elsewhere are fine


def test_uppercase_domain_in_domains_is_an_error_with_the_fix() -> None:
    head = HEAD.replace("example.org]", "Example.org]")
    found = problems("", head)
    assert (2, "domain 'Example.org' has uppercase letters; write 'example.org'") in found


def test_hosted_addresses_must_be_in_domains() -> None:
    line, message = only("devnull: [noreply@example.net]\n")
    assert line == 6 and "'example.net', which is not listed in `domains`" in message
    assert "not listed" in only("catch_all:\n  example.net: admin@example.com\n")[1]
    quarantine = [m for _, m in problems("quarantine: {mailbox: q@example.net}\n")]
    assert any("not listed" in m for m in quarantine)
    assert problems("aliases:\n  fwd@example.com: someone@example.net\n") == []  # a forward


def test_target_inside_a_hosted_domain_must_resolve() -> None:
    line, message = only("aliases:\n  info@example.com: jnae@example.org\n")
    assert line == 7 and "did you mean 'jane@example.org'" in message
    assert problems("aliases:\n  info@example.com: [jane@example.org, admin@example.com]\n") == []
    # a catch-all domain resolves any address of it
    assert problems("catch_all:\n  example.org: jane@example.org\n"
                    "aliases:\n  info@example.com: anything@example.org\n") == []
    # a devnull address resolves too
    assert problems("devnull: [nobody@example.com]\naliases:\n  x@example.com: nobody@example.com\n") == []


def test_account_cannot_also_be_alias_or_devnull() -> None:
    assert "both an account and an alias" in only("aliases:\n  admin@example.com: a@b.net\n")[1]
    assert "both an account and a devnull" in only("devnull: [jane@example.org]\n")[1]
    assert "both an alias and a devnull" in only(
        "aliases:\n  info@example.com: admin@example.com\ndevnull: [info@example.com]\n")[1]


def test_alias_loops_are_found_including_through_catch_alls() -> None:
    line, message = only("aliases:\n  a@example.com: b@example.com\n  b@example.com: a@example.com\n")
    assert line == 7 and "a@example.com -> b@example.com -> a@example.com" in message
    assert "alias loop" in only("aliases:\n  a@example.com: a@example.com\n")[1]
    assert "through the catch-all" in only("catch_all:\n  example.com: ghost@example.com\n")[1]
    # a chain that ends at an account is fine
    assert problems("aliases:\n  a@example.com: b@example.com\n  b@example.com: admin@example.com\n") == []


def test_no_address_in_the_hostname_domain() -> None:
    head = HEAD.replace("version: 1\n", "version: 1\nhostname: mail.example.com\n")
    assert problems("", head) == []
    clash = head.replace("example.org]", "example.org, mail.example.com]")
    found = problems("aliases:\n  info@mail.example.com: admin@example.com\n", clash)
    assert any("server's own hostname" in m for _, m in found)
    bare = head.replace("hostname: mail.example.com", "hostname: example.com")
    assert any("give DMS a hostname such as mail.example.com" in m for _, m in problems("", bare))


def test_at_least_one_account() -> None:
    head = "version: 1\ndomains: [example.com]\naccounts: {}\n"
    assert "at least one account" in only("", head)[1]


@pytest.mark.parametrize(("spec", "words", "secret"), [
    ("{password_hash: '$6$xsalt$yhash'}", "start with its scheme", "xsalt"),
    ("{password_hash: '{PLAIN}hunter2'}", "clear text", "hunter2"),
    ("{password_hash: '{SHA512-CRYPT}$6$shortsalt'}", "does not look like a SHA512-CRYPT", "shortsalt"),
    ("{password_hash: '{NOPE}abcdef'}", "not one Dovecot knows", "abcdef"),
    ("{password_hash: '{SHA512-CRYPT}aa:bb'}", "':'", "aa:bb"),
    ("{password_env: A, password_file: /x}", "keep exactly one", "\0"),
    ("{quota: 1G}", "has no password", "\0"),
    ("{password_env: 1A}", "environment variable name", "\0"),
])
def test_password_rules_never_quote_the_hash(spec: str, words: str, secret: str) -> None:
    line, message = only(f"  bob@example.com: {spec}\n")
    assert words in message
    assert secret not in message


def test_well_formed_hashes_are_accepted() -> None:
    sha = ("{SHA512-CRYPT}$6$examplesalt1234$djhYHgU4lT6iwsWWt9hVLtZNfxKcN54iEfNMSvAIZ7tPEx"
           "HhbnAMirMd6T/eF/HG0sD4sw/bd6HEjJmGRzq4j/")
    blf = "{BLF-CRYPT}$2y$05$" + "a" * 53
    assert problems(f"  bob@example.com: {{password_hash: '{sha}'}}\n"
                    f"  carol@example.com: {{password_hash: '{blf}'}}\n") == []


@pytest.mark.parametrize(("quota", "ok"), [
    ("5G", True), ("500M", True), ("10k", True), ("1T", True), ("0", True), (0, True),
    ("5GB", False), ("10K", False), ("-1G", False), (500, False), ("", False), ("1.5G", False),
])
def test_quota_syntax(quota: object, ok: bool) -> None:
    value = f"'{quota}'" if isinstance(quota, str) else str(quota)
    found = problems(f"  bob@example.com: {{password_env: B, quota: {value}}}\n")
    assert (found == []) is ok, found


@pytest.mark.parametrize(("schedule", "ok"), [
    ("0 2 * * *", True), ("*/15 * * * 1-5", True), ("@daily", True), ("@reboot", True),
    ("0 2 * * * *", False), ("61 2 * * *", False), ("0 2 * *", False), ("@often", False),
    ("0 25 * * *", False),
])
def test_cron_schedule(schedule: str, ok: bool) -> None:
    found = problems(f"sa_learn:\n  - {{schedule: '{schedule}', learn: spam, folder: .Junk}}\n")
    assert (found == []) is ok, found


@pytest.mark.parametrize(("folder", "ok"), [
    (".Junk", True), ("cur", True), (".Archive*", True), (".INBOX.spam", True),
    ("../x", False), ("a/b", False), ("..", False), (".", False), ("x y", False),
])
def test_folder_names(folder: str, ok: bool) -> None:
    found = problems(f"sa_learn:\n  - {{schedule: '@daily', learn: ham, folder: '{folder}'}}\n")
    assert (found == []) is ok, found


def test_sa_learn_scopes_must_be_accounts_and_domains() -> None:
    assert "an alias" in only("aliases:\n  info@example.com: admin@example.com\n"
                              "sa_learn:\n  - {schedule: '@daily', learn: spam, folder: .Junk, "
                              "accounts: [info@example.com]}\n")[1]
    assert "not listed" in only("sa_learn:\n  - {schedule: '@daily', learn: spam, folder: .Junk, "
                                "domains: [example.net]}\n")[1]


def test_quarantine_mailbox_must_exist() -> None:
    assert "not an account or alias" in only("quarantine: {mailbox: q@example.com}\n")[1]
    assert problems("quarantine: {mailbox: admin@example.com, kinds: [spam]}\n") == []


def test_unknown_keys_suggest_the_right_one() -> None:
    line, message = only("  bob@example.com: {password_env: B, qouta: 1G}\n")
    assert "did you mean 'quota'" in message


def test_unused_domain_is_a_warning_not_an_error() -> None:
    text = HEAD.replace("example.org]", "example.org, example.net]")
    loaded = load_desired_bytes(text.encode(), "m.yaml")
    assert [w.message for w in loaded.warnings if "example.net" in w.message]


@pytest.mark.parametrize(("quota", "ok"), [
    ("8388607T", True), ("8388608T", False), ("9223372036854775807B", True),
    ("9223372036854775808B", False), ("8796093022207M", True), ("99999999999999999999G", False),
])
def test_quotas_beyond_what_dovecot_can_hold_are_refused(quota: str, ok: bool) -> None:
    """Dovecot 2.3 reads `userdb_quota_rule=*:bytes=<size>` into an int64 and multiplies by the
    unit without checking: 2^63-1 bytes is the largest quota that means what it says."""
    found = problems(f"  bob@example.com: {{password_env: B, quota: {quota}}}\n")
    found = [m for _, m in found if "quota" in m]
    assert (found == []) is ok, found
    if not ok:
        assert "larger than Dovecot can hold" in found[0]


def _warnings(body: str) -> list[str]:
    loaded = load_desired_bytes((HEAD + body).encode(), "m.yaml")
    return [d.format() for d in loaded.warnings]


def test_an_alias_beyond_postfix_expansion_limit_is_a_warning() -> None:
    """Decided: a warning (the file is valid; DMS may raise the limit in postfix-main.cf)."""
    many = "".join(f"    - user{i}@elsewhere.net\n" for i in range(1001))
    found = _warnings("aliases:\n  big@example.com:\n" + many)
    assert any("m.yaml:7:3: warning: aliases.big@example.com: alias 'big@example.com' expands to "
               "more than 1000 addresses" in w for w in found), found
    limit = "".join(f"    - user{i}@elsewhere.net\n" for i in range(1000))
    assert _warnings("aliases:\n  big@example.com:\n" + limit) == []
    # nested: two aliases of 600 each under one alias, and a chain 3,000 long (iterative)
    half = "".join(f"    - u{i}@elsewhere.net\n" for i in range(600))
    nested = (f"aliases:\n  a@example.com:\n{half}  b@example.com:\n{half}"
              "  all@example.com: [a@example.com, b@example.com]\n")
    found = _warnings(nested)
    assert len(found) == 1 and "alias 'all@example.com'" in found[0], found
    chain = "aliases:\n" + "".join(f"  c{i}@example.com: c{i + 1}@example.com\n"
                                   for i in range(3000)) + "  c3000@example.com: x@elsewhere.net\n"
    assert _warnings(chain) == []

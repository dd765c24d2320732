"""`rspamd:` rules: each mistake refused at its line, the correct form accepted."""

from __future__ import annotations

import pytest

from tests.load.test_rules import problems

GOOD = """\
rspamd:
  actions: {greylist: 4, add_header: 6, reject: 11}
  senders: {allow: [partner@elsewhere.net, "@trusted.example"], deny: ["@spammer.example"]}
  modules: {disable: [rbl], enable: [greylist]}
  options:
    common: {dns_timeout: 2}
    module: {classifier-bayes: {autolearn: true}}
  controller: {password_hash: "$2$6y69exj8zem6kpp43kiabd98j8pwccew$paw15tsh6f9ef1osyfkpsdm34jb5g1qcohj563yj59y69zthttcy"}
  learn:
    - {schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [admin@example.com]}
"""


def test_the_contract_example_is_valid() -> None:
    assert problems(GOOD) == []


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("rspamd:\n  actions: {add_header: 12}\n", 7, "not below reject 11 (DMS's default)"),
        ("rspamd:\n  actions: {greylist: 6, add_header: 6}\n", 7, "greylist 6 is not below"),
        ("rspamd:\n  senders:\n    deny: ['@bad#x.example']\n", 8, "starts a comment"),
        ("rspamd:\n  senders:\n    allow: [spammer.example]\n", 8, "neither an address"),
        ("rspamd:\n  senders:\n    allow: [a@b.example]\n    deny: [a@b.example]\n", 9, "both"),
        ("rspamd:\n  modules: {disable: [../etc/passwd]}\n", 7, "is a path"),
        ("rspamd:\n  modules: {disable: [rbll]}\n", 7, "did you mean 'rbl'"),
        ("rspamd:\n  modules: {disable: [rbl], enable: [rbl]}\n", 7, "both enabled and disabled"),
        ("rspamd:\n  options:\n    common: {x: \"a;b\"}\n", 8, "';'"),
        ("rspamd:\n  options:\n    common: {x: \"a\\nb\"}\n", 8, "a line break"),
        ("rspamd:\n  options:\n    module:\n      rbl: {x: 'say \"hi\"'}\n", 9, "'\"'"),
        ("rspamd:\n  options:\n    module:\n      rbl: {enabled: false}\n", 9, "rspamd.modules"),
        ("rspamd:\n  options:\n    module:\n      nosuch: {x: 1}\n", 9, "not a module"),
        ("rspamd:\n  controller: {password_hash: hunter2}\n", 7, "rspamadm pw"),
        (
            "rspamd:\n  learn:\n    - {schedule: '0 2 * *', learn: spam, folder: .Junk}\n",
            8,
            "five",
        ),
        (
            "rspamd:\n  learn:\n    - {schedule: '@daily', learn: ham, folder: ../x}\n",
            8,
            "is a path",
        ),
        (
            "rspamd:\n  learn:\n    - {schedule: '@daily', learn: spam, folder: .Junk, "
            "accounts: [nobody@example.com]}\n",
            8,
            "not an account",
        ),
    ],
)
def test_mistakes_are_refused_at_their_line(body: str, line: int, words: str) -> None:
    found = problems(body)
    assert found, body
    assert any(at == line and words in message for at, message in found), found

"""The plan shows where mail goes (issue 20): only secrets and values really shaped like a hash
are redacted. A regexp alias whose pattern or target holds `{4}`, `${1}` or a `$` anchor is shown
verbatim in every plan form and in log lines, while real hashes still never are."""

from __future__ import annotations

import io
import json
import logging

from reconciler import log
from reconciler.errors import redact
from tests.secrets.test_output_secrets import ADMIN, ARGON, BCRYPT
from tests.support.util import run_cli, write_desired

PATTERNS = [r"^(.+)@example\.com$", r"^([a-z]{4})@example\.com$", r"^x{2,3}(.*)@example\.com$"]
TARGETS = ["${1}@attacker.example", "$1@attacker.example"]


def test_regexp_aliases_appear_verbatim_in_every_plan_form(tmp_path, volume):
    desired = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.com]
        accounts:
          admin@example.com: {{password_hash: "{ADMIN}"}}
        regexp_aliases:
          - {{pattern: '{PATTERNS[0]}', to: '{TARGETS[0]}'}}
          - {{pattern: '{PATTERNS[1]}', to: '{TARGETS[1]}'}}
          - {{pattern: '{PATTERNS[2]}', to: admin@example.com}}
        """)
    outputs = {}
    for fmt in ("text", "json", "markdown"):
        result = run_cli("plan", "-f", str(desired), *volume.args(), "--format", fmt)
        assert result.returncode == 0, result.stderr
        outputs[fmt] = result.stdout
    data = json.loads(outputs["json"])
    shown = json.dumps(data["changes"])
    for form, text in [("json", shown), ("text", outputs["text"]),
                       ("markdown", outputs["markdown"])]:
        for value in PATTERNS + TARGETS:
            wanted = json.dumps(value)[1:-1] if form == "json" else value
            assert wanted in text, (form, value, text)
        assert "(sensitive)" in text  # the account's hash
    for text in outputs.values():
        assert ADMIN not in text and ADMIN.rsplit("$", 1)[1] not in text


def test_log_lines_show_patterns_and_targets_but_never_hashes():
    stream = io.StringIO()
    shared = logging.getLogger(log.LOGGER_NAME)  # the tool's logger, as it was before setup
    propagate, level = shared.propagate, shared.level
    logger = log.setup(stream, fmt="json")
    try:
        logger.info("applied %s -> %s", PATTERNS[1], TARGETS[0],
                    extra={"fields": {"pattern": PATTERNS[0], "to": [TARGETS[0]],
                                      "oops": ADMIN, "also": BCRYPT}})
    finally:
        # as it was: later tests read its records through pytest's caplog (root's handler)
        logger.handlers.clear()
        logger.propagate, logger.level = propagate, level
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["message"] == f"applied {PATTERNS[1]} -> {TARGETS[0]}"
    assert record["pattern"] == PATTERNS[0] and record["to"] == [TARGETS[0]]
    assert record["oops"] == "(sensitive)" and record["also"] == "(sensitive)"


def test_redact_leaves_regexp_syntax_alone_and_still_finds_hashes():
    for value in [*PATTERNS, *TARGETS, "/^(.*)-(.*)@example\\.com$/ $1$2@example.net",
                  "a{1,8}b{SHA}", "{4}abcdefghijkl", "${12345678}", "$1$2@example.net",
                  "user${1}suffix@example.org", "{pattern}@example.com"]:
        assert redact(f"target '{value}'") == f"target '{value}'", value
    for value in (ADMIN, BCRYPT, ARGON, "{sha512-crypt}$6$salt$abcdefghijkl",
                  "{PLAIN}hunter2hunter2", "{CRYPT}abcdefghijklm"):
        assert redact(f"'{value}'") == "'(sensitive)'", value

"""Every file in tests/bad/ holds one mistake; `validate` must name its line and explain it.

Each file starts with `# expect: LINE: words` (LINE may be `*`); files that cannot carry a comment
(empty, binary) have their expectation here. Every case runs the real CLI: exit 1, the message at
`FILE:LINE:`, no traceback, and the file itself untouched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.util import REPO, run_cli

BAD = REPO / "tests" / "bad"
NO_COMMENT = {
    "empty.yaml": ("1", "empty"),
    "binary-junk.yaml": ("1", "NUL byte"),
    "not-utf8.yaml": ("5", "not UTF-8"),
}


def expectation(path: Path) -> tuple[str, str]:
    if path.name in NO_COMMENT:
        return NO_COMMENT[path.name]
    first = path.read_text().splitlines()[0]
    match = re.match(r"# expect: (\d+|\*): (.+)", first)
    assert match, f"{path.name} needs a '# expect: LINE: words' first line"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_file_is_refused_at_its_line(path: Path) -> None:
    line, words = expectation(path)
    before = path.read_bytes()
    result = run_cli("validate", "-f", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    where = re.escape(str(path)) + ":" + (r"\d+" if line == "*" else line) + r"(:\d+)?: error: "
    found = [l for l in result.stdout.splitlines() if re.match(where, l)]
    assert found, f"no error at line {line}:\n{result.stdout}"
    assert any(words in l for l in found), f"expected '{words}' at line {line}:\n{result.stdout}"
    assert path.read_bytes() == before


def test_json_format_gives_the_same_errors() -> None:
    path = BAD / "alias-loop.yaml"
    text = run_cli("validate", "-f", str(path))
    machine = run_cli("validate", "-f", str(path), "--format", "json")
    assert machine.returncode == 1
    import json

    data = json.loads(machine.stdout)
    assert data["valid"] is False
    assert [f"{e['file']}:{e['line']}:{e['column']}: error: {e['path']}: {e['message']}"
            for e in data["errors"]] == [l for l in text.stdout.splitlines() if ": error: " in l]


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "version: 1\n"
        "domains: [example.com]\n"
        "accounts:\n"
        "  Admin@example.com: {password_env: A}\n"
        "  bob@example.org: {password_env: B}\n"
        "  carol@example.com: {password_env: C, quota: lots}\n"
        "aliases:\n"
        "  info@example.com: nobody@example.com\n"
    )
    result = run_cli("validate", "-f", str(path))
    lines = [l for l in result.stdout.splitlines() if ": error: " in l]
    assert [int(l.split(":")[1]) for l in lines] == [4, 5, 6, 8]

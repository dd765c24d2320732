"""dmsgen's models of bash `read`, `cut` and grep's `.` agree with the real bash, cut and grep
here, on random lines built from the characters that matter (delimiters, spaces, tabs, dots).

The real proof, DMS's own functions in both DMS images, is tests/realdms/test_dmsgen_identical.py;
this one runs in a second and covers many more shapes of line."""

from __future__ import annotations

import random
import subprocess

import pytest

from reconciler import dmsgen

ALPHABET = "ab|: \t.@"


def _lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 9))))
    return out


def _bash(script: str, lines: list[str]) -> list[str]:
    """Run `script` once per input line (on stdin); its output lines, one record per line."""
    data = "".join(line + "\n" for line in lines)
    loop = f"while IFS= read -r LINE; do {script}; done"
    result = subprocess.run(
        ["bash", "-c", loop], input=data, capture_output=True, text=True, check=True
    )
    return result.stdout.split("\n")[:-1]


def test_read_fields_matches_bash() -> None:
    lines = _lines(400, 1)
    got = _bash(
        'IFS=\'|\' read -r A B C <<< "$LINE"; printf \'%s\\x1f%s\\x1f%s\\n\' "$A" "$B" "$C"',
        lines,
    )
    assert got == ["\x1f".join(dmsgen.read_fields(line, "|", 3)) for line in lines]


@pytest.mark.parametrize("delimiter", ["|", ":"])
def test_read_array_matches_bash(delimiter: str) -> None:
    lines = _lines(400, 2)
    got = _bash(
        f"IFS='{delimiter}' read -r -a A <<< \"$LINE\"; "
        'printf \'%s\' "${#A[@]}"; for X in "${A[@]}"; do printf \'\\x1f%s\' "$X"; done; echo',
        lines,
    )
    want = []
    for line in lines:
        fields = dmsgen.read_array(line, delimiter)
        want.append(str(len(fields)) + "".join("\x1f" + f for f in fields))
    assert got == want


def test_read_words_matches_bash() -> None:
    lines = _lines(400, 3)
    got = _bash('read -r A B <<< "$LINE"; printf \'%s\\x1f%s\\n\' "$A" "$B"', lines)
    assert got == ["\x1f".join(dmsgen.read_words(line, 2)) for line in lines]


def test_cut_matches_cut() -> None:
    lines = [line for line in _lines(300, 4) if "\t" not in line]
    got = _bash(
        'printf \'%s\\x1f%s\\n\' "$(cut -d @ -f1 <<< "$LINE")" "$(cut -d @ -f2 <<< "$LINE")"',
        lines,
    )
    want = [
        dmsgen.cut_field(line, "@", 1) + "\x1f" + dmsgen.cut_field(line, "@", 2) for line in lines
    ]
    assert got == want


def test_grep_dot_is_any_character_and_first_line_wins() -> None:
    rng = random.Random(5)
    text = "".join(
        "".join(rng.choice("ab.@:") for _ in range(rng.randrange(1, 8))) + "\n" for _ in range(60)
    )
    grep = dmsgen.Grep(text)
    folded = dmsgen.Grep(text.upper(), ignore_case=True)
    for _ in range(150):
        pattern = "".join(rng.choice("ab.@:") for _ in range(rng.randrange(1, 4)))
        result = subprocess.run(
            ["grep", "-m1", "-e", pattern], input=text, capture_output=True, text=True
        )
        first = result.stdout[:-1] if result.returncode == 0 else None
        assert grep.first(pattern) == first, pattern
        upper = subprocess.run(
            ["grep", "-i", "-m1", "-e", pattern],
            input=text.upper(),
            capture_output=True,
            text=True,
        )
        assert folded.first(pattern) == (upper.stdout[:-1] if upper.returncode == 0 else None)


def test_grep_with_long_patterns_around_the_at_matches_grep() -> None:
    """Patterns with up to Grep.WINDOW literal characters and more on each side of an `@` (the
    widths its index is keyed by), dots anywhere, against lines with several `@`s."""
    rng = random.Random(9)

    def word(low: int, high: int) -> str:
        return "".join(rng.choice("ab.") for _ in range(rng.randrange(low, high)))

    lines = [
        "|".join(f"{word(0, 7)}@{word(0, 7)}" for _ in range(rng.randrange(1, 3)))
        for _ in range(300)
    ]
    text = "".join(line + "\n" for line in lines)
    grep = dmsgen.Grep(text)
    folded = dmsgen.Grep(text.upper(), ignore_case=True)
    for number in range(400):
        line = rng.choice(lines)
        at = line.index("@")
        start, end = max(0, at - rng.randrange(0, 8)), at + rng.randrange(1, 8)
        pattern = "".join(c if rng.random() > 0.15 else "." for c in line[start:end])
        if number % 4 == 0:  # a pattern that may match nowhere
            pattern = f"{word(1, 7)}@{word(1, 7)}"
        if pattern.startswith("-"):
            continue
        result = subprocess.run(
            ["grep", "-m1", "-e", pattern], input=text, capture_output=True, text=True
        )
        assert grep.first(pattern) == (result.stdout[:-1] if result.returncode == 0 else None)
        upper = subprocess.run(
            ["grep", "-i", "-m1", "-e", pattern.upper()],
            input=text.upper(),
            capture_output=True,
            text=True,
        )
        want = upper.stdout[:-1] if upper.returncode == 0 else None
        assert folded.first(pattern.upper()) == want, pattern


def test_patterns_grep_would_read_differently_are_declined() -> None:
    for pattern in ("", "-a@b", "a*@b", "a[1]@b", "^a@b", "a@b$", "a\\.b@c"):
        with pytest.raises(dmsgen.Unsupported):
            dmsgen.Grep("x\n").first(pattern)


def test_an_address_look_up_checks_a_handful_of_lines_not_a_tenth_of_the_file() -> None:
    """At 10,000 accounts dmsgen looks each account and alias target up (quotas, dummy
    accounts): keyed by one character around the `@`, every look-up checked ~1,000 lines."""
    lines = [f"user{i}@domain{i % 7}.test|{{SHA512-CRYPT}}x" for i in range(5000)]
    grep = dmsgen.Grep("".join(line + "\n" for line in lines))
    for i in range(0, 5000, 97):
        pattern = f"user{i}@domain{i % 7}.test"
        assert len(list(grep._candidates(pattern))) <= 10, pattern
        assert grep.first(pattern) == lines[i]

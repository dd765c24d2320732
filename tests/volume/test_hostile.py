"""Hostile input through the real CLI: every bad file is refused with a clear error naming the
place, exit 1, no traceback, nothing on disk changes; hostile volumes (symlinks out of the volume,
FIFOs, hard links, junk) are refused or handled without following anything.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.util import Volume, make_volume, run_cli, sha512_hash

HASH = sha512_hash("hostile-test-password")
COUNT: dict[str, int] = {}
MAX_OUTPUT = 20_000  # bytes: a refusal is a few lines, never an echo of the attack


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nhostile inputs tried: {sum(COUNT.values())} ({COUNT})")


def _template(values: dict[str, str]) -> tuple[str, dict[str, int]]:
    """mailserver.yaml with `values` (JSON-quoted, so YAML reads any character) in known places.

    Returns the text and the line of each place."""
    q = {k: json.dumps(v) for k, v in values.items()}
    lines = [
        "version: 1",
        f"hostname: {q.get('hostname', 'mail.example.net')}",
        f"domains: [example.com, {q.get('domain', 'example.org')}]",
        "accounts:",
        f"  {q.get('account', 'admin@example.com')}:",
        f"    password_hash: {q.get('password_hash', json.dumps(HASH))}",
        f"    quota: {q.get('quota', '1G')}",
        f"  {q.get('env_account', 'env@example.com')}: {{password_env: {q.get('password_env', 'ENV_PW')}}}",
        f"  file@example.com: {{password_file: {q.get('password_file', 'secret.txt')}}}",
        "aliases:",
        f"  {q.get('alias', 'postmaster@example.com')}: admin@example.com",
        f"  abuse@example.com: [admin@example.com, {q.get('target', 'x@elsewhere.test')}]",
        f"devnull: [{q.get('devnull', 'noreply@example.com')}]",
        f"catch_all: {{{q.get('catch_all', 'example.org')}: admin@example.com}}",
        f"quarantine: {{mailbox: {q.get('mailbox', 'admin@example.com')}}}",
        "sa_learn:",
        f"  - schedule: {q.get('schedule', json.dumps('0 2 * * *'))}",
        "    learn: spam",
        f"    folder: {q.get('folder', '.Junk')}",
        f"    accounts: [{q.get('sa_account', 'admin@example.com')}]",
    ]
    where = {"hostname": 2, "domain": 3, "account": 5, "password_hash": 6, "quota": 7,
             "env_account": 8, "password_env": 8, "password_file": 9, "alias": 11, "target": 12,
             "devnull": 13, "catch_all": 14, "mailbox": 15, "schedule": 17, "folder": 19,
             "sa_account": 20}
    return "\n".join(lines) + "\n", {k: where[k] for k in values}


INJECTIONS = {"newline": "\n", "pipe": "|", "colon": ":", "comma": ",", "space": " ",
              "dotdot": "..", "slash": "/", "hash": "#", "tab": "\t", "cr": "\r", "nul": "\0",
              "quote": '"', "backslash": "\\", "dollar-at": "$@", "ansi": "\x1b[2J",
              "bidi": "\u202e", "zero-width": "\u200b", "cyrillic-a": "\u0430",
              "fullwidth-at": "\uff20", "plus": "+"}


def _injected(inj: str) -> dict[str, str]:
    """The injection in every place a value reaches a config line."""
    values = {
        "hostname": f"mail{inj}.example.net", "domain": f"exam{inj}ple.org",
        "account": f"ad{inj}min2@example.com", "password_hash": HASH + inj + "x",
        "quota": f"1G{inj}evil@example.com:0", "env_account": f"e{inj}nv@example.com",
        "password_env": f"ENV{inj}PW", "alias": f"post{inj}master@example.com",
        "target": f"x{inj}y@elsewhere.test", "devnull": f"no{inj}reply@example.com",
        "catch_all": f"exa{inj}mple.org", "mailbox": f"q{inj}@example.com",
        "schedule": f"0 2 * * *{inj}* * * * * root touch /tmp/pwned",
        "folder": f".Junk{inj}x", "sa_account": f"ad{inj}min@example.com",
    }
    if inj in ("\n", "\0"):
        values["password_file"] = f"secret{inj}.txt"
    if inj == "..":  # dots are fine inside a domain's labels only one at a time
        values["folder"] = "../../../etc"
    if inj == "/":
        values["folder"] = ".Junk/../../x"
    if inj == "+":  # '+' is legal in cron steps; keep the schedule broken another way
        values["schedule"] = "0 2 * * *+"
    return values


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "secret.txt").write_text("file-Secret-1\n")
    return root


def _prepared_volume(root: Path) -> Volume:
    """A volume that a valid mailserver.yaml was applied to: refusals must leave it as it is."""
    volume = make_volume(root)
    text, _ = _template({})
    good = root / "good.yaml"
    good.write_text(text)
    (root / "secret.txt").write_text("file-Secret-1\n")
    result = run_cli("apply", "-f", str(good), *volume.args(), env={"ENV_PW": "env-Secret-1"})
    assert result.returncode == 0, result.stderr
    return volume


def _refused(result: subprocess.CompletedProcess[str], name: str) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 1, f"{name}: exit {result.returncode}: {out[:500]}"
    assert "Traceback" not in out and "internal error" not in out, f"{name}: {out[:2000]}"
    if name.startswith("many errors"):  # every error is reported, each on a short line
        assert all(len(line) < 500 for line in out.splitlines())
    else:
        assert len(out.encode()) < MAX_OUTPUT, f"{name}: {len(out)} bytes of output"
    assert "\x1b" not in out and "\u202e" not in out, f"{name}: raw control characters printed"
    return out


def _run_both(path: Path, volume: Volume, name: str, *, validate: bool = True) -> str:
    """apply (and validate) the hostile file: both refuse; the volume is untouched.

    `apply` reads the file exactly as `plan` does, so plan's refusal is checked once, in
    test_plan_refuses_like_apply."""
    before = volume.snapshot()
    env = {"ENV_PW": "env-Secret-1"}
    out = _refused(run_cli("apply", "-f", str(path), *volume.args(), env=env), f"{name} apply")
    assert volume.snapshot() == before, f"{name}: apply changed the volume"
    if validate:
        out = _refused(run_cli("validate", "-f", str(path), env=env), f"{name} validate")
    assert not Path("/tmp/pwned").exists()
    return out


def test_injection_in_every_field_is_refused_at_its_line(base: Path) -> None:
    volume = _prepared_volume(base / "vol-inject")

    def one(item: tuple[str, str]) -> tuple[str, str, dict[str, int]]:
        name, inj = item
        text, where = _template(_injected(inj))
        path = base / f"inject-{name}.yaml"
        path.write_text(text)
        return name, _run_both(path, volume, name, validate=name in ("newline", "ansi")), where

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, INJECTIONS.items()))
    for name, out, where in results:
        COUNT["injected values"] = COUNT.get("injected values", 0) + len(where)
        lines = {int(line.split(":")[1]) for line in out.splitlines()
                 if line.startswith(str(base)) and ": error:" in line}
        missing = {place: line for place, line in where.items() if line not in lines}
        assert not missing, f"{name}: no error at {missing}:\n{out}"


def test_plan_refuses_like_apply(base: Path) -> None:
    volume = _prepared_volume(base / "vol-plan")
    text, where = _template(_injected("|"))
    path = base / "plan-pipe.yaml"
    path.write_text(text)
    before = volume.snapshot()
    for fmt in ("text", "json", "markdown"):
        out = _refused(run_cli("plan", "-f", str(path), *volume.args(), "--format", fmt,
                               env={"ENV_PW": "env-Secret-1"}), f"plan {fmt}")
        assert f"{path}:{where['alias']}:" in out
    assert volume.snapshot() == before


def _bomb(levels: int = 10, width: int = 10) -> bytes:
    lines = ["version: 1", "domains: [example.com]", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"accounts: {{admin@example.com: {{password_env: X}}, x: *a{levels - 1}}}")
    return ("\n".join(lines) + "\n").encode()


def _deep(n: int, opener: str, closer: str) -> bytes:
    return f"version: 1\nx: {opener * n}{closer * n}\n".encode()


def _long_line(size: int) -> bytes:
    return (f'version: 1\ndomains: [example.com]\naccounts:\n  ? "{"a" * size}@example.com"\n'
            f'  : {{password_env: X}}\n').encode()


POSITIONED_ON_LINE_2 = re.compile(r":2:\d+: error: ")
WHOLE_FILE: dict[str, tuple[Callable[[], bytes], str | re.Pattern[str]]] = {
    # name: (content, a phrase the error must contain, or a pattern it must match)
    "billion laughs": (_bomb, "billion laughs"),
    "quadratic blowup": (lambda: b"version: 1\nbig: &b [" + b"x, " * 5000 + b"x]\nrefs: ["
                         + b"*b, " * 1000 + b"*b]\n", "billion laughs"),
    "recursive alias": (lambda: b"version: 1\na: &a [*a]\n", "not complete"),
    "100 MB file": (lambda: b"version: 1\n" + b"# " + b"x" * (100 * 1024 * 1024) + b"\n",
                    "the limit is"),
    # Whoever refuses first (our MAX_DEPTH or libyaml's own limit in PyYAML >= 6.0.4), the
    # refusal is positioned on line 2; the wording is libyaml's or ours.
    "deep lists": (lambda: _deep(20000, "[", "]"), POSITIONED_ON_LINE_2),
    "deep mappings": (lambda: _deep(20000, "{a: ", "}"), POSITIONED_ON_LINE_2),
    "NUL byte": (lambda: b"version: 1\ndomains: [exa\0mple.com]\n", "NUL byte"),
    "binary junk": (lambda: random.Random(7).randbytes(4096), "not UTF-8"),
    "UTF-16": (lambda: "version: 1\n".encode("utf-16"), "not UTF-8"),
    "invalid UTF-8": (lambda: b"version: 1\ndomains: [\xff.com]\n", "not UTF-8"),
    "empty": (lambda: b"", "empty"),
    "only whitespace": (lambda: b"\n  \n\t\n", "empty"),
    "10 MB line": (lambda: _long_line(10 * 1024 * 1024), "error"),
    "two documents": (lambda: b"version: 1\n---\nversion: 1\n", "more than one YAML document"),
    "merge key": (lambda: b"version: 1\nbase: &b {prune: true}\npolicy: {<<: *b}\n", "merge"),
    "python tag": (lambda: b'version: 1\nx: !!python/object/apply:os.system ["touch /tmp/pwned"]\n',
                   "unsupported YAML tag"),
    "binary tag": (lambda: b"version: !!binary AQ==\n", "unsupported YAML tag"),
    "empty sa_learn folder": (lambda: b"version: 1\ndomains: [example.com]\naccounts:\n"
                              b"  a@example.com: {password_env: X}\nsa_learn:\n"
                              b'  - {schedule: "0 2 * * *", learn: spam, folder: ""}\n',
                              "folder is empty"),
    "empty float tag": (lambda: b"!!float\n", "not a valid float value"),
    "empty bool tag": (lambda: b'version: !!bool ""\n', "not a valid bool value"),
    "duplicate keys": (lambda: b"version: 1\nversion: 1\n", "duplicate key"),
    "tabs": (lambda: b"version: 1\naccounts:\n\ta@example.com: {}\n", "tabs"),
    "not a mapping": (lambda: b"- just\n- a list\n", "must be a mapping"),
    "non-string keys": (lambda: b"version: 1\n? [a, b]\n: c\n1: 2\n", "error"),
    "nan deletions": (lambda: b"version: 1\npolicy: {max_deletions: .nan}\n", "error"),
    "huge integer": (lambda: b"version: 1\npolicy: {max_deletions: " + b"9" * 5000 + b"}\n",
                     "error"),
    "many errors": (lambda: ("version: 1\ndomains: [example.com]\naccounts:\n" + "".join(
        f"  BAD{i}@example.com: {{}}\n" for i in range(2000))).encode(), "4000 error"),
}


def test_whole_file_attacks_are_refused(base: Path) -> None:
    volume = _prepared_volume(base / "vol-whole")

    def one(item: tuple[str, tuple[Callable[[], bytes], str | re.Pattern[str]]]) -> None:
        name, (make, phrase) = item
        path = base / f"whole-{name.replace(' ', '-')}.yaml"
        path.write_bytes(make())
        out = _run_both(path, volume, name)
        found = phrase.search(out) if isinstance(phrase, re.Pattern) else phrase in out
        assert found, f"{name}: expected '{phrase}' in:\n{out[:1500]}"
        assert f"{path}:" in out or f"{path} " in out, f"{name}: the file is not named"

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, WHOLE_FILE.items()))
    COUNT["whole-file attacks"] = len(WHOLE_FILE)


# --- a hostile volume ---------------------------------------------------------------------------

MANAGED = ["postfix-accounts.cf", "postfix-virtual.cf", "postfix-aliases.cf", "dovecot-quotas.cf",
           "amavis.cf", "dms-reconciler.state.json", "cron"]


def _outside(root: Path) -> Path:
    target = root / "outside" / "precious"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("root:x:0:0::/root:/bin/bash\n")
    return target


def _desired(root: Path) -> Path:
    text, _ = _template({})
    path = root / "mailserver.yaml"
    path.write_text(text)
    (root / "secret.txt").write_text("file-Secret-1\n")
    return path


def _untouched(target: Path, before: tuple[bytes, int]) -> None:
    assert (target.read_bytes(), target.stat().st_mtime_ns) == before, "followed a symlink out"


@pytest.mark.parametrize("name", MANAGED)
def test_managed_file_symlinked_out_of_the_volume_is_refused(tmp_path: Path, name: str) -> None:
    volume = make_volume(tmp_path / "dms")
    target = _outside(tmp_path)
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    volume.file(name).symlink_to(target)
    desired = _desired(tmp_path)
    for command in ("plan", "apply"):
        result = run_cli(command, "-f", str(desired), *volume.args(), env={"ENV_PW": "e-Secret-1"})
        out = _refused(result, f"{name} {command}")
        assert "is a symlink; refusing to follow it" in out, out
    _untouched(target, before)
    assert volume.file(name).is_symlink()
    COUNT["symlinks out of the volume"] = COUNT.get("symlinks out of the volume", 0) + 2


def test_lock_and_temp_names_as_symlinks_are_never_followed(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    target = _outside(tmp_path)
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    desired = _desired(tmp_path)
    lock = volume.config / "check-for-changes.sh.lock"
    lock.symlink_to(target)
    os.utime(lock, (0, 0), follow_symlinks=False)  # a stale lock that is a symlink
    planted = volume.config / ".postfix-accounts.cf.dms-reconciler-0123456789ab.tmp"
    planted.symlink_to(target)
    result = run_cli("apply", "-f", str(desired), *volume.args(), env={"ENV_PW": "e-Secret-1"})
    assert result.returncode == 0, result.stderr
    assert "removed the stale lock" in result.stderr
    assert not lock.exists() and not lock.is_symlink() and not planted.is_symlink()
    _untouched(target, before)
    COUNT["lock and temp symlinks"] = 2


def test_fifo_device_and_directory_in_place_of_a_managed_file(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    desired = _desired(tmp_path)
    kinds = {
        "postfix-virtual.cf": lambda p: os.mkfifo(p),
        "postfix-accounts.cf": lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5)),
        "dovecot-quotas.cf": lambda p: p.mkdir(),
    }
    for name, make in kinds.items():
        make(volume.file(name))
        result = run_cli("plan", "-f", str(desired), *volume.args(), env={"ENV_PW": "e-Secret-1"},
                         timeout=30)
        out = _refused(result, name)
        assert "is not a regular file" in out, out
        path = volume.file(name)
        path.rmdir() if path.is_dir() else path.unlink()
    COUNT["special files"] = len(kinds)


def test_hard_links_never_change_the_linked_file(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    desired = _desired(tmp_path)
    target = _outside(tmp_path)
    os.link(target, volume.file("postfix-virtual.cf"))  # replaced by rename: target untouched
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    result = run_cli("apply", "-f", str(desired), *volume.args(), env={"ENV_PW": "e-Secret-1"})
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == before[0]
    assert target.stat().st_nlink == 1
    cron_target = tmp_path / "outside" / "crontab"
    cron_target.write_text("# someone else's\n")
    volume.file("cron").unlink()
    os.link(cron_target, volume.file("cron"))  # rewritten in place: refused
    out = _refused(run_cli("apply", "-f", str(desired), *volume.args(),
                           env={"ENV_PW": "e-Secret-1"}), "hard-linked cron")
    assert "other hard links" in out
    assert cron_target.read_text() == "# someone else's\n"
    COUNT["hard links"] = 2


def test_junk_in_volume_files_is_read_without_harm(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    desired = _desired(tmp_path)
    rng = random.Random(11)
    junk = {
        "postfix-accounts.cf": rng.randbytes(20000) + b"\nx\x1b[2J@example.com|h\n",
        "postfix-virtual.cf": b"a" * 3_000_000 + b" b\n\xff\xfe@example.com x\n\tcont\n",
        "postfix-aliases.cf": b"devnull: /dev/null\n|evil: x\n\0\0\0\n",
        "dovecot-quotas.cf": b"a@b:1G:2\n::::\n" * 1000,
        "amavis.cf": b"# BEGIN dms-reconciler quarantine (managed from mailserver.yaml; edits here "
                     b"are overwritten)\n$x = `rm -rf /`;\n",
        "dms-reconciler.state.json": b'{"format": 1, "owned": {"postfix-accounts.cf": [1, {}]},'
                                     b' "plan_key": "zz"}',
        "cron": b"* * * * * root rm -rf /\n" + rng.randbytes(500),
    }
    for name, data in junk.items():
        volume.file(name).write_bytes(data)
    for fmt in ("text", "json", "markdown"):
        result = run_cli("plan", "-f", str(desired), *volume.args(), "--format", fmt,
                         env={"ENV_PW": "e-Secret-1"})
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[:2000]
        assert "Traceback" not in out and "\x1b" not in out
    result = run_cli("apply", "-f", str(desired), *volume.args(), env={"ENV_PW": "e-Secret-1"})
    assert result.returncode == 0, result.stderr[:2000]
    again = run_cli("apply", "-f", str(desired), *volume.args(), env={"ENV_PW": "e-Secret-1"})
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout[-500:]
    COUNT["junk volume files"] = len(junk)


def test_password_file_that_is_a_fifo_or_device_is_refused_not_read(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    os.mkfifo(tmp_path / "fifo")  # nobody writes to it: reading it would block forever
    (tmp_path / "adir").mkdir()
    desired = tmp_path / "mailserver.yaml"
    desired.write_text(
        "version: 1\ndomains: [example.com]\naccounts:\n"
        "  a@example.com: {password_file: fifo}\n"
        "  b@example.com: {password_file: /dev/zero}\n"
        "  c@example.com: {password_file: /dev/urandom}\n"
        "  d@example.com: {password_file: adir}\n")
    before = volume.snapshot()
    for command in ("plan", "apply"):
        out = _refused(run_cli(command, "-f", str(desired), *volume.args(), timeout=30), command)
        assert "password_file fifo: not a regular file" in out
        assert "password_file /dev/zero: not a regular file" in out
        assert "password_file /dev/urandom: not a regular file" in out
        assert "password_file adir: is a directory" in out
    assert volume.snapshot() == before
    COUNT["password_file specials"] = 4

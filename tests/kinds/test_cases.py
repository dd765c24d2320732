"""Golden scenario tests: one folder per case under tests/cases/, tests as data (pyinfra style).

A case folder holds:
- `mailserver.yaml` (and `secrets/` for its password_file sources),
- `case.json` (optional): `description`, `args` for plan and apply (e.g. `["--prune"]`),
  `apply_args`, and `env` (password_env values),
- `before/`: the volume, `config/` (the DMS config volume, with an optional
  `dms-reconciler.state.json`) and an optional `cron/sa-learn`,
- `plan.txt` and `plan.json`: the expected `plan` output, text and JSON,
- `after/`: the volume expected after `apply`, byte for byte.

Every case is checked the same way: the plan equals the golden files; apply to a copy gives
exactly `after/` (and touches no file whose bytes stay the same); a second plan is empty; a second
apply leaves every file byte-identical with its mtime and inode unchanged.

The commands run in-process through `reconciler.cli.main.main` (the same entry point as the console
script) from a work folder with relative paths, so no absolute path reaches the golden files.
Only two things are masked, both random by design:
- a password hash made for a new `password_file`/`password_env` secret: the golden line holds
  `NEW_HASH`; the real line must be a 5000-round `{SHA512-CRYPT}` hash that passlib verifies
  against the secret;
- the random `plan_key` of a state file apply creates: the golden file holds `<random>`.
The tool version in plan.json is masked as `<version>`.

`UPDATE_GOLDEN=1 pytest tests/kinds/test_cases.py` rewrites plan.txt, plan.json and after/ from what the
tool does now; review the diff before committing it. By default the tests compare.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import dkimkeys
from reconciler.cli.main import main
from reconciler.formats import accounts, masters, opendkim
from reconciler.load.desired import load_desired
from reconciler.model import PasswordEnv, PasswordFile
from reconciler.passwords.sources import MASTER_KEY, SecretReader, password_sources

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.hash import sha512_crypt

CASES = Path(__file__).resolve().parent.parent / "cases"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
NEW_HASH = "<new SHA512-CRYPT hash of the secret, verified with passlib>"
RANDOM = "<random>"
STATE = "config/dms-reconciler.state.json"
DKIM_KEYS = "config/opendkim/keys/"
ACCOUNTS = "config/postfix-accounts.cf"
MASTERS = "config/dovecot-masters.cf"
VOLUME_ARGS = ["-f", "mailserver.yaml", "--config-dir", "config", "--cron-file", "cron/sa-learn"]
NO_CHANGES = "No changes. The config volume matches mailserver.yaml."
_NEW_SHA512 = re.compile(r"\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}")
_PLAN_KEY = re.compile(r'"plan_key": "([0-9a-f]*)"')


@dataclass
class Result:
    code: int
    out: str
    err: str


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "mailserver.yaml").is_file())


def run(args: list[str], cwd: Path) -> Result:
    """`dms-reconciler ARGS` in-process, from `cwd`; environment set up by the `env` fixture."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old)
    return Result(code, out.getvalue(), err.getvalue())


def volume_files(root: Path) -> dict[str, Path]:
    """Relative path -> path of every file under root/config and root/cron."""
    out = {}
    for top in ("config", "cron"):
        base = root / top
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file() and path.name != ".gitkeep":
                    out[str(path.relative_to(root))] = path
    return out


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Relative path -> (bytes, mtime_ns, inode): proves that nothing was touched."""
    snap = {}
    for rel, path in volume_files(root).items():
        st = path.stat()
        snap[rel] = (path.read_bytes(), st.st_mtime_ns, st.st_ino)
    return snap


def secrets_of(work: Path, env: dict[str, str]) -> dict[str, str]:
    """address -> plaintext for every password_file / password_env account of the case."""
    state = load_desired(str(work / "mailserver.yaml")).state
    reader = SecretReader(str(work), env)
    return {key: reader.read(source).reveal() for key, source in password_sources(state)
            if isinstance(source, (PasswordFile, PasswordEnv))}


def mask_new_hashes(text: str, golden: str | None, secrets: dict[str, str],
                    known: set[str]) -> str:
    """Replace each new hash by NEW_HASH after checking it verifies its account's secret.

    With a golden file, the lines it marks with NEW_HASH are checked; without one (UPDATE_GOLDEN),
    a plaintext-sourced account whose hash was not on the volume before is treated as new.
    """
    marked = set()
    if golden is not None:
        marked = {line.split("|", 1)[0] for line in golden.splitlines()
                  if line.split("|")[1:2] == [NEW_HASH]}
    out = []
    for line in text.split("\n"):
        fields = line.split("|")
        address = fields[0]
        is_new = address in marked if golden is not None else (
            len(fields) > 1 and address in secrets and fields[1].rstrip("\r") not in known)
        if is_new:
            stored = fields[1]
            assert _NEW_SHA512.fullmatch(stored), f"{address}: not a 5000-round SHA512-CRYPT hash"
            body = stored.removeprefix("{SHA512-CRYPT}")
            assert sha512_crypt.verify(secrets[address], body), f"{address}: hash does not verify"
            assert sha512_crypt.from_string(body).rounds == 5000
            fields[1] = NEW_HASH
        out.append("|".join(fields))
    return "\n".join(out)


def mask_plan_key(text: str, before: bytes | None) -> str:
    """A state file apply created has a random plan_key; one that existed must keep its key."""
    old = _PLAN_KEY.search(before.decode()) if before else None
    match = _PLAN_KEY.search(text)
    assert match and len(match.group(1)) == 64, "the state file has no 64-hex-digit plan_key"
    if old and old.group(1):
        assert match.group(1) == old.group(1), "apply changed an existing plan_key"
        return text
    return text[:match.start(1)] + RANDOM + text[match.end(1):]


def mask_new_dkim_file(rel: str, data: bytes, files: dict[str, Path]) -> bytes:
    """A DKIM key apply made is random: check it is an RSA key of the declared size (the case's
    mailserver.yaml) in opendkim-genkey's form, and that its record file matches it; mask both."""
    domain, name = rel.removeprefix(DKIM_KEYS).split("/")
    selector = name.rsplit(".", 1)[0]
    private = files[f"{DKIM_KEYS}{domain}/{selector}.private"].read_bytes()
    read = dkimkeys.read(private)
    assert read is not None and private.startswith(b"-----BEGIN PRIVATE KEY-----\n"), rel
    assert stat.S_IMODE(files[rel].stat().st_mode) == 0o600, f"{rel} is readable by others"
    if name.endswith(".private"):
        return f"<new {read[0]}-bit DKIM private key, checked>\n".encode()
    assert data.decode() == opendkim.render_txt(domain, selector, read[1]), rel
    return b"<DNS record of the new key, checked against it>\n"


def mask_plan_json(data: dict) -> dict:
    data["tool"]["version"] = "<version>"
    return data


def normalise_output(text: str, work: Path) -> str:
    return text.replace(str(work), "<work>")


@pytest.fixture
def env(monkeypatch):
    """A clean environment: no DMS_* settings from the caller, no colour."""
    for name in list(os.environ):
        if name.startswith("DMS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_COLOR", "1")
    return monkeypatch


@pytest.mark.parametrize("name", case_names())
def test_case(name, tmp_path, env):
    case = CASES / name
    options = json.loads((case / "case.json").read_text()) if (case / "case.json").exists() else {}
    for key, value in options.get("env", {}).items():
        env.setenv(key, value)
    args, apply_args = options.get("args", []), options.get("apply_args", [])

    work = tmp_path / "work"
    shutil.copytree(case / "before", work) if (case / "before").is_dir() else work.mkdir()
    for key in work.glob("config/opendkim/keys/*/*.*"):  # git keeps no 0600; opendkim-genkey does
        key.chmod(0o600)
    (work / "config").mkdir(exist_ok=True)
    (work / "cron").mkdir(exist_ok=True)
    shutil.copy2(case / "mailserver.yaml", work / "mailserver.yaml")
    if (case / "secrets").is_dir():
        shutil.copytree(case / "secrets", work / "secrets")
    before = snapshot(work)

    # 1. The plan, as text and as JSON, equals the golden files; planning writes nothing.
    text = run(["plan", *VOLUME_ARGS, *args, "--detailed-exitcode"], work)
    as_json = run(["plan", *VOLUME_ARGS, *args, "--format", "json"], work)
    assert as_json.code == 0, as_json.err
    plan = mask_plan_json(json.loads(as_json.out))
    assert text.code == (2 if plan["summary"]["has_changes"] else 0), text.err
    assert plan["summary"]["has_changes"] == bool(plan["changes"])  # nothing written unannounced
    plan_text = normalise_output(text.out, work)
    if UPDATE:
        (case / "plan.txt").write_text(plan_text)
        (case / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    assert plan_text == (case / "plan.txt").read_text()
    assert plan == json.loads((case / "plan.json").read_text())
    assert snapshot(work) == before, "plan wrote to the volume"

    # 2. apply gives exactly after/, and leaves alone every file whose bytes do not change.
    applied = run(["apply", *VOLUME_ARGS, *args, *apply_args], work)
    assert applied.code == 0, applied.out + applied.err
    secrets = secrets_of(work, dict(os.environ))
    known_hashes = {e.password_hash for e in accounts.parse(
        before.get(ACCOUNTS, (b"",))[0].decode()).entries.values()}
    known_hashes |= {e.password_hash for e in masters.parse(
        before.get(MASTERS, (b"",))[0].decode()).entries.values()}
    actual = {}
    for rel, path in volume_files(work).items():
        data = path.read_bytes()
        if rel in (ACCOUNTS, MASTERS):
            golden = case / "after" / rel
            keyed = secrets if rel == ACCOUNTS else {
                k.removeprefix(MASTER_KEY): v for k, v in secrets.items() if k.startswith(MASTER_KEY)}
            data = mask_new_hashes(data.decode(), golden.read_text() if golden.exists() and
                                   not UPDATE else None, keyed, known_hashes).encode()
        if rel == STATE:
            data = mask_plan_key(data.decode(), before.get(STATE, (None,))[0]).encode()
        if rel.startswith(DKIM_KEYS) and rel not in before:
            data = mask_new_dkim_file(rel, data, volume_files(work))
        actual[rel] = data
    if UPDATE:
        shutil.rmtree(case / "after", ignore_errors=True)
        for rel, data in actual.items():
            (case / "after" / rel).parent.mkdir(parents=True, exist_ok=True)
            (case / "after" / rel).write_bytes(data)
    expected = {rel: path.read_bytes() for rel, path in volume_files(case / "after").items()}
    assert sorted(actual) == sorted(expected), "apply left other files than after/ holds"
    for rel, data in expected.items():
        assert actual[rel] == data, f"{rel} differs from after/{rel}"
    after_first = snapshot(work)
    for rel, (data, mtime, inode) in before.items():
        if expected.get(rel) == data:
            assert after_first[rel][1:] == (mtime, inode), f"apply touched unchanged {rel}"

    # 3. Converged: a second plan is empty and a second apply touches nothing at all.
    again = run(["plan", *VOLUME_ARGS, *args, "--detailed-exitcode"], work)
    assert again.code == 0, again.out + again.err
    assert again.out.endswith(NO_CHANGES + "\n")
    second = run(["apply", *VOLUME_ARGS, *args, *apply_args], work)
    assert second.code == 0, second.out + second.err
    assert second.out == NO_CHANGES + "\n"
    assert snapshot(work) == after_first


def test_every_case_folder_is_complete():
    names = case_names()
    assert len(names) >= 15
    for name in names:
        case = CASES / name
        assert (case / "plan.txt").is_file() and (case / "plan.json").is_file(), name
        assert (case / "after" / "config").is_dir(), name

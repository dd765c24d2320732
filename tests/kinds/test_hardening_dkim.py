"""Issue 20, DKIM and `dns`: symlinks in the volume refused everywhere, selectors and key sizes
validated as apply can write them, a refused apply leaves nothing behind, DNS names that cannot
exist named, `dns --no-color`, a DMARC report address that receives mail, and key file modes.

Real components: the real CLI, real key files, OpenDKIM's own opendkim-genkey and dkimpy
signing and verifying with the key apply made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from reconciler import dkimkeys
from reconciler.cli.main import cli
from reconciler.errors import VolumeError
from reconciler.formats import opendkim
from reconciler.load.desired import load_desired
from reconciler.passwords.sources import SecretReader, resolve
from reconciler.planner.make import make_plan
from reconciler.volume.atomic import VolumeChanged
from reconciler.volume.contents import render_files
from reconciler.volume.executor import apply_plan
from reconciler.volume.observe import observe
from tests.support.util import Volume, make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminsalt")
# 255 (NAME_MAX) - len(".private") - len(".") - len(".dms-reconciler-<12 hex>.tmp")
SELECTOR_MAX = 214


def desired(tmp_path: Path, dkim: str = "{selector: mail, key_size: 1024}", *,
            domain: str = "example.org", extra: str = "") -> Path:
    path = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        hostname: mail.example.com
        domains: [example.org{", " + domain if domain != "example.org" else ""}]
        accounts:
          admin@example.org:
            password_hash: "{ADMIN}"
        dkim:
          {domain}: {dkim}
        """)
    path.write_text(path.read_text() + extra)
    return path


def _decided(state, observed):  # type: ignore[no-untyped-def]
    return resolve(state, observed.stored_hashes(), reader=SecretReader("/", {}))


def tree(root: Path) -> dict[str, object]:
    """Every path under `root`, symlinks not followed: (kind, bytes or target, mode, mtime)."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                out[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[str(path)] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                out[str(path)] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode),
                                  info.st_mtime_ns)
    return out


# --- 1. symlinks in the volume ----------------------------------------------------------------

LINKS = ["opendkim", "opendkim/keys", "opendkim/keys/example.org",
         "opendkim/keys/example.org/mail.private"]


@pytest.mark.parametrize("link", LINKS)
def test_a_symlink_in_the_dkim_folders_is_refused_by_every_command(tmp_path: Path,
                                                                    link: str) -> None:
    """An outside key reached through a symlinked folder is never read, printed or written to:
    dns, plan, apply and export all stop with one error naming the symlink."""
    volume = make_volume(tmp_path / "dms")
    outside = tmp_path / "outside"
    key = dkimkeys.generate(1024)
    # the outside copy of the part that is linked, holding a key for example.org
    rest = "opendkim/keys/example.org/mail.private"
    inner = rest[len(link):].lstrip("/")
    target = outside / link.rsplit("/", 1)[-1]
    key_file = target / inner if inner else target
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(key.private_pem)
    key_file.chmod(0o600)
    place = volume.config / link
    place.parent.mkdir(parents=True, exist_ok=True)
    place.symlink_to(target)
    path = desired(tmp_path)
    before = {**tree(volume.root), **tree(outside)}

    for args in (["dns", "-f", str(path)], ["dns", "-f", str(path), "--format", "json"],
                 ["plan", "-f", str(path)], ["apply", "-f", str(path)],
                 ["export", "-o", str(tmp_path / "exported.yaml")]):
        result = run_cli(*args, *volume.args())
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert f"{place} is a symlink; refusing to follow it" in result.stderr, (args,
                                                                                result.stderr)
        assert "Traceback" not in result.stderr
        assert key.public_b64[:40] not in result.stdout + result.stderr, args
        assert {**tree(volume.root), **tree(outside)} == before, args
    assert not (tmp_path / "exported.yaml").exists()


def test_apply_names_a_key_folder_that_became_a_symlink(tmp_path: Path) -> None:
    """Made a symlink after plan observed the volume: apply says so (not "not a folder")."""
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path)
    loaded = load_desired(str(path))
    observed = observe(volume.value)
    plan = make_plan(loaded.state, observed, _decided(loaded.state, observed))
    contents = render_files(plan)
    (tmp_path / "elsewhere").mkdir()
    (volume.config / "opendkim").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VolumeError, match=r"opendkim is a symlink; refusing to follow it"):
        apply_plan(plan, observed, contents, lock_timeout=5)
    assert os.listdir(tmp_path / "elsewhere") == []


# --- 2. selectors and key sizes that apply can write; a refused apply leaves nothing --------


def _label_chain(length: int) -> str:
    """A selector of `length` characters in labels of at most 63."""
    labels, left = [], length
    while left > 0:
        take = min(63, left if left <= 63 else 63)
        if 0 < left - take < 2:  # never leave a label of 0 characters after a dot
            take -= 2
        labels.append("a" * take)
        left -= take + 1
    selector = ".".join(labels)
    assert len(selector) == length, (length, len(selector))
    return selector


@pytest.mark.parametrize(("dkim", "expected"), [
    (f"{{selector: {_label_chain(255)}}}", "has 255 characters, more than 214"),
    (f"{{selector: {_label_chain(220)}}}", "has 220 characters, more than 214"),
    (f"{{selector: {_label_chain(215)}}}", "has 215 characters, more than 214"),
    ("{selector: " + "a" * 64 + "}", "labels of at most 63 characters"),
    ("{key_size: 2048.0}", "whole number of bits: 1024, 2048, 3072 or 4096, not 2048.0"),
    ("{key_size: true}", "whole number of bits: 1024, 2048, 3072 or 4096, not true"),
    ("{key_size: '2048'}", "not the string '2048'"),
])
def test_validate_refuses_what_apply_cannot_write(tmp_path: Path, dkim: str,
                                                  expected: str) -> None:
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path, dkim)
    for command in ("validate", "plan", "apply"):
        args = ["-f", str(path)] + ([] if command == "validate" else volume.args())
        result = run_cli(command, *args)
        assert result.returncode == 1, result.stdout
        output = result.stdout + result.stderr
        assert f"{path}:8:27: error: dkim.example.org." in output, output
        assert expected in output and "Traceback" not in output
        assert output.count(": error: dkim") == 1, output  # the schema's words do not repeat it
    assert os.listdir(volume.config) == []


def test_a_selector_too_long_for_its_domains_dns_name_is_refused(tmp_path: Path) -> None:
    long_domain = ".".join(["d" * 63, "e" * 63, "f" * 63]) + ".example"
    room = 253 - len("._domainkey.") - len(long_domain)  # 42
    path = desired(tmp_path, "{selector: " + "s" * (room + 1) + "}", domain=long_domain)
    result = run_cli("validate", "-f", str(path))
    assert result.returncode == 1
    assert f"too long for {long_domain}: the DKIM record name" in result.stdout + result.stderr
    assert "would have 254 characters, more than the 253" in result.stdout + result.stderr
    fits = desired(tmp_path, "{selector: " + "s" * room + "}", domain=long_domain)
    result = run_cli("validate", "-f", str(fits))
    assert ": error:" not in result.stdout + result.stderr


def test_the_longest_selector_validate_takes_is_written_by_apply(tmp_path: Path) -> None:
    """SELECTOR_MAX is what the executor's temp-file name leaves room for: at exactly that
    length, apply writes the key (its temp name is 255 bytes) and dns shows the record."""
    from reconciler.kinds import dkim as dkim_kind

    assert dkim_kind.SELECTOR_MAX == SELECTOR_MAX
    volume = make_volume(tmp_path / "dms")
    selector = _label_chain(SELECTOR_MAX)
    path = desired(tmp_path, f"{{selector: {selector}, key_size: 1024}}")
    result = run_cli("apply", "-f", str(path), *volume.args())
    assert result.returncode == 0, result.stderr
    private = volume.config / "opendkim/keys/example.org" / f"{selector}.private"
    assert dkimkeys.read(private.read_bytes()) is not None
    dns = run_cli("dns", "-f", str(path), *volume.args(), "--format", "json")
    assert dns.returncode == 0, dns.stdout
    names = [r["name"] for r in json.loads(dns.stdout)["records"]]
    assert f"{selector}._domainkey.example.org." in names


@pytest.fixture
def planned(tmp_path: Path) -> tuple[Volume, Path]:
    volume = make_volume(tmp_path / "dms")
    (volume.config / "postfix-accounts.cf").write_text(f"admin@example.org|{ADMIN}\n")
    return volume, desired(tmp_path)


def _plan(volume: Volume, path: Path, selector: str | None = None):  # type: ignore[no-untyped-def]
    state = load_desired(str(path)).state
    if selector is not None:  # what validate refuses, to prove the executor's own guard
        state = dataclasses.replace(state, dkim=(dataclasses.replace(state.dkim[0],
                                                                     selector=selector),))
    observed = observe(volume.value)
    plan = make_plan(state, observed, _decided(state, observed))
    return plan, observed, render_files(plan)


def test_a_refused_apply_leaves_no_folder_and_no_state_file(planned: tuple[Volume, Path]) -> None:
    """A key file name the file system refuses (validate would have stopped it): the apply fails
    after the key folder was made and staging began; the folder and the state file go again."""
    volume, path = planned
    before = tree(volume.root)
    plan, observed, contents = _plan(volume, path, selector="a" * 63 + "." + "b" * 190)
    with pytest.raises(VolumeError, match="File name too long"):
        apply_plan(plan, observed, contents, lock_timeout=5)
    assert tree(volume.root) == before


def test_a_volume_change_refuses_apply_before_any_folder_is_made(
        planned: tuple[Volume, Path]) -> None:
    volume, path = planned
    plan, observed, contents = _plan(volume, path)
    with open(volume.config / "postfix-accounts.cf", "a") as handle:  # a `setup email add`
        handle.write(f"new@example.org|{ADMIN}\n")
    before = tree(volume.root)
    with pytest.raises(VolumeChanged):
        apply_plan(plan, observed, contents, lock_timeout=5)
    assert tree(volume.root) == before
    assert not (volume.config / "opendkim").exists()


# --- 3. what DMS accepts: `setup config dkim selector mail_2024` --------------------------------


def test_an_underscore_selector_is_accepted_signs_and_verifies(tmp_path: Path) -> None:
    """`mail_2024` validates, apply makes the files opendkim-genkey would make for it, dkimpy
    signs with the key and verifies against the record `dns` shows, and export takes it back."""
    dkim = pytest.importorskip("dkim")
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path, "{selector: mail_2024, key_size: 1024}")
    assert run_cli("validate", "-f", str(path)).returncode == 0
    result = run_cli("apply", "-f", str(path), *volume.args())
    assert result.returncode == 0, result.stderr
    folder = volume.config / "opendkim/keys/example.org"
    private = (folder / "mail_2024.private").read_bytes()
    assert "mail_2024._domainkey.example.org example.org:mail_2024:" in (
        volume.config / "opendkim/KeyTable").read_text()

    genkey = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
    if Path(genkey).exists():  # DMS's own tool takes the selector and names its files alike
        out = tmp_path / "genkey"
        out.mkdir()
        subprocess.run([genkey, "--bits=1024", "--subdomains", "--domain=example.org",
                        "--selector=mail_2024", f"--directory={out}"], check=True)
        _size, public = dkimkeys.read((out / "mail_2024.private").read_bytes()) or (0, "")
        assert (out / "mail_2024.txt").read_text() == opendkim.render_txt(
            "example.org", "mail_2024", public)

    dns = run_cli("dns", "-f", str(path), *volume.args(), "--format", "json")
    assert dns.returncode == 0, dns.stdout
    record = next(r for r in json.loads(dns.stdout)["records"] if r["kind"] == "dkim")
    assert record["name"] == "mail_2024._domainkey.example.org."
    message = (b"From: admin@example.org\r\nTo: x@example.net\r\nSubject: hi\r\n\r\nbody\r\n")
    signed = dkim.sign(message, b"mail_2024", b"example.org", private) + message

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mail_2024._domainkey.example.org."
        return record["value"].encode()

    assert dkim.verify(signed, dnsfunc=dnsfunc)

    exported = tmp_path / "exported.yaml"
    result = run_cli("export", *volume.args(), "-o", str(exported))
    assert result.returncode == 0, result.stderr
    assert "selector: mail_2024" in exported.read_text()
    assert run_cli("validate", "-f", str(exported)).returncode == 0


# --- 4. names longer than DNS allows -----------------------------------------------------------


def test_dns_names_a_record_name_longer_than_253_characters(tmp_path: Path) -> None:
    """A valid 250-character domain leaves no room for `_dmarc.`: dns says so, naming the
    domain, and prints no such record."""
    volume = make_volume(tmp_path / "dms")
    domain = ".".join(["d" * 63, "e" * 63, "f" * 63, "g" * 54]) + ".org"
    assert len(domain) == 250
    path = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.org, {domain}]
        accounts:
          admin@example.org:
            password_hash: "{ADMIN}"
        """)
    assert run_cli("validate", "-f", str(path)).returncode == 0
    result = run_cli("dns", "-f", str(path), *volume.args())
    assert result.returncode == 1
    assert f"; warning: {domain}: the dmarc record name _dmarc.ddd" in result.stdout
    assert "has 257 characters, more than the 253 a DNS name may have" in result.stdout
    assert f"_dmarc.{domain}." not in result.stdout
    assert f"{domain}.\tIN\tMX" in result.stdout  # the rest is still shown
    data = json.loads(run_cli("dns", "-f", str(path), *volume.args(), "--format",
                              "json").stdout)
    assert all(len(r["name"]) <= 254 for r in data["records"])
    assert any(domain in p for p in data["problems"])


# --- 5. --no-color everywhere -----------------------------------------------------------------


def test_every_command_takes_no_color(tmp_path: Path) -> None:
    for name, command in cli.commands.items():
        flags = {opt for param in command.params for opt in param.opts}
        assert "--no-color" in flags, name
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path)
    assert run_cli("apply", "-f", str(path), *volume.args()).returncode == 0
    result = run_cli("dns", "--no-color", "-f", str(path), *volume.args(),
                     env={"FORCE_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout + result.stderr


# --- 6. the DMARC report address exists -------------------------------------------------------


def _dmarc(tmp_path: Path, extra: str) -> dict[str, object]:
    volume = make_volume(tmp_path / "dms")
    path = write_desired(tmp_path / "mailserver.yaml", f"""
        version: 1
        domains: [example.org]
        accounts:
          admin@example.org:
            password_hash: "{ADMIN}"
        """)
    path.write_text(path.read_text() + extra)
    result = run_cli("dns", "-f", str(path), *volume.args(), "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    return next(r for r in json.loads(result.stdout)["records"] if r["kind"] == "dmarc")


@pytest.mark.parametrize(("extra", "rua"), [
    ("", None),
    ("aliases:\n  postmaster@example.org: admin@example.org\n", "postmaster@example.org"),
    ("catch_all:\n  example.org: admin@example.org\n", "postmaster@example.org"),
    ("aliases:\n  dmarc.report@example.org: admin@example.org\n", "dmarc.report@example.org"),
    ("devnull: [postmaster@example.org]\n", None),
])
def test_dns_suggests_only_a_report_address_that_receives_mail(tmp_path: Path, extra: str,
                                                               rua: str | None) -> None:
    record = _dmarc(tmp_path, extra)
    if rua is None:
        assert record["value"] == "v=DMARC1; p=none"
        assert "rua= (where reports go) left out: none of postmaster@example.org" in str(
            record["note"])
    else:
        assert record["value"] == f"v=DMARC1; p=none; rua=mailto:{rua}"


# --- 7. key file modes ------------------------------------------------------------------------


def test_keys_are_written_0600_and_a_readable_key_is_warned(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    path = desired(tmp_path)
    assert run_cli("apply", "-f", str(path), *volume.args()).returncode == 0
    folder = volume.config / "opendkim/keys/example.org"
    for name in ("mail.private", "mail.txt"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert "readable by group or others" not in run_cli("plan", "-f", str(path),
                                                        *volume.args()).stdout

    (folder / "mail.private").chmod(0o644)
    warning = ("the DKIM private key opendkim/keys/example.org/mail.private is readable by "
               "group or others (mode 0644)")
    plan = run_cli("plan", "-f", str(path), *volume.args())
    assert plan.returncode == 0 and warning in plan.stdout, plan.stdout
    assert "No changes" in plan.stdout
    dns = run_cli("dns", "-f", str(path), *volume.args(), "--format", "json")
    assert dns.returncode == 0
    assert any(warning in w for w in json.loads(dns.stdout)["warnings"])
    assert warning in run_cli("dns", "-f", str(path), *volume.args()).stdout
    assert run_cli("apply", "-f", str(path), *volume.args()).returncode == 0
    assert stat.S_IMODE((folder / "mail.private").stat().st_mode) == 0o644  # never changed

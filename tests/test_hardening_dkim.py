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
from reconciler.cli import cli
from reconciler.desired import load_desired
from reconciler.errors import VolumeError
from reconciler.executor import VolumeChanged, apply_plan, render_files
from reconciler.formats import opendkim
from reconciler.observe import observe
from reconciler.passwords import SecretReader, resolve
from reconciler.planner import make_plan
from tests.util import Volume, make_volume, run_cli, sha512_hash, write_desired

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
    observed = observe(str(volume.config), str(volume.cron))
    plan = make_plan(loaded.state, observed, _decided(loaded.state, observed))
    contents = render_files(plan)
    (tmp_path / "elsewhere").mkdir()
    (volume.config / "opendkim").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VolumeError, match=r"opendkim is a symlink; refusing to follow it"):
        apply_plan(plan, observed, contents, lock_timeout=5)
    assert os.listdir(tmp_path / "elsewhere") == []


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
    observed = observe(str(volume.config), str(volume.cron))
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



"""Fast apply's mailbox step (`fastapply.MAILBOX_STEP`, step 1 of the apply script) run by the real
bash here on a folder of its own: the folders of new homes are made, parents first, and owned by
the vmail user; an existing home, and the existing parents of a new one, are left as they are
(one test per home: 10,000 at 10,000 accounts, not one per folder).

The real DMS is tests/realdms/test_fast_apply.py (a new account's mailbox owned by Dovecot's
user)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from reconciler.watch import fastapply

VMAIL = (5000, 5000)


def chain(mail: Path, home: str) -> str:
    """What `_chains` uploads for /var/mail/<home>, with `mail` in place of /var/mail."""
    (line,) = fastapply._chains([f"/var/mail/{home}"])
    return line.replace("/var/mail/", f"{mail}/")


def run_step(tmp_path: Path, chains: list[str]) -> list[str]:
    """MAILBOX_STEP over `chains` (their homes: the last folder of each); the folders it made,
    in order."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "homes").write_text("".join(c.rsplit("\t", 1)[-1] + "\n" for c in chains))
    (work / "chains").write_text("".join(c + "\n" for c in chains))
    (work / "sieves").write_text("")
    script = (
        f'W={work}; VMAIL={VMAIL[0]}:{VMAIL[1]}\nfail() {{ echo "FAILED: $*"; exit 3; }}\n'
        + fastapply.MAILBOX_STEP
        + 'printf "MADE=%s\\n" "${MISSING[@]}"\n'
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result
    return [line[5:] for line in result.stdout.splitlines() if line.startswith("MADE=/")]


def owner(path: str | Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_uid, info.st_gid


def test_chains_name_every_folder_below_var_mail_parents_first_home_last() -> None:
    assert fastapply._chains(["/var/mail/example.com/alice/home", "/var/mail/x.org/b/home"]) == [
        "/var/mail/example.com\t/var/mail/example.com/alice\t/var/mail/example.com/alice/home",
        "/var/mail/x.org\t/var/mail/x.org/b\t/var/mail/x.org/b/home",
    ]


def test_new_homes_are_made_parents_first_once_each_and_owned_by_vmail(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    mail.mkdir()
    made = run_step(
        tmp_path,
        [
            chain(mail, "new.example/alice/home"),
            chain(mail, "new.example/bob/home"),
            chain(mail, "new.example/alice/home"),
        ],
    )  # twice: made once
    assert made == [
        f"{mail}/new.example",
        f"{mail}/new.example/alice",
        f"{mail}/new.example/alice/home",
        f"{mail}/new.example/bob",
        f"{mail}/new.example/bob/home",
    ]
    assert all(owner(folder) == VMAIL for folder in made)


def test_existing_homes_and_parents_are_left_as_they_are(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    (mail / "old.example" / "carol" / "home").mkdir(parents=True)  # root's, as DMS left it
    made = run_step(
        tmp_path, [chain(mail, "old.example/carol/home"), chain(mail, "old.example/dave/home")]
    )
    assert made == [f"{mail}/old.example/dave", f"{mail}/old.example/dave/home"]
    assert owner(mail / "old.example") == owner(mail / "old.example" / "carol" / "home") == (0, 0)
    assert owner(mail / "old.example" / "dave" / "home") == VMAIL


def test_no_new_home_makes_nothing(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    (mail / "old.example" / "carol" / "home").mkdir(parents=True)
    assert run_step(tmp_path, [chain(mail, "old.example/carol/home")]) == []

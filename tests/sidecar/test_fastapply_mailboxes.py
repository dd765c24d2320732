"""Fast apply's mailbox step (`fastapply.MAILBOX_STEP`, step 1 of the apply script) run by the real
bash here on a folder of its own: the folders of new homes are made, parents first, and owned by
the vmail user; an existing home, and the existing parents of a new one, are left as they are
(one test per home: 10,000 at 10,000 accounts, not one per folder).

The real DMS is tests/realdms/test_fast_apply.py (a new account's mailbox owned by Dovecot's
user)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from reconciler import dmsgen
from reconciler.watch import fastapply

VMAIL = (5000, 5000)


def chain(mail: Path, home: str) -> str:
    """What `_chains` uploads for /var/mail/<home>, with `mail` in place of /var/mail."""
    (line,) = fastapply._chains([f"/var/mail/{home}"])
    return line.replace("/var/mail/", f"{mail}/")


def run_step(tmp_path: Path, chains: list[str], part: str = "") -> list[str]:
    """MAILBOX_STEP over `chains` (their homes: the last folder of each) as the upload's `part`
    ("" before the renames, ".known" after them); the folders it made, in order."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / f"homes{part}").write_text("".join(c.rsplit("\t", 1)[-1] + "\n" for c in chains))
    (work / f"chains{part}").write_text("".join(c + "\n" for c in chains))
    (work / f"sieves{part}").write_text("")
    script = (
        f'W={work}; VMAIL={VMAIL[0]}:{VMAIL[1]}\nfail() {{ echo "FAILED: $*"; exit 3; }}\n'
        + (f"SET={part}\n" if part else "")
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


def test_the_pass_after_the_renames_reads_its_own_lists(tmp_path: Path) -> None:
    """The accounts that were there before are checked after the renames (SET=.known), from
    their own lists: a folder of theirs gone meanwhile is made again, owned by vmail."""
    mail = tmp_path / "mail"
    (mail / "old.example" / "carol" / "home").mkdir(parents=True)
    run_step(tmp_path, [chain(mail, "new.example/alice/home")])  # the lists before the renames
    made = run_step(
        tmp_path,
        [chain(mail, "old.example/carol/home"), chain(mail, "old.example/erin/home")],
        ".known",
    )
    assert made == [f"{mail}/old.example/erin", f"{mail}/old.example/erin/home"]
    assert owner(mail / "old.example" / "erin" / "home") == VMAIL


def generated(logins: list[str], sieves: tuple[str, ...] = ()) -> dmsgen.Generated:
    gen = dmsgen.Generated()
    for login in logins:
        user, domain = login.split("@")
        home = f"/var/mail/{domain}/{user}/home"
        gen.homes.append(home)
        if login in sieves:
            gen.sieves.append((f"/tmp/docker-mailserver/{login}.dovecot.sieve", f"{home}/x"))
    return gen


def test_homes_of_accounts_dms_applied_wait_until_after_the_renames() -> None:
    gen = generated(["old@a.example", "new@a.example", "Old@b.example"])
    new, known = fastapply.split_homes(gen, {"old@a.example", "gone@a.example"})
    assert new == ["/var/mail/a.example/new/home", "/var/mail/b.example/Old/home"]
    assert known == ["/var/mail/a.example/old/home"]


def test_a_home_with_a_sieve_to_copy_is_made_before_the_renames() -> None:
    gen = generated(["old@a.example", "sieved@a.example"], sieves=("sieved@a.example",))
    new, known = fastapply.split_homes(gen, {"old@a.example", "sieved@a.example"})
    assert new == ["/var/mail/a.example/sieved/home"]
    assert known == ["/var/mail/a.example/old/home"]


def test_accounts_before_count_only_if_dms_applied_that_file(tmp_path: Path) -> None:
    """The old postfix-accounts.cf's accounts are "known" only if DMS's record holds that very
    file (DMS or fast apply applied it, so their homes were made); otherwise every home is
    checked before the renames, as before."""
    accounts = b"old@a.example|{SHA512-CRYPT}x\n# a comment\nzed@b.example|{PLAIN}y|attr\n"
    (tmp_path / "postfix-accounts.cf").write_bytes(accounts)
    fast = fastapply.FastApply(dms=None, config_dir=str(tmp_path), timed=False)
    fast._accounts_before = fast._read_accounts()
    digest = hashlib.sha512(accounts).hexdigest()
    applied = fastapply.record_line(digest, "postfix-accounts.cf") + "\n"
    assert {"old@a.example", "zed@b.example"} <= fast._applied_accounts(applied)
    assert fast._applied_accounts(applied.replace(digest[:8], "00000000")) == frozenset()
    fast._accounts_before = None  # no postfix-accounts.cf before the write
    assert fast._applied_accounts(applied) == frozenset()


def test_the_stage_is_owner_only_in_the_volume_and_removed_after(tmp_path: Path) -> None:
    """Fast apply stages the generated files (the userdb holds hashes) and the script's lists in
    a hidden folder of the config volume: owner-only, Postfix's tables with their cool mtime,
    each listed with the name it was staged under; `_unstage` leaves nothing behind."""
    gen = generated(["new@a.example"])
    gen.outputs += [
        dmsgen.Output(dmsgen.USERDB, b"new@a.example:{X}h:5000:5000::/var/mail/a/new/home::\n"),
        dmsgen.Output(dmsgen.VMAILBOX, b"new@a.example a.example/new/\n"),
    ]
    fast = fastapply.FastApply(dms=None, config_dir=str(tmp_path), timed=False)
    fast._stage(gen, "record\n", set(), "new@a.example")
    stage = tmp_path / fastapply.STAGE
    outputs = (stage / "work" / "outputs").read_text().splitlines()
    assert outputs == [
        f"{dmsgen.USERDB}\t-\t-\t0",  # Dovecot's first
        f"{dmsgen.VMAILBOX}\t-\t-\t1",
    ]
    assert (stage / "files" / "0").read_bytes().startswith(b"new@a.example:{X}h")
    assert (stage / "work" / "homes").read_text() == "/var/mail/a.example/new/home\n"
    assert (stage / "work" / "probe").read_text() == "new@a.example\n"
    for path in [stage, *stage.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, path
    dovecot, postfix = ((stage / "files" / n).stat().st_mtime for n in ("0", "1"))
    assert dovecot - postfix == fastapply.POSTFIX_COOL_SECONDS
    fast._unstage()
    assert not stage.exists()


def test_the_account_dovecot_must_know_before_postfix_reloads_is_a_new_one() -> None:
    accounts = b"old@a.example|x\n# a comment\nzed@a.example|y\nnew@b.example|z\n"
    assert fastapply.new_account(accounts, {"old@a.example"}) == "new@b.example"
    assert fastapply.new_account(accounts, {"old@a.example", "new@b.example", "zed@a.example"}) is None
    assert fastapply.new_account(None, set()) is None


def probe_section() -> str:
    script = fastapply.APPLY_SCRIPT
    return script[script.index("PROBED=0"): script.index("# 3. each generated file")]


def run_probe(tmp_path: Path, known_after: int) -> tuple[str, int]:
    """The apply script's wait for Dovecot, with a `doveadm` that finds the account from its
    `known_after`-th look-up on (the real one: tests/realdms/test_fast_apply.py)."""
    (tmp_path / "probe").write_text("new@a.example\n")
    (tmp_path / "count").write_text("0")
    script = (
        f"W={tmp_path}\nstep() {{ :; }}\n"
        f'doveadm() {{ N=$(( $(<"{tmp_path}/count") + 1 )); echo "$N" >"{tmp_path}/count"\n'
        f'  [[ $1 == user && $2 == -- && $3 == new@a.example && $N -ge {known_after} ]]; }}\n'
        + probe_section()
        + "wait_for_dovecot\n"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout, int((tmp_path / "count").read_text())


def test_postfix_waits_until_dovecot_knows_the_new_account(tmp_path: Path) -> None:
    """One look now; the next just after the second turns (when Dovecot looks again)."""
    began = time.time()
    assert run_probe(tmp_path, known_after=2) == ("", 2)  # asked until it knew, then on
    took = time.time() - began
    assert int(time.time()) > int(began) and took < 3.0, took  # the next second, not later


def test_postfix_waits_a_bounded_time_for_dovecot(tmp_path: Path) -> None:
    out, looked = run_probe(tmp_path, known_after=10**6)
    assert (out, looked) == ("PROBE=unknown\n", fastapply.PROBE_TRIES)

"""Fast apply's record step (`fastapply.RECORD_STEP`, step 6 of the apply script) run by the real
bash here, with DMS's `_monitored_files_checksums` replaced by a file holding what it prints: DMS's
record is written when DMS's checksums are the predicted ones, all of them or only those of the
config files fast apply models (then the other files DMS's change detector is left to apply are
named); otherwise the record held aside is put back as it was.

The real DMS (v16 with Rspamd) is tests/realdms/test_fast_apply_rspamd.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler import dmsgen
from reconciler.watch import fastapply

D = dmsgen.DMS_DIR
ACCOUNTS = f"{D}/postfix-accounts.cf"
QUOTAS = f"{D}/dovecot-quotas.cf"
ACTIONS = f"{D}/rspamd/override.d/actions.conf"
CERT = "/etc/dms/tls/cert.pem"


def line(char: str, path: str) -> str:
    return f"{char * 128}  {path}\n"


def run_step(tmp_path: Path, *, held: str, predicted: str, dms: str) -> tuple[str, Path, Path]:
    """RECORD_STEP with the record held aside (`held`), `predicted` uploaded, and `dms` what
    DMS's checksums give; its output, the record path and the held path."""
    work = tmp_path / "work"
    work.mkdir()
    record, held_path = tmp_path / "record", tmp_path / "record.held"
    held_path.write_text(held)
    (work / "record").write_text(predicted)
    (work / "ours").write_text("".join(p + "\n" for p in fastapply.our_paths()))
    (tmp_path / "dms").write_text(dms)
    script = f"""
W={work}; RECORD={record}; HELD={held_path}
restore() {{
  if [[ -e ${{HELD}} ]]; then
    [[ -e ${{RECORD}} ]] || mv -f -- "${{HELD}}" "${{RECORD}}"
    rm -f -- "${{HELD}}"
  fi
}}
fail() {{ restore; echo "FAILED: $*"; exit 3; }}
_obtain_hostname_and_domainname() {{ :; }}
_rspamd_get_envs() {{ :; }}
_monitored_files_checksums() {{ cat -- {tmp_path / "dms"}; }}
""" + fastapply.RECORD_STEP.replace("__SUFFIX__", fastapply.SUFFIX)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout, record, held_path


OLD = line("a", ACCOUNTS) + line("b", QUOTAS) + line("c", ACTIONS)
PREDICTED = line("1", ACCOUNTS) + line("b", QUOTAS) + line("c", ACTIONS)


def test_the_record_predicted_exactly_is_written(tmp_path: Path) -> None:
    out, record, held = run_step(tmp_path, held=OLD, predicted=PREDICTED, dms=PREDICTED)
    assert out == "RECORD=written\n"
    assert record.read_text() == PREDICTED and not held.exists()


@pytest.mark.parametrize(
    ("dms", "others"),
    [
        # a new rspamd.actions in the same write as the new account
        (line("1", ACCOUNTS) + line("b", QUOTAS) + line("9", ACTIONS), [ACTIONS]),
        # a new file under rspamd/, and a certificate renewed meanwhile
        (PREDICTED + line("8", f"{D}/rspamd/local.d/x.conf") + line("7", CERT),
         [f"{D}/rspamd/local.d/x.conf", CERT]),
        # a file under rspamd/ removed
        (line("1", ACCOUNTS) + line("b", QUOTAS), [ACTIONS]),
    ],
    ids=["changed", "new-and-certificate", "removed"],
)
def test_only_other_files_changed_writes_ours_new_and_theirs_old(
    tmp_path: Path, dms: str, others: list[str]
) -> None:
    """DMS's change detector then finds only the other files changed and handles those alone."""
    out, record, held = run_step(tmp_path, held=OLD, predicted=PREDICTED, dms=dms)
    assert out.splitlines()[-1] == "RECORD=others"
    assert out.splitlines()[:-1] == sorted(f"OTHER={p}" for p in others)
    assert record.read_text() == PREDICTED and not held.exists()
    names = fastapply.other_names(out)
    assert names == tuple(sorted(p.removeprefix(f"{D}/") for p in others))
    assert "rspamd/override.d/actions.conf" in names or CERT in names


@pytest.mark.parametrize(
    "dms",
    [
        # one of our files changed again after fast apply read it
        line("2", ACCOUNTS) + line("b", QUOTAS) + line("c", ACTIONS),
        line("2", ACCOUNTS) + line("b", QUOTAS) + line("9", ACTIONS),
        # one of ours appeared or went away
        PREDICTED + line("5", f"{D}/dovecot-masters.cf"),
        line("1", ACCOUNTS) + line("c", ACTIONS),
        # nothing at all (DMS printed nothing)
        "",
    ],
    ids=["ours-again", "ours-again-and-rspamd", "ours-appeared", "ours-gone", "empty"],
)
def test_our_files_differing_puts_the_held_record_back(tmp_path: Path, dms: str) -> None:
    out, record, held = run_step(tmp_path, held=OLD, predicted=PREDICTED, dms=dms)
    assert out == "RECORD=differs\n"
    assert record.read_text() == OLD and not held.exists()


def test_the_same_lines_in_another_order_write_dms_own_record(tmp_path: Path) -> None:
    """find lists rspamd/ in directory order, which a write may change: the same lines in
    another order are DMS's own record (its change detector, comparing with cmp, then finds
    nothing to do), not a change of other files."""
    two = line("c", ACTIONS) + line("d", f"{D}/rspamd/local.d/x.conf")
    swapped = line("d", f"{D}/rspamd/local.d/x.conf") + line("c", ACTIONS)
    ours = line("1", ACCOUNTS) + line("b", QUOTAS)
    out, record, held = run_step(tmp_path, held=line("a", ACCOUNTS) + line("b", QUOTAS) + two,
                                 predicted=ours + two, dms=ours + swapped)
    assert out == "RECORD=written\n"
    assert record.read_text() == ours + swapped and not held.exists()


def test_a_path_only_ending_like_ours_is_not_ours(tmp_path: Path) -> None:
    """rspamd/postfix-accounts.cf is DMS's change detector's, not a config file we model."""
    lookalike = f"{D}/rspamd/postfix-accounts.cf"
    old = OLD + line("d", lookalike)
    predicted = PREDICTED + line("d", lookalike)
    dms = PREDICTED + line("e", lookalike)
    out, record, _ = run_step(tmp_path, held=old, predicted=predicted, dms=dms)
    assert out == f"OTHER={lookalike}\nRECORD=others\n"
    assert record.read_text() == predicted


def test_the_apply_script_runs_this_step() -> None:
    step = fastapply.RECORD_STEP.replace("__SUFFIX__", fastapply.SUFFIX)
    assert step in fastapply.APPLY_SCRIPT.replace(fastapply.WORK, "${W}")
    assert fastapply.our_paths() == [f"{D}/{name}" for name in dmsgen.MONITORED]

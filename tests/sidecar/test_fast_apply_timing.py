"""Fast apply's profiling switch (DMS_RECONCILER_FAST_APPLY_TIMING): off unless asked for, and
when on, the result's message says where the time went, the container script's own steps
included (the script runs for real in tests/realdms/test_bench_end_to_end.py)."""

from __future__ import annotations

import subprocess

from reconciler.watch import fastapply


def test_timing_is_off_unless_asked_for() -> None:
    assert not fastapply.timing({})
    assert not fastapply.timing({"DMS_RECONCILER_FAST_APPLY_TIMING": "0"})
    assert fastapply.timing({"DMS_RECONCILER_FAST_APPLY_TIMING": "1"})
    assert fastapply.timing({"DMS_RECONCILER_FAST_APPLY_TIMING": " Yes "})


def test_the_note_names_the_sidecar_steps_what_was_staged_and_the_script_steps() -> None:
    output = "DOVECOT=x\nSTEP helpers 120\nSTEP renames 7\nRECORD=written\n"
    note = fastapply.timing_note([("facts", 0.051), ("dmsgen", 0.5)], 2_100_000, output)
    assert note == (
        "; time: facts 0.05 s, dmsgen 0.50 s; staged 2.1 MB; "
        "script steps (s): helpers 0.12, renames 0.01"
    )


def test_the_script_prints_its_steps_only_when_asked() -> None:
    """The apply script's `step` function, run by bash as the container runs it."""
    start = fastapply.APPLY_SCRIPT.index("# TIMING=1")
    end = fastapply.APPLY_SCRIPT.index("# the facts were read")
    prelude = fastapply.APPLY_SCRIPT[start:end]
    script = prelude + "step one\nstep two\n"
    quiet = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert quiet.stdout == ""
    timed = subprocess.run(
        ["env", "TIMING=1", "bash", "-c", script], capture_output=True, text=True, check=True
    )
    lines = timed.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["STEP", "one"], ["STEP", "two"]]
    assert all(line.split()[2].isdigit() for line in lines)

"""The ownership record's fast rendering, and apply's byte proof of convergence.

`state.render` joins the owned keys itself instead of letting json's pure-Python indenting
encoder do it: its output must stay exactly `json.dumps(record, indent=1)`, or every state file
on every volume would be rewritten once (and DMS reload) after an upgrade.

`apply_once` proves convergence by reading the volume back instead of planning again when the
bytes are the planned ones; when they are not (another writer), it must plan again and finish.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import reconcile, state
from reconciler.reconcile import Target, apply_once, plan_once
from tests.support import fullproof
from tests.support.util import Volume, sha512_hash, write_desired

KEYS = st.text(min_size=1, max_size=12)  # any code point: json escapes, \u, surrogates


def reference(ownership: state.Ownership) -> str:
    record = {
        "format": state.FORMAT,
        "comment": "Written by dms-reconciler: the entries it manages. Deleting this file makes "
        "them unmanaged; it never deletes mail configuration.",
        "plan_key": ownership.plan_key,
        "owns_cron": ownership.owns_cron,
        "owned": {name: sorted(keys) for name, keys in sorted(ownership.entries.items()) if keys},
    }
    return json.dumps(record, indent=1) + "\n"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(KEYS, st.frozensets(KEYS, max_size=6), max_size=5),
    st.booleans(),
    st.sampled_from(["", "0" * 64]),
)
def test_state_render_is_json_dumps_indent_1(entries, owns_cron, plan_key):
    ownership = state.Ownership(entries, owns_cron, plan_key)
    text = state.render(ownership)
    assert text == reference(ownership)
    assert state.parse(text)[0].entries == {n: k for n, k in entries.items() if k}


def desired(path: Path, *accounts: str) -> Path:
    lines = "".join(f"  {a}:\n    password_hash: \"{HASH}\"\n" for a in accounts)
    return write_desired(path, f"version: 1\ndomains: [example.com]\naccounts:\n{lines}")


HASH = sha512_hash("a-long-enough-password")


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """has_changes of every plan apply_once makes, in order; the fixpoint check is off, as in
    production."""
    made: list[bool] = []
    real = reconcile.plan_once

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        planned = real(*args, **kwargs)
        made.append(planned.plan.has_changes)
        return planned

    monkeypatch.setattr(reconcile, "plan_once", counting)
    monkeypatch.setattr(reconcile, "proves_convergence", fullproof.production_proof(reconcile))
    return made


def test_an_apply_that_finds_its_own_bytes_plans_once(tmp_path: Path, volume: Volume, plans):
    target = Target(str(desired(tmp_path / "m.yaml", "jane@example.com")), volume.value)
    apply_once(target)  # the first apply creates files: proven by planning again
    assert plans == [True, False]
    plans.clear()
    desired(tmp_path / "m.yaml", "jane@example.com", "bob@example.com")
    applied = apply_once(target)
    assert applied.converged and applied.result.written == ("postfix-accounts.cf",)
    assert plans == [True]  # read back, not planned again
    assert not plan_once(target).plan.has_changes


def test_another_writer_after_our_write_makes_apply_plan_again(
    tmp_path: Path, volume: Volume, plans, monkeypatch: pytest.MonkeyPatch
):
    target = Target(str(desired(tmp_path / "m.yaml", "jane@example.com")), volume.value)
    apply_once(target)
    desired(tmp_path / "m.yaml", "jane@example.com", "bob@example.com")
    real = reconcile.apply_plan

    def then_dms_cli_adds_an_alias(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real(*args, **kwargs)
        with open(volume.config / "postfix-virtual.cf", "a") as handle:
            handle.write("hand@example.com jane@example.com\n")  # `setup alias add`, just after us
        return result

    monkeypatch.setattr(reconcile, "apply_plan", then_dms_cli_adds_an_alias)
    plans.clear()
    applied = apply_once(target)
    assert plans == [True, False]  # the bytes differ: the whole plan, which finds nothing to do
    assert applied.converged
    assert "hand@example.com jane@example.com" in (volume.read("postfix-virtual.cf") or "")


def test_the_suite_checks_the_byte_proof_against_a_whole_plan(
    tmp_path: Path, volume: Volume, monkeypatch: pytest.MonkeyPatch
):
    """With the suite's stricter proof (tests/support/fullproof.py) a disagreement is an error, not a pass. The
    planner never disagrees with its own rendering, so this one time it is made to."""
    target = Target(str(desired(tmp_path / "m.yaml", "jane@example.com")), volume.value)
    apply_once(target)
    desired(tmp_path / "m.yaml", "jane@example.com", "bob@example.com")
    assert reconcile.proves_convergence is not fullproof.production_proof(reconcile)
    real = reconcile.plan_once
    made: list[int] = []

    other = Target(str(desired(tmp_path / "other.yaml", "eve@example.com")), volume.value)

    def second_plan_sees_a_change(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(1)
        if len(made) == 1:
            return real(*args, **kwargs)
        return real(other)  # as if the planner disagreed with its own rendering

    monkeypatch.setattr(reconcile, "plan_once", second_plan_sees_a_change)
    with pytest.raises(reconcile.ReconcilerError, match="holds the planned bytes, yet a plan"):
        apply_once(target)


def test_every_cli_process_the_suite_starts_checks_the_byte_proof_too() -> None:
    """The CLI processes the suite starts get the stricter proof from tests/support/boot (and
    production code has no switch for it): with the variable the proof is wrapped, without it not."""
    import os
    import subprocess
    import sys

    from tests.support.util import PYTHONPATH

    probe = "import reconciler.reconcile as r; print(r.proves_convergence.__name__)"
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    wrapped = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, check=True)
    assert wrapped.stdout.strip() == "proven_twice"
    env.pop(fullproof.FULL_PROOF_ENV)
    plain = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, check=True)
    assert plain.stdout.strip() == "proves_convergence"

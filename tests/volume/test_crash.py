"""Crash safety: SIGKILL the real `apply` process at every point of its write sequence.

A reference run of `python -m reconciler apply` under strace lists every system call that changes
the disk. Each kill run starts from a fresh copy of the old volume (which also holds the lock and
temp files of an earlier killed apply) and has strace kill the CLI on entry to one chosen call
(`-e inject=NAME:signal=KILL:when=N`, so that call never runs): every call from touching DMS's lock
to releasing it, and the output writes after. Killing before each disk-changing call reaches every
state the disk can be left in. After each kill:
- every managed file is byte-identical to its old or its new content (the cron file, rewritten in
  place, may also be the new content followed by blank lines: see executor._write_in_place);
- the state file parses and still owns every entry we wrote that is in a file;
- the next apply converges to exactly the reference result and leaves no temp file and no lock.

DMS_RECONCILER_KILL_RUNS=all runs every point of a bigger scenario (bench-sized; slower).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import state as state_file
from reconciler.formats import accounts, aliases, quotas, virtual
from reconciler.reconcile import Target, apply_once
from tests.support.faultkit import (
    HASHED_AT_APPLY,
    LOCK,
    MANAGED,
    STATE,
    Scenario,
    build_scenario,
    cli_command,
    cli_env,
    mask_new_hashes,
    read_files,
    strace_run,
    traced_calls,
)
from tests.support.util import Volume

HEAVY = os.environ.get("DMS_RECONCILER_KILL_RUNS") == "all"
ACCOUNTS = 1500 if HEAVY else 150  # B then adds, deletes or changes about 600 entries
CLI_RECOVERY_EVERY = 5  # every 5th kill is recovered by the CLI too; the rest by apply_once
ENTRY_CODECS = {accounts.FILENAME: accounts, virtual.FILENAME: virtual,
                aliases.FILENAME: aliases, quotas.FILENAME: quotas}
def _shape(call: str, root: Path) -> str:
    """A call without what differs between runs: paths of the copy, temp names, pids, pipes."""
    call = re.sub(r"^(write|pwrite64)\((\d+<[^>]*>), .*", r"\1(\2", call)  # not the data
    call = call.split(" = ")[0].replace(str(root), "ROOT")
    return re.sub(r"\d+", "N", re.sub(r"[0-9a-f-]{8,}", "H", call))


@dataclass
class Reference:
    scenario: Scenario
    calls: list[str]  # the traced calls of a complete apply
    old: dict[str, bytes | None]
    new: dict[str, bytes | None]
    window: tuple[int, int]  # first and last call that touches the lock
    passwords: dict[str, str]  # account -> plaintext for the accounts hashed at apply
    volume_root: Path


def _masked(files: dict[str, bytes | None], passwords: dict[str, str]) -> dict[str, bytes | None]:
    out = dict(files)
    data = out["postfix-accounts.cf"]
    out["postfix-accounts.cf"] = None if data is None else mask_new_hashes(data, passwords)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("crash")
    scenario = build_scenario(root, ACCOUNTS, debris=True)
    volume = scenario.copy_old(root / "ref")
    log = root / "ref.log"
    run = strace_run(cli_command("apply", "-f", str(scenario.desired_b), *volume.args()),
                     log=log, env=cli_env(scenario.env("B")))
    assert run.returncode == 0, run.stderr
    calls = traced_calls(log)
    touching_lock = [i for i, call in enumerate(calls) if LOCK in call]
    passwords = {a: scenario.env("B")[var] for a, var in HASHED_AT_APPLY.items()}
    return Reference(scenario, calls, read_files(scenario.old), read_files(volume),
                     (touching_lock[0], touching_lock[-1]), passwords, volume.root)


def _kill_points(ref: Reference) -> list[int]:
    """Every disk-changing call from the first touch of the lock to a few output writes after."""
    lo, hi = ref.window
    return list(range(lo, min(len(ref.calls), hi + 4)))


def _phases(ref: Reference) -> list[str]:
    """A readable name for each traced call: where in the apply a kill there lands."""
    lo, hi = ref.window
    out = []
    for index, call in enumerate(ref.calls):
        if index < lo:
            out.append("before the lock")
        elif index > hi:
            out.append("after the lock (output)")
        elif LOCK in call:
            out.append("taking or releasing the lock")
        elif "sa-learn" in call:
            out.append("rewriting the cron file in place")
        elif "deadbeef" in call:
            out.append("sweeping temp files of an earlier crash")
        elif call.startswith("fsync(") and call.split(">")[0].endswith("/config"):
            out.append("syncing the config folder after a rename")
        elif call.startswith("write(2<"):
            out.append("telling the user the dead owner's lock was removed")
        else:
            names = [n for n in (STATE, *MANAGED[:-1]) if f"/{n}" in call or f"/.{n}" in call]
            out.append(f"writing {names[0]}" if names else f"other: {call[:60]}")
    return out


def _padded_cron(ref: Reference) -> bytes | None:
    """The one in-between state of the cron file: the new lines, blank lines up to the old size."""
    old, new = ref.old["cron"], ref.new["cron"]
    if old is None or new is None:
        return None
    return new + b"\n" * max(0, len(old) - len(new))


def _check_after_kill(volume: Volume, ref: Reference) -> list[str]:
    """What is wrong with the volume right after a kill (empty when all is well)."""
    problems = []
    now = _masked(read_files(volume), ref.passwords)
    old, new = _masked(ref.old, ref.passwords), _masked(ref.new, ref.passwords)
    for name in MANAGED:
        allowed = {old[name], new[name]} | ({_padded_cron(ref)} if name == "cron" else set())
        if now[name] not in allowed:
            problems.append(f"{name} is neither its old nor its new content")
    raw = now[STATE]
    if raw is None:
        problems.append("the state file is gone")
        return problems
    ownership, problem = state_file.parse(raw.decode())
    if problem:
        problems.append(f"the state file does not parse: {problem}")
    old_own, _ = state_file.parse((ref.old[STATE] or b"").decode())
    new_own, _ = state_file.parse((ref.new[STATE] or b"").decode())
    for name, codec in ENTRY_CODECS.items():
        present = set(codec.parse((now[name] or b"").decode()).entries)
        ours = (old_own.owned(name) | new_own.owned(name)) & present
        lost = ours - ownership.owned(name)
        if lost:
            problems.append(f"{name}: {len(lost)} entries we wrote are no longer owned, "
                            f"e.g. {sorted(lost)[:3]}")
    if ownership.plan_key != old_own.plan_key:
        problems.append("the state file's plan key changed")
    return problems


def _leftovers(volume: Volume) -> list[str]:
    names = os.listdir(volume.config) + os.listdir(volume.cron.parent)
    return [n for n in names if ".dms-reconciler-" in n or n == LOCK]


def _kill_and_recover(ref: Reference, index: int, workdir: Path) -> dict[str, object]:
    call = ref.calls[index]
    name = call.split("(")[0]
    nth = sum(1 for c in ref.calls[: index + 1] if c.split("(")[0] == name)
    volume = ref.scenario.copy_old(workdir / f"k{index}")
    log = workdir / f"k{index}.log"
    killed = strace_run(cli_command("apply", "-f", str(ref.scenario.desired_b), *volume.args()),
                        log=log, env=cli_env(ref.scenario.env("B")),
                        inject=f"{name}:signal=KILL:when={nth}")
    result: dict[str, object] = {"index": index, "call": call, "phase": _phases(ref)[index]}
    last = traced_calls(log)[-1] if log.exists() and traced_calls(log) else ""
    result["killed"] = killed.returncode == -9
    result["at_expected_call"] = _shape(last, volume.root) == _shape(call, ref.volume_root)
    result["problems"] = _check_after_kill(volume, ref)
    result["leftovers_after_kill"] = _leftovers(volume)
    environ = ref.scenario.env("B")
    if index % CLI_RECOVERY_EVERY == 0:
        recovery = strace_run(cli_command("apply", "-f", str(ref.scenario.desired_b),
                                          *volume.args()),
                              log=workdir / f"r{index}.log", env=cli_env(environ))
        result["recovered_by"] = "cli"
        result["recovery_ok"] = recovery.returncode == 0 and "Traceback" not in recovery.stderr
    else:
        target = Target(str(ref.scenario.desired_b), volume.value,
                        environ=environ)
        applied = apply_once(target, lock_timeout=5)
        result["recovered_by"] = "apply_once"
        result["recovery_ok"] = applied.converged
    final = _masked(read_files(volume), ref.passwords)
    expected = _masked(ref.new, ref.passwords)
    result["converged_to_reference"] = [n for n in (*MANAGED, STATE) if final[n] != expected[n]
                                        and (n != "cron" or final[n] != _padded_cron(ref))]
    result["leftovers_after_recovery"] = _leftovers(volume)
    shutil.rmtree(volume.root)
    return result


def test_sigkill_at_every_point_of_the_write_sequence(reference: Reference, tmp_path: Path) -> None:
    points = _kill_points(reference)
    assert len(points) >= 50, f"only {len(points)} kill points; the scenario is too small"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: _kill_and_recover(reference, i, tmp_path), points))

    spread = Counter(str(r["phase"]) for r in results)
    report = {"kills": len(results), "spread": dict(spread),
              "syscalls_in_lock_window": reference.window[1] - reference.window[0] + 1}
    print("\nkill spread:", json.dumps(report, indent=1))
    (tmp_path / "kill-report.json").write_text(json.dumps(results, indent=1, default=str))

    not_killed = [r["index"] for r in results if not r["killed"]]
    assert not not_killed, f"strace did not kill the CLI at calls {not_killed}"
    off_target = [(r["index"], r["call"]) for r in results if not r["at_expected_call"]]
    assert not off_target, f"kills landed elsewhere than planned: {off_target[:3]}"
    broken = [(r["index"], r["call"], r["problems"]) for r in results if r["problems"]]
    assert not broken, f"torn or inconsistent volume after a kill: {broken[:3]}"
    failed = [(r["index"], r["call"]) for r in results if not r["recovery_ok"]]
    assert not failed, f"the next apply did not converge after kills at {failed[:3]}"
    diverged = [(r["index"], r["converged_to_reference"]) for r in results
                if r["converged_to_reference"]]
    assert not diverged, f"after recovery the volume differs from the reference: {diverged[:3]}"
    dirty = [(r["index"], r["leftovers_after_recovery"]) for r in results
             if r["leftovers_after_recovery"]]
    assert not dirty, f"temp files or the lock survived the next apply: {dirty[:3]}"
    # The kills really covered the write sequence: each file's write and the lock itself.
    for phase in ("taking or releasing the lock", "sweeping temp files of an earlier crash",
                  f"writing {STATE}", "writing postfix-accounts.cf", "writing postfix-virtual.cf",
                  "writing postfix-aliases.cf", "writing dovecot-quotas.cf", "writing amavis.cf",
                  "rewriting the cron file in place", "after the lock (output)"):
        assert spread[phase] > 0, f"no kill landed while {phase}"
    assert sum(1 for r in results if r["leftovers_after_kill"]) > 0  # kills did leave debris

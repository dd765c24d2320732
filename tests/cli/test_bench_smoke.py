"""Keep the benchmark working: generate, run every measurement once at the smallest size.

No timing is asserted here (timings live in bench/ and the README's Performance section); these tests fail when
the generator makes a file the validator rejects, when a command the benchmark runs fails or
exits with another status, or when `apply` with no changes touches a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench import generate, run
from reconciler.load.desired import load_desired_bytes
from tests.support.util import REPO


def test_generator_is_deterministic_and_valid() -> None:
    spec = generate.build(500, seed=7)
    again = generate.build(500, seed=7)
    assert generate.to_yaml(spec) == generate.to_yaml(again)
    assert generate.to_yaml(generate.build(500, seed=8)) != generate.to_yaml(spec)
    loaded = load_desired_bytes(generate.to_yaml(spec).encode(), "generated.yaml")
    state = loaded.state
    assert len(state.accounts) == 500 and len(state.aliases) == 1000
    assert state.catch_all and state.devnull and len(state.sa_learn) == 3
    assert any(len(a.targets) > 1 for a in state.aliases)
    kinds = {type(a.password).__name__ for a in state.accounts}
    assert kinds == {"PasswordHash", "PasswordFile", "PasswordEnv"}
    assert len({a.password.value for a in state.accounts  # type: ignore[union-attr]
                if type(a.password).__name__ == "PasswordHash"}) == generate.HASH_POOL


def test_mutation_changes_about_one_percent_and_stays_valid() -> None:
    spec = generate.build(1000, seed=3)
    changed = generate.mutate(spec)
    text = generate.to_yaml(changed)
    load_desired_bytes(text.encode(), "changed.yaml")
    differing = sum(spec.accounts.get(a) != e for a, e in changed.accounts.items())
    differing += sum(spec.aliases.get(a) != t for a, t in changed.aliases.items())
    differing += len(set(spec.accounts) - set(changed.accounts))
    differing += len(set(spec.aliases) - set(changed.aliases))
    assert 0.005 * spec.entries <= differing <= 0.02 * spec.entries


def test_volume_state_sees_a_touched_file(tmp_path: Path) -> None:
    config, cron = run.new_volume(tmp_path / "vol")
    (config / "postfix-accounts.cf").write_text("a@b.c|{SHA512-CRYPT}x\n")
    before = run.volume_state(config, cron)
    time.sleep(0.01)
    os.utime(config / "postfix-accounts.cf")
    assert run.volume_state(config, cron) != before


def test_smoke_run_prints_every_measurement(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--workdir", str(tmp_path / "work"),
         "--json", str(tmp_path / "samples.json")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for name in ("floor", "validate", "plan, empty volume", "apply, empty volume",
                 "plan, no changes", "apply, no changes", "plan, 1% of entries changed", "export",
                 "apply, one account added", "hashes every secret", "without that record",
                 "cache cold", "cache warm", "hash_many"):
        assert name in table, f"{name!r} missing from the table:\n{table}"
    from bench import dms_cli

    # DMS's own CLI is the reference wherever its scripts and doveadm are here (not a skip: the
    # row is simply absent where the reference cannot run)
    assert ("DMS's `setup email add`" in table) == (dms_cli.available() is None), table
    assert "1,000 / 2,000" in table
    assert (tmp_path / "samples.json").exists()

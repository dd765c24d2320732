"""Benchmark dms-reconciler at 1k, 10k and 50k accounts and print one table.

Every figure is one separate process (`python -m reconciler ...` from this checkout), timed from
start to exit, with its peak memory from the kernel (ru_maxrss, read by the small launcher
bench/launch.py so that the runner's own memory does not leak into it). Each measurement is
repeated `--repeat` times, the repetitions interleaved so that a busy moment on a shared machine
hits every command alike; the table shows medians and the highest peak memory.

Commands run with their bytecode cached (in the scratch folder), as an installed package has it,
after an untimed warm-up pass over every code path on a tiny host.

The floor (bench/floor.py) runs in the same way on the same data: it only loads the YAML with
libyaml's C loader and reads and splits the managed files. Every figure is also shown as a
multiple of it.

Per size: `validate`; `plan` and `apply` against an empty volume; `plan` and `apply` with no
changes (the runner checks that this apply wrote nothing: every file keeps its bytes, inode and
modification time); `plan` after about 1% of the entries changed; `export`; `apply` of one added
account (on a copy of the volume), next to DMS's own `setup email add` of the same account on
another copy (bench/dms_cli.py; skipped where DMS's scripts or doveadm are missing), and where that
apply's time goes, in one process on a third copy (bench/inprocess.py one_add). Then, for a
host whose accounts all have their plaintext secret in a `password_file`: the first `apply`
(hashing on every core), `plan` with no changes from the command line with the record of verified
files (`reconciler/passwords/verified.py`) and without it (verifying every secret, on every core, as a
`password_env` secret is on every run), and the sidecar's path, two in-process `plan_once` calls
sharing one VerifiedCache.

    python -m bench.run                       # 1k, 10k, 50k; 3 repetitions
    python -m bench.run --sizes 1000,10000 --repeat 5 --json results.json
    python -m bench.run --smoke               # smallest size, once: keeps the benchmark working
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import dms_cli, generate
from reconciler.passwords import sources as passwords

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = Path(__file__).resolve().parent / "launch.py"
CRON_NAME = "sa-learn"


class BenchFailure(Exception):
    """A command did not do what the benchmark relies on (wrong exit status, wrote a file)."""


@dataclass
class Sample:
    wall: float  # seconds
    rss_mb: float  # peak resident memory of the process (MiB)
    returncode: int
    stdout: Path
    stderr: Path

    def text(self) -> str:
        return self.stdout.read_text(errors="replace")


@dataclass
class Row:
    size: str  # "10,000 / 20,000"
    name: str
    entries: int
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    floor: Row | None = None
    note: str = ""
    per_entry: bool = True
    baseline: Row | None = None  # fixed cost subtracted before dividing by the entries

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


class Runner:
    """Runs commands as separate processes in a scratch folder and keeps their samples."""

    def __init__(self, workdir: Path, verbose: bool) -> None:
        self.workdir = workdir
        self.verbose = verbose
        self.count = 0
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
        self.base_env["PYTHONPATH"] = str(REPO)
        self.base_env["NO_COLOR"] = "1"
        # Bytecode as an installed package has it: without this, a sandbox that sets
        # PYTHONDONTWRITEBYTECODE compiles the reconciler from source in every command (50 ms).
        # The cache lives in the scratch folder, not in the checkout.
        self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.base_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")

    def run(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> Sample:
        self.count += 1
        out = self.workdir / "logs" / f"{self.count:04d}.out"
        err = out.with_suffix(".err")
        out.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**self.base_env, **(env or {})}
        measured = out.with_suffix(".json")
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            subprocess.run([sys.executable, "-S", str(LAUNCHER), str(measured), sys.executable,
                            *argv], cwd=cwd, env=full_env, stdout=stdout, stderr=stderr,
                           check=True)
        result = json.loads(measured.read_text())
        sample = Sample(result["wall"], result["maxrss_kb"] / 1024, result["returncode"], out,
                        err)
        if self.verbose:
            print(f"  {sample.wall:7.3f} s {sample.rss_mb:6.1f} MiB rc={sample.returncode} "
                  f"{' '.join(argv[2:4])}", file=sys.stderr, flush=True)
        return sample

    def cli(self, *args: str, cwd: Path, env: dict[str, str] | None = None,
            expect: int = 0) -> Sample:
        sample = self.run(["-m", "reconciler", *args], cwd=cwd, env=env)
        if sample.returncode != expect:
            raise BenchFailure(
                f"`dms-reconciler {' '.join(args)}` exited {sample.returncode}, expected {expect}"
                f"; see {sample.stdout} and {sample.stderr}"
            )
        return sample


def volume_state(config_dir: Path, cron_file: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (inode, mtime_ns, size, sha256) for every file apply may write."""
    out = {}
    paths = sorted(config_dir.iterdir()) + ([cron_file] if cron_file.exists() else [])
    for path in paths:
        if path.is_file():
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_size, digest)
    return out


def new_volume(root: Path) -> tuple[Path, Path]:
    """An empty DMS layout: root/config and root/cron/sa-learn (not yet created)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "config").mkdir(parents=True)
    (root / "cron").mkdir()
    return root / "config", root / "cron" / CRON_NAME


def fmt_size(accounts: int, aliases: int) -> str:
    return f"{accounts:,} / {aliases:,}"


def bench_size(runner: Runner, accounts: int, *, repeat: int, seed: int,
               startup: Row, floor_startup: Row) -> list[Row]:
    """All command measurements for one size; returns the rows for the table."""
    data = runner.workdir / f"size-{accounts}"
    spec = generate.build(accounts, seed=seed)
    generate.write(spec, data)
    generate.write(generate.mutate(spec), data, "mailserver-changed.yaml")
    added = generate.add_account(spec)
    generate.write(spec, data, "mailserver-plus-one.yaml")
    del spec.accounts[added]
    env = dict(spec.env)
    size = fmt_size(len(spec.accounts), len(spec.aliases))
    entries = spec.entries

    def row(name: str, note: str = "") -> Row:
        return Row(size, name, entries, note=note)

    floor = row("floor: libyaml C loader + read and split the volume files")
    floor.floor = floor
    floor.baseline = floor_startup
    rows = {
        "validate": row("validate"),
        "plan_empty": row("plan, empty volume"),
        "apply_empty": row("apply, empty volume",
                           f"writes all files; hashes {len(spec.secrets)} plaintext secrets"),
        "plan_same": row("plan, no changes",
                         f"verifies {len(spec.secrets)} plaintext secrets"),
        "apply_same": row("apply, no changes", "checked: wrote nothing"),
        "plan_changed": row("plan, 1% of entries changed"),
        "apply_one": row("apply, one account added"),
        "dms_one": row("DMS's `setup email add` of one account, the reference"),
        "export": row("export"),
    }
    for r in rows.values():
        r.floor = floor
        r.baseline = startup
    # Where "apply, one account added" goes (bench/inprocess.py one_add), after the interpreter
    # start and imports (the `--version` row).
    parts = {key: Row(size, f"one account added, in-process: {what}", entries, per_entry=False)
             for key, what in [("read_s", "read mailserver.yaml"),
                               ("yaml_s", "YAML load (libyaml events into values, positions)"),
                               ("rules_s", "schema and mail rules"),
                               ("model_s", "model"),
                               ("apply_s", "apply_once: plan, write, read back (convergence)"),
                               ("plan_s", "of which one plan_once")]}
    env_file = data / "env.json"
    env_file.write_text(json.dumps(spec.env))
    empty_config, empty_cron = new_volume(data / "empty")
    vol = data / "vol"
    config, cron = vol / "config", vol / "cron" / CRON_NAME
    common = ["--config-dir", str(config), "--cron-file", str(cron)]

    def keep(key: str, sample: Sample) -> None:
        rows[key].walls.append(sample.wall)
        rows[key].rss.append(sample.rss_mb)

    for rep in range(repeat):
        print(f"[{size}] repetition {rep + 1}/{repeat}", file=sys.stderr, flush=True)
        sample = runner.cli("--version", cwd=data)
        startup.walls.append(sample.wall)
        startup.rss.append(sample.rss_mb)
        sample = runner.run(["-c", "import yaml"], cwd=data)
        floor_startup.walls.append(sample.wall)
        floor_startup.rss.append(sample.rss_mb)
        keep("validate", runner.cli("validate", "-f", "mailserver.yaml", cwd=data))
        keep("plan_empty", runner.cli(
            "plan", "-f", "mailserver.yaml", "--config-dir", str(empty_config), "--cron-file",
            str(empty_cron), "--detailed-exitcode", cwd=data, env=env, expect=2))
        config, cron = new_volume(vol)
        keep("apply_empty", runner.cli("apply", "-f", "mailserver.yaml", *common, cwd=data,
                                       env=env))
        if not (config / "postfix-accounts.cf").exists() or not cron.exists():
            raise BenchFailure(f"apply to the empty volume {vol} did not write the files")
        sample = runner.run(["-m", "bench.floor", "mailserver.yaml", str(config), str(cron)],
                            cwd=data)
        if sample.returncode != 0:
            raise BenchFailure(f"the floor script failed; see {sample.stderr}")
        floor.walls.append(sample.wall)
        floor.rss.append(sample.rss_mb)
        keep("plan_same", runner.cli("plan", "-f", "mailserver.yaml", *common,
                                     "--detailed-exitcode", cwd=data, env=env))
        before = volume_state(config, cron)
        sample = runner.cli("apply", "-f", "mailserver.yaml", *common, cwd=data, env=env)
        after = volume_state(config, cron)
        if before != after:
            moved = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
            raise BenchFailure(f"apply with no changes touched {', '.join(moved)}")
        if "No changes." not in sample.text():
            raise BenchFailure(f"apply with no changes did not say 'No changes.': {sample.stdout}")
        keep("apply_same", sample)
        keep("plan_changed", runner.cli("plan", "-f", "mailserver-changed.yaml", *common,
                                        "--detailed-exitcode", cwd=data, env=env, expect=2))
        keep("export", runner.cli("export", *common, "-o", str(data / "exported.yaml"),
                                  "--force", cwd=data))
        copy = data / "vol-plus-one"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(vol, copy)
        sample = runner.cli("apply", "-f", "mailserver-plus-one.yaml", "--config-dir",
                            str(copy / "config"), "--cron-file", str(copy / "cron" / CRON_NAME),
                            cwd=data, env=env)
        if "1 added, 0 changed, 0 destroyed" not in sample.text():
            raise BenchFailure(f"adding one account did not add exactly one: {sample.stdout}")
        keep("apply_one", sample)
        if dms_cli.available() is None:
            shutil.rmtree(copy)
            shutil.copytree(vol, copy)
            bin_dir = dms_cli.prepare(dms_cli.DEFAULT_SOURCE, runner.workdir / "dms-cli",
                                      copy / "config")
            rows["dms_one"].walls.append(dms_cli.email_add(bin_dir, added, "bench-password"))
            rows["dms_one"].rss.append(0.0)
        shutil.rmtree(copy)
        shutil.copytree(vol, copy)
        sample = runner.run(["-m", "bench.inprocess", "one_add", "mailserver-plus-one.yaml",
                             str(copy / "config"), str(copy / "cron" / CRON_NAME),
                             str(env_file)], cwd=data)
        if sample.returncode != 0:
            raise BenchFailure(f"the one_add probe failed; see {sample.stderr}")
        for key, value in json.loads(sample.text()).items():
            parts[key].walls.append(value)
            parts[key].rss.append(sample.rss_mb)
    if not rows["dms_one"].walls:
        del rows["dms_one"]
    else:
        rows["dms_one"].note = ("bash, run unchanged outside its container; its time is not "
                                "a multiple of anything, memory not measured")
        rows["dms_one"].floor = None
        rows["dms_one"].per_entry = False
        rows["apply_one"].note = f"{rows['apply_one'].median / rows['dms_one'].median:.1f}x DMS's"
    return [floor, *rows.values(), *parts.values()]


def bench_plaintext(runner: Runner, accounts: int, *, repeat: int, seed: int,
                    startup: Row) -> list[Row]:
    """A host whose every account has its plaintext secret in a `password_file`."""
    data = runner.workdir / f"plaintext-{accounts}"
    spec = generate.build(accounts, seed=seed, plaintext_fraction=1.0, secrets_from="file")
    generate.write(spec, data)
    # Secret files exist well before an apply reads them; one written less than 2 s before is
    # not trusted from its timestamps (passwords.RACY_NS), so let the new ones settle first.
    time.sleep(passwords.RACY_NS / 1e9 + 0.1)
    env_file = data / "env.json"
    env_file.write_text(json.dumps(spec.env))
    size = fmt_size(len(spec.accounts), len(spec.aliases)) + ", all password_file"
    entries = spec.entries
    apply_row = Row(size, "apply, empty volume: hashes every secret", entries)
    plan_row = Row(size, "plan (CLI), no changes", entries,
                   note="the record of verified files vouches for every secret")
    cold_plan_row = Row(size, "plan (CLI), no changes, without that record", entries,
                        note="verifies every secret, as every run did before the record; "
                             "what password_env secrets cost on every run")
    cold_row = Row(size, "sidecar resync, in-process plan_once, no record, cache cold", entries)
    warm_row = Row(size, "sidecar resync, in-process plan_once, cache warm", entries,
                   note="no secret verified again")
    hash_row = Row(size, f"passwords.hash_many of {accounts:,} secrets", accounts,
                   per_entry=False)
    rows = [apply_row, plan_row, cold_plan_row, cold_row, warm_row, hash_row]
    apply_row.baseline = plan_row.baseline = cold_plan_row.baseline = startup
    vol = data / "vol"
    speedups: list[float] = []
    for rep in range(repeat):
        print(f"[{size}] repetition {rep + 1}/{repeat}", file=sys.stderr, flush=True)
        config, cron = new_volume(vol)
        common = ["--config-dir", str(config), "--cron-file", str(cron)]
        sample = runner.cli("apply", "-f", "mailserver.yaml", *common, cwd=data, env=spec.env)
        apply_row.walls.append(sample.wall)
        apply_row.rss.append(sample.rss_mb)
        record = config / "dms-reconciler.verified.json"
        facts = len(json.loads(record.read_text())["facts"]) if record.exists() else 0
        if facts != len(spec.secrets):
            raise BenchFailure(f"the record of verified files holds {facts} facts, expected "
                               f"{len(spec.secrets)} (were the secret files written just now?)")
        sample = runner.cli("plan", "-f", "mailserver.yaml", *common, "--detailed-exitcode",
                            cwd=data, env=spec.env)
        plan_row.walls.append(sample.wall)
        plan_row.rss.append(sample.rss_mb)
        kept = record.read_bytes()
        record.unlink()
        sample = runner.cli("plan", "-f", "mailserver.yaml", *common, "--detailed-exitcode",
                            cwd=data, env=spec.env)
        cold_plan_row.walls.append(sample.wall)
        cold_plan_row.rss.append(sample.rss_mb)
        sample = runner.run(["-m", "bench.inprocess", "cache", "mailserver.yaml", str(config),
                             str(cron), str(env_file)], cwd=data)
        record.write_bytes(kept)
        if sample.returncode != 0:
            raise BenchFailure(f"the cache probe failed; see {sample.stderr}")
        result = json.loads(sample.text())
        if result["secrets"] != len(spec.secrets) or result["cached"] < len(spec.secrets):
            raise BenchFailure(f"the cache probe saw {result}, expected "
                               f"{len(spec.secrets)} secrets")
        cold_row.walls.append(result["cold_s"])
        warm_row.walls.append(result["warm_s"])
        cold_row.rss.append(sample.rss_mb)
        warm_row.rss.append(sample.rss_mb)
        sample = runner.run(["-m", "bench.inprocess", "hashing", str(accounts)], cwd=data)
        if sample.returncode != 0:
            raise BenchFailure(f"the hashing probe failed; see {sample.stderr}")
        result = json.loads(sample.text())
        hash_row.walls.append(result["wall_s"])
        hash_row.rss.append(sample.rss_mb)
        speedups.append(result["speedup"])
    hash_row.note = (f"{statistics.median(speedups):.1f}x the single-core rate on "
                     f"{os.cpu_count()} CPUs")
    return rows


def warm_up(runner: Runner) -> None:
    """Run every code path once on a tiny host, untimed: fills the bytecode cache."""
    data = runner.workdir / "warm-up"
    spec = generate.build(250, plaintext_fraction=0.04)
    generate.write(spec, data)
    generate.write(generate.mutate(spec), data, "mailserver-changed.yaml")
    (data / "env.json").write_text(json.dumps(spec.env))
    config, cron = new_volume(data / "vol")
    common = ["--config-dir", str(config), "--cron-file", str(cron)]
    runner.cli("validate", "-f", "mailserver.yaml", cwd=data)
    runner.cli("apply", "-f", "mailserver.yaml", *common, cwd=data, env=spec.env)
    runner.cli("plan", "-f", "mailserver-changed.yaml", *common, cwd=data, env=spec.env)
    runner.cli("export", *common, "-o", str(data / "exported.yaml"), "--force", cwd=data)
    for argv in (["-m", "bench.floor", "mailserver.yaml", str(config), str(cron)],
                 ["-m", "bench.inprocess", "cache", "mailserver.yaml", str(config), str(cron),
                  str(data / "env.json")],
                 ["-m", "bench.inprocess", "hashing", "250"]):
        if runner.run(argv, cwd=data).returncode != 0:
            raise BenchFailure(f"warm-up failed: {' '.join(argv)}")


def measure_startup(runner: Runner, repeat: int) -> tuple[Row, Row]:
    """`--version`: the interpreter and the CLI's own imports (each command imports the rest).
    Measured here and once per repetition of each size; subtracted before dividing by the
    entries. And the bare interpreter (`-c pass`), site and this machine's .pth files included."""
    row = Row("-", "interpreter start + the CLI's imports (`--version`)", 0, per_entry=False)
    bare = Row("-", "interpreter start alone (`python -c pass`, with site)", 0, per_entry=False)
    runner.cli("--version", cwd=REPO)  # warm the page cache and the bytecode
    for _ in range(max(3, repeat)):
        sample = runner.cli("--version", cwd=REPO)
        row.walls.append(sample.wall)
        row.rss.append(sample.rss_mb)
        sample = runner.run(["-c", "pass"], cwd=REPO)
        bare.walls.append(sample.wall)
        bare.rss.append(sample.rss_mb)
    return row, bare


def table(rows: list[Row], startup: Row) -> str:
    """One Markdown table: median wall, ratio to the floor, time per entry, peak memory."""
    out = [
        "| accounts / aliases | measurement | wall (median) | x floor | µs / entry | peak RSS |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in [startup, *rows]:
        ratio = f"{r.median / r.floor.median:.2f}" if r.floor is not None else ""
        base = r.baseline.median if r.baseline is not None and r.baseline.walls else 0.0
        per = (f"{max(r.median - base, 0) / r.entries * 1e6:.1f}"
               if r.per_entry and r.entries else "")
        name = r.name + (f" ({r.note})" if r.note else "")
        rss = f"{max(r.rss):.0f} MiB" if max(r.rss) > 0 else ""
        out.append(f"| {r.size} | {name} | {r.median:.3f} s | {ratio} | {per} | {rss} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000",
                        help="comma-separated account counts (aliases are twice as many)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--plaintext", type=int, default=10000,
                        help="accounts of the all-plaintext host (0 skips it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, once, and a small plaintext host: checks that the "
                             "benchmark still works (CI), measures nothing worth keeping")
    parser.add_argument("--workdir", type=Path, help="keep the generated data and logs here")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    repeat, plaintext = args.repeat, args.plaintext
    if args.smoke:
        sizes, repeat, plaintext = [min(sizes)], 1, 300

    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="dms-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    runner = Runner(scratch, args.verbose)
    load_before = os.getloadavg()
    started = time.time()
    try:
        warm_up(runner)
        startup, bare = measure_startup(runner, repeat)
        floor_startup = Row("-", "interpreter start + `import yaml` (the floor's fixed cost)", 0,
                            per_entry=False)
        rows: list[Row] = []
        for accounts in sizes:
            rows += bench_size(runner, accounts, repeat=repeat, seed=args.seed, startup=startup,
                               floor_startup=floor_startup)
        if plaintext:
            plain = bench_plaintext(runner, plaintext, repeat=repeat, seed=args.seed,
                                    startup=startup)
            hashed = next((r for r in rows if r.name == "plan, no changes"
                           and r.size.startswith(f"{plaintext:,} /")), None)
            if hashed is not None:
                plain[1].note += (f"; {plain[1].median / hashed.median:.2f}x the plan with no "
                                  "changes of the same host with 99% hashes")
            rows += plain
    except BenchFailure as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    print(table([bare, floor_startup, *rows] if floor_startup.walls else [bare, *rows], startup))
    print()
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
          f"{repeat} repetition(s), interleaved; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; {time.time() - started:.0f} s in all.")
    print("µs / entry: (median - the fixed cost above it: `--version` for commands, `import yaml` "
          "for the floor) / entries, where entries = accounts + aliases + catch-alls + devnull "
          "addresses; the in-process rows have no fixed cost to subtract. x floor: median / the "
          "floor's median at the same size.")
    if args.json:
        args.json.write_text(json.dumps([
            {"size": r.size, "name": r.name, "entries": r.entries, "walls": r.walls,
             "rss_mb": r.rss, "note": r.note} for r in [startup, bare, floor_startup, *rows]
        ], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

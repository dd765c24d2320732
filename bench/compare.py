"""Two checkouts side by side in one run: the no-op `plan` and the sidecar's reaction.

bench/run.py measures one checkout; a change's cost is only visible against the checkout before it,
measured at the same moment on the same (shared, noisy) machine. This runs both, interleaved:

- `plan, no changes` at --accounts (bench/run.py's figure): the data is generated once
  (bench/generate.py, --seed), each checkout applies it to its own volume and plans it once
  untimed (bytecode cached, as an installed package has it), then the timed plans alternate
  A B, B A, A B ... so that a busy moment hits both alike. Each plan is one process, timed by
  bench/launch.py from start to exit.
- with --sidecar N: N runs of each checkout's own bench/sidecar.py (alternating), each reporting
  its median reaction over --edits saves; shown as min/median/max of those medians.

    python -m bench.compare /tmp/before . --accounts 10000 --repeat 7
    python -m bench.compare /tmp/before . --repeat 0 --sidecar 3 --sidecar-accounts 10000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import generate

LAUNCHER = Path(__file__).resolve().parent / "launch.py"


def plan_once(
    tree: Path, work: Path, env: dict[str, str], data: Path
) -> tuple[float, float, float]:
    """One `plan --detailed-exitcode` of `tree` on its volume: wall and CPU seconds (user +
    system: less swayed by other load than the wall), peak MiB."""
    result = work / "result.json"
    config, cron = work / "vol" / "config", work / "vol" / "cron" / "sa-learn"
    argv = [sys.executable, "-m", "reconciler", "plan", "-f", "mailserver.yaml",
            "--config-dir", str(config), "--cron-file", str(cron), "--detailed-exitcode"]
    with open(work / "plan.out", "wb") as out, open(work / "plan.err", "wb") as err:
        subprocess.run([sys.executable, "-S", str(LAUNCHER), str(result), *argv], cwd=data,
                       env=env, stdout=out, stderr=err, check=True)
    measured = json.loads(result.read_text())
    if measured["returncode"] != 0:
        sys.exit(f"{tree}: plan exited {measured['returncode']} (expected 0, no changes); "
                 f"see {work / 'plan.err'}")
    return measured["wall"], measured["cpu"], measured["maxrss_kb"] / 1024


def prepare(tree: Path, work: Path, data: Path, secrets: dict[str, str]) -> dict[str, str]:
    """The tree's environment (as bench/run.py's Runner), its volume applied, one plan untimed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({"PYTHONPATH": str(tree), "NO_COLOR": "1",
                "PYTHONPYCACHEPREFIX": str(work / "pycache"), **secrets})
    config = work / "vol" / "config"
    (work / "vol" / "cron").mkdir(parents=True)
    config.mkdir()
    subprocess.run([sys.executable, "-m", "reconciler", "apply", "-f", "mailserver.yaml",
                    "--config-dir", str(config), "--cron-file",
                    str(work / "vol" / "cron" / "sa-learn")],
                   cwd=data, env=env, stdout=subprocess.DEVNULL, check=True)
    plan_once(tree, work, env, data)
    return env


def spread(values: list[float], scale: float, unit: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"min {low * scale:.0f} / median {mid * scale:.0f} / max {high * scale:.0f} {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="checkout A (e.g. a `git worktree add`)")
    parser.add_argument("after", type=Path, help="checkout B")
    parser.add_argument("--accounts", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="timed plans of each (0: none)")
    parser.add_argument("--sidecar", type=int, default=0, help="bench/sidecar.py runs of each")
    parser.add_argument("--sidecar-accounts", type=int, default=3)
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    print(f"load average at start: {os.getloadavg()}", flush=True)

    if args.repeat:
        scratch = Path(tempfile.mkdtemp(prefix="dms-bench-compare-"))
        try:
            data = scratch / "data"
            spec = generate.build(args.accounts, seed=args.seed)
            generate.write(spec, data)
            works = {name: scratch / name for name in trees}
            envs = {name: prepare(tree, works[name], data, spec.env)
                    for name, tree in trees.items()}
            walls: dict[str, list[float]] = {name: [] for name in trees}
            cpus: dict[str, list[float]] = {name: [] for name in trees}
            for rep in range(args.repeat):
                for name in list(trees)[:: 1 if rep % 2 == 0 else -1]:
                    wall, cpu, rss = plan_once(trees[name], works[name], envs[name], data)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                    print(f"  plan {name:6} {wall * 1000:6.0f} ms wall {cpu * 1000:6.0f} ms CPU "
                          f"{rss:5.0f} MiB  load {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"plan, no changes, {args.accounts:,} accounts, {args.repeat} runs each:")
        for what, values in (("wall", walls), ("CPU", cpus)):
            for name in trees:
                print(f"  {what:4} {name:6} {spread(values[name], 1000, 'ms')}")
            ratio = statistics.median(values["after"]) / statistics.median(values["before"])
            print(f"  {what:4} after/before (medians) {ratio:.3f}", flush=True)

    if args.sidecar:
        medians: dict[str, list[float]] = {name: [] for name in trees}
        for rep in range(args.sidecar):
            for name in list(trees)[:: 1 if rep % 2 == 0 else -1]:
                done = subprocess.run(
                    [sys.executable, str(trees[name] / "bench" / "sidecar.py"), "--accounts",
                     str(args.sidecar_accounts), "--edits", str(args.edits), "--idle", "1"],
                    capture_output=True, text=True, check=True)
                found = re.search(r"reaction, saved -> written\s+median (\d+) ms", done.stdout)
                if found is None:
                    sys.exit(f"{name}: no reaction line in bench/sidecar.py's output:\n"
                             f"{done.stdout}{done.stderr}")
                medians[name].append(int(found.group(1)) / 1000)
                print(f"  sidecar {name:6} {done.stdout.splitlines()[2].strip()}", flush=True)
        print(f"sidecar reaction, {args.sidecar_accounts:,} accounts, median of {args.edits} "
              f"saves per run, {args.sidecar} runs each:")
        for name in trees:
            print(f"  {name:6} {spread(medians[name], 1000, 'ms')}")
        ratio = statistics.median(medians["after"]) / statistics.median(medians["before"])
        print(f"  after/before (medians) {ratio:.3f}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

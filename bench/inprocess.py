"""In-process measurements the command line cannot show (run by bench/run.py, one process each).

`cache`: the sidecar's resync path. Two `reconcile.plan_once` calls share one `memory.Memory`
(its `passwords.VerifiedCache` and parse cache), as the watcher's loop does: the first verifies every plaintext secret
against its hash on the volume (on every core), the second finds them all in the cache.

`hashing`: `passwords.hash_many` on N secrets against the single-core rate measured on a sample,
to show how many cores the first apply keeps busy.

`one_add`: where the time of "apply, one account added" goes, in one process: reading the file,
the YAML load (libyaml events into values, with positions), the schema and mail rules, the model,
then `apply_once` (plan, write, read the bytes back to prove convergence), and one more
`plan_once` alone.
The interpreter start and imports are the `--version` row.

`reload`: the sidecar's YAML load after one added account: the full load (`load_yaml_bytes`)
against `yamlchunks.IncrementalLoader`, which parses again only the chunks not in its last load.
Also its first (cold) load, which parses every chunk alone. Medians of `repeat` runs.

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time

from reconciler.configvolume import Volume
from reconciler.memory import Memory
from reconciler.passwords import sources as passwords
from reconciler.reconcile import Target, plan_once


def cache(desired: str, config_dir: str, cron_file: str, env_file: str) -> dict[str, object]:
    with open(env_file, encoding="utf-8") as handle:
        environ = {**os.environ, **json.load(handle)}
    target = Target(desired, Volume(config_dir, cron_file), environ=environ)
    memory = Memory()
    verified = memory.verified
    start = time.perf_counter()
    cold = plan_once(target, memory=memory)
    middle = time.perf_counter()
    warm = plan_once(target, memory=memory)
    end = time.perf_counter()
    if cold.plan.has_changes or warm.plan.has_changes:
        raise SystemExit("the volume does not match the desired state: the cache probe needs a "
                         "converged volume")
    secrets = sum(p.secret is not None for p in warm.passwords.values())
    return {"cold_s": middle - start, "warm_s": end - middle, "secrets": secrets,
            "cached": len(verified)}


def hashing(count: int) -> dict[str, object]:
    plaintexts = [passwords.Secret(f"hash-rate-{i}") for i in range(count)]
    sample = plaintexts[: min(count, 300)]
    start = time.perf_counter()
    for secret in sample:
        passwords.hash_password(secret)
    one_core = (time.perf_counter() - start) / len(sample)
    start = time.perf_counter()
    made = passwords.hash_many(plaintexts)
    wall = time.perf_counter() - start
    assert len(made) == count and all(h.startswith("{SHA512-CRYPT}$6$") for h in made)
    return {"count": count, "wall_s": wall, "one_core_s": one_core * count,
            "speedup": one_core * count / wall, "cpus": os.cpu_count()}


def one_add(desired: str, config_dir: str, cron_file: str, env_file: str) -> dict[str, object]:
    from reconciler.load.desired import Loaded, build_state, check_document, read_desired_bytes
    from reconciler.load.yamlload import load_yaml_bytes
    from reconciler.reconcile import apply_once

    with open(env_file, encoding="utf-8") as handle:
        environ = {**os.environ, **json.load(handle)}
    target = Target(desired, Volume(config_dir, cron_file), environ=environ)
    times = {}
    start = time.perf_counter()
    data = read_desired_bytes(desired)
    times["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    doc = load_yaml_bytes(data, desired)
    times["yaml_s"] = time.perf_counter() - start
    start = time.perf_counter()
    diagnostics = check_document(doc)
    times["rules_s"] = time.perf_counter() - start
    start = time.perf_counter()
    state = build_state(doc.value)
    times["model_s"] = time.perf_counter() - start
    loaded = Loaded(state=state, warnings=tuple(diagnostics), sha256="", filename=desired)
    start = time.perf_counter()
    applied = apply_once(target, loaded=loaded)
    times["apply_s"] = time.perf_counter() - start
    start = time.perf_counter()
    again = plan_once(target, loaded=loaded)
    times["plan_s"] = time.perf_counter() - start
    counts = applied.planned.plan.counts
    if (counts["add"], counts["change"], counts["destroy"]) != (1, 0, 0) or again.plan.has_changes:
        raise SystemExit(f"expected one added account and a converged volume, got {counts}")
    return times


def reload(desired: str, repeat: int = 5) -> dict[str, object]:
    import statistics

    from reconciler.load.yamlchunks import IncrementalLoader
    from reconciler.load.yamlload import load_yaml_bytes

    with open(desired, "rb") as handle:
        data = handle.read()
    added = data.replace(b"\naccounts:\n", b"\naccounts:\n  bench-new@example.com:\n"
                         b"    password_env: BENCH_NEW\n", 1)
    assert added != data
    full, cold, warm = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        expected = load_yaml_bytes(added, desired).value
        full.append(time.perf_counter() - start)
        loader = IncrementalLoader()
        start = time.perf_counter()
        loader.load(data, desired)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        got = loader.load(added, desired).value
        warm.append(time.perf_counter() - start)
        if got != expected or loader.fell_back or loader.parsed != 1:
            raise SystemExit(f"the reload did not take the incremental path ({loader.parsed})")
    return {"full_s": statistics.median(full), "incremental_s": statistics.median(warm),
            "cold_s": statistics.median(cold), "reused": loader.reused, "bytes": len(data)}


def main(argv: list[str]) -> None:
    if argv[0] == "cache":
        result = cache(*argv[1:5])
    elif argv[0] == "hashing":
        result = hashing(int(argv[1]))
    elif argv[0] == "one_add":
        result = one_add(*argv[1:5])
    elif argv[0] == "reload":
        result = reload(argv[1], *map(int, argv[2:3]))
    else:
        raise SystemExit(f"unknown probe {argv[0]!r}; use cache, hashing, one_add or reload")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])

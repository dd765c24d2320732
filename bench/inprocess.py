"""In-process measurements the command line cannot show (run by bench/run.py, one process each).

`cache`: the sidecar's resync path. Two `reconcile.plan_once` calls share one
`passwords.VerifiedCache`, as the watcher's loop does: the first verifies every plaintext secret
against its hash on the volume (on every core), the second finds them all in the cache.

`hashing`: `passwords.hash_many` on N secrets against the single-core rate measured on a sample,
to show how many cores the first apply keeps busy.

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time

from reconciler import passwords
from reconciler.reconcile import Target, plan_once


def cache(desired: str, config_dir: str, cron_file: str, env_file: str) -> dict[str, object]:
    with open(env_file, encoding="utf-8") as handle:
        environ = {**os.environ, **json.load(handle)}
    target = Target(desired, config_dir, cron_file, environ=environ)
    verified = passwords.VerifiedCache()
    start = time.perf_counter()
    cold = plan_once(target, cache=verified)
    middle = time.perf_counter()
    warm = plan_once(target, cache=verified)
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


def main(argv: list[str]) -> None:
    if argv[0] == "cache":
        result = cache(*argv[1:5])
    elif argv[0] == "hashing":
        result = hashing(int(argv[1]))
    else:
        raise SystemExit(f"unknown probe {argv[0]!r}; use cache or hashing")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])

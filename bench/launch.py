"""Run one command and record its wall time and peak memory (used by bench/run.py).

    python -S bench/launch.py RESULT.json COMMAND [ARGS...]

Why a separate launcher: a child's peak RSS (ru_maxrss) starts from its parent's RSS at fork,
even across exec, so a runner holding a 50,000-account data set in memory would report 200 MB for
every command it starts. This process stays small (no site, no imports beyond os/sys/time/json),
so the figure it reports is the command's own.
"""

import json
import os
import sys
import time


def main() -> None:
    result_path, argv = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump({"wall": wall, "maxrss_kb": usage.ru_maxrss,
                   "cpu": usage.ru_utime + usage.ru_stime,
                   "returncode": os.waitstatus_to_exitcode(status)}, handle)


if __name__ == "__main__":
    main()

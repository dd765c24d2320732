"""verify_many / hash_many on several cores give the answers one core gives, in order.

Each case runs in a fresh interpreter, because which workers are used depends on whether other
threads run in the process (pytest's may have some): forked workers when none do, the forkserver
for big batches when some do, one core for small batches then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, sys, threading, concurrent.futures as futures
from reconciler.passwords import sources as passwords
from reconciler.passwords.sources import Secret

count, with_thread = int(sys.argv[1]), sys.argv[2] == "thread"
methods = []
real_pool = futures.ProcessPoolExecutor
def recording_pool(*args, **kwargs):
    methods.append(kwargs["mp_context"].get_start_method())
    return real_pool(*args, **kwargs)
futures.ProcessPoolExecutor = recording_pool
real_fork = os.fork
def counting_fork():
    pid = real_fork()
    if pid:
        methods.append("fork")
    return pid
os.fork = counting_fork

stop = threading.Event()
if with_thread:
    threading.Thread(target=stop.wait, daemon=True).start()
secrets = [Secret(f"secret-{i}") for i in range(count)]
hashes = passwords.hash_many(secrets)
# every third pair gets a wrong secret: the answers must come back in the caller's order
pairs = [(Secret("wrong") if i % 3 == 0 else s, h) for i, (s, h) in enumerate(zip(secrets, hashes))]
answers = passwords.verify_many(pairs)
stop.set()
print(json.dumps({
    "answers": answers,
    "distinct_hashes": len(set(hashes)),
    "one_core": [passwords.verify(s, h) for s, h in pairs],
    "methods": methods,
}))
"""


def run(count: int, thread: bool) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(count), "thread" if thread else "alone"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("count", "thread", "expected_methods"),
    [
        (40, False, ["fork", "fork"]),  # no other thread: a forked helper per call
        (40, True, []),  # a thread runs and the batch is small: one core
        (5, False, []),  # too few to pay for any worker
    ],
)
def test_parallel_answers_match_one_core(count: int, thread: bool,
                                         expected_methods: list[str]) -> None:
    result = run(count, thread)
    assert result["methods"] == expected_methods
    assert result["answers"] == result["one_core"]
    assert result["answers"] == [i % 3 != 0 for i in range(count)]
    assert result["distinct_hashes"] == count  # every hash has its own salt


def test_big_batch_with_threads_running_uses_the_forkserver() -> None:
    result = run(210, True)
    assert result["methods"] == ["forkserver", "forkserver"]
    assert result["answers"] == [i % 3 != 0 for i in range(210)]


def _fails_in_a_child(item: int, parent: int = os.getpid()) -> int:
    if os.getpid() != parent:
        raise RuntimeError("a helper process failed")
    return item * 2


def test_a_failed_helper_s_share_is_done_by_the_parent() -> None:
    from reconciler.passwords.hashing import _forked_map

    assert _forked_map(_fails_in_a_child, list(range(30)), 3) == [i * 2 for i in range(30)]

"""Shared by the reliability tests: a large two-version scenario and strace-driven fault injection.

The scenario is a volume in state A (applied by dms-reconciler, plus hand-made unmanaged entries)
and a desired file B that changes every managed file: accounts added, deleted and re-hashed (some
hashed at apply from password_env), quotas, aliases, the catch-all and its self-routes, devnull,
the quarantine block and a shorter sa-learn cron file.

`strace -e inject=SET:signal=KILL:when=N` stops the real CLI process on entry to its N-th traced
system call and kills it there (the call is not executed), so N picks the exact point of the write
sequence where the process dies.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.support.util import PYTHONPATH, Volume, make_volume

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.hash import sha512_crypt

B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
STATE = "dms-reconciler.state.json"
LOCK = "check-for-changes.sh.lock"
MANAGED = ("postfix-accounts.cf", "postfix-regexp.cf", "postfix-virtual.cf", "postfix-aliases.cf",
           "dovecot-quotas.cf", "amavis.cf", "cron")
# Every system call that changes the disk (a kill before each reaches every state the disk can be
# left in). `openat` is left out: tracing the hundreds of reads at start-up would double the time.
TRACED = ("write,pwrite64,fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat,"
          "ftruncate,fchmod,fchown,utimensat,mkdir")

# Passwords the scenario uses through password_env: two kept from A, three hashed at apply in B.
ENV_PASSWORDS = {
    "KEEP_ONE": "kept-one-Secret-9f1",
    "KEEP_TWO": "kept-two-Secret-3c7",
    "NEW_ONE": "new-one-Secret-a51",
    "NEW_TWO": "new-two-Secret-b62",
    "CHANGED": "changed-Secret-c73",
}
ENV_A = {"KEEP_ONE": "kept-one-Secret-9f1", "KEEP_TWO": "kept-two-Secret-3c7",
         "CHANGED": "before-change-Secret-d84"}
HASHED_AT_APPLY = {"envnew1@example.com": "NEW_ONE", "envnew2@example.com": "NEW_TWO",
                   "envchanged@example.com": "CHANGED"}


def fake_hash(seed: str) -> str:
    """A well-formed, deterministic `{SHA512-CRYPT}` hash (it verifies no password)."""
    digest = hashlib.sha512(seed.encode()).digest() + hashlib.sha512(seed.encode() + b"2").digest()
    chars = "".join(B64[b % 64] for b in digest)
    return "{SHA512-CRYPT}$6$" + chars[:16] + "$" + chars[16:102]


def _yaml_targets(targets: list[str]) -> str:
    return "[" + ", ".join(targets) + "]"


def desired_yaml(version: str, n: int = 600) -> str:
    """mailserver.yaml for version "A" or "B" of the scenario, with about `n` accounts."""
    domains = ["example.com", "example.org", "catch.example.net"]
    lines = ["version: 1", f"domains: [{', '.join(domains)}]", "accounts:"]
    if version == "A":
        ids = range(n)
    else:  # B: the first fifth deleted, a fifth more added
        ids = range(n // 5, n + n // 5)
    accounts = []
    for i in ids:
        domain = "catch.example.net" if i % 10 == 0 else ("example.org" if i % 3 else "example.com")
        address = f"user{i:05d}@{domain}"
        rehash = version == "B" and i % 7 == 0
        lines.append(f"  {address}:")
        lines.append(f'    password_hash: "{fake_hash(address + ("B" if rehash else "A"))}"')
        if i % 4 == 0:
            size = "5G" if version == "A" or i % 8 else "7G"
            lines.append(f"    quota: {size}")
        accounts.append(address)
    env_accounts = {"envkeep1@example.com": "KEEP_ONE", "envkeep2@example.com": "KEEP_TWO",
                    "envchanged@example.com": "CHANGED"}
    if version == "B":
        env_accounts.update({"envnew1@example.com": "NEW_ONE", "envnew2@example.com": "NEW_TWO"})
    for address, var in env_accounts.items():
        lines += [f"  {address}:", f"    password_env: {var}"]
    lines.append("aliases:")
    for j in range(2 * n):
        if version == "B" and j % 5 == 0:
            continue  # deleted in B
        target = accounts[(j * 7) % len(accounts)]
        targets = [target] + ([f"fwd{j}@elsewhere.test"] if j % 3 == 0 else [])
        if version == "B" and j % 5 == 1:
            targets.append("partner@elsewhere.test")  # changed in B
        lines.append(f"  alias{j:05d}@example.com: {_yaml_targets(targets)}")
    if version == "B":
        for j in range(2 * n, 2 * n + n // 3):
            lines.append(f"  alias{j:05d}@example.org: {accounts[j % len(accounts)]}")
    if version == "A":
        lines += ["catch_all:", f"  catch.example.net: {accounts[1]}"]
        lines += ["devnull:"] + [f"  - noreply{k}@example.com" for k in range(5)]
    lines += ["quarantine:", f"  mailbox: {accounts[2 if version == 'A' else 3]}"]
    lines.append("sa_learn:")
    if version == "A":
        lines += ['  - schedule: "0 2 * * *"', "    learn: spam", "    folder: .Junk",
                  f"    accounts: {_yaml_targets(accounts[:40])}",
                  '  - schedule: "30 3 * * *"', "    learn: ham", "    folder: cur",
                  "    domains: [example.org]"]
    else:  # a much shorter cron file: the in-place rewrite must shrink it
        lines += ['  - schedule: "15 4 * * *"', "    learn: spam", "    folder: .Junk",
                  "    domains: [example.com]"]
    lines += ["policy:", "  max_deletions: 100000"]
    return "\n".join(lines) + "\n"


HAND_MADE = {  # unmanaged entries a human or DMS's `setup` CLI added to state A
    "postfix-accounts.cf": f"legacy@example.com|{fake_hash('legacy')}\n",
    "postfix-virtual.cf": "handmade@example.com legacy@example.com\n",
    "dovecot-quotas.cf": "legacy@example.com:1G\n",
}


@dataclass
class Scenario:
    root: Path  # holds old/ (the volume in state A) and the two desired files
    n: int

    @property
    def old(self) -> Volume:
        return Volume(self.root / "old")

    @property
    def desired_a(self) -> Path:
        return self.root / "a.yaml"

    @property
    def desired_b(self) -> Path:
        return self.root / "b.yaml"

    def env(self, version: str = "B") -> dict[str, str]:
        return dict(ENV_PASSWORDS if version == "B" else ENV_A)

    def copy_old(self, dest: Path) -> Volume:
        shutil.copytree(self.root / "old", dest, symlinks=True)
        return Volume(dest)


def dead_lock_token() -> str:
    """A lock token of a dms-reconciler on this host that has exited (killed mid-apply)."""
    from reconciler.volume.lock import _process_identity, make_token

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.05)"])
    _namespace, started = _process_identity(child.pid)
    child.wait()
    parts = make_token().split()
    parts[3], parts[4] = str(child.pid), started or "-"
    return " ".join(parts)


def add_crash_debris(volume: Volume) -> None:
    """What a dms-reconciler killed mid-apply leaves: its lock and temp files."""
    config = volume.config
    (config / LOCK).write_text(dead_lock_token() + "\n")
    (config / ".postfix-accounts.cf.dms-reconciler-deadbeef0001.tmp").write_text("half|writ")
    (config / ".postfix-virtual.cf.dms-reconciler-deadbeef0002.tmp").write_text("")
    (config / f".{LOCK}.dms-reconciler-deadbeef0003.tmp").write_text("token\n")


def build_scenario(root: Path, n: int = 600, *, debris: bool = False) -> Scenario:
    """Write A and B, apply A in-process to `root/old`, then add hand-made unmanaged entries
    (and, with `debris`, what an earlier apply killed mid-way left behind)."""
    from reconciler.reconcile import Target, apply_once

    scenario = Scenario(root, n)
    scenario.desired_a.write_text(desired_yaml("A", n))
    scenario.desired_b.write_text(desired_yaml("B", n))
    volume = make_volume(root / "old")
    target = Target(str(scenario.desired_a), volume.value,
                    environ=scenario.env("A"))
    apply_once(target)
    for name, text in HAND_MADE.items():
        with open(volume.file(name), "a", encoding="utf-8") as handle:
            handle.write(text)
    if debris:
        add_crash_debris(volume)
    return scenario


def read_files(volume: Volume) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for name in (*MANAGED, STATE):
        path = volume.file(name)
        out[name] = path.read_bytes() if path.exists() else None
    return out


def mask_new_hashes(data: bytes, passwords: dict[str, str]) -> bytes:
    """Replace each hash that verifies the new password of an account hashed at apply by a marker.

    Such hashes have random salts, so only this form can be compared with a reference run. A hash
    that does not verify stays as it is (and then matches the old content or nothing).
    """
    out = []
    for line in data.decode().split("\n"):
        address, sep, rest = line.partition("|")
        if sep and address in passwords:
            stored = rest.split("|")[0].removeprefix("{SHA512-CRYPT}")
            if stored.startswith("$6$") and sha512_crypt.verify(passwords[address], stored):
                line = f"{address}|<new hash>"
        out.append(line)
    return "\n".join(out).encode()


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env.update({"PYTHONPATH": PYTHONPATH, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONHASHSEED": "0"})
    env.update(extra or {})
    return env


def require_strace() -> str:
    """The strace binary; the reliability tests FAIL (not skip) without it (.ci/run installs it)."""
    path = shutil.which("strace")
    assert path, "strace is required for the fault-injection tests (apt-get install strace)"
    return path


def strace_run(args: list[str], *, log: Path, env: dict[str, str], inject: str | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `args` under strace, logging the traced calls to `log`; `inject` is an -e inject= spec."""
    cmd = [require_strace(), "-qq", "-y", "--seccomp-bpf", "-o", str(log), "-s", "300",
           "-e", f"trace={TRACED}"]
    if inject:
        cmd += ["-e", f"inject={inject}"]
    return subprocess.run(cmd + args, check=False, capture_output=True, text=True, env=env, timeout=timeout)


_CALL = re.compile(r"^(?:\d+ +)?(\w+)\((.*)")


def traced_calls(log: Path) -> list[str]:
    """The traced system calls in order, one string each (`name(args...`), signals left out."""
    calls = []
    for line in log.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if match and not line.startswith(("---", "+++")):
            calls.append(f"{match.group(1)}({match.group(2)}")
    return calls

"""DMS's own `setup` CLI, run unchanged outside its container: the reference for single changes.

DMS v15.1.0's scripts (`target/bin/setup`, `addmailuser`, `target/scripts/helpers/`) hard-code
`/usr/local/bin/helpers` and the config folder `/tmp/docker-mailserver`. `prepare` copies them to a
scratch folder and points those two paths elsewhere; nothing else is changed. They need bash,
`doveadm` (Dovecot, to hash the password) and `uuid` (DMS's lock id; where the `uuid` package is
missing, a two-line stand-in that prints the kernel's random UUID is put first on PATH).

    python -m bench.dms_cli /var/tmp/dms-src CONFIG_DIR user@example.com   # one timed call

`--container NAME` times it the way admins run it instead, `docker exec NAME setup email add ...`
in a running DMS container (DOCKER_HOST says which engine), `--repeat` times with new addresses:

    python -m bench.dms_cli --container mailserver --repeat 7 cli@example.com
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SOURCE = Path(os.environ.get("DMS_SRC", "/var/tmp/dms-src"))


def available(source: Path = DEFAULT_SOURCE) -> str | None:
    """None when DMS's CLI can run here, else why not."""
    if not (source / "target" / "bin" / "setup").is_file():
        return f"DMS's source is not at {source} (set DMS_SRC)"
    if shutil.which("doveadm") is None:
        return "doveadm (Dovecot) is not installed"
    return None


def prepare(source: Path, scratch: Path, config_dir: Path) -> Path:
    """DMS's scripts in `scratch`, editing `config_dir`; returns the folder to put first on PATH."""
    shutil.rmtree(scratch, ignore_errors=True)
    bin_dir, helpers = scratch / "bin", scratch / "helpers"
    shutil.copytree(source / "target" / "bin", bin_dir)
    shutil.copytree(source / "target" / "scripts" / "helpers", helpers)
    for path in [*bin_dir.rglob("*"), *helpers.rglob("*")]:
        if path.is_file():
            text = path.read_text(errors="surrogateescape")
            new = text.replace("/usr/local/bin/helpers", str(helpers)).replace(
                "/tmp/docker-mailserver", str(config_dir)
            )
            if new != text:
                path.write_text(new, errors="surrogateescape")
    if shutil.which("uuid") is None:
        shim = bin_dir / "uuid"
        shim.write_text("#!/bin/sh\ncat /proc/sys/kernel/random/uuid\n")
        shim.chmod(0o755)
    return bin_dir


def email_add(bin_dir: Path, address: str, password: str) -> float:
    """Run `setup email add ADDRESS PASSWORD`; its wall time in seconds."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(["bash", str(bin_dir / "setup"), "email", "add", address, password],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"setup email add failed ({done.returncode}): {done.stderr[-500:]}")
    return wall


def email_add_in_container(container: str, address: str, password: str) -> float:
    """Run `docker exec CONTAINER setup email add ADDRESS PASSWORD`; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run(["docker", "exec", container, "setup", "email", "add", address, password],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"docker exec setup email add failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout)[-500:]}")
    return wall


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--container":
        container, rest = argv[1], argv[2:]
        repeat = int(rest[1]) if rest[:1] == ["--repeat"] else 1
        local, _, domain = rest[-1].partition("@")
        times = []
        for i in range(repeat):
            times.append(email_add_in_container(container, f"{local}{i}@{domain}", "bench-pw"))
            time.sleep(3)  # let DMS's change detector take each one on its own
        ms = sorted(t * 1000 for t in times)
        print(f"docker exec {container} setup email add: median {ms[len(ms) // 2]:.0f} ms, "
              f"best {ms[0]:.0f} ms, worst {ms[-1]:.0f} ms ({repeat} runs)")
        return
    source, config_dir, address = Path(argv[0]), Path(argv[1]), argv[2]
    why = available(source)
    if why:
        raise SystemExit(why)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"dms-cli-{os.getpid()}"
    try:
        bin_dir = prepare(source, scratch, config_dir.resolve())
        print(f"{email_add(bin_dir, address, 'bench-password') * 1000:.0f} ms")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])

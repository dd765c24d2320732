"""Helpers shared by the tests: run the real CLI, build volumes, make known hashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

from reconciler.configvolume import Volume as ConfigVolume

REPO = Path(__file__).resolve().parent.parent.parent
# What every Python process the suite starts gets: this checkout, and the suite's start-up hook
# (tests/support/boot/sitecustomize.py: the stricter convergence proof, see fullproof.py).
PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "tests" / "support" / "boot")])

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.hash import sha512_crypt


def sha512_hash(password: str, salt: str = "testsalt") -> str:
    """A deterministic `{SHA512-CRYPT}` hash (fixed salt) for golden files."""
    return "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000, salt=salt).hash(password)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
            timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m reconciler ARGS` as a user would, from this checkout."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    full_env["PYTHONPATH"] = PYTHONPATH
    full_env["NO_COLOR"] = "1"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, input=input,
    )


@dataclass
class Volume:
    """A DMS-like layout: <root>/config (the config volume) and <root>/cron/sa-learn."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def cron(self) -> Path:
        return self.root / "cron" / "sa-learn"

    @property
    def value(self) -> ConfigVolume:
        """This layout as the reconciler's `Volume` value."""
        return ConfigVolume(str(self.config), str(self.cron))

    def args(self) -> list[str]:
        return ["--config-dir", str(self.config), "--cron-file", str(self.cron)]

    def file(self, name: str) -> Path:
        return self.cron if name == "cron" else self.config / name

    def read(self, name: str) -> str | None:
        path = self.file(name)
        return path.read_text() if path.exists() else None

    def write(self, name: str, text: str) -> None:
        self.file(name).write_text(text)

    def snapshot(self) -> dict[str, tuple[bytes, int, int]]:
        """name -> (bytes, mtime_ns, inode) of every file: proves 'nothing was touched'."""
        out = {}
        for path in sorted([*self.config.iterdir(), *self.cron.parent.iterdir()]):
            if path.is_file():
                st = path.stat()
                out[str(path.relative_to(self.root))] = (path.read_bytes(), st.st_mtime_ns, st.st_ino)
        return out


def make_volume(root: Path) -> Volume:
    volume = Volume(root)
    volume.config.mkdir(parents=True, exist_ok=True)
    volume.cron.parent.mkdir(parents=True, exist_ok=True)
    return volume


def write_desired(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path

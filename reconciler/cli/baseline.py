"""Plan against a baseline instead of the live volume: a git ref (CI) or a copy of a volume.

CI has neither the DMS config volume nor the secrets. `plan --against-ref REF` reads mailserver.yaml
as it is at REF from git, renders it into a throw-away volume with the same planner and executor
that `apply` uses, then plans the working file against that volume. The plan therefore shows
exactly what the change does, entry by entry, with the live volume nowhere in sight.

Secrets are never read for the base: a `password_file`/`password_env` account gets a placeholder
hash derived from its *source* (`passwords.placeholder_hash`), never from its secret. Planning the
working file then keeps an account whose source is unchanged (no change), while a changed source
(another file, env -> file, hash -> file, another hash) shows as a change: what the pull request
says about passwords is visible, and no secret or hash is needed or printed.

`plan --against-dir DIR` plans against DIR, a copy of a real config volume (for example a CI fixture
made from a backup). It is read only, like any plan.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.configvolume import Volume
from reconciler.errors import Diagnostic, InvalidDesiredState, ReconcilerError, SecretError
from reconciler.kinds import rspamd_controller
from reconciler.load.desired import Loaded, load_desired, load_desired_bytes
from reconciler.load.yamlload import MAX_BYTES
from reconciler.model import RSPAMD_CONTROLLER_KEY, DesiredState, PasswordSource
from reconciler.passwords import sources as passwords
from reconciler.planner.make import make_plan
from reconciler.reconcile import Planned, Target
from reconciler.volume.contents import render_files
from reconciler.volume.executor import apply_plan
from reconciler.volume.observe import observe

GIT_TIMEOUT = 60.0
CRON_NAME = os.path.join("cron", "sa-learn")  # beside `config` in DMS's compose layout


class InvalidAtRef(InvalidDesiredState):
    """mailserver.yaml is invalid at the base ref: the base cannot be rendered."""

    def __init__(self, diagnostics: list[Diagnostic], where: str) -> None:
        super().__init__(diagnostics)
        self.where = where

    def __str__(self) -> str:
        return (
            f"{self.where} is not valid, so there is no base to plan against "
            f"({super().__str__()}); fix it on the base branch or plan against another ref"
        )


@dataclass(frozen=True)
class GitBase:
    """mailserver.yaml as found at a git ref."""

    ref: str
    commit: str
    path: str  # relative to the repository's top folder
    data: bytes | None  # None: the file does not exist at `ref` (the change adds it)

    @property
    def where(self) -> str:
        return f"{self.ref}:{self.path}"


@dataclass(frozen=True)
class BasePlanned:
    """A plan made against a baseline, and how to describe that baseline to a reader."""

    planned: Planned
    baseline: dict[str, Any]  # the plan JSON's `baseline` object (docs/plan-json.md)
    volume: dict[str, Any]  # the plan JSON's `volume` object

    def to_dict(self, desired: Mapping[str, Any]) -> dict[str, Any]:
        data = self.planned.plan.to_dict(desired=desired, volume=self.volume)
        if self.baseline["kind"] == "git":
            data["volume"]["fingerprint"] = {}  # a throw-away volume: no staleness to check
        data["baseline"] = dict(self.baseline)
        return data

    def headline(self) -> str:
        """One line saying what the plan was made against, for the text form."""
        b = self.baseline
        if b["kind"] == "dir":
            return f"Planned against {b['config_dir']} (a copy of a config volume)."
        if not b["found"]:
            return (
                f"Planned against {b['ref']} ({b['commit'][:12]}), where {b['path']} does not "
                "exist yet: everything is new."
            )
        return f"Planned against {b['path']} at {b['ref']} ({b['commit'][:12]})."


# --- git ------------------------------------------------------------------------------------


def _git(args: list[str], cwd: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GIT_LITERAL_PATHSPECS": "1", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, env=env, timeout=GIT_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise ReconcilerError("--against-ref needs git, and git is not installed") from None
    except subprocess.TimeoutExpired:
        raise ReconcilerError(f"git {args[0]} took longer than {GIT_TIMEOUT:.0f} s") from None


def _stderr(done: subprocess.CompletedProcess[bytes]) -> str:
    text = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return text[-1] if text else f"exit status {done.returncode}"


def read_at_ref(desired_path: str, ref: str) -> GitBase:
    """The bytes of `desired_path` at git `ref`, found from the file's own repository.

    A ref that does not name a commit is an error; a file missing at the ref is an empty base
    (the pull request that adds mailserver.yaml).
    """
    if not ref or ref.startswith("-") or any(c in ref for c in "\0\n"):
        raise ReconcilerError(f"--against-ref {ref!r} is not a git revision")
    absolute = os.path.abspath(desired_path)
    folder, name = os.path.split(absolute)
    if not os.path.isdir(folder):
        raise ReconcilerError(f"{folder} does not exist, so it is not in a git repository")
    top = _git(["rev-parse", "--show-toplevel", "--show-prefix"], folder)
    if top.returncode != 0:
        raise ReconcilerError(
            f"{desired_path} is not inside a git repository, which --against-ref "
            f"needs ({_stderr(top)})"
        )
    lines = top.stdout.decode("utf-8", "surrogateescape").split("\n")
    toplevel, prefix = lines[0], lines[1] if len(lines) > 1 else ""
    path = prefix + name
    found = _git(
        ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], toplevel
    )
    if found.returncode != 0:
        raise ReconcilerError(
            f"--against-ref {ref}: no such commit in this repository. In CI, fetch it first "
            "(actions/checkout with fetch-depth: 0, or `git fetch origin <branch>`)"
        )
    commit = found.stdout.decode().strip()
    listed = _git(["ls-tree", "-z", "--full-tree", commit, "--", path], toplevel)
    if listed.returncode != 0:
        raise ReconcilerError(f"cannot list {path} at {ref}: {_stderr(listed)}")
    if not listed.stdout:
        return GitBase(ref, commit, path, None)
    meta, _, _ = listed.stdout.split(b"\0")[0].partition(b"\t")
    mode, kind, obj = meta.decode().split(" ")
    if kind != "blob" or mode == "120000":
        what = "a symlink" if mode == "120000" else f"a {kind}"
        raise ReconcilerError(f"{path} is {what} at {ref}, not a file")
    size = _git(["cat-file", "-s", obj], toplevel)
    if size.returncode != 0:
        raise ReconcilerError(f"cannot read {path} at {ref}: {_stderr(size)}")
    if int(size.stdout) > MAX_BYTES:
        raise InvalidAtRef(
            [
                Diagnostic(
                    f"{ref}:{path}",
                    None,
                    None,
                    "",
                    f"the file is larger than {MAX_BYTES // 1048576} MiB",
                )
            ],
            f"{ref}:{path}",
        )
    blob = _git(["cat-file", "blob", obj], toplevel)
    if blob.returncode != 0:
        raise ReconcilerError(f"cannot read {path} at {ref}: {_stderr(blob)}")
    return GitBase(ref, commit, path, blob.stdout)


# --- rendering the base into a throw-away volume -------------------------------------------------


class _NoSecrets(passwords.SecretReader):
    """Reads nothing: the base is rendered from password *sources*, never from secrets."""

    def __init__(self) -> None:
        super().__init__("", {})

    def for_state(self, state: DesiredState) -> passwords.SecretReader:
        return self  # a SOPS-encrypted base is never decrypted: CI has no key, and needs none

    def read(self, source: PasswordSource) -> passwords.Secret:
        raise SecretError("secrets are not read for a base version")


def render_base(state: DesiredState | None, volume: Volume) -> None:
    """Apply `state` to the empty `volume` the way `apply` would, with placeholder hashes for
    secrets. `None` (no file at the base) leaves the volume empty."""
    if state is None:
        return
    empty = observe(volume)
    decided = passwords.resolve(state, {}, reader=_NoSecrets(), offline=True)
    decided.update(passwords.resolve_plaintext(state, {}, reader=_NoSecrets(), offline=True))
    decided.update(
        passwords.resolve_rspamd_controller(state, None, reader=_NoSecrets(), offline=True)
    )
    plan = make_plan(state, empty, decided)
    sources = _password_sources(state)

    def placeholder(key: str) -> str:
        if key.startswith(passwords.RELAY_KEY):
            return passwords.placeholder_secret(sources[key])
        return passwords.placeholder_hash(sources[key])

    contents = render_files(plan, unresolved_hash=placeholder)
    apply_plan(plan, empty, contents, lock_timeout=5.0)


def _password_sources(state: DesiredState) -> dict[str, PasswordSource]:
    """Every secret's source by its password key: accounts, master users and relays."""
    sources = dict(passwords.password_sources(state))
    for relay in state.relay:
        if relay.password is not None:
            sources[passwords.RELAY_KEY + relay.domain] = relay.password
    return sources


def _resolve_against_base(
    loaded: Loaded,
    target: Target,
    stored: Mapping[str, str],
    base_sources: Mapping[str, PasswordSource],
    plaintext: Mapping[str, str],
) -> dict[str, passwords.DesiredPassword]:
    """Passwords of the working file; a source that differs from the base's is marked changed."""
    reader = passwords.SecretReader(target.base_dir, target.environ)
    decided = passwords.resolve(loaded.state, stored, reader=reader, offline=True)
    decided.update(
        passwords.resolve_plaintext(loaded.state, plaintext, reader=reader, offline=True)
    )
    decided.update(
        passwords.resolve_rspamd_controller(
            loaded.state, plaintext.get(RSPAMD_CONTROLLER_KEY), reader=reader, offline=True
        )
    )
    for address, choice in decided.items():
        before = base_sources.get(address)
        if before is None:
            continue
        was, now = passwords.source_id(before), passwords.source_id(choice.source)
        if was != now:
            decided[address] = dataclasses.replace(choice, changed_from=was)
    return decided


def _plan_working(
    loaded: Loaded, target: Target, base_sources: Mapping[str, PasswordSource]
) -> Planned:
    observed = observe(target.volume)
    plaintext = dict(observed.stored_plaintext())
    controller = rspamd_controller.stored_hash(observed)
    if controller is not None:  # not plaintext: a hash, compared in its own way
        plaintext[RSPAMD_CONTROLLER_KEY] = controller
    decided = _resolve_against_base(
        loaded, target, observed.stored_hashes(), base_sources, plaintext
    )
    plan = make_plan(loaded.state, observed, decided, prune=target.prune)
    return Planned(loaded, observed, plan, decided)


def plan_against_ref(
    desired_path: str,
    ref: str,
    *,
    shown_config_dir: str,
    shown_cron_file: str,
    prune: bool = False,
    environ: Mapping[str, str] | None = None,
) -> BasePlanned:
    """Plan the working `desired_path` against itself as it is at git `ref` (see module doc).

    `shown_config_dir`/`shown_cron_file` are where apply would write: the plan names those paths,
    not the throw-away volume's.
    """
    loaded = load_desired(desired_path)  # an invalid working file fails first, as plan always does
    base = read_at_ref(desired_path, ref)
    base_state: DesiredState | None = None
    if base.data is not None:
        try:
            base_state = load_desired_bytes(base.data, base.where).state
        except InvalidDesiredState as exc:
            raise InvalidAtRef(exc.diagnostics, base.where) from None
    base_sources: dict[str, PasswordSource] = {}
    if base_state is not None:
        base_sources = _password_sources(base_state)
    with tempfile.TemporaryDirectory(prefix="dms-reconciler-base-") as root:
        volume = Volume(os.path.join(root, "config"), os.path.join(root, CRON_NAME))
        os.makedirs(volume.folder)
        os.makedirs(os.path.dirname(volume.cron_file))
        render_base(base_state, volume)
        target = Target(
            desired_path,
            volume,
            prune=prune,
            offline=True,
            environ=dict(os.environ if environ is None else environ),
        )
        planned = _plan_working(loaded, target, base_sources)
    # the plan names the files where apply would write them, not in the throw-away volume
    shown = Volume(shown_config_dir, shown_cron_file)
    planned = dataclasses.replace(planned, plan=dataclasses.replace(planned.plan, volume=shown))
    return BasePlanned(
        planned=planned,
        baseline={
            "kind": "git",
            "ref": ref,
            "commit": base.commit,
            "path": base.path,
            "found": base.data is not None,
        },
        volume={"config_dir": shown_config_dir, "cron_file": shown_cron_file},
    )


def find_cron_file(config_dir: str, explicit: str | None) -> str:
    """The sa-learn cron file that belongs to a copied config volume.

    An explicit --cron-file (or DMS_CRON_FILE) wins. Otherwise DMS's compose layout is assumed:
    `<DIR>/../cron/sa-learn`, beside the `config` folder (docker-data/dms/{config,cron}). When that
    file does not exist the copy has no cron file, and sa_learn jobs plan as new.
    """
    if explicit:
        return explicit
    return os.path.normpath(os.path.join(config_dir, os.pardir, CRON_NAME))


def plan_against_dir(
    desired_path: str,
    config_dir: str,
    *,
    cron_file: str | None,
    offline: bool = True,
    prune: bool = False,
) -> BasePlanned:
    """Plan against a copy of a config volume; nothing is written to it."""
    from reconciler.reconcile import plan_once

    cron_path = find_cron_file(config_dir, cron_file)
    target = Target(desired_path, Volume(config_dir, cron_path), prune=prune, offline=offline)
    planned = plan_once(target)
    return BasePlanned(
        planned=planned,
        baseline={
            "kind": "dir",
            "config_dir": config_dir,
            "cron_file": cron_path,
            "cron_found": os.path.isfile(cron_path),
        },
        volume={"config_dir": config_dir, "cron_file": cron_path},
    )

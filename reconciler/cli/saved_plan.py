"""Saved plans (`plan --out PLAN`, `apply PLAN`): apply exactly what was reviewed, or refuse.

A saved plan holds no secret and no hash. It records where the desired state and the volume were,
their digests, and for every password read from a file or the environment an HMAC keyed with a
random key kept in the volume's state file. Applying it re-reads everything and refuses (Terraform's
"saved plan is stale") when the desired file, any volume file or any secret differs, or when the
fresh plan is not the saved one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from reconciler.configvolume import Volume
from reconciler.errors import ReconcilerError, StalePlan
from reconciler.passwords import sources as passwords
from reconciler.readfile import NotReadable, TooDeep, load_json, read_regular
from reconciler.reconcile import Applied, Planned, Target, apply_once

KIND = "dms-reconciler saved plan"
COMPARED = ("changes", "unmanaged", "files", "deletions")
MAX_PLAN_BYTES = 512 * 1024 * 1024  # a bound only: far above the plan of any real server


def save(path: str, planned: Planned, target: Target, data: dict[str, Any]) -> None:
    if planned.plan.unresolved:
        raise ReconcilerError(
            "a plan with secrets resolved at apply (--offline) cannot be saved for apply; make it "
            "where the password files and variables can be read"
        )
    key = planned.observed.ownership.plan_key
    saved = {
        "kind": KIND,
        "plan": data,
        "target": {
            "desired_path": os.path.abspath(target.desired_path),
            "config_dir": os.path.abspath(target.volume.folder),
            "cron_path": os.path.abspath(target.volume.cron_file),
            "prune": target.prune,
        },
        "secret_fingerprints": _fingerprints(planned, key) if key else {},
        "keyed": bool(key),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(saved, handle, indent=1)
        handle.write("\n")


def _fingerprints(planned: Planned, key: str) -> dict[str, str]:
    return {
        address: passwords.fingerprint(key, address, decided.secret)
        for address, decided in sorted(planned.passwords.items())
        if decided.secret is not None
    }


def _comparable(key: str, value: Any) -> Any:
    """A saved plan's part as compared at apply. File paths are left out: the plan shows them as
    given (relative to where `plan` ran), while apply uses the absolute target saved with it."""
    if key == "files":
        return [{k: v for k, v in f.items() if k != "path"} for f in value]
    return value


def load(path: str) -> dict[str, Any]:
    try:
        saved = load_json(read_regular(path, MAX_PLAN_BYTES).decode("utf-8"))
    except NotReadable as exc:
        if exc.missing:
            raise ReconcilerError(f"saved plan {path} not found") from None
        raise ReconcilerError(f"saved plan {path} {exc.reason}") from None
    except TooDeep as exc:
        raise ReconcilerError(
            f"{path} is not a saved plan: {exc} (make one with `plan --out`)"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise ReconcilerError(f"{path} is not a saved plan (make one with `plan --out`)") from None
    if not isinstance(saved, dict) or saved.get("kind") != KIND:
        raise ReconcilerError(f"{path} is not a saved plan (make one with `plan --out`)")
    if not _well_formed(saved):
        raise ReconcilerError(f"{path} is a damaged saved plan; make a new one with `plan --out`")
    return saved


def _well_formed(saved: dict[str, Any]) -> bool:
    """Every field apply_saved reads is there with the right type (the file may be edited)."""
    target, plan = saved.get("target"), saved.get("plan")
    if not isinstance(target, dict) or not isinstance(plan, dict):
        return False
    if not all(_a_path(target.get(k)) for k in ("desired_path", "config_dir", "cron_path")):
        return False
    if not isinstance(target.get("prune"), bool) or not isinstance(saved.get("keyed"), bool):
        return False
    fingerprints = saved.get("secret_fingerprints")
    if not isinstance(fingerprints, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fingerprints.items()
    ):
        return False
    desired, volume, files = plan.get("desired"), plan.get("volume"), plan.get("files")
    return (
        isinstance(desired, dict)
        and isinstance(volume, dict)
        and isinstance(volume.get("fingerprint"), dict)
        and all(k in plan for k in COMPARED)
        and isinstance(files, list)
        and all(isinstance(f, dict) for f in files)  # `_comparable` reads each as a mapping
    )


def _a_path(value: Any) -> bool:
    """A non-empty string the OS takes as a path (no NUL, no lone surrogate from a \\ud800)."""
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


def apply_saved(
    path: str,
    *,
    allow_deletions: int | None,
    lock_timeout: float,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[Applied, Target]:
    saved = load(path)
    t = saved["target"]
    volume = Volume(t["config_dir"], t["cron_path"])
    target = Target(t["desired_path"], volume, prune=bool(t["prune"]))
    expected = saved["plan"]

    def check(planned: Planned) -> None:
        if planned.loaded.sha256 != expected["desired"].get("sha256"):
            raise StalePlan(
                f"{target.desired_path} changed since the plan was made; make a new plan"
            )
        if planned.observed.fingerprint() != expected["volume"]["fingerprint"]:
            changed = sorted(
                name
                for name, digest in planned.observed.fingerprint().items()
                if expected["volume"]["fingerprint"].get(name) != digest
            )
            raise StalePlan(
                "the config volume changed since the plan was made "
                f"({', '.join(changed)}); make a new plan"
            )
        key = planned.observed.ownership.plan_key
        if saved.get("keyed") and _fingerprints(planned, key) != saved["secret_fingerprints"]:
            raise StalePlan(
                "a password from password_file or password_env changed since the plan "
                "was made; make a new plan"
            )
        fresh = planned.plan.to_dict()
        if any(_comparable(k, fresh[k]) != _comparable(k, expected[k]) for k in COMPARED):
            raise StalePlan("the plan computed now differs from the saved one; make a new plan")

    # `check` runs before every write attempt: if the volume moves under us, the saved plan is
    # stale rather than silently re-planned into something nobody reviewed.
    return apply_once(
        target,
        allow_deletions=allow_deletions,
        lock_timeout=lock_timeout,
        on_wait=on_wait,
        check=check,
        revision=_saved_revision(expected),
    ), target


def _saved_revision(expected: dict[str, Any]) -> str | None:
    """The git revision the plan was made from (its file's bytes are checked to be the same)."""
    revision = expected.get("desired", {}).get("revision")
    return revision if isinstance(revision, str) and revision else None

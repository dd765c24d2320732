"""The suite's stricter convergence proof: every apply also makes the whole plan again.

In production `reconcile.apply_once` proves convergence by reading the volume back
(`reconcile.proves_convergence`). The suite wraps that proof, in its own process (conftest.py) and
in every dms-reconciler process it starts (PYTHONPATH carries tests/support/boot, whose
sitecustomize installs it when FULL_PROOF_ENV is set): when the bytes say "converged", a whole plan
must say so too, or the apply fails. So every apply the suite runs also checks the byte proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

FULL_PROOF_ENV = "RECONCILER_FULL_CONVERGENCE_PROOF"
_ORIGINAL = "_suite_original_proof"


def install(reconcile: ModuleType) -> None:
    """Wrap `reconcile.proves_convergence` (once) with the whole plan."""
    if hasattr(reconcile, _ORIGINAL):
        return
    original = reconcile.proves_convergence
    setattr(reconcile, _ORIGINAL, original)

    def proven_twice(target: Any, planned: Any, contents: Mapping[str, bytes], loaded: Any,
                     memory: Any) -> bool:
        if not original(target, planned, contents, loaded, memory):
            return False
        again = reconcile.plan_once(target, loaded=loaded, memory=memory)
        if again.plan.has_changes:
            left = ", ".join(f"{c.file}:{c.key}" for c in again.plan.changes[:5])
            raise reconcile.ReconcilerError(
                f"the volume holds the planned bytes, yet a plan finds {left}")
        return True

    reconcile.proves_convergence = proven_twice


def production_proof(reconcile: ModuleType) -> Any:
    """The proof as production runs it (for a test that counts plans as production makes them)."""
    return getattr(reconcile, _ORIGINAL, reconcile.proves_convergence)

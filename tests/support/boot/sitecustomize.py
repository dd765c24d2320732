"""Started by every Python process the suite runs (tests/support/util.py PYTHONPATH): installs the
suite's stricter convergence proof (tests/support/fullproof.py) once reconciler.reconcile is
imported, when RECONCILER_FULL_CONVERGENCE_PROOF is set. Importing nothing before then keeps the
CLI's start-up as it is."""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Any

_MODULE = "reconciler.reconcile"


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                from tests.support import fullproof

                fullproof.install(module)

        spec.loader = _Then()
        return spec


if os.environ.get("RECONCILER_FULL_CONVERGENCE_PROOF"):
    sys.meta_path.insert(0, _InstallAfterImport())

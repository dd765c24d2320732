"""dms-reconciler: GitOps for docker-mailserver.

The pipeline has five stages, each in its own module:
load + validate (`desired`) -> observe (`observe`) -> plan (`planner`, pure) -> render (`render`)
-> apply (`executor`, the only writer). The CLI (`cli`) and the sidecar (`watcher`) are thin
layers on top of `reconcile`.
"""

__version__ = "0.1.0"

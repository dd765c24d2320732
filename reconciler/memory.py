"""What a process remembers from one reconcile to the next, in one object passed down.

Nothing in reconciler/ keeps a cache in a module global: whoever runs reconciles owns a `Memory`
and hands it to loading, observing and planning. The sidecar makes one for its life
(`watch.loop.Watcher`), so an edit of one line re-parses one entry, a file it wrote is not parsed
again, and a plaintext secret is verified once. A one-shot `plan` passes none (nothing to reuse);
`apply` makes a fresh one for its own attempts and convergence check, then drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.load.desired import EntryModels
from reconciler.load.yamlchunks import IncrementalLoader
from reconciler.passwords.sources import VerifiedCache
from reconciler.volume.observe import ParseCache


@dataclass
class Memory:
    # mailserver.yaml: parses again only the entries an edit changed, models again only those
    yaml: IncrementalLoader = field(default_factory=IncrementalLoader)
    models: EntryModels = field(default_factory=EntryModels)
    # the config volume: the last parse of each file, by its bytes
    parses: ParseCache = field(default_factory=ParseCache)
    # the password sources: which secret verified against which stored hash (keyed digests)
    verified: VerifiedCache = field(default_factory=VerifiedCache)

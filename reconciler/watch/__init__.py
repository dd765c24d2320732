"""The sidecar (`dms-reconciler watch`): keep the config volume at mailserver.yaml.

- a file-system event only means "look again": it is debounced (a quiet period, capped), and the
  digest of the file (and of the password files it names) decides whether anything changed; a file
  written in place is applied only once its writer closed it and it reads the same twice;
- a timer (`--interval`) re-plans from scratch and repairs drift (hand edits to managed entries);
- the reconcile itself is `reconcile.apply_once`, exactly what `apply` runs; one at a time, in the
  main thread. SIGTERM lets the one in flight finish (or interrupts it after a grace period), then
  the process exits 0; a step that makes no progress fails /healthz;
- an invalid or unreadable file changes nothing: its errors are logged, the last good state stays
  applied (the timer keeps repairing drift against it), /readyz and the metrics show the failure,
  and the next good version is applied;
- after a write, DMS's change detector needs time to regenerate (minutes on a big server). Until
  it confirms, new changes are only planned, to report them, and are written together in one
  apply once it confirms or the wait times out.

The parts, each usable alone with an injected clock:
- `events`: which folders are watched, the watchdog observer, the debounce bookkeeping;
- `inputs`: the desired file's bytes and the keyed digest of everything a reconcile reads;
- `cycle`: one reconcile (load, plan, apply) and what it remembers between cycles;
- `confirm`: did DMS apply our write? The confirmation state machine and the Amavis restart owed;
- `report`: metrics, /healthz and /readyz status, and the log lines of each reconcile;
- `heartbeat`: is the loop making progress? (what /healthz says when it is not);
- `loop`: `Watcher`, the serial loop, and `Schedule`, when it does what.
"""

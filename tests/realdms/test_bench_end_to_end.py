"""The end-to-end benchmark (bench/end_to_end.py) at its smallest: 50 accounts (fewer make
bench/generate.py write an empty devnull list, which is invalid), one repetition, DMS v15.1.0
only (the benchmark runs one image per call; its figures are for docs/performance.md, this only
proves it still runs and measures what it says). About 2-3 minutes.

It checks the table's shape (one row per path, every cell filled) and, from the runs it writes
as JSON, that fast apply applied its change (the sidecar's confirmation says so) without a
failed bystander login and without a deferred, bounced, refused or lost mail (fast apply no longer
reloads Dovecot for account data, and DMS's change detector no longer runs a reload of its own
after it: reconciler/watch/fastapply.py), that the new account's first working login was not
held back by Dovecot's auth penalty for the bench's own failed attempts, and that fast apply's
message says where its time went (DMS_RECONCILER_FAST_APPLY_TIMING)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from bench import end_to_end
from tests.realdms import harness
from tests.realdms.harness import RealEngine

pytestmark = pytest.mark.realdms

TIME = re.compile(r"^\d+\.\d\d s$")
OF = re.compile(r"^(\d+) of (\d+)( \(.+\))?$")
PENALTY = 4.0  # seconds Dovecot holds a login from an IP after one failure (auth-penalty.c)


def test_the_end_to_end_bench_runs_and_fast_apply_leaves_the_bystander_alone(
    real_engine: RealEngine, dms_images: dict[str, harness.DmsImage], tmp_path: Path,
) -> None:
    out = io.StringIO()
    runs_file = tmp_path / "runs.json"
    image = dms_images["v15.1.0"].image
    code = end_to_end.main(["--accounts", "50", "--repeat", "1", "--image", image,
                            "--json", str(runs_file)], engine=real_engine, out=out)
    assert code == 0
    text = out.getvalue()
    lines = text.splitlines()
    header = f"| {' | '.join(end_to_end.COLUMNS)} |"
    assert header in lines, text
    rows = [line.strip("|").split(" | ") for line in lines if line.startswith("| 50 |")]
    assert [row[1] for row in rows] == list(end_to_end.PATHS.values()), text
    for row in rows:
        cells = [cell.strip() for cell in row]
        assert len(cells) == len(end_to_end.COLUMNS), row
        assert all(TIME.match(cell) for cell in cells[2:5]), row
        assert all(OF.match(cell) for cell in cells[5:7]), row

    runs = json.loads(runs_file.read_text())
    assert [r["path"] for r in runs] == ["fast", "detector", "setup"]
    fast = runs[0]
    assert fast["applied_by"] == "fast apply", fast
    assert fast["logins"] >= 1 and fast["mails"] >= 1, fast  # the probe ran
    assert fast["missing"] == 0 and fast["deferrals"] == 0 and fast["lost"] == 0, fast
    assert fast["failed_logins"] == 0, fast
    assert runs[1]["applied_by"] == "DMS's change detector", runs[1]
    for run in runs:
        assert 0 < run["login"] and 0 < run["mail"] and 0 < run["done"], run
        assert 2 <= run["login_attempt"], run  # attempts before it, which failed
        assert run["login_began"] < run["login"], run
    # Fast apply's new account: its login attempts failed before it existed, yet the one that
    # worked was not held back by them. Dovecot's auth penalty holds a login from an IP with a
    # failure 4 s (2 s doubled) before it looks the user up; each attempt has an address of its
    # own. (On DMS's paths the attempt that works may wait out a `dovecot reload` instead.)
    assert fast["login_wait"] < PENALTY / 2, fast
    assert "; time: " in fast["fast_apply"] and "script steps (s): " in fast["fast_apply"], fast
    # the sidecar's own steps before fast apply come first: from the save to the script
    lead = r"; time: load \d+\.\d\d s, plan \d+\.\d\d s, facts \(before the write\)"
    assert re.search(lead, fast["fast_apply"]), fast

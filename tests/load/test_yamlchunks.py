"""The sidecar's incremental YAML reload gives, for every input, exactly the full load's answer."""

from __future__ import annotations

import copy
import glob
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import generate
from reconciler.load.desired import EntryModels, load_desired_bytes
from reconciler.load.yamlchunks import IncrementalLoader
from reconciler.load.yamlload import YamlLoadError, load_yaml_bytes, plain_ascii
from reconciler.model import DesiredState
from reconciler.reconcile import Target
from reconciler.watch.loop import Watcher, WatchOptions
from tests.support.util import Volume, sha512_hash

REPO = Path(__file__).resolve().parent.parent.parent


def outcome(load: Any, data: bytes) -> tuple[Any, ...]:
    """What a load says: the value (repr too: same types, same key order) or the diagnostics,
    and whether the value is plain ASCII, as the loader knows it or as computed from the value."""
    try:
        doc = load(data, "mailserver.yaml")
    except YamlLoadError as exc:
        return ("error", [d.format() for d in exc.diagnostics])
    plain = plain_ascii(doc.value) if doc.plain is None else doc.plain
    return ("value", doc.value, repr(doc.value), plain)


def corpus() -> list[Path]:
    patterns = ["examples/**/*.yaml", "tests/cases/**/mailserver.yaml", "tests/bad/*"]
    return sorted(
        Path(p) for pattern in patterns for p in glob.glob(str(REPO / pattern), recursive=True)
    )


def test_the_corpus_loads_the_same_through_one_loader() -> None:
    files = corpus()
    assert len(files) > 50
    loader = IncrementalLoader()
    chunked = 0
    for path in files:
        data = path.read_bytes()
        assert outcome(loader.load, data) == outcome(load_yaml_bytes, data), path
        chunked += not loader.fell_back
    assert chunked > 30  # most files went the chunked way, not only the fallback


def test_nesting_near_the_depth_limit_loads_like_the_full_loader() -> None:
    loader = IncrementalLoader()
    for depth in range(58, 68):
        nested = "[" * depth + "]" * depth
        for text in (f"version: 1\naccounts:\n  a@b.c: {nested}\n", f"deep: {nested}\n"):
            assert outcome(loader.load, text.encode()) == outcome(load_yaml_bytes, text.encode())
            assert loader.fell_back


def test_positions_are_the_full_texts() -> None:
    data = (REPO / "examples" / "mailserver.yaml").read_bytes()
    full, chunked = load_yaml_bytes(data, "m"), IncrementalLoader().load(data, "m")
    assert chunked.marks == full.marks and chunked.key_marks == full.key_marks
    assert chunked.marks


def test_a_generated_server_reloads_only_the_changed_entry() -> None:
    spec = generate.build(1000)
    text = generate.to_yaml(spec)
    loader = IncrementalLoader()
    assert outcome(loader.load, text.encode()) == outcome(load_yaml_bytes, text.encode())
    assert not loader.fell_back and loader.parsed > 3000
    generate.add_account(spec)
    edited = generate.to_yaml(spec).encode()
    assert outcome(loader.load, edited) == outcome(load_yaml_bytes, edited)
    assert not loader.fell_back and loader.parsed == 1 and loader.reused > 3000
    changed = generate.to_yaml(generate.mutate(spec)).encode()
    assert outcome(loader.load, changed) == outcome(load_yaml_bytes, changed)
    assert not loader.fell_back and 0 < loader.parsed < 200


def test_the_sidecar_models_again_only_the_changed_entries() -> None:
    """`EntryModels` gives the model a fresh load gives, reusing the unchanged entries' objects."""
    loader, models = IncrementalLoader(), EntryModels()

    def reload(spec: generate.Spec) -> DesiredState:
        data = generate.to_yaml(spec).encode()
        state = load_desired_bytes(data, "m", loader=loader, models=models).state
        assert state == load_desired_bytes(data, "m").state
        return state

    spec = generate.build(300)
    first = reload(spec)
    generate.add_account(spec)
    added = reload(spec)
    assert len(added.accounts) == len(first.accounts) + 1
    kept = {id(a) for a in first.accounts} & {id(a) for a in added.accounts}
    assert len(kept) == len(first.accounts)
    assert {id(a) for a in first.aliases} == {id(a) for a in added.aliases}
    changed = reload(generate.mutate(spec))
    before = {a.address: a for a in added.accounts}
    assert any(before.get(a.address) not in (None, a) for a in changed.accounts)
    for account in changed.accounts:  # an equal entry is the same object, a changed one is new
        old = before.get(account.address)
        assert (old is account) == (old == account), account.address
    assert reload(spec) == added  # and back


def test_the_cache_keeps_only_the_last_load() -> None:
    loader, last = IncrementalLoader(), IncrementalLoader()
    for i in range(20):
        loader.load(BASE.replace("quota: 1G", f"quota: {i + 1}G").encode(), "m")
    last.load(BASE.replace("quota: 1G", "quota: 20G").encode(), "m")
    assert loader._cache.keys() == last._cache.keys()
    assert len(last._cache) == 9  # 4 whole sections, 3 accounts, 2 aliases


def test_nothing_downstream_changes_the_shared_values() -> None:
    """Cached values are shared between loads: the schema, the rules and the model only read."""
    data = generate.to_yaml(generate.build(200)).encode()
    loader = IncrementalLoader()
    pristine = copy.deepcopy(loader.load(data, "m").value)
    load_desired_bytes(data, "m", loader=loader)
    assert loader.reused > 600
    assert repr(loader.load(data, "m").value) == repr(pristine)


# --- random edit sequences ----------------------------------------------------------------------

BASE = """\
# a comment before everything
version: 1
domains: [example.com, example.org]
accounts:
  # the first account
  ann@example.com:
    password_hash: "{SHA512-CRYPT}$6$salt$hash"
    quota: 1G
  bob@example.com:
    password_file: secrets/bob

  cid@example.org: {password_env: CID, quota: 2G}
aliases:
  postmaster@example.com: ann@example.com
  team@example.com: [ann@example.com, bob@example.com]
devnull:
  - nobody@example.com
sa_learn:
  - schedule: "0 2 * * *"
    learn: spam
    folder: Junk
"""

FRAGMENTS = [
    "  new{n}@example.com:\n    quota: {n}G\n",  # an account or alias entry
    "  al{n}@example.com: x{n}@example.net\n",
    "# a comment at column 0 ({n})\n",
    '  q{n}@example.com: "a quoted\n    scalar over lines"\n',
    '  q{n}@example.com: "a quoted\nscalar back at column 0"\n',
    "  b{n}@example.com: |\n    block\n    scalar {n}\n",
    "note{n}: |\n  a block\n  scalar\n",
    "  f{n}@example.com: [a@example.com,\n    b@example.com]\n",
    "  m{n}@example.com: {{quota: 1G,\n    password_env: M}}\n",
    "  f{n}@example.com: [a@example.com,\nb@example.com]\n",
    "  anchored{n}@example.com: &a{n} [x@example.com]\n",
    "  aliased{n}@example.com: *a{n}\n",
    "extra{n}: &e{n}\n  k: v\n",
    "again{n}: *e{n}\n",
    "  ann@example.com:\n    quota: 3G\n",  # a duplicate of an existing entry
    "aliases:\n  dup@example.com: x@example.com\n",  # a duplicate section
    "\t  tab{n}@example.com: x\n",
    "  tab{n}@example.com:\tx\n",
    "---\n",
    "...\n",
    "   badindent{n}@example.com: x\n",
    " shallow{n}@example.com: x\n",
    "    deep{n}: x\n",
    "  - a list item\n",
    "'quoted{n}': top\n",
    "? complex{n}\n: value\n",
    "%YAML 1.1\n",
    "  n{n}@example.com: 010\n",
    "  y{n}@example.com: yes\n",
    "  t{n}@example.com: !!str 5\n",
    "  u{n}@example.com: !!python/object:os.system x\n",
    "  <<: {{a: b}}\n",
    "accounts{n}:\n  x@example.com:\n    quota: 1G\n",
    "  weird{n}@example.com: x\r",
    "  crlf{n}@example.com: x\r\n",
    "  nel{n}@example.com: x\x85",
    "  # a comment\r  hidden{n}@example.com: x\n",  # \r alone breaks the line for YAML
    "# a comment\x85hidden{n}: x\n",
    "\ufeffbom{n}: x\n",
    "  [flow, key]: x\n",
    "  {n}: number key\n",
    "  k{n}@example.com: x # trailing comment\n",
    "  k{n}@example.com:\n",
    # values that are not plain ASCII (the loader's `plain` must say so): non-ASCII, an escaped
    # control character, a huge integer, an infinite float
    "  accent{n}@example.com: caf\u00e9\n",
    '  ctl{n}@example.com: "a\\x01b"\n',
    "  big{n}@example.com: {{quota: 123456789012345678901234567890}}\n",
    "  inf{n}@example.com: {{quota: .inf}}\n",
    "",
]

edit = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "indent", "crlf"]),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(FRAGMENTS),
)


def apply_edit(text: str, step: tuple[str, int, str], n: int) -> str:
    kind, where, fragment = step
    lines = text.splitlines(keepends=True)
    at = where % (len(lines) + 1)
    piece = fragment.format(n=n)
    if kind == "insert":
        lines.insert(at, piece)
    elif kind == "delete" and lines:
        del lines[at % len(lines)]
    elif kind == "replace" and lines:
        lines[at % len(lines)] = piece
    elif kind == "indent" and lines:
        lines[at % len(lines)] = " " + lines[at % len(lines)]
    elif kind == "crlf":
        return text.replace("\r\n", "\n").replace("\n", "\r\n")
    return "".join(lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(edit, min_size=1, max_size=8))
def test_random_edit_sequences_load_like_the_full_loader(steps: list[tuple[str, int, str]]) -> None:
    loader = IncrementalLoader()
    text = BASE
    assert outcome(loader.load, text.encode()) == outcome(load_yaml_bytes, text.encode())
    for n, step in enumerate(steps):
        text = apply_edit(text, step, n)
        data = text.encode()
        assert outcome(loader.load, data) == outcome(load_yaml_bytes, data), text


# --- the sidecar ------------------------------------------------------------------------------


def test_the_sidecar_reloads_through_one_incremental_loader(tmp_path: Path, volume: Volume) -> None:
    path = tmp_path / "mailserver.yaml"
    hashed = sha512_hash("pw", "salt")
    entries = "".join(f'  user{i}@example.com:\n    password_hash: "{hashed}"\n' for i in range(20))
    path.write_text(f"version: 1\ndomains: [example.com]\naccounts:\n{entries}")
    target = Target(str(path), volume.value, environ={})
    watcher = Watcher(target, WatchOptions(interval=3600))
    watcher.reconcile("startup")
    loader = watcher.memory.yaml
    assert (loader.parsed, loader.reused, loader.fell_back) == (22, 0, False)
    path.write_text(path.read_text() + f'  new@example.com:\n    password_hash: "{hashed}"\n')
    watcher.reconcile("change")
    assert watcher.memory.yaml is loader
    assert (loader.parsed, loader.reused, loader.fell_back) == (1, 22, False)
    assert "new@example.com|" in (volume.read("postfix-accounts.cf") or "")


def test_the_loader_knows_which_values_are_plain_ascii() -> None:
    """Each fragment above that is not plain ASCII, appended to the accounts, is seen as such by
    the chunked path (without the full load) and changes nothing for the other entries."""
    loader = IncrementalLoader()
    assert loader.load(BASE.encode(), "m").plain is True
    for fragment in FRAGMENTS[-5:-1]:
        text = BASE.replace("aliases:\n", fragment.format(n=1) + "aliases:\n")
        doc = loader.load(text.encode(), "m")
        assert not loader.fell_back and loader.parsed == 1, fragment
        assert doc.plain is False and plain_ascii(doc.value) is False, fragment
    assert loader.load(BASE.encode(), "m").plain is True

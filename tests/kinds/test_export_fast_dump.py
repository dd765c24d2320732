"""export's YAML comes from libyaml's emitter when that gives the bytes PyYAML's would."""

from __future__ import annotations

import random
import string

import yaml

from bench import generate
from reconciler.load.desired import load_desired_bytes
from reconciler.model import to_document
from reconciler.planner import export

OPTIONS = {"sort_keys": False, "default_flow_style": False, "allow_unicode": True, "width": 1000}


def _pure_python(state) -> str:
    """What dump_yaml wrote before: its three comment lines, then PyYAML's own emitter."""
    header = "".join(export.dump_yaml(state).splitlines(keepends=True)[:3])
    return header + yaml.dump(to_document(state), Dumper=yaml.SafeDumper, **OPTIONS)


def test_generated_file_dumps_the_same_bytes_as_pure_python() -> None:
    state = load_desired_bytes(generate.to_yaml(generate.build(400)).encode(), "g.yaml").state
    assert export.dump_yaml(state) == _pure_python(state)


def test_non_ascii_values_keep_the_pure_python_emitter() -> None:
    text = generate.to_yaml(generate.build(50, plaintext_fraction=0.2)).replace(
        "secrets/000000.txt", "secrets/j\u00f6rg-\U0001F600.txt")
    state = load_desired_bytes(text.encode(), "g.yaml").state
    dumped = export.dump_yaml(state)
    assert "j\u00f6rg-\U0001F600" in dumped  # libyaml would have written \U0001F600
    assert dumped == _pure_python(state)


def test_the_emitters_agree_on_printable_ascii() -> None:
    """The premise of the fast path, on random strings and YAML's special words."""
    rnd = random.Random(11)
    specials = ["yes", "no", "on", "null", "~", "1", "1.5", "0x1f", ".inf", "2024-01-01", "<<",
                "- a", ": c", "#", "a #b", "'", '"', "@a", "`b", "%c", "!d", "&e", "*f", "|g",
                ">h", "[i", "{k", ",m", " ", "a ", " b", "0o17", "12:30:00", "Y", "{SHA512-CRYPT}$6$"]
    for _ in range(3000):
        if rnd.random() < 0.6:
            s = "".join(rnd.choice(string.printable[:95]) for _ in range(rnd.choice([1, 3, 12, 300])))
        else:
            s = rnd.choice(specials) + rnd.choice(["", "x", " y", "$z"])
        doc = {"accounts": {s: {"password_hash": s}}, "aliases": {s: [s, s + "a"]}, "x": s}
        assert export.plain_ascii(doc)
        assert yaml.dump(doc, Dumper=yaml.CSafeDumper, **OPTIONS) == yaml.dump(
            doc, Dumper=yaml.SafeDumper, **OPTIONS), repr(s)

"""Issue 20, export and regexp hardening: export round-trips (apply -> export -> plan is empty,
with no false warning), adopts what DMS's setup CLI writes, leaves what it cannot express
unmanaged instead of failing, caps its warnings; regexp patterns mean in Postfix (real
`postmap -q`) what they declare.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.util import REPO, Volume, make_volume, run_cli, sha512_hash

ADMIN = sha512_hash("admin-pw", salt="adminSalt0001")
CAROL = sha512_hash("carol-pw", salt="carolSalt0002")
CASES = Path(__file__).resolve().parent.parent / "cases"


def export(volume: Volume, out: Path, *extra: str):
    return run_cli("export", *volume.args(), "-o", str(out), "--force", *extra)


def plan_json(path: Path, volume: Volume) -> dict:
    result = run_cli("plan", "-f", str(path), *volume.args(), "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_round_trip(volume: Volume, tmp_path: Path) -> None:
    """export twice (the second one is a re-export of an adopted volume): each says nothing about
    ownership, records it, and its file plans no change, not even a deletion."""
    for run in ("first", "again"):
        out = tmp_path / f"exported-{run}.yaml"
        done = export(volume, out)
        assert done.returncode == 0, done.stderr
        assert "ownership was not recorded" not in done.stderr, done.stderr
        assert "takes the mail" not in done.stderr, done.stderr
        assert "now manages these entries" in done.stdout
        text = run_cli("plan", "-f", str(out), *volume.args())
        assert text.returncode == 0, text.stderr
        assert "No changes. The config volume matches" in text.stdout, text.stdout
        assert plan_json(out, volume)["changes"] == []


# --- item 5: a catch-all to an account of its own domain, as DMS's setup makes it ------------


def test_export_adopts_a_catch_all_to_an_account_of_its_own_domain(tmp_path: Path) -> None:
    """`setup email add carol@example.net` + `setup alias add @example.net carol@example.net`:
    carol's mail goes to carol either way, so the planner wants no self-alias for her; export
    adopts the catch-all and does not warn that it takes carol's mail."""
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf", f"carol@example.net|{CAROL}\n")
    volume.write("postfix-virtual.cf", "@example.net carol@example.net\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    assert "takes the mail" not in done.stderr and "left unmanaged" not in done.stderr
    assert "catch_all:\n  example.net: carol@example.net" in out.read_text()
    data = plan_json(out, volume)
    assert data["changes"] == [] and data["unmanaged"] == []


def test_export_still_refuses_a_catch_all_that_takes_another_accounts_mail(
    tmp_path: Path,
) -> None:
    """The trap stays a trap: dave has no self-alias, so the catch-all to carol takes his mail;
    adopting it would add dave's self-alias (a routing change)."""
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf",
                 f"carol@example.net|{CAROL}\ndave@example.net|{CAROL}\n")
    volume.write("postfix-virtual.cf", "@example.net carol@example.net\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    assert "takes the mail of account(s) dave@example.net" in done.stderr
    assert "carol@example.net (no" not in done.stderr and "carol@example.net," not in done.stderr
    assert plan_json(out, volume)["changes"] == []


@pytest.mark.parametrize("form", ["self-alias", "self-route"])
def test_export_reads_self_aliases_and_self_routes_as_nothing_to_declare(tmp_path: Path,
                                                                        form: str) -> None:
    """dave keeps his own mail next to the catch-all to carol, by a self-alias line (what
    earlier versions wrote, and DMS's docs suggest) or by self-routes (what this one writes):
    either way the catch-all is adopted, neither becomes an alias or a regexp alias, and the
    plan of the exported file keeps dave's routing (a self-alias moves to self-routes)."""
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf",
                 f"carol@example.net|{CAROL}\ndave@example.net|{CAROL}\n")
    if form == "self-alias":
        volume.write("postfix-virtual.cf",
                     "@example.net carol@example.net\ndave@example.net dave@example.net\n")
    else:
        volume.write("postfix-virtual.cf", "@example.net carol@example.net\n")
        volume.write("postfix-regexp.cf", "/^dave@example\\.net$/ dave@example.net\n"
                     "/^dave\\+(.*)@example\\.net$/ dave+${1}@example.net\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "catch_all:\n  example.net: carol@example.net" in text, text
    assert "aliases" not in text and "dave@example.net:" in text, text  # dave: an account only
    data = plan_json(out, volume)
    assert data["changes"] == []
    if form == "self-route":
        assert data["unmanaged"] == []
        return
    # a line we did not write: kept, and it still routes dave; the plan says DMS warns about it
    # and how to be rid of it: --prune deletes it as it writes dave's self-routes
    assert [(u["file"], u["kind"]) for u in data["unmanaged"]] == [
        ("postfix-virtual.cf", "self_alias")]
    assert any("twice" in w and "--prune" in w for w in data["warnings"]), data["warnings"]
    pruned = run_cli("plan", "-f", str(out), *volume.args(), "--format", "json", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    changes = sorted((c["file"], c["kind"], c["actions"][0])
                     for c in json.loads(pruned.stdout)["changes"])
    assert changes == [("postfix-regexp.cf", "self_route", "create")] * 2 + [
        ("postfix-virtual.cf", "self_alias", "delete")], changes


# --- item 6: apply -> export -> plan is empty, again and again --------------------------------


def test_the_bundled_example_round_trips(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    shutil.copytree(REPO / "examples" / "volume", volume.root, dirs_exist_ok=True)
    applied = run_cli("apply", "-f", str(REPO / "examples" / "mailserver.yaml"), *volume.args(),
                      env={"BOB_PASSWORD": "example-only"})
    assert applied.returncode == 0, applied.stderr
    assert_round_trip(volume, tmp_path)


def test_a_volume_with_every_kind_round_trips(tmp_path: Path) -> None:
    """masters, regexp aliases, restrictions, relay (with credentials, which export cannot
    write: they become unmanaged, kept, never deleted), DKIM, plus a catch-all."""
    case = CASES / "setup-features-empty-volume"
    shutil.copytree(case / "secrets", tmp_path / "secrets")
    desired = (case / "mailserver.yaml").read_text().replace(
        "\naliases:\n", "\ncatch_all:\n  example.org: jane@example.org\naliases:\n", 1)
    path = tmp_path / "mailserver.yaml"
    path.write_text(desired)
    volume = make_volume(tmp_path / "dms")
    applied = run_cli("apply", "-f", str(path), *volume.args())
    assert applied.returncode == 0, applied.stderr
    sasl = volume.read("postfix-sasl-password.cf")
    assert_round_trip(volume, tmp_path)
    assert volume.read("postfix-sasl-password.cf") == sasl  # kept
    owned = json.loads(volume.read("dms-reconciler.state.json") or "{}")["owned"]
    assert "postfix-sasl-password.cf" not in owned  # no longer ours: never deleted by a plan
    for name in ("dovecot-masters.cf", "postfix-regexp.cf", "postfix-send-access.cf",
                 "postfix-relaymap.cf", "opendkim/KeyTable"):
        assert owned.get(name), name


# --- item 1: `/` inside and outside \Q...\E means in Postfix what the pattern declares ----------

PCRE_SO = [Path("/usr/lib/postfix/postfix-pcre.so"),  # Debian's postfix-pcre, as in DMS
           Path(os.environ.get("DMS_IMAGE_WORK", "/var/tmp/dms-image"))
           / "root/usr/lib/postfix/postfix-pcre.so"]  # the DMS image's own (shared/dms-image)


@pytest.fixture(scope="module")
def postmap(tmp_path_factory: pytest.TempPathFactory):
    """`postmap -q KEY pcre:FILE` with the real Postfix and its pcre map (postfix-pcre, which
    DMS installs): a private config folder whose dynamicmaps.cf names the module."""
    so = next((p for p in PCRE_SO if p.is_file()), None)
    if shutil.which("postmap") is None or so is None:
        pytest.fail("real Postfix with its pcre map is needed: install postfix and postfix-pcre "
                    f"(looked for {', '.join(map(str, PCRE_SO))})", pytrace=False)
    conf = tmp_path_factory.mktemp("postfix")
    (conf / "main.cf").write_text(f"meta_directory = {conf}\n")
    (conf / "dynamicmaps.cf").write_text(f"pcre\t{so}\tdict_pcre_open\n")

    def query(table: Path, key: str) -> str | None:
        done = subprocess.run(["postmap", "-c", str(conf), "-q", key, f"pcre:{table}"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode in (0, 1) and "warning" not in done.stderr, done.stderr
        return done.stdout.strip() if done.returncode == 0 else None

    query.conf = conf  # type: ignore[attr-defined]
    return query


# pattern (as declared in mailserver.yaml), target, keys it must match, keys it must not match
SLASH_PATTERNS = [
    (r"^a\Q/\E b@example\.com$", "quoted@elsewhere.net",
     ["a/ b@example.com"], ["a\\/ b@example.com"]),
    (r"^a/b@example\.com$", "bare@elsewhere.net", ["a/b@example.com"], ["a\\/b@example.com"]),
    (r"^c\/d@example\.com$", "escaped@elsewhere.net", ["c/d@example.com"], ["c\\/d@example.com"]),
    (r"^\Qx\/y\E@example\.com$", "backslash@elsewhere.net",
     ["x\\/y@example.com"], ["x/y@example.com"]),
    (r"^\Qs\\/t\E@example\.com$", "two@elsewhere.net",
     ["s\\\\/t@example.com"], ["s\\/t@example.com", "s/t@example.com"]),
    (r"^[\Q/\E]k@example\.com$", "class@elsewhere.net", ["/k@example.com"], ["\\k@example.com"]),
    (r"^\Qopen/to@example.com", "open@elsewhere.net",
     ["open/to@example.com"], ["open/to@exampleXcom", "open\\/to@example.com"]),
    ("^\\Qz\\", "trailing@elsewhere.net", ["z\\@example.com"], ["z@example.com"]),
]


def test_slashes_in_patterns_mean_in_postfix_what_they_declare(tmp_path: Path, postmap) -> None:
    """apply writes postfix-regexp.cf; the real `postmap -q` matches exactly what each declared
    pattern means to PCRE, `/` inside and outside \\Q...\\E; export reads the same patterns
    back, and its file plans no change."""
    items = "".join(f"  - {{pattern: '{p}', to: {t}}}\n" for p, t, _, _ in SLASH_PATTERNS)
    path = tmp_path / "mailserver.yaml"
    path.write_text("version: 1\ndomains: [example.com]\naccounts:\n"
                    f"  admin@example.com: {{password_hash: \"{ADMIN}\"}}\n"
                    f"regexp_aliases:\n{items}")
    volume = make_volume(tmp_path / "dms")
    applied = run_cli("apply", "-f", str(path), *volume.args())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    table = volume.file("postfix-regexp.cf")
    for pattern, target, hits, misses in SLASH_PATTERNS:
        for key in hits:
            assert postmap(table, key) == target, (pattern, key, table.read_text())
        for key in misses:
            assert postmap(table, key) != target, (pattern, key, table.read_text())
    again = run_cli("plan", "-f", str(path), *volume.args())
    assert "No changes." in again.stdout, again.stdout
    out = tmp_path / "exported.yaml"
    assert export(volume, out).returncode == 0
    assert plan_json(out, volume)["changes"] == []


# --- item 2 (decided): nested unbounded quantifiers are refused ------------------------------

HEAD = ("version: 1\ndomains: [example.com]\naccounts:\n"
        f"  admin@example.com: {{password_hash: \"{ADMIN}\"}}\n")


@pytest.mark.parametrize(("pattern", "group"), [
    (r"^(a+)+@example\.com$", "(a+)+"),
    (r"^(?:[a-z.]*)*@example\.com$", "(?:[a-z.]*)*"),
    (r"^(x(a+)b)*@example\.com$", "(x(a+)b)*"),
    (r"^([a-z0-9.-]+\.)+example\.com$", r"([a-z0-9.-]+\.)+"),
    (r"^(\w+\s?){2,}$", r"(\w+\s?){2,}"),
])
def test_a_pattern_nesting_unbounded_quantifiers_is_refused(tmp_path: Path, pattern: str,
                                                            group: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + f"regexp_aliases:\n  - {{pattern: '{pattern}', to: x@elsewhere.net}}\n")
    result = run_cli("validate", "-f", str(path))
    assert result.returncode == 1, result.stdout
    out = result.stdout + result.stderr
    assert "m.yaml:6:" in out and f"pattern repeats the group '{group}'" in out, out
    assert "possessive" in out and "atomic" in out and "Traceback" not in out


@pytest.mark.parametrize("pattern", [
    r"^(?>a+)+@example\.com$", r"^(a++)+@example\.com$", r"^(a+)++@example\.com$",
    r"^(a+){2}@example\.com$", r"^(sales|info)+@example\.com$", r"^[(a+)+]@example\.com$",
    r"^\Q(a+)+\E@example\.com$", r"^(?#(a+)(b)+@example\.com$", r"^\(a+\)+@example\.com$",
    r"^(.*)\.(.+)@example\.com$",
])
def test_patterns_that_do_not_backtrack_exponentially_stay_valid(tmp_path: Path,
                                                                 pattern: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + f"regexp_aliases:\n  - {{pattern: '{pattern}', to: x@elsewhere.net}}\n")
    result = run_cli("validate", "-f", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_postfix_gives_up_on_the_refused_shape_and_not_on_the_suggested_one(
    tmp_path: Path, postmap
) -> None:
    """Why it is refused: the real Postfix hits PCRE's match limit on a near miss (the alias
    silently does not match); the atomic group the message suggests matches the same addresses
    without it."""
    table = tmp_path / "t.pcre"
    for pattern, near_miss, gives_up, hit in (
        (r"^(a+)+@example\.com$", "a" * 60 + "@example.comx", True, None),
        (r"^(?>a+)+@example\.com$", "a" * 60 + "@example.comx", False, "aaa@example.com"),
        (r"^([a-z0-9.-]+\.)+example\.com$", "a." * 40 + "example.comx", True, None),
        (r"^(?>[a-z0-9-]+\.)+example\.com$", "a." * 40 + "example.comx", False,
         "foo.bar.example.com"),
    ):
        table.write_text(f"/{pattern}/ hit@elsewhere.net\n")
        done = subprocess.run(["postmap", "-c", str(postmap.conf), "-q", near_miss,
                               f"pcre:{table}"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert ("match limit exceeded" in done.stderr) is gives_up, (pattern, done.stderr)
        if hit:
            assert postmap(table, hit) == "hit@elsewhere.net", pattern


def test_export_leaves_such_a_pattern_unmanaged(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf", f"admin@example.com|{ADMIN}\n")
    volume.write("postfix-regexp.cf", "/^(a+)+@example\\.com$/ admin@example.com\n"
                                      "/^b@example\\.com$/ admin@example.com\n")
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    assert "postfix-regexp.cf: /^(a+)+@example\\.com$/ left unmanaged: pattern repeats" \
        in done.stderr
    assert "^b@example" in out.read_text() and "(a+)+" not in out.read_text()
    assert plan_json(out, volume)["changes"] == []


# --- item 3: what mailserver.yaml cannot say stays unmanaged; the rest is exported ------------


def test_export_leaves_what_it_cannot_express_unmanaged_and_exports_the_rest(
    tmp_path: Path,
) -> None:
    """A DKIM selector `mail_2024` (`setup config dkim selector mail_2024` makes it), a NUL and a
    CR inside regexp patterns: each is left unmanaged with a warning naming the file and line;
    everything else is exported, and the exported file plans no change."""
    from reconciler import dkimkeys
    from reconciler.formats import opendkim

    volume = make_volume(tmp_path / "dms")
    volume.write("postfix-accounts.cf", f"admin@example.com|{ADMIN}\n")
    keys = volume.config / "opendkim" / "keys" / "example.com"
    keys.mkdir(parents=True)
    pair = dkimkeys.generate(1024)  # both files, as `setup config dkim` leaves them
    (keys / "mail_2024.private").write_bytes(pair.private_pem)
    (keys / "mail_2024.txt").write_text(opendkim.render_txt("example.com", "mail_2024",
                                                           pair.public_b64))
    volume.write(opendkim.KEY_TABLE, opendkim.render([opendkim.key_table_line(
        "example.com", "mail_2024")]))
    volume.write(opendkim.SIGNING_TABLE, opendkim.render([opendkim.signing_table_line(
        "example.com", "mail_2024")]))
    volume.write(opendkim.TRUSTED_HOSTS, "127.0.0.1\nlocalhost\n")
    volume.file("postfix-regexp.cf").write_bytes(
        b"/^a\0b@example\\.com$/ admin@example.com\n"
        b"/^c\rd@example\\.com$/ admin@example.com\n"
        b"/^ok@example\\.com$/ admin@example.com\n")
    before = volume.snapshot()
    out = tmp_path / "mailserver.yaml"
    done = export(volume, out)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "Traceback" not in err
    # lines with a NUL or a lone CR are never read as entries: kept as they are, with a warning
    assert "postfix-regexp.cf line 1: line holds a NUL byte" in err, err
    assert "postfix-regexp.cf line 2: line holds a carriage return" in err, err
    dkim_line = next(i for i, line in enumerate(
        volume.read(opendkim.KEY_TABLE).splitlines(), start=1) if "mail_2024" in line)
    if "dkim:" in out.read_text():  # the schema accepts underscores in selectors (issue 20)
        assert "selector: mail_2024" in out.read_text()
    else:
        assert f"opendkim/KeyTable line {dkim_line}: 'example.com' left unmanaged" in err, err
    assert "^ok@example" in out.read_text()
    data = plan_json(out, volume)
    assert data["changes"] == []
    after = volume.snapshot()
    assert {k: v for k, v in after.items() if "state" not in k} == before  # nothing touched


# --- item 4 (decided): export's warnings are capped as plan's lists are ------------------------


def test_export_warnings_are_capped_like_the_plans_lists(tmp_path: Path) -> None:
    from reconciler.render import MAX_LISTED

    volume = make_volume(tmp_path / "dms")
    bad = "".join(f"User{i}@example.com|{ADMIN}\n" for i in range(2000))
    volume.write("postfix-accounts.cf", f"admin@example.com|{ADMIN}\n{bad}")
    volume.write("postfix-virtual.cf", "".join(f"Al{i}@example.com admin@example.com\n"
                                                for i in range(10)))
    done = export(volume, tmp_path / "mailserver.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == MAX_LISTED + 1, len(lines)
    assert lines[-1] == ("warning: ... and 1,985 more warnings (postfix-accounts.cf 1,975, "
                         "postfix-virtual.cf 10); each entry they name is left unmanaged: "
                         "`dms-reconciler plan -f FILE --format json` lists them all")
    few = make_volume(tmp_path / "few")
    few.write("postfix-accounts.cf", f"admin@example.com|{ADMIN}\n" + "".join(
        f"User{i}@example.com|{ADMIN}\n" for i in range(MAX_LISTED)))
    done = export(few, tmp_path / "few.yaml")
    assert len(done.stderr.splitlines()) == MAX_LISTED and "more warnings" not in done.stderr

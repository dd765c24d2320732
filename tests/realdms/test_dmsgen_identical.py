"""`reconciler.dmsgen` generates byte for byte what DMS's own change detector generates, on both
real DMS images (v15.1.0 and 16-edge).

Each config volume (the golden cases' before/after volumes; volumes `apply` wrote for 1, 100 and
1,000 generated accounts with aliases, multi-target aliases, catch-alls, every form of quota the
schema allows, masters, regexp aliases and relays; hand-made volumes with DMS's grep quirks) is
copied into a throwaway container of the image, where `dms_generate.sh` runs check-for-changes.sh's
own `_handle_changes` on it. The files it leaves (userdb, masterdb, vmailbox, vhost, virtual,
regexp, aliases, relayhost_map, sasl_passwd, with owner and mode), the folders under /var/mail,
`postconf -n` and 10-auth.conf must equal what `dmsgen.generate` says, for every volume. Any
difference fails, and so does a volume dmsgen declines (`Unsupported`) unless it is in the list of
volumes made to be declined.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bench import generate as benchgen
from reconciler import dmsgen
from reconciler.configvolume import Volume
from reconciler.reconcile import Target, apply_once
from tests.realdms import harness

pytestmark = pytest.mark.realdms

HERE = Path(__file__).resolve().parent
CASES = HERE.parent / "cases"
IMAGES = {"15.1": harness.DMS_IMAGE, "16": "dms-local:16-edge"}
# every form the schema's quota pattern ^([0-9]+(B|k|M|G|T)|0)$ allows, with and without v16 grace
QUOTA_FORMS = ("0", "0M", "007k", "9B", "10B", "100k", "512M", "5G", "15G", "2T", "123456789012M")
HASH = "{SHA512-CRYPT}$6$rounds=5000$abcdefgh$" + "x" * 86
# Hand-made volumes that exercise DMS's grep and read quirks (see the module docstring of dmsgen).
QUIRKS: dict[str, dict[str, str]] = {
    "substring-logins": {
        # `grep "al@d.test:"` also matches pal@...; the first line wins: order matters
        "postfix-accounts.cf": f"pal@d.test|{HASH}1\nal@d.test|{HASH}2\nx.y@d.test|{HASH}3\n",
        "dovecot-quotas.cf": "pal@d.test:1G\nAL@D.TEST:2G\nxay@d.test:3G\nx.y@d.test:4G\n",
        "postfix-virtual.cf": "list@d.test al@d.test\nother@e.test x.y@d.test,al@d.test\n",
    },
    "comments-and-duplicates": {
        "postfix-accounts.cf": (
            "# a@d.test|commented|out\n\n   \t\na@d.test|{H}a|userdb_x=1\na@d.test|{H}a\n"
            "b@d.test|{H}b|k=v|more|\nc@d.test|{H}c|\nd@d.test|{H}d||\n"
        ).replace("{H}", HASH),
        "dovecot-quotas.cf": "# quota of b@d.test:9G\nb@d.test:1G:extra\nc@d.test:\nd@d.test:5T\n",
        "postfix-virtual.cf": (
            "# alias\n  x@d.test   b@d.test  \nbare c@d.test\nd@d d@d.test\n@d.test a@d.test\n"
            "self@d.test self@d.test\nb@d.test b@d.test\nmulti@d.test ext@gmail.com c@d.test\n"
            "a.b@d.test  a@d.test,b@d.test\n"
        ),
        "dovecot-masters.cf": f"# masters\nroot|{HASH}m\nroot|{HASH}m\nro|{HASH}m\n",
        "postfix-aliases.cf": "devnull: /dev/null\n",
        "postfix-regexp.cf": "/^test[0-9]+@d\\.test$/ a@d.test\n",
        "postfix-relaymap.cf": "@d.test [relay.example.net]:587\n@e.test\n  # note\n",
        "postfix-sasl-password.cf": "# creds\n@d.test user:secret\n",
        "a@d.test.dovecot.sieve": 'require "fileinto";\n',
    },
    "no-accounts-file": {"postfix-virtual.cf": "x@d.test y@e.test\n"},
}
# volumes dmsgen must decline (and the reason it gives)
DECLINED = {
    "crlf": ({"postfix-accounts.cf": f"a@d.test|{HASH}\r\n"}, "CR line ends"),
    "no-final-newline": ({"postfix-accounts.cf": f"a@d.test|{HASH}"}, "no final newline"),
    "glob-target": (
        {"postfix-accounts.cf": f"a@d.test|{HASH}\n", "postfix-virtual.cf": "x@d.test a*@d.test\n"},
        "glob|regular-expression",  # v16 globs the targets, v15.1 greps the whole list
    ),
}


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode())


def generated_yaml(accounts: int) -> tuple[str, dict[str, str]]:
    """bench/generate.py's host (aliases with 1-4 targets, catch-alls, devnull) with every quota
    form, two masters, a regexp alias and relays (host + credentials, and an opt-out)."""
    spec = benchgen.build(accounts, secrets_from="file", plaintext_fraction=0.0)
    for index, entry in enumerate(spec.accounts.values()):
        entry["quota"] = QUOTA_FORMS[index % len(QUOTA_FORMS)]
    lines = benchgen.to_yaml(spec).splitlines()
    # a tiny host has no catch-all or devnull: drop such empty keys (the schema refuses them)
    kept = [
        line
        for number, line in enumerate(lines)
        if not (
            line.endswith(":")
            and not line.startswith(" ")
            and (number + 1 == len(lines) or not lines[number + 1].startswith(" "))
        )
    ]
    text = "\n".join(kept) + "\n"
    first = spec.domains[0]
    text += (
        "masters:\n"
        f'  admin:\n    password_hash: "{HASH}"\n'
        f'  backup:\n    password_hash: "{HASH}"\n'
        "regexp_aliases:\n"
        f"  - pattern: '^test[0-9]+@{re.escape(first)}$'\n"
        f"    to: {next(iter(spec.accounts))}\n"
        "relay:\n"
        f"  {first}:\n    host: smtp.relay.example.net\n    port: 587\n"
        "    username: relay-user\n    password_env: DMSGEN_RELAY_PASSWORD\n"
        f"  {spec.domains[1]}:\n    exclude: true\n"
    )
    return text, {"DMSGEN_RELAY_PASSWORD": "relay-secret"}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a config volume folder (each a plain copy: DMS's functions may write into it)."""
    root = tmp_path_factory.mktemp("dmsgen-volumes")
    out: dict[str, Path] = {}
    for case in sorted(CASES.iterdir()):
        for side in ("before", "after"):
            config = case / side / "config"
            if config.is_dir() and any(p.is_file() for p in config.iterdir()):
                target = root / f"case-{case.name}-{side}"
                shutil.copytree(config, target)
                out[target.name] = target
    for size in (1, 100, 1000):
        work = root / f"work-{size}"
        work.mkdir()
        text, env = generated_yaml(size)
        (work / "mailserver.yaml").write_text(text)
        config = root / f"generated-{size}"
        config.mkdir()
        cron = work / "sa-learn"
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            apply_once(Target(str(work / "mailserver.yaml"), Volume(str(config), str(cron))))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        out[config.name] = config
    for name, files in QUIRKS.items():
        _write(root / f"quirk-{name}", files)
        out[f"quirk-{name}"] = root / f"quirk-{name}"
    for name, (files, _reason) in DECLINED.items():
        _write(root / f"declined-{name}", files)
        out[f"declined-{name}"] = root / f"declined-{name}"
    return out


def run_dms_generators(client: Any, image: str, volumes: dict[str, Path], out: Path) -> None:
    """dms_generate.sh in one throwaway container of `image` over all volumes (copied)."""
    inputs = out / "in"
    for name, folder in volumes.items():
        shutil.copytree(folder, inputs / name)
    result = out / "out"
    result.mkdir()
    container = client.containers.run(
        image,
        ["/dms_generate.sh"],
        entrypoint=["bash"],
        detach=True,
        network_mode="none",
        hostname=harness.HOSTNAME,
        environment={"OVERRIDE_HOSTNAME": harness.HOSTNAME},
        volumes={
            str(inputs): {"bind": "/in", "mode": "ro"},
            str(result): {"bind": "/out", "mode": "rw"},
            str(HERE / "dms_generate.sh"): {"bind": "/dms_generate.sh", "mode": "ro"},
        },
    )
    try:
        status = container.wait(timeout=1800)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status.get("StatusCode") == 0 and (result / "finished").exists(), logs[-3000:]


def config_files(folder: Path) -> dict[str, bytes | None]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def parse_postconf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key] = value
    return out


def expected_postconf(pristine: dict[str, str], gen: dmsgen.Generated) -> dict[str, str]:
    conf = dict(pristine)
    for setting in gen.postconf:
        key, _, value = setting.partition(" = ")
        conf[key] = value
    for key, value in gen.postconf_append:  # _add_to_or_update_postfix_main, append
        current = conf.get(key, "")
        if not current:
            conf[key] = value
        elif f" {value} " not in f" {current} ":
            conf[key] = f"{current} {value}"
    return conf


def expected_auth(pristine: str, gen: dmsgen.Generated) -> str:
    lines = pristine.split("\n")
    for edit in gen.auth_edits:
        regex, comment = re.compile(edit.pattern), edit.comment
        lines = [
            ("#" + line if comment else line.removeprefix("#")) if regex.search(line) else line
            for line in lines
        ]
    return "\n".join(lines)


def differences(name: str, version: str, folder: Path, dms_out: Path, top: Path) -> list[str]:
    """What DMS generated for one volume that dmsgen did not (empty: identical)."""
    settings = dmsgen.Settings.from_dms_settings((top / "dms-settings").read_text())
    gen = dmsgen.generate(config_files(folder), settings, version)
    problems = []
    stats = {}
    for line in (dms_out / "stat.txt").read_text().splitlines():
        owner, mode, path = line.split(" ", 2)
        stats[path] = (owner, int(mode, 8))
    produced = {o.path for o in gen.outputs}
    for output in gen.outputs:
        theirs = dms_out / "files" / output.path.replace("/", "_")
        if not theirs.exists():
            problems.append(f"{output.path}: dmsgen writes it, DMS did not")
            continue
        if theirs.read_bytes() != output.data:
            problems.append(
                f"{output.path} differs:\n--- DMS\n{theirs.read_text()[:3000]}\n--- dmsgen\n"
                f"{output.data.decode()[:3000]}"
            )
        if output.owner is not None and stats[output.path][0] != output.owner:
            problems.append(f"{output.path}: owner {stats[output.path][0]} != {output.owner}")
        if output.mode is not None and stats[output.path][1] != output.mode:
            problems.append(f"{output.path}: mode {stats[output.path][1]:o} != {output.mode:o}")
    pristine = top / "pristine"
    for path in stats:
        if path not in produced:
            before = pristine / path.replace("/", "_")
            now = dms_out / "files" / path.replace("/", "_")
            if not before.exists() or before.read_bytes() != now.read_bytes():
                problems.append(f"{path}: DMS changed it, dmsgen does not")
    # mailbox folders: DMS's mkdir -p (and sieve copies), all owned by the vmail user
    want = set()
    for home in gen.homes:
        parts = home.removeprefix("/var/mail/").split("/")
        for depth in range(1, len(parts) + 1):
            want.add(("d", "./" + "/".join(parts[:depth])))
    for _source, destination in gen.sieves:
        want.add(("f", "./" + destination.removeprefix("/var/mail/")))
    seen = set()
    for line in (dms_out / "mail.txt").read_text().splitlines():
        owner, kind, path = line.split(" ", 2)
        seen.add((kind, path))
        if owner != "docker:docker":
            problems.append(f"/var/mail/{path[2:]} is owned by {owner}")
    if seen != want:
        problems.append(
            f"/var/mail differs: DMS only {sorted(seen - want)[:10]}, "
            f"dmsgen only {sorted(want - seen)[:10]}"
        )
    conf_want = expected_postconf(parse_postconf((top / "postconf.pristine").read_text()), gen)
    conf_seen = parse_postconf((dms_out / "postconf.txt").read_text())
    if conf_want != conf_seen:
        keys = {
            k for k in conf_want.keys() | conf_seen.keys() if conf_want.get(k) != conf_seen.get(k)
        }
        problems.append(
            "postconf -n differs: "
            + "; ".join(f"{k}: DMS {conf_seen.get(k)!r}, dmsgen {conf_want.get(k)!r}" for k in keys)
        )
    auth_want = expected_auth((pristine / "10-auth.conf").read_text(), gen)
    if (dms_out / "10-auth.conf").read_text() != auth_want:
        problems.append("10-auth.conf differs")
    return [f"{name}: {p}" for p in problems]


@pytest.fixture(scope="module")
def images(dms_images: dict[str, harness.DmsImage]) -> dict[str, str]:
    """Both images, built once by the realdms group (conftest.py), by this test's version ids."""
    return {"15.1": dms_images["v15.1.0"].image, "16": dms_images["v16"].image}


@pytest.mark.parametrize("version", ["15.1", "16"])
def test_dmsgen_is_byte_identical_to_dms(
    version: str,
    images: dict[str, str],
    volumes: dict[str, Path],
    real_client: Any,
    tmp_path: Path,
    realdms_timings: dict[str, float],
) -> None:
    keep = os.environ.get("DMSGEN_KEEP")  # a folder to keep DMS's output in, to look at later
    if keep:
        tmp_path = Path(keep) / version
        shutil.rmtree(tmp_path, ignore_errors=True)
        tmp_path.mkdir(parents=True)
    started = time.monotonic()
    run_dms_generators(real_client, images[version], volumes, tmp_path)
    realdms_timings[f"DMS's own handlers over {len(volumes)} volumes ({version})"] = (
        time.monotonic() - started
    )
    top = tmp_path / "out"
    problems: list[str] = []
    compared = 0
    panicked: list[str] = []
    declined: dict[str, str] = {}
    for name, folder in sorted(volumes.items()):
        if name.startswith("declined-"):
            reason = DECLINED[name.removeprefix("declined-")][1]
            with pytest.raises(dmsgen.Unsupported, match=reason):
                dmsgen.generate(
                    config_files(folder),
                    dmsgen.Settings.from_dms_settings((top / "dms-settings").read_text()),
                    version,
                )
            continue
        if (top / name / "panic").exists():
            # DMS shut itself down on this volume: dmsgen must never generate for it
            with pytest.raises(dmsgen.Unsupported):
                dmsgen.generate(
                    config_files(folder),
                    dmsgen.Settings.from_dms_settings((top / "dms-settings").read_text()),
                    version,
                )
            panicked.append(name)
            continue
        try:
            problems += differences(name, version, folder, top / name, top)
        except dmsgen.Unsupported as exc:
            declined[name] = str(exc)
            continue
        compared += 1
    assert not problems, "\n\n".join(problems[:20])
    # only hand-made golden volumes DMS would first rewrite (CRLF, no final newline) are left to
    # DMS; everything `apply` writes, and the quirk volumes, are generated
    for name, reason in declined.items():
        assert name.startswith("case-") and re.search(
            "CR line ends|final newline|not local@domain", reason
        ), (
            name,
            reason,
        )
    assert compared >= 55, (compared, panicked, declined)
    nanos = int((top / "generated-1000" / "nanoseconds").read_text())
    realdms_timings[f"DMS's _handle_changes at 1,000 accounts ({version})"] = nanos / 1e9
    began = time.monotonic()
    dmsgen.generate(
        config_files(volumes["generated-1000"]),
        dmsgen.Settings.from_dms_settings((top / "dms-settings").read_text()),
        version,
    )
    realdms_timings[f"dmsgen.generate at 1,000 accounts ({version})"] = time.monotonic() - began

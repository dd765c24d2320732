"""Generate big, valid mailserver.yaml files (plus their secrets) for the benchmarks.

Deterministic: the same size and seed give byte-identical output. A generated file has, for N
accounts: N/250 domains (at least 2), N accounts (most with a pre-made `password_hash`, a fraction
with plaintext secrets via `password_file` and `password_env`, 60% with a quota), 2N aliases with one
to four targets (accounts, earlier aliases, outside forwards), a catch-all on every fifth domain
(so its accounts get self-routes), N/50 devnull addresses, three sa_learn jobs and a quarantine
mailbox.

Password hashes: making 50,000 real SHA512-CRYPT hashes would take a minute, so the file reuses a
pool of `HASH_POOL` real hashes, each made once with a fixed salt (deterministic, and every one of
them is a hash Dovecot and the planner accept). Plaintext secrets are unique per account.

`mutate` changes about 1% of the entries (passwords, quotas, alias targets, new and removed
accounts and aliases) for the "plan after a small change" measurement.

    python -m bench.generate --accounts 10000 --out /tmp/dms-bench
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.hash import sha512_crypt

HASH_POOL = 32
QUOTAS = ("0", "500M", "1G", "2G", "5G", "10G", "250M", "100k")
FIRST = (
    "al", "pal", "ann", "bob", "eve", "ida", "joe", "kim", "lea", "max", "ned", "ola", "pia",
    "rob", "sam", "tom", "uma", "val", "wes", "zoe", "alice", "bruno", "carla", "diego", "elena",
    "fatima", "george", "hanna", "ivan", "julia", "karim", "laura", "marco", "nadia", "oscar",
    "paula", "quinn", "rosa", "stefan", "tanja", "ulrich", "vera", "walter", "xenia", "yusuf",
)
LAST = (
    "ng", "li", "wu", "berg", "costa", "dubois", "evans", "fischer", "garcia", "hansen",
    "ito", "jensen", "kowalski", "larsen", "meyer", "novak", "olsen", "petrov", "quist",
    "rossi", "schmidt", "tanaka", "underwood", "vogel", "weber", "young", "zimmermann",
)
ROLES = (
    "info", "sales", "support", "billing", "team", "office", "hr", "jobs", "press", "events",
    "it", "legal", "admin-list", "all", "board", "dev", "ops", "security", "abuse", "webmaster",
)
TLDS = ("com", "org", "net", "de", "io")


@lru_cache(maxsize=1)
def hash_pool() -> tuple[str, ...]:
    """`HASH_POOL` real `{SHA512-CRYPT}` hashes (5000 rounds, fixed salts): made once, reused."""
    return tuple(
        "{SHA512-CRYPT}"
        + sha512_crypt.using(rounds=5000, salt=f"bench{i:04d}").hash(f"pool-password-{i}")
        for i in range(HASH_POOL)
    )


@dataclass
class Spec:
    """The generated desired state, as plain data (kept so it can be mutated and written again)."""

    domains: list[str]
    accounts: dict[str, dict[str, str]]  # address -> {password_hash|password_file|password_env, quota}
    aliases: dict[str, list[str]]
    catch_all: dict[str, str]
    devnull: list[str]
    quarantine: str
    sa_learn: list[dict[str, object]]
    secrets: dict[str, str] = field(default_factory=dict)  # account -> plaintext (file and env)
    env: dict[str, str] = field(default_factory=dict)  # variable -> plaintext
    files: dict[str, str] = field(default_factory=dict)  # relative path -> plaintext

    @property
    def entries(self) -> int:
        """Entries the reconciler manages: accounts, aliases, catch-alls and devnull addresses."""
        return len(self.accounts) + len(self.aliases) + len(self.catch_all) + len(self.devnull)


def build(accounts: int, *, seed: int = 1, plaintext_fraction: float = 0.01,
          alias_ratio: int = 2, secrets_from: str = "both") -> Spec:
    """A valid desired state with `accounts` accounts and `alias_ratio` times as many aliases.

    `secrets_from`: "both" (alternately `password_file` and `password_env`), "file" or "env"."""
    rng = random.Random(f"{seed}:{accounts}")
    n_domains = max(2, accounts // 250)
    domains = sorted({f"{_word(rng)}{i}.example.{TLDS[i % len(TLDS)]}" for i in range(n_domains)})
    pool = hash_pool()

    addresses: list[str] = []
    taken: set[str] = set()
    while len(addresses) < accounts:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        shape = rng.random()
        local = first if shape < 0.1 else f"{first}.{last}" if shape < 0.7 else f"{first}{last[:3]}"
        address = f"{local}@{rng.choice(domains)}"
        if address in taken:
            address = f"{local}{len(addresses)}@{rng.choice(domains)}"
        if address in taken:
            continue
        taken.add(address)
        addresses.append(address)

    spec = Spec(domains=domains, accounts={}, aliases={}, catch_all={}, devnull=[],
                quarantine=addresses[0], sa_learn=[])
    plaintext = round(accounts * plaintext_fraction)
    stride = accounts / plaintext if plaintext else 0.0
    plain_at = {int(i * stride) for i in range(plaintext)}
    for index, address in enumerate(addresses):
        entry: dict[str, str] = {}
        if index in plain_at:
            secret = f"bench-{seed}-{index}-{rng.getrandbits(48):012x}"
            spec.secrets[address] = secret
            if secrets_from == "file" or (secrets_from == "both" and len(spec.secrets) % 2):
                path = f"secrets/{index:06d}.txt"
                spec.files[path] = secret
                entry["password_file"] = path
            else:
                name = f"BENCH_PW_{index:06d}"
                spec.env[name] = secret
                entry["password_env"] = name
        else:
            entry["password_hash"] = pool[index % len(pool)]
        if rng.random() < 0.6:
            entry["quota"] = rng.choice(QUOTAS)
        spec.accounts[address] = entry

    first_of: dict[str, str] = {}
    for address in addresses:
        first_of.setdefault(address.rpartition("@")[2], address)
    for i, domain in enumerate(domains):
        if i % 5 == 0 and domain in first_of:
            spec.catch_all[domain] = first_of[domain]

    taken.update(f"noreply{k}@{domains[k % len(domains)]}" for k in range(accounts // 50))
    spec.devnull = sorted(f"noreply{k}@{domains[k % len(domains)]}" for k in range(accounts // 50))
    alias_list: list[str] = []
    while len(alias_list) < accounts * alias_ratio:
        local = f"{rng.choice(ROLES)}.{rng.choice(LAST)}{rng.randrange(1000)}"
        address = f"{local}@{rng.choice(domains)}"
        if address in taken:
            continue
        taken.add(address)
        spec.aliases[address] = _targets(rng, addresses, alias_list)
        alias_list.append(address)

    spec.sa_learn = [
        {"schedule": "0 2 * * *", "learn": "spam", "folder": ".Junk",
         "accounts": sorted(addresses[:20])},
        {"schedule": "30 3 * * *", "learn": "ham", "folder": "cur", "domains": domains[:2]},
        {"schedule": "@daily", "learn": "spam", "folder": ".Spam"},
    ]
    return spec


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))


def _targets(rng: random.Random, accounts: list[str], earlier: list[str]) -> list[str]:
    """One to four targets: accounts, aliases made before this one (chains, never loops), forwards."""
    out: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        pick = rng.random()
        if pick < 0.6 or not earlier:
            target = rng.choice(accounts)
        elif pick < 0.8:
            target = rng.choice(earlier)
        else:
            target = f"{rng.choice(FIRST)}{rng.randrange(100)}@partner{rng.randrange(50)}.net"
        if target not in out:
            out.append(target)
    return out


def mutate(spec: Spec, *, fraction: float = 0.01, seed: int = 2) -> Spec:
    """A copy with about `fraction` of the accounts and aliases changed, added or removed.

    Accounts: a third get another hash, a third another quota, a third are removed (only ones
    nothing refers to) and as many new ones added. Aliases: a third get an extra forward, a third
    are removed (only ones no other alias targets), a third are new.
    """
    rng = random.Random(f"mutate:{seed}:{len(spec.accounts)}")
    out = copy.deepcopy(spec)
    pool = hash_pool()
    referenced = {t for targets in out.aliases.values() for t in targets}
    referenced |= set(out.catch_all.values()) | {out.quarantine}
    referenced |= {a for job in out.sa_learn for a in job.get("accounts", [])}  # type: ignore[attr-defined]

    hashed = sorted(a for a, e in out.accounts.items() if "password_hash" in e)
    chosen = rng.sample(hashed, max(3, round(len(out.accounts) * fraction)))
    third = len(chosen) // 3
    for address in chosen[:third]:
        current = out.accounts[address]["password_hash"]
        out.accounts[address]["password_hash"] = pool[(pool.index(current) + 1) % len(pool)]
    for address in chosen[third:2 * third]:
        current_quota = out.accounts[address].get("quota")
        out.accounts[address]["quota"] = next(q for q in QUOTAS[1:] if q != current_quota)
    removed = [a for a in chosen[2 * third:] if a not in referenced]
    for address in removed:
        del out.accounts[address]
    for k in range(len(chosen) - 2 * third):
        address = f"new.account{k}@{out.domains[k % len(out.domains)]}"
        out.accounts[address] = {"password_hash": pool[k % len(pool)], "quota": "1G"}

    chosen_aliases = rng.sample(sorted(out.aliases), max(3, round(len(out.aliases) * fraction)))
    third = len(chosen_aliases) // 3
    for address in chosen_aliases[:third]:
        out.aliases[address] = out.aliases[address] + [f"changed{rng.randrange(10**6)}@partner.net"]
    for address in chosen_aliases[third:2 * third]:
        if address not in referenced:
            del out.aliases[address]
    account_list = sorted(out.accounts)
    for k in range(len(chosen_aliases) - 2 * third):
        address = f"new.alias{k}@{out.domains[k % len(out.domains)]}"
        out.aliases[address] = [rng.choice(account_list)]
    return out


def add_account(spec: Spec) -> str:
    """Add one account with a pre-made hash and no quota (what DMS's `setup email add` writes) in
    a domain without a catch-all, so nothing else changes; returns its address."""
    domain = next(d for d in spec.domains if d not in spec.catch_all)
    address = f"new.person@{domain}"
    spec.accounts[address] = {"password_hash": hash_pool()[0]}
    return address


def to_yaml(spec: Spec) -> str:
    """The mailserver.yaml text, written by hand (fast and stable; every value is a safe word)."""
    out = [
        "# Generated by bench/generate.py: a synthetic mail host for the benchmarks.",
        "version: 1",
        "hostname: mail.bench-host.test",
        "domains:",
        *(f"  - {d}" for d in spec.domains),
        "accounts:",
    ]
    for address, entry in spec.accounts.items():
        out.append(f"  {address}:")
        for key, value in entry.items():
            out.append(f'    {key}: "{value}"' if key == "password_hash" else f"    {key}: {value}")
    out.append("aliases:")
    for address, targets in spec.aliases.items():
        if len(targets) == 1:
            out.append(f"  {address}: {targets[0]}")
        else:
            out.append(f"  {address}: [{', '.join(targets)}]")
    out.append("catch_all:")
    out += [f"  {domain}: {target}" for domain, target in spec.catch_all.items()]
    out.append("devnull:")
    out += [f"  - {address}" for address in spec.devnull]
    out += ["quarantine:", f"  mailbox: {spec.quarantine}", "sa_learn:"]
    for job in spec.sa_learn:
        out.append(f'  - schedule: "{job["schedule"]}"')
        out.append(f"    learn: {job['learn']}")
        out.append(f"    folder: {job['folder']}")
        for scope in ("accounts", "domains"):
            if scope in job:
                out.append(f"    {scope}: [{', '.join(job[scope])}]")  # type: ignore[arg-type]
    return "\n".join(out) + "\n"


def write(spec: Spec, folder: Path, name: str = "mailserver.yaml") -> Path:
    """Write the YAML and the password files into `folder`; return the YAML's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for relative, secret in spec.files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n")
    target = folder / name
    target.write_text(to_yaml(spec))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plaintext-fraction", type=float, default=0.01,
                        help="share of accounts with password_file/password_env (default 0.01)")
    parser.add_argument("--changed", action="store_true",
                        help="also write mailserver-changed.yaml with about 1%% of entries changed")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = parser.parse_args(argv)
    spec = build(args.accounts, seed=args.seed, plaintext_fraction=args.plaintext_fraction)
    path = write(spec, args.out)
    (args.out / "env.json").write_text(json.dumps(spec.env, indent=0, sort_keys=True) + "\n")
    if args.changed:
        write(mutate(spec), args.out, "mailserver-changed.yaml")
    print(f"{path}: {len(spec.domains)} domains, {len(spec.accounts)} accounts, "
          f"{len(spec.aliases)} aliases, {len(spec.secrets)} plaintext secrets; "
          f"env for password_env in {args.out / 'env.json'}")


if __name__ == "__main__":
    main()

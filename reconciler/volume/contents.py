"""What apply writes, as bytes, made before anything on the volume is touched: the new password
hashes (on every core), new DKIM key pairs, and every file the plan writes rendered by its codec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reconciler import dkimkeys, rspamdkeys
from reconciler.errors import SecretError
from reconciler.formats import accounts, amavis, cron, masters, opendkim, registry, sasl
from reconciler.model import RSPAMD_CONTROLLER_KEY
from reconciler.passwords import rspamd_pw
from reconciler.passwords.hashing import hash_many
from reconciler.passwords.sources import Secret
from reconciler.plan import FilePlan, PendingHash, PendingKey, Plan
from reconciler.volume.observe import CRON


def render_files(
    plan: Plan,
    *,
    hasher: Callable[[Sequence[Secret]], list[str]] = hash_many,
    unresolved_hash: Callable[[str], str] | None = None,
) -> dict[str, bytes]:
    """Bytes for every file the plan writes; new password hashes are made here."""
    pending = sorted(a for a in plan.secrets if a != RSPAMD_CONTROLLER_KEY)
    made = dict(zip(pending, hasher([plan.secrets[a] for a in pending]), strict=True))

    def hash_for(value: Any) -> str:
        if not isinstance(value, PendingHash):
            return str(value)
        if value.address in made:
            return made[value.address]
        if unresolved_hash is not None:
            return unresolved_hash(value.address)
        raise SecretError(
            f"{value.address}: the password could not be read, so apply cannot "
            "hash it (planned with --offline?)"
        )

    out: dict[str, bytes] = {}
    keys: dict[tuple[str, str], dkimkeys.KeyPair] = {}
    for fp in plan.files_to_write():
        if isinstance(fp.content, PendingKey):
            out[fp.name] = _key_file(fp.content, keys)
            continue
        text = render_file(fp, hash_for)
        if isinstance(fp.content, str) and rspamd_pw.PENDING in text:
            text = text.replace(rspamd_pw.PENDING, _rspamd_hash(plan))
        out[fp.name] = text.encode("utf-8", "surrogateescape")
    return out


def _rspamd_hash(plan: Plan) -> str:
    """The Rspamd web UI password's new hash (`rspamadm pw --type pbkdf2`), made now."""
    secret = plan.secrets.get(RSPAMD_CONTROLLER_KEY)
    if secret is None:
        raise SecretError(
            "rspamd.controller: the password could not be read, so apply cannot hash it "
            "(planned with --offline?)"
        )
    return rspamd_pw.make(secret.reveal())


def _key_file(pending: PendingKey, made: dict[tuple[str, str], dkimkeys.KeyPair]) -> bytes:
    """The private key or DNS record file of a key pair made once per (domain, selector):
    OpenDKIM's (`private`, `txt`) or Rspamd's (`rspamd-private`, `rspamd-public`,
    `rspamd-dns`)."""
    pair = made.get((pending.domain, pending.selector))
    if pair is None:
        pair = made[(pending.domain, pending.selector)] = dkimkeys.generate(pending.bits)
    if pending.part in ("private", "rspamd-private"):
        return pair.private_pem
    if pending.part == "rspamd-public":
        return rspamdkeys.render_public(pending.selector, pair.public_b64).encode()
    if pending.part == "rspamd-dns":
        return rspamdkeys.render_dns(pair.public_b64).encode()
    return opendkim.render_txt(pending.domain, pending.selector, pair.public_b64).encode()


def render_file(fp: FilePlan, hash_for: Callable[[Any], str]) -> str:
    if fp.name == amavis.FILENAME:
        return amavis.render(fp.content)
    if fp.name == CRON:
        lines, comments = fp.content
        return cron.render(lines, comments=comments, filename=CRON)
    if isinstance(fp.content, str):  # a whole file decided by the planner (TrustedHosts, .txt)
        return fp.content
    entries, comments, invalid = fp.content
    # the files holding secrets get their hashes (or relay passwords) put in here, at apply
    if fp.name == accounts.FILENAME:
        entries = [
            accounts.AccountLine(e.address, hash_for(e.password_hash), e.extra) for e in entries
        ]
    elif fp.name == masters.FILENAME:
        entries = [masters.MasterLine(e.name, hash_for(e.password_hash)) for e in entries]
    elif fp.name == sasl.FILENAME:
        entries = [sasl.SaslLine(e.key, e.username, hash_for(e.password)) for e in entries]
    return registry.BY_NAME[fp.name].render_lines(entries, comments, invalid)

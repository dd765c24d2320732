"""Fast apply: bring DMS's generated files up to date ourselves, in seconds, with no outage.

DMS's change detector rebuilds `/etc/dovecot/userdb`, `/etc/postfix/vhost` and the rest from
scratch after any change, in bash loops (minutes at 10,000 accounts), truncating each file first:
meanwhile existing users fail to log in and their mail is deferred or bounced. Instead, while the
sidecar still holds DMS's lock after writing the config files (`run`):

1. it asks the container for DMS's generator scripts' sha256 (`dmsgen.profile_for`: only the
   versions proven byte-identical are handled), /etc/dms-settings and DMS's checksum record;
2. works out, as DMS would, which monitored files changed (lines not in the record) and what DMS
   would generate for them (`dmsgen.generate`, from the files just written);
3. stages the generated files in the config volume (which the container sees) and runs one
   script in the container, which copies each next to its destination:
   new mailbox folders made and owned by the vmail user, each file replaced by a rename (never a
   moment without an existing user), DMS's own `postconf`/`postalias`/10-auth.conf edits, then the
   reloads DMS would run, except Dovecot's when only its passwd-file data changed (it re-reads
   those files itself; the reload would fail the logins in flight);
4. writes DMS's checksum record (`/tmp/docker-mailserver-config-chksum`, held aside from just
   before the write, `prepare`, so DMS's change detector does not handle the change too) only if
   DMS's own `_monitored_files_checksums`, run in the container, gives the record predicted for
   the config files fast apply models. DMS's change detector then finds nothing left to do, or,
   when other monitored files changed too (rspamd/**, certificates: the record keeps them as DMS
   last applied them), handles only those, without rebuilding the accounts.

Anything unexpected (another DMS version, a setting or a line dmsgen does not model, a failed
step, the container gone or restarted) leaves the record alone: DMS's change detector applies the
change as it always did, and the result says why. `DMS_RECONCILER_FAST_APPLY=0` (or
`--no-fast-apply`) turns it off. `DMS_RECONCILER_FAST_APPLY_TIMING=1` adds where the time went
to the result's message (reading DMS's facts, dmsgen, the upload and its size, each step of the
script in the container): for profiling at scale (bench/end_to_end.py sets it).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler import dmsgen
from reconciler.formats import amavis
from reconciler.watch import dms as dms_mod

WORK = "/tmp/.dms-reconciler-fast"
SUFFIX = ".dms-reconciler-new"
# The generated files and the script's lists are staged in the config volume, which the DMS
# container sees at DMS_DIR: written there as plain files (a few ms at 10,000 accounts, where a
# `put_archive` of the same 5 MB took 0.07-0.17 s), copied into place by the script. DMS's change
# detector hashes named files and rspamd/ only: a hidden folder is not watched.
STAGE = ".dms-reconciler-fast"
# How many userdb look-ups of a new account the rename of Postfix's files waits for at most (one
# now, one just after each turn of a second): Dovecot looks at a changed passwd-file in a second.
PROBE_TRIES = 3
BIN = "/usr/local/bin"
# The container's locale must leave `sort` and grep byte-wise, as dmsgen models them.
LOCALE_VARS = ("LC_ALL", "LC_COLLATE", "LC_CTYPE", "LANG")
# generated files are put in place in this order: Dovecot's first (a new account can log in
# before Postfix accepts mail for it), then Postfix's
ORDER = (
    dmsgen.USERDB,
    dmsgen.MASTERDB,
    dmsgen.VMAILBOX,
    dmsgen.POSTFIX_VIRTUAL,
    dmsgen.POSTFIX_REGEXP,
    dmsgen.VHOST,
    dmsgen.SASL_PASSWD,
    dmsgen.RELAYHOST_MAP,
    dmsgen.ETC_ALIASES,
)

RECORD = dms_mod.CHKSUM_FILE
# DMS's record, held aside while we write and apply: DMS's change detector compares it with the
# files' checksums before it takes the lock (check-for-changes.sh); with the record missing its
# `cmp` exits 2 and it does nothing, instead of waiting for our lock and then running its reloads
# for a change already applied. A watchdog in the container puts it back if we never do.
HELD = f"{RECORD}.dms-reconciler-held"
HOLD_SECONDS = 120

FACTS_SCRIPT = f"""
cd {BIN} || exit 3
echo '--- sha256'; sha256sum -- {" ".join(dmsgen.SCRIPTS)} 2>&1
echo '--- settings'; cat /etc/dms-settings 2>&1
echo '--- boot'; cut -d ' ' -f 22 /proc/1/stat
echo '--- record'; cat {RECORD} 2>/dev/null || echo MISSING
if [[ ${{HOLD:-0}} == 1 && -f {RECORD} ]] && mv -f -- {RECORD} {HELD}; then
  echo '--- held'
  # the watchdog gives up once this hold is over (the held file gone, or another hold's)
  setsid -f bash -c 'I=$(stat -c %i {HELD}); for _ in $(seq {HOLD_SECONDS}); do sleep 1
      [[ $(stat -c %i {HELD} 2>/dev/null) == "$I" ]] || exit 0; done
    [[ -e {RECORD} ]] || mv -f -- {HELD} {RECORD}; rm -f -- {HELD}' </dev/null >/dev/null 2>&1
fi
echo '--- end'
"""

# DMS's record back in place (if we held it and nothing wrote a record since)
RESTORE_SCRIPT = f"""
if [[ -e {HELD} ]]; then [[ -e {RECORD} ]] || mv -f -- {HELD} {RECORD}; rm -f -- {HELD}; fi
"""

# Step 6 of APPLY_SCRIPT (on its own so tests/sidecar/test_fastapply_record.py can run it with
# stubs): DMS's record is written only if DMS's own `_monitored_files_checksums` gives the
# predicted record (${W}/record): all of it ("written"), or at least its lines for the config
# files fast apply models, whose paths are in ${W}/ours ("others"). In the second case the other
# lines (rspamd/**, certificates) changed too: the predicted record keeps them as DMS last applied
# them, so DMS's change detector, which handles each file on its own (`_handle_changes`:
# `_postfix_dovecot_changes` only for the config files in CHANGED), applies just those (and runs
# its reloads), without rebuilding the accounts. Each of them is printed as OTHER=<path>.
RECORD_STEP = r"""
_obtain_hostname_and_domainname
_rspamd_get_envs
_monitored_files_checksums >"${W}/record.dms" || fail "computing DMS's checksums"
declare -A OURS=()
while IFS= read -r P; do OURS[${P}]=1; done <"${W}/ours"
# the lines of a record (sha512sum's "<digest>  <path>") for the config files fast apply models
ours() {
  local LINE
  while IFS= read -r LINE; do
    if [[ -n ${LINE} && -n ${OURS[${LINE#*  }]:-} ]]; then printf '%s\n' "${LINE}"; fi
  done <"${1}"
}
ours "${W}/record.dms" >"${W}/ours.dms" || fail "reading DMS's checksums"
ours "${W}/record" >"${W}/ours.predicted" || fail "reading the predicted checksums"
SOURCE=${W}/record
OTHERS=""
if cmp -s -- "${W}/record.dms" "${W}/record"; then
  RESULT=written
elif [[ -s ${W}/ours.predicted ]] && cmp -s -- "${W}/ours.dms" "${W}/ours.predicted"; then
  # the other files changed, new (as DMS's _get_changed_files lists them) or removed
  OTHERS=$({ grep -Fxvf "${W}/record" -- "${W}/record.dms"
    grep -Fxvf "${W}/record.dms" -- "${W}/record"; } | sed -E 's/^[^ ]+ +//' | LC_ALL=C sort -u)
  RESULT=others
  # the same lines in another order (find's, under rspamd/): DMS's own record, nothing to do
  if [[ -z ${OTHERS} ]]; then RESULT=written SOURCE=${W}/record.dms; fi
else
  RESULT=differs
fi
if [[ ${RESULT} == differs ]]; then
  restore
else
  cp -- "${SOURCE}" "${RECORD}__SUFFIX__" && mv -f -- "${RECORD}__SUFFIX__" "${RECORD}" \
    || fail "writing DMS's checksum record"
  rm -f -- "${HELD}"
  if [[ -n ${OTHERS} ]]; then sed 's/^/OTHER=/' <<<"${OTHERS}"; fi
fi
echo "RECORD=${RESULT}"
"""

# Step 1 of APPLY_SCRIPT (on its own so tests/sidecar/test_fastapply_mailboxes.py can run it on a
# folder of its own): new mailbox folders, made and owned as Dovecot needs them (DMS's mkdir leaves
# them to root and chowns all of /var/mail, which its start-up skips past a few dozen mailboxes).
# ${W}/homes${SET} has the account homes, one per line; ${W}/chains${SET}, on the same line, every
# folder `mkdir -p` of that home would make, parents first, tab-separated. A home that exists has
# its parents: one test per account (10,000 at 10,000 accounts, read with mapfile), not one per
# folder. It runs twice: before the renames for the accounts new in this write (SET empty: they
# log in and receive mail once the renames are done), after them for the accounts that were
# there before (SET=.known: a folder of theirs gone meanwhile is made again, as DMS would, without
# keeping the new accounts waiting for 10,000 tests).
MAILBOX_STEP = r"""
MISSING=()
declare -A SEEN=()
mapfile -t HOMES <"${W}/homes${SET:-}"
mapfile -t CHAINS <"${W}/chains${SET:-}"
for I in "${!HOMES[@]}"; do
  [[ -d ${HOMES[I]} ]] && continue
  IFS=$'\t' read -ra FOLDERS <<<"${CHAINS[I]}"
  for P in "${FOLDERS[@]}"; do
    [[ -n ${SEEN[${P}]:-} || -d ${P} ]] || MISSING+=("${P}")
    SEEN[${P}]=1
  done
done
if (( ${#MISSING[@]} )); then
  printf '%s\0' "${MISSING[@]}" | xargs -0 mkdir -- || fail "making the mailbox folders"
  printf '%s\0' "${MISSING[@]}" | xargs -0 chown "${VMAIL}" -- || fail "owning the mailbox folders"
fi
while IFS=$'\t' read -r SOURCE DEST; do
  cp -- "${SOURCE}" "${DEST}" || fail "copying ${SOURCE}"
  if (( ${#MISSING[@]} )); then chown "${VMAIL}" -- "${DEST}"; fi
done <"${W}/sieves${SET:-}"
"""

APPLY_SCRIPT = (
    r"""
W=__WORK__
STAGE=__STAGE__
RECORD=__RECORD__
HELD=__HELD__
restore() {
  if [[ -e ${HELD} ]]; then
    [[ -e ${RECORD} ]] || mv -f -- "${HELD}" "${RECORD}"
    rm -f -- "${HELD}"
  fi
}
fail() { restore; echo "FAILED: $*"; exit 3; }
# TIMING=1: "STEP <name> <ms>" after each step (EPOCHREALTIME's digits: microseconds)
LAST=${EPOCHREALTIME//[!0-9]/}
step() {
  [[ ${TIMING:-0} == 1 ]] || return 0
  local NOW=${EPOCHREALTIME//[!0-9]/}
  echo "STEP $1 $(( (NOW - LAST) / 1000 ))"
  LAST=${NOW}
}
# the facts were read in this run of the container: after a restart DMS's start-up rebuilds
# everything itself (and appends to the userdb line by line: a rename now would double users)
[[ $(cut -d ' ' -f 22 /proc/1/stat) == "${BOOT}" ]] || fail "DMS restarted since fast apply began"
# 0. what the sidecar staged in the config volume: its lists into ${W}, each generated file next
# to its destination, all of them copied whole before the first rename
rm -rf -- "${W}" && mkdir -m 0700 -- "${W}" && cp -- "${STAGE}"/work/* "${W}/" \
  || fail "reading the lists staged in the config volume"
while IFS=$'\t' read -r DEST _ _ FILE; do
  cp --preserve=timestamps -- "${STAGE}/files/${FILE}" "${DEST%/*}/.${DEST##*/}__SUFFIX__" \
    || fail "copying the generated ${DEST} next to it"
done <"${W}/outputs"
step staged
# shellcheck source=/dev/null
source /usr/local/bin/helpers/index.sh >/dev/null 2>&1 || fail "sourcing DMS's helpers"
# shellcheck source=/dev/null
source /etc/dms-settings || fail "reading /etc/dms-settings"
VMAIL="${DMS_VMAIL_UID}:${DMS_VMAIL_GID}"
VHOST_CHANGED=0
step helpers
# 1. the new accounts' mailbox folders, owned as Dovecot needs them
SET=""
__MAILBOX_STEP__
step mailboxes
# 2. 10-auth.conf, as DMS edits it on every pass
AUTH_CONF=/etc/dovecot/conf.d/10-auth.conf
# DMS's comment edit adds a '#' on every pass: only a line that stops or starts being a comment
# changes Dovecot's configuration
auth_conf() { sed -E 's/^#+/#/' -- "${AUTH_CONF}" 2>/dev/null | cksum; }
AUTH_BEFORE=$(auth_conf)
while IFS= read -r EDIT; do
  sed -i -e "${EDIT}" "${AUTH_CONF}" || fail "editing 10-auth.conf"
done <"${W}/auth"
AUTH_AFTER=$(auth_conf)
step 10-auth.conf
# Dovecot reads its passwd-files again at most once a second (at the first look-up in a new
# second of its clock): until it has, a Postfix process that reads the new tables (any smtpd
# started after their rename, not only after the reload) would accept mail for a new account that
# Dovecot's LMTP then refuses for good ("550 5.1.1 User doesn't exist"). So Postfix's files are
# renamed only once a userdb look-up of one new account (${W}/probe) finds it: one look now,
# then one just after each second's turn (each doveadm costs a process and a configuration read:
# no busy polling).
PROBED=0
wait_for_dovecot() {
  PROBED=1
  [[ -s ${W}/probe ]] || return 0
  local PROBE KNOWN=0 NOW WAIT
  IFS= read -r PROBE <"${W}/probe"
  for _ in $(seq __PROBE_TRIES__); do
    if doveadm user -- "${PROBE}" >/dev/null 2>&1; then KNOWN=1; break; fi
    NOW=${EPOCHREALTIME//[!0-9]/}
    WAIT=$(( 1020000 - 10#${NOW: -6} ))  # microseconds until 20 ms past the next second
    sleep "$(( WAIT / 1000000 )).$(printf '%06d' $(( WAIT % 1000000 )))"
  done
  [[ ${KNOWN} == 1 ]] || echo "PROBE=unknown"
  step dovecot-knows
}
# 3. each generated file replaced by a rename in its own folder: Dovecot's first, then, once
# Dovecot knows the new accounts, Postfix's
while IFS=$'\t' read -r DEST OWNER MODE _; do
  # (its stdin kept off the list this loop reads)
  if [[ ${PROBED} == 0 && ${DEST} != /etc/dovecot/* ]]; then wait_for_dovecot </dev/null; fi
  NEW="${DEST%/*}/.${DEST##*/}__SUFFIX__"
  [[ -f ${NEW} ]] || fail "the copy of ${DEST} is missing"
  if [[ -e ${DEST} ]]; then
    chown --reference="${DEST}" -- "${NEW}" && chmod --reference="${DEST}" -- "${NEW}" \
      || fail "copying the owner and mode of ${DEST}"
  else
    chmod 0644 -- "${NEW}"
  fi
  if [[ ${OWNER} != - ]]; then chown "${OWNER}" -- "${NEW}" || fail "chown ${DEST}"; fi
  if [[ ${MODE} != - ]]; then chmod "${MODE}" -- "${NEW}" || fail "chmod ${DEST}"; fi
  if [[ -e ${DEST} ]] && cmp -s -- "${NEW}" "${DEST}"; then
    rm -f -- "${NEW}"
  else
    if [[ -e ${DEST} && ${DEST} == /etc/dovecot/* ]]; then
      # Dovecot re-reads a passwd-file when its mtime (whole seconds) or size differs from
      # what it read: a changed password of the same length in the same second must move
      # the mtime on (Postfix's files keep the cool mtime they were uploaded with)
      OLD_MTIME=$(stat -c %Y -- "${DEST}") && NEW_MTIME=$(stat -c %Y -- "${NEW}") \
        || fail "reading the mtime of ${DEST}"
      if (( NEW_MTIME <= OLD_MTIME )); then
        touch -m -d "@$((OLD_MTIME + 1))" -- "${NEW}" || fail "touching ${DEST}"
      fi
    fi
    mv -f -- "${NEW}" "${DEST}" || { rm -f -- "${NEW}"; fail "replacing ${DEST}"; }
    if [[ ${DEST} == /etc/postfix/vhost ]]; then VHOST_CHANGED=1; fi
  fi
done <"${W}/outputs"
if [[ ${PROBED} == 0 ]]; then wait_for_dovecot; fi
step renames
# 4. Postfix settings and tables, with DMS's own functions
while IFS= read -r SETTING; do
  _adjust_mtime_for_postfix_maincf
  [[ $(postconf -h "${SETTING%% = *}" 2>/dev/null) == "${SETTING#* = }" ]] && continue
  postconf "${SETTING}" || fail "postconf ${SETTING%% = *}"
done <"${W}/postconf"
while IFS=$'\t' read -r KEY VALUE; do
  _add_to_or_update_postfix_main "${KEY}" "${VALUE}" || fail "postconf ${KEY}"
done <"${W}/postconf_append"
if [[ ${POSTALIAS} == 1 ]]; then
  _adjust_mtime_for_postfix_maincf
  postalias /etc/aliases || fail "postalias /etc/aliases"
fi
step postconf
# 5. the reloads DMS runs after a change
# Amavis reads /etc/postfix/vhost (its local domains) and nothing else of ours: DMS reloads it
# whenever it regenerated vhost; a vhost that came out byte for byte the same needs no reload,
# whose restart of Amavis's children refuses the mail Postfix hands it meanwhile
if [[ ${RELOAD_AMAVIS} == 1 && ${VHOST_CHANGED} == 1 ]]; then
  amavisd reload >/dev/null 2>&1 || fail "amavisd reload"
  echo "AMAVIS=reloaded"
fi
_reload_postfix >/dev/null 2>&1 || fail "postfix reload"
step postfix-reload
# Dovecot's passwd-file passdb and userdb (/etc/dovecot/userdb, masterdb) re-read the file when
# its mtime or size changed (at most once a second): only a changed configuration needs the
# reload, whose restart of the auth processes fails the logins in flight. An auth cache
# (auth_cache_size, off in DMS) would keep old answers: then reload, as DMS does.
AUTH_CACHE=$(doveconf -h auth_cache_size 2>/dev/null) || AUTH_CACHE=unknown
WHY=""
[[ ${AUTH_BEFORE} == "${AUTH_AFTER}" ]] || WHY="10-auth.conf changed"
[[ ${AUTH_CACHE} == 0 ]] || WHY="${WHY:+${WHY}, }auth_cache_size is ${AUTH_CACHE}"
if [[ -n ${WHY} ]]; then
  dovecot reload || fail "dovecot reload"
  echo "DOVECOT=reloaded (${WHY})"
fi
step dovecot
# What is left is housekeeping no login or mail waits for: it yields the CPU to them (at 10,000
# accounts it is a second of bash and `find`, while the first mails to the new account go through
# Amavis and SpamAssassin)
renice -n 19 -p $$ >/dev/null 2>&1 || true
ionice -c 3 -p $$ >/dev/null 2>&1 || true
# the mailbox folders of the accounts that were there before (a folder gone meanwhile made again)
SET=.known
__MAILBOX_STEP__
step mailboxes-known
# DMS's own workaround, after the reloads (mail for a new account needs only its folders, made
# in step 1): at 10,000 accounts its `find` over /var/mail takes half a second
_chown_var_mail_if_necessary || fail "owning /var/mail"
step chown-check
# 6. DMS's checksum record
__RECORD_STEP__
rm -rf -- "${W}"
step record
""".replace("__RECORD_STEP__", RECORD_STEP)
    .replace("__MAILBOX_STEP__", MAILBOX_STEP)
    .replace("__WORK__", WORK)
    .replace("__PROBE_TRIES__", str(PROBE_TRIES))
    .replace("__STAGE__", f"{dmsgen.DMS_DIR}/{STAGE}")
    .replace("__SUFFIX__", SUFFIX)
    .replace("__RECORD__", RECORD)
    .replace("__HELD__", HELD)
)


def timing(environ: Mapping[str, str] = os.environ) -> bool:
    """DMS_RECONCILER_FAST_APPLY_TIMING=1 (or true/yes/on): say where fast apply's time went."""
    value = environ.get("DMS_RECONCILER_FAST_APPLY_TIMING", "0").strip().lower()
    return value in ("1", "true", "yes", "on")


def timing_note(spans: list[tuple[str, float]], staged_bytes: int, output: str) -> str:
    """The note timing adds to a result's message: the sidecar's own steps in seconds (facts,
    read, dmsgen, stage, script), the size of what was staged, then the script's STEP lines."""
    parts = [f"{name} {seconds:.2f} s" for name, seconds in spans]
    steps = [
        f"{m.group(1)} {int(m.group(2)) / 1000:.2f}"
        for m in re.finditer(r"^STEP (\S+) (\d+)$", output, re.M)
    ]
    note = "; time: " + ", ".join(parts) + f"; staged {staged_bytes / 1e6:.1f} MB"
    return note + (f"; script steps (s): {', '.join(steps)}" if steps else "")


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """DMS_RECONCILER_FAST_APPLY=0 (or false/no/off) turns fast apply off."""
    value = environ.get("DMS_RECONCILER_FAST_APPLY", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


SKIP_AFTER_UNREACHABLE = 30.0  # seconds fast apply is not tried after the engine did not answer


@dataclass(frozen=True)
class Result:
    """How one change was applied: `path` "fast" (done here, DMS's record updated) or "dms"
    (left to DMS's change detector), `message` says why and how long."""

    path: str
    message: str
    seconds: float = 0.0
    version: str | None = None
    unreachable: bool = False  # DMS could not be asked at all
    # "fast": monitored files outside the config files fast apply models (rspamd/**,
    # certificates) that changed too; DMS's change detector applies them (and only them)
    others: tuple[str, ...] = ()


def record_line(digest: str, name: str) -> str:
    """A line as `sha512sum` prints it for a monitored file."""
    return f"{digest}  {dmsgen.DMS_DIR}/{name}"


def parse_sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = re.fullmatch(r"--- (\w+)", line)
        if match:
            current = sections.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v) + ("\n" if v else "") for k, v in sections.items()}


def changed_files(record: str, current: Mapping[str, str]) -> set[str]:
    """CHANGED as DMS computes it: monitored files whose `sha512  path` line is not in the
    record (`grep -Fxvf`); `current` holds the sha512 of the files that exist."""
    lines = set(record.splitlines())
    return {name for name, digest in current.items() if record_line(digest, name) not in lines}


def our_paths() -> list[str]:
    """The paths of the config files fast apply models, as DMS's record names them."""
    return [f"{dmsgen.DMS_DIR}/{name}" for name in dmsgen.MONITORED]


def other_names(output: str) -> tuple[str, ...]:
    """The OTHER=<path> lines of the apply script: paths under DMS's config folder by their name
    there (rspamd/override.d/actions.conf), others (certificates) as they are, sorted, once each."""
    names = set()
    for path in re.findall(r"^OTHER=(.+)$", output, re.M):
        names.add(path.removeprefix(f"{dmsgen.DMS_DIR}/"))
    return tuple(sorted(names))


def predicted_record(record: str, current: Mapping[str, str]) -> str:
    """The record `_monitored_files_checksums` will print once these files are applied: ours in
    DMS's order, then the record's other lines (rspamd, certificates) as DMS last applied them."""
    ours = [record_line(current[name], name) for name in dmsgen.MONITORED if name in current]
    config = set(our_paths())
    others = [
        line for line in record.splitlines() if line and line.split("  ", 1)[-1] not in config
    ]
    return "".join(line + "\n" for line in ours + others)


def _upload_mtime() -> int:
    """The mtime of the staged files (the apply script moves a replacement's on past the old
    file's, for Dovecot's passwd-file check; a test pins it to prove that)."""
    return int(time.time())


# Postfix reads a texthash table (/etc/postfix/vmailbox, virtual) again, dozing 0.3 s each time,
# for as long as its mtime is within a second of the read (`dict_thash_open`: a "hot" file may
# still be being written): every process started by the reload would wait up to 2 s, and mail
# with it. Ours are complete when renamed into place, so they go in with an mtime this far back.
POSTFIX_COOL_SECONDS = 2


def _mtime_for(path: str) -> int:
    """The mtime a staged file gets: Dovecot's now (moved on past the old file's in the
    container), Postfix's already cool."""
    if path.startswith("/etc/dovecot/"):
        return _upload_mtime()
    return _upload_mtime() - POSTFIX_COOL_SECONDS


def _chains(homes: list[str]) -> list[str]:
    """A line per home for MAILBOX_STEP: every folder `mkdir -p` of it would make below
    /var/mail, parents first, tab-separated (addresses hold no tab; a home has no newline)."""
    lines = []
    for home in homes:
        parts = home.strip("/").split("/")
        lines.append("\t".join("/" + "/".join(parts[:depth]) for depth in range(3, len(parts) + 1)))
    return lines


def accounts_in(accounts_cf: bytes) -> frozenset[str]:
    """The logins of a postfix-accounts.cf (what precedes the first '|' of each line; comments
    and blank lines give names no home has)."""
    return frozenset(
        line.split(b"|", 1)[0].decode("ascii", "replace") for line in accounts_cf.splitlines()
    )


def new_account(accounts_cf: bytes | None, before: Collection[str]) -> str | None:
    """One account of `accounts_cf` not in `before` (a plain `local@domain`, the first in sorted
    order), for the apply script to wait until Dovecot knows it; None when there is none."""
    for login in sorted(accounts_in(accounts_cf or b"") - set(before)):
        if login.count("@") == 1 and re.fullmatch(r"[!-~]+", login):
            return login
    return None


def split_homes(gen: dmsgen.Generated, before: Collection[str]) -> tuple[list[str], list[str]]:
    """`gen.homes` split into those of accounts new in this write (and any with a sieve to copy
    into its home) and those of the accounts in `before`: `/var/mail/D/U/home` of `U@D`."""
    known = {
        f"/var/mail/{domain}/{user}/home"
        for user, _, domain in (login.partition("@") for login in before if login.count("@") == 1)
    }
    known.difference_update(home.rsplit("/", 1)[0] for _, home in gen.sieves)
    new = [home for home in gen.homes if home not in known]
    return new, [home for home in gen.homes if home in known]


class FastApply:
    """Runs fast apply for a write; `None` results mean there was nothing for DMS to apply."""

    def __init__(
        self,
        dms: Any,
        config_dir: str,
        *,
        command_timeout: float = 300.0,
        timed: bool | None = None,
    ) -> None:
        self.dms = dms
        self.config_dir = config_dir
        self.command_timeout = command_timeout
        self.timed = timing() if timed is None else timed  # say where the time went
        self._prepare_took = 0.0  # seconds `prepare` spent reading DMS's facts
        self._lead: list[tuple[str, float]] = []  # the sidecar's own steps before `prepare`
        self._staged_bytes = 0
        self._amavis_follows = False
        self._prepared: tuple[Any, str, dict[str, str]] | None = None
        # postfix-accounts.cf just before this write (read by `prepare`): if DMS's record says
        # it was applied, its accounts' mailbox folders are checked after the renames
        self._accounts_before: bytes | None = None
        self._holding: Any = None  # the container whose record we hold aside (HELD)

    def prepare(self, names: Collection[str]) -> None:
        """`before_write` of `apply_once`: under DMS's lock, just before the files are written,
        read DMS's facts and hold its checksum record aside (HELD), so that its change detector,
        polling while we write and apply, neither sees a change nor runs its reloads for one
        already applied. `run` (or `release`) puts the record back, as predicted or as it was.
        A failure here only means `run` asks again, without the hold."""
        if self._holding is not None and self._prepared is not None:
            return  # a retry after a write interrupted by another writer: still held, same facts
        self.release()
        if not any(name in dmsgen.MONITORED for name in names) or self._cooling(time.monotonic()):
            return
        began = time.monotonic()
        self._accounts_before = self._read_accounts()
        try:
            self._prepared = self._facts(hold=True)
        except (dms_mod.DmsUnavailable, dms_mod.DmsCommandFailed, dmsgen.Unsupported):
            self._prepared = None
        self._prepare_took = time.monotonic() - began

    def lead(self, spans: list[tuple[str, float]]) -> None:
        """The sidecar's steps before this write (loading the file, planning), for the timing
        note: where the time went from the save to fast apply."""
        self._lead = list(spans)

    def release(self) -> None:
        """After `apply_once` returned or raised: if the record is still held (the write failed,
        or `run` could not finish), put it back, so DMS's change detector sees what changed."""
        self._prepared = None
        self._accounts_before = None
        if self._holding is not None:
            self._restore(self._holding)

    def _cooling(self, now: float) -> bool:
        unreachable_at = getattr(self.dms, "unreachable_at", None)
        return unreachable_at is not None and now - unreachable_at < SKIP_AFTER_UNREACHABLE

    def run(self, written: Collection[str]) -> Result | None:
        if not any(name in dmsgen.MONITORED for name in written):
            return None
        started = time.monotonic()
        if self._prepared is None and self._cooling(started):
            # the engine did not answer a moment ago: asking again would hold DMS's lock (and the
            # sidecar's loop) for another query timeout; DMS's change detector has the change
            self.release()
            return Result(
                "dms", "the Docker engine did not answer lately; left to DMS", unreachable=True
            )
        # a new amavis.cf: the confirmer copies it and restarts Amavis after this, which reads the
        # new vhost too: one restart instead of DMS's reload and then that restart
        self._amavis_follows = amavis.FILENAME in written
        try:
            result = self._run(started)
        except dms_mod.DmsUnavailable as exc:
            result = Result(
                "dms", f"fast apply could not reach DMS ({exc}); left to DMS", unreachable=True
            )
        except dms_mod.DmsCommandFailed as exc:
            result = Result("dms", f"fast apply failed ({exc}); left to DMS's change detector")
        except dmsgen.Unsupported as exc:
            result = Result("dms", f"fast apply does not model this ({exc}); left to DMS")
        finally:
            self._unstage()
            self.release()
        return result

    def _facts(self, *, hold: bool) -> tuple[Any, str, dict[str, str]]:
        """The container, its DMS release and the FACTS_SCRIPT's sections; `hold`: DMS's record
        is held aside (`_holding` says so until it is back)."""
        container = self.dms.find()
        env = _container_env(container)
        release = env.get("DMS_RELEASE", "unknown")
        for name in LOCALE_VARS:
            if env.get(name, "C") not in ("", "C", "POSIX"):
                raise dmsgen.Unsupported(f"the container sets {name}={env[name]}")
        if hold:
            self._holding = container  # from here until we know it is not held
        code, output = self.dms.run(
            container, ["env", f"HOLD={int(hold)}", "bash", "-c", FACTS_SCRIPT]
        )
        facts = parse_sections(output)
        if hold and code == 0 and "end" in facts and "held" not in facts:
            self._holding = None
        if code != 0 or "end" not in facts:
            raise dms_mod.DmsCommandFailed(f"reading DMS's scripts and settings (exit {code})")
        return container, release, facts

    def _restore(self, container: Any) -> None:
        self._holding = None  # tried once: what this cannot do, the container's watchdog does
        try:
            self.dms.run(container, ["bash", "-c", RESTORE_SCRIPT])
        except (dms_mod.DmsUnavailable, dms_mod.DmsCommandFailed):
            pass  # gone or restarted: DMS's start-up writes a new record

    def _run(self, started: float) -> Result:
        prepared, self._prepared = self._prepared, None
        spans: list[tuple[str, float]] = []
        mark = time.monotonic()

        def span(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            spans.append((name, now - mark))
            mark = now

        spans += self._lead
        if prepared is not None:
            spans.append(("facts (before the write)", self._prepare_took))
        container, release, facts = prepared or self._facts(hold=False)
        if prepared is None:
            span("facts")
        hashes = {}
        for line in facts.get("sha256", "").splitlines():
            digest, _, path = line.partition("  ")
            hashes[path] = digest
        version = dmsgen.profile_for(hashes)
        if version is None:
            return Result(
                "dms",
                f"DMS {release}'s generator scripts are not ones fast apply was proven against "
                "(tests/realdms/test_dmsgen_identical.py); left to DMS's change detector",
            )
        record = facts.get("record", "")
        if record.strip() == "MISSING":
            return Result("dms", "DMS is still starting (no checksum record yet); left to DMS")
        settings = dmsgen.Settings.from_dms_settings(facts.get("settings", ""))
        files = self._read_files()
        span("read")
        current = {
            name: hashlib.sha512(data).hexdigest()
            for name, data in files.items()
            if name in dmsgen.MONITORED and data is not None
        }
        changed = changed_files(record, current)
        if not changed:
            return Result("dms", "DMS had already applied these files", version=version)
        gen = dmsgen.generate(files, settings, version, changed)
        span("dmsgen")
        applied = self._applied_accounts(record)
        probe = new_account(files.get(dmsgen.ACCOUNTS), applied) if applied else None
        self._stage(gen, predicted_record(record, current), applied, probe)
        span("stage")
        code, output = self.dms.run(
            container,
            [
                "env",
                f"BOOT={facts.get('boot', '').strip()}",
                f"POSTALIAS={int(gen.postalias)}",
                f"RELOAD_AMAVIS={int(gen.reload_amavis and not self._amavis_follows)}",
                f"TIMING={int(self.timed)}",
                "bash",
                "-c",
                APPLY_SCRIPT,
            ],
            timeout=self.command_timeout,
        )
        took = time.monotonic() - started
        span("script")
        note = timing_note(spans, self._staged_bytes, output) if self.timed else ""
        if re.search(r"^(FAILED: |RECORD=)", output, re.M):
            self._holding = None  # the script wrote the record or put it back
        failed = re.search(r"^FAILED: (.*)$", output, re.M)
        if code != 0 or failed:
            why = failed.group(1) if failed else f"exit {code}"
            self._cleanup(container)
            return Result(
                "dms",
                f"fast apply failed in the container ({why}); left to DMS's change detector" + note,
                took,
                version,
            )
        names = ", ".join(sorted(changed))
        others = other_names(output) if "RECORD=others" in output else ()
        if "RECORD=written" not in output and not others:
            return Result(
                "dms",
                f"fast apply put {names} in place in {took:.2f} s, but DMS's checksums of the "
                "config files are not the ones predicted (changed meanwhile): DMS's change "
                "detector applies the change" + note,
                took,
                version,
            )
        reloaded = re.search(r"^DOVECOT=(reloaded.*)$", output, re.M)
        dovecot = reloaded.group(1) if reloaded else "not reloaded (only its data changed)"
        message = f"fast apply (DMS {release}) applied {names} in {took:.2f} s; Dovecot {dovecot}"
        if "AMAVIS=reloaded" in output:
            message += "; Amavis reloaded (its domains changed)"
        if "PROBE=unknown" in output:
            message += (
                f"; Postfix's tables were renamed before Dovecot's userdb look-up found {probe} "
                f"(waited {PROBE_TRIES} tries): mail to it may have bounced meanwhile"
            )
        if others:
            message += (
                f"; {', '.join(others)} changed too: DMS's change detector applies "
                f"{'it' if len(others) == 1 else 'them'} (without rebuilding the accounts)"
            )
        return Result("fast", message + note, took, version, others=others)

    def _read_accounts(self) -> bytes | None:
        try:
            with open(os.path.join(self.config_dir, dmsgen.ACCOUNTS), "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def _applied_accounts(self, record: str) -> frozenset[str]:
        """The accounts of postfix-accounts.cf before this write, if DMS's record says DMS (or
        fast apply) applied that file: their homes were made then. Otherwise none."""
        before = self._accounts_before
        if before is None:
            return frozenset()
        line = record_line(hashlib.sha512(before).hexdigest(), dmsgen.ACCOUNTS)
        return accounts_in(before) if line in record.splitlines() else frozenset()

    def _read_files(self) -> dict[str, bytes | None]:
        files: dict[str, bytes | None] = {}
        for entry in os.scandir(self.config_dir):
            name = entry.name
            if name in dmsgen.MONITORED:
                with open(entry.path, "rb") as handle:
                    files[name] = handle.read()
            elif name.endswith(".dovecot.sieve"):
                files[name] = b""
        return files

    def _stage(
        self, gen: dmsgen.Generated, record: str, applied: Collection[str], probe: str | None
    ) -> None:
        """Write the generated files (files/N, with the mtime each should have) and the script's
        lists (work/) into STAGE in the config volume, owner-only: the userdb holds hashes."""
        rank = {path: i for i, path in enumerate(ORDER)}
        outputs = sorted(gen.outputs, key=lambda o: rank.get(o.path, len(ORDER)))
        files: dict[str, tuple[bytes, int | None]] = {}
        lines = []
        for number, output in enumerate(outputs):
            files[f"files/{number}"] = (output.data, _mtime_for(output.path))
            mode = "-" if output.mode is None else f"{output.mode:o}"
            lines.append(f"{output.path}\t{output.owner or '-'}\t{mode}\t{number}")
        work = {"outputs": _lines(lines)}
        new, known = split_homes(gen, applied)
        for suffix, homes in (("", new), (".known", known)):
            work[f"homes{suffix}"] = _lines(homes)
            work[f"chains{suffix}"] = _lines(_chains(homes))
        work["sieves"] = _lines([f"{s}\t{d}" for s, d in gen.sieves])
        work["sieves.known"] = b""
        work["auth"] = _lines([edit.sed for edit in gen.auth_edits])
        work["postconf"] = _lines(gen.postconf)
        work["postconf_append"] = _lines([f"{k}\t{v}" for k, v in gen.postconf_append])
        work["record"] = record.encode()
        work["ours"] = _lines(our_paths())
        work["probe"] = _lines([probe] if probe else [])
        files.update({f"work/{name}": (data, None) for name, data in work.items()})
        self._unstage()
        stage = os.path.join(self.config_dir, STAGE)
        try:
            for folder in (stage, f"{stage}/files", f"{stage}/work"):
                os.mkdir(folder, 0o700)
            for name, (data, mtime) in files.items():
                path = f"{stage}/{name}"
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with open(descriptor, "wb") as handle:
                    handle.write(data)
                if mtime is not None:
                    os.utime(path, (mtime, mtime))
        except OSError as exc:
            self._unstage()
            raise dms_mod.DmsCommandFailed(
                f"staging the generated files in {stage} failed: {exc.strerror}"
            ) from None
        self._staged_bytes = sum(len(data) for data, _ in files.values())

    def _unstage(self) -> None:
        """Remove STAGE from the config volume (never left behind: it holds hashes)."""
        shutil.rmtree(os.path.join(self.config_dir, STAGE), ignore_errors=True)

    def _cleanup(self, container: Any) -> None:
        """Remove the uploads a failed script left (never a half-written file: uploads only)."""
        leftovers = [f"{os.path.dirname(p)}/.{os.path.basename(p)}{SUFFIX}" for p in ORDER]
        try:
            self.dms.run(container, ["rm", "-rf", "--", WORK, *leftovers])
        except (dms_mod.DmsUnavailable, dms_mod.DmsCommandFailed):
            pass


def _lines(values: list[str]) -> bytes:
    return "".join(v + "\n" for v in values).encode()


def _container_env(container: Any) -> dict[str, str]:
    out = {}
    for item in (container.attrs.get("Config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out

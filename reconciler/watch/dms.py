"""Talk to the DMS container through the Docker API: find it, confirm our writes, run reloads.

After the sidecar writes the config volume, DMS's change detector (`check-for-changes.sh`) notices
the new checksums within `DMS_CONFIG_POLL` (2 s), regenerates Postfix and Dovecot's files and
reloads them, and only then records the checksums it applied in
`/tmp/docker-mailserver-config-chksum` inside the container (`sha512sum` lines). Reading that file
and finding the sha512 of what we wrote is the proof that DMS picked the change up. DMS needs 23-41
ms per account for this, about 6 minutes at 10,000 accounts, so the timeout grows with the server.

The files under `rspamd/` are hashed only while Rspamd is on: DMS's `_monitored_files_checksums`
(helpers/change-detection.sh, the same in v15.1 and v16) adds `find rspamd -type f` when
`[[ ${ENABLE_RSPAMD} -eq 1 ]]` and the folder exists, with ENABLE_RSPAMD from /etc/dms-settings
(the container's setting, 0 when unset). Then a change there makes it reload Rspamd (`supervisorctl
signal SIGHUP rspamd`) before it records the checksums; otherwise DMS never records them, and
waiting for them would only time out (`rspamd_hashed`).

`amavis.cf` is not watched by DMS (it is copied to `/etc/amavis/conf.d/50-user` at start-up only),
so after writing it we copy it and restart Amavis ourselves.

Every command is an argument list run with `exec_run`, never a shell string. docker-py can lose
the output of very fast commands (docker/docker-py#3332): the exit code decides, and empty output
is never taken as an answer. No failure here is fatal: without the Docker socket, with the
container gone or the engine stopped, the caller keeps applying and reports that it could not
confirm.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.formats import (
    access,
    accounts,
    amavis,
    opendkim,
    registry,
    virtual,
)
from reconciler.planner import target as dms_target
from reconciler.planner.target import DmsFacts
from reconciler.volume.lock import LOCK_NAME

CHKSUM_FILE = "/tmp/docker-mailserver-config-chksum"
DMS_DIR = "/tmp/docker-mailserver"  # fixed in DMS (`local DMS_DIR=/tmp/docker-mailserver`)
AMAVIS_USER_CONF = "/etc/amavis/conf.d/50-user"
DEFAULT_LABEL = "com.docker.compose.service=mailserver"
DEFAULT_SOCKET = "/var/run/docker.sock"
# The files we write that DMS's change detector hashes (it also hashes others we never touch).
MONITORED = registry.WATCHED
# Their changes make DMS's change detector regenerate /etc/postfix/vhost and `amavisd reload`.
AMAVIS_RELOADED_BY_DMS = (accounts.FILENAME, virtual.FILENAME)
MAIN_CF = "/etc/postfix/main.cf"
# What DMS's start-up puts in front of Postfix's restrictions for each access file that exists
# (setup.d/postfix.sh:_setup_postfix_late): (file, restriction list, check).
ACCESS_WIRING = (
    (access.SEND, "dms_smtpd_sender_restrictions", "check_sender_access"),
    (access.RECEIVE, "smtpd_recipient_restrictions", "check_recipient_access"),
)
OPENDKIM_DIR = "/etc/opendkim"
CONFIRM_BASE_SECONDS = 60.0
CONFIRM_SECONDS_PER_ACCOUNT = 0.08  # about twice DMS's measured worst case (41 ms per account)
# A hung engine must not hold the sidecar's loop (and its SIGTERM) for long: queries (list,
# inspect, `cat`) answer in milliseconds. Restarting Amavis takes seconds on a real server.
API_TIMEOUT_SECONDS = 10.0
FACTS_TIMEOUT_SECONDS = 2.0  # reading DMS's settings before a plan waits no longer than this
COMMAND_TIMEOUT_SECONDS = 120.0


class DmsUnavailable(Exception):
    """The container cannot be asked right now: no socket, engine down, container missing."""


class DmsCommandFailed(Exception):
    """A command in the container ran but failed (exit 126/127: it could not be run at all)."""


@dataclass(frozen=True)
class Report:
    """The outcome of one interaction, in words for the log and a word for the metrics."""

    state: str  # confirmed | waiting | timed_out | unconfirmed | ok | skipped | failed
    message: str

    @property
    def ok(self) -> bool:
        return self.state in ("confirmed", "ok", "skipped")


def confirm_timeout(account_count: int, environ: Mapping[str, str] = os.environ) -> float:
    """Seconds to wait for DMS's confirmation: grows with the number of accounts DMS regenerates.

    `DMS_RECONCILER_CONFIRM_TIMEOUT` overrides it (seconds).
    """
    override = environ.get("DMS_RECONCILER_CONFIRM_TIMEOUT", "").strip()
    if override:
        try:
            return max(1.0, float(override))
        except ValueError:
            pass
    return CONFIRM_BASE_SECONDS + CONFIRM_SECONDS_PER_ACCOUNT * max(0, account_count)


def monitored_checksums(sha512: Mapping[str, str]) -> dict[str, str]:
    """From an `ApplyResult.sha512`: only the files DMS's change detector will confirm."""
    return {name: digest for name, digest in sha512.items() if registry.watched(name)}


def rspamd_hashed(value: str | None) -> bool:
    """Does DMS's change detector hash rspamd/ with this ENABLE_RSPAMD (None: unset, DMS's
    default 0)? Bash's `[[ ${ENABLE_RSPAMD} -eq 1 ]]`: 1, also written 01, +1 or 0x1 (an
    arithmetic one); anything else is not 1."""
    return value is not None and dms_target.bash_is_one(value)


def rspamd_names(names: Iterable[str]) -> list[str]:
    """The files under rspamd/ among `names`, sorted."""
    return sorted(name for name in names if registry.is_rspamd(name))


def parse_chksum(text: str) -> dict[str, str]:
    """`<sha512>  /tmp/docker-mailserver/<name>` lines -> {name: sha512} for the files we write."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().lstrip("\\").split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 128:
            continue
        digest, path = parts[0].lower(), parts[1].strip()
        name = path[len(DMS_DIR) + 1 :] if path.startswith(DMS_DIR + "/") else ""
        hexadecimal = all(c in "0123456789abcdef" for c in digest)
        # the top-level files we write, and those under rspamd/ (a logical name with a folder)
        if name and "/../" not in f"/{name}/" and registry.watched(name) and hexadecimal:
            out[name] = digest
    return out


def is_applied(
    expected: Mapping[str, str], recorded: Mapping[str, str], current: Callable[[str], str | None]
) -> bool:
    """Has DMS applied every file we wrote? Yes when it recorded our sha512 for each, or the sha512
    the file has now (someone wrote it again after us, and DMS applied that newer version)."""
    for name, digest in expected.items():
        seen = recorded.get(name)
        if seen is None:
            return False
        if seen != digest and seen != current(name):
            return False
    return True


def file_sha512(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha512(handle.read()).hexdigest()
    except OSError:
        return None


class Dms:
    """The DMS container, found by name or by its compose service label.

    The container is looked up again for every interaction: `docker compose up --force-recreate`
    replaces it with a new id, and that must not need a sidecar restart.
    """

    def __init__(
        self,
        *,
        container: str | None = None,
        label: str | None = DEFAULT_LABEL,
        environ: Mapping[str, str] = os.environ,
        api_timeout: float = API_TIMEOUT_SECONDS,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self.container_name = container or None
        self.label = None if self.container_name else (label or DEFAULT_LABEL)
        self.environ = environ
        self.api_timeout = api_timeout
        self.command_timeout = command_timeout
        self.unreachable_at: float | None = None  # when (monotonic) the engine last did not answer
        self._docker: Any = None

    # --- finding things -----------------------------------------------------------------------

    def describe(self) -> str:
        if self.container_name:
            return f"container '{self.container_name}'"
        return f"the container labelled {self.label}"

    def engine_address(self) -> str:
        return self.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"

    def _client(self) -> Any:
        if self._docker is not None:
            return self._docker
        address = self.engine_address()
        if address.startswith("unix://") and not os.path.exists(address[len("unix://") :]):
            socket_path = address[len("unix://") :]
            if self.environ.get("DOCKER_HOST"):  # chosen on purpose: the engine is not there now
                raise DmsUnavailable(
                    f"no Docker socket at {socket_path} (DOCKER_HOST): the "
                    "Docker engine is not running there"
                )
            raise DmsUnavailable(
                f"no Docker socket at {socket_path} (mount /var/run/docker.sock into "
                "the sidecar, or set DOCKER_HOST, to let it confirm changes and reload Amavis)"
            )
        import docker  # imported late: the CLI's other commands never need it

        try:
            self._docker = docker.DockerClient.from_env(
                environment=dict(self.environ), timeout=int(self.api_timeout)
            )
        except Exception as exc:  # DockerException, requests' errors, TLS errors ...
            raise DmsUnavailable(
                f"cannot reach the Docker engine at {address}: {_why(exc, self.api_timeout)}"
            ) from None
        return self._docker

    def _forget_client(self) -> None:
        client, self._docker = self._docker, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not hide the real error
                pass

    def find(self) -> Any:
        """The running DMS container, or `DmsUnavailable` saying why not."""
        import docker.errors

        client = self._client()
        try:
            if self.container_name:
                found = client.containers.get(self.container_name)
                if found.status != "running":
                    raise DmsUnavailable(
                        f"the DMS {self.describe()} is {found.status}, not running"
                    )
                return found
            matches = client.containers.list(filters={"label": self.label, "status": "running"})
        except docker.errors.NotFound:
            raise DmsUnavailable(f"there is no {self.describe()} (check --container)") from None
        except DmsUnavailable:
            raise
        except docker.errors.APIError as exc:
            raise DmsUnavailable(
                f"the Docker engine refused to list containers: {_api_why(exc)}"
            ) from None
        except Exception as exc:
            self._forget_client()
            self.unreachable_at = time.monotonic()
            raise DmsUnavailable(
                f"cannot reach the Docker engine at {self.engine_address()}: "
                f"{_why(exc, self.api_timeout)}"
            ) from None
        if not matches:
            raise DmsUnavailable(
                f"no running container has the label {self.label} (give the DMS "
                "container's name with --container, or set --container-label)"
            )
        if len(matches) > 1:
            names = ", ".join(sorted(c.name for c in matches))
            raise DmsUnavailable(
                f"{len(matches)} running containers have the label {self.label} "
                f"({names}); give the right one with --container"
            )
        return matches[0]

    # --- running commands ---------------------------------------------------------------------

    def run(
        self, container: Any, argv: list[str], *, timeout: float | None = None
    ) -> tuple[int, str]:
        """Run `argv` in the container; (exit code, output). Raises `DmsUnavailable` when the
        container or the engine cannot be reached, `DmsCommandFailed` for exit codes 126/127.
        `timeout`: seconds for a slow command, instead of the queries' short one."""
        import docker.errors

        api = getattr(getattr(container, "client", None), "api", None)
        previous = getattr(api, "timeout", None)
        try:
            if timeout is not None and api is not None:
                api.timeout = timeout
            result = container.exec_run(argv, stdout=True, stderr=True)
        except docker.errors.NotFound:
            raise DmsUnavailable(
                f"the DMS {self.describe()} is gone (removed or recreated)"
            ) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise DmsUnavailable(f"the DMS {self.describe()} is not running") from None
            raise DmsUnavailable(
                f"the Docker engine refused to run {argv[0]}: {_api_why(exc)}"
            ) from None
        except Exception as exc:
            self._forget_client()
            self.unreachable_at = time.monotonic()
            raise DmsUnavailable(
                f"lost the Docker engine at {self.engine_address()}: "
                f"{_why(exc, timeout or self.api_timeout)}"
            ) from None
        finally:
            if timeout is not None and api is not None:
                api.timeout = previous
        code = result.exit_code
        output = (result.output or b"").decode("utf-8", "replace")
        if code == 126:
            raise DmsCommandFailed(
                f"`{argv[0]}` cannot be run in the DMS container (exit 126: "
                f"{_first_line(output) or 'not executable or not found'})"
            )
        if code == 127:
            raise DmsCommandFailed(
                f"`{argv[0]}` was not found in the DMS container (exit 127"
                + (f": {_first_line(output)})" if output.strip() else ")")
            )
        if code is None:  # the exec did not finish: the SDK could not tell
            raise DmsCommandFailed(f"`{argv[0]}` gave no exit status in the DMS container")
        return code, output

    def applied_checksums(self) -> tuple[dict[str, str] | None, str]:
        """What DMS's change detector last applied: ({name: sha512} or None, a note when None)."""
        container = self.find()
        code, output = self.run(container, ["cat", CHKSUM_FILE])
        if code != 0:
            if "No such file" in output or "can't open" in output:
                return None, f"{CHKSUM_FILE} does not exist yet (DMS is still starting)"
            return None, f"reading {CHKSUM_FILE} failed (exit {code}: {_first_line(output)})"
        if not output.strip():
            # Either nothing is monitored yet or docker-py#3332 lost the output: ask again later.
            return None, f"{CHKSUM_FILE} came back empty"
        return parse_chksum(output), ""

    def check_applied(
        self, expected: Mapping[str, str], current: Callable[[str], str | None]
    ) -> Report:
        """One look: has DMS applied `expected`? confirmed, waiting, or unconfirmed (cannot ask)."""
        try:
            recorded, note = self.applied_checksums()
        except (DmsUnavailable, DmsCommandFailed) as exc:
            return Report("unconfirmed", f"could not confirm that DMS applied the change: {exc}")
        if recorded is None:
            return Report("waiting", note)
        if is_applied(expected, recorded, current):
            return Report("confirmed", "DMS applied the change")
        return Report("waiting", "DMS has not applied the change yet")

    def rspamd_on(self) -> bool:
        """Does DMS's change detector hash rspamd/ in the container (ENABLE_RSPAMD=1)? Raises
        `DmsUnavailable` when the container cannot be found."""
        return rspamd_hashed(_env(self.find(), "ENABLE_RSPAMD"))

    def reload_amavis(self, dms_will_reload: Mapping[str, str] | None = None) -> Report:
        """Install the new amavis.cf as DMS does at start-up and restart Amavis.

        `dms_will_reload`: the sha512 of the postfix-accounts.cf/postfix-virtual.cf we wrote with
        it. DMS's change detector runs `amavisd reload` when it applies those
        (check-for-changes.sh, `_reload_amavis`), which reads the new 50-user too: when it has not
        started on them yet (no lock, not recorded), that reload is the only restart."""
        try:
            container = self.find()
            if _env(container, "ENABLE_AMAVIS") == "0":
                return Report(
                    "skipped",
                    "Amavis is disabled in the DMS container "
                    "(ENABLE_AMAVIS=0); amavis.cf is not used",
                )
            source = f"{DMS_DIR}/{amavis.FILENAME}"
            code, output = self.run(container, ["cp", source, AMAVIS_USER_CONF])
            if code != 0:
                return Report(
                    "failed",
                    f"copying amavis.cf to {AMAVIS_USER_CONF} in the DMS "
                    f"container failed (exit {code}: {_first_line(output)})",
                )
            if dms_will_reload and self._not_yet_handled(container, dms_will_reload):
                return Report(
                    "ok",
                    f"installed amavis.cf as {AMAVIS_USER_CONF}; DMS's change detector reloads "
                    f"Amavis when it applies {', '.join(sorted(dms_will_reload))}",
                )
            if failed := self._restart(container, "amavis"):
                return failed
        except DmsUnavailable as exc:
            return Report(
                "unconfirmed", f"amavis.cf changed but Amavis could not be restarted: {exc}"
            )
        except DmsCommandFailed as exc:
            return Report("failed", f"amavis.cf changed but Amavis could not be restarted: {exc}")
        return Report("ok", f"installed amavis.cf as {AMAVIS_USER_CONF} and restarted Amavis")

    def _restart(self, container: Any, service: str) -> Report | None:
        """`supervisorctl restart <service>` in the container; a failed Report when it fails."""
        code, output = self.run(
            container, ["supervisorctl", "restart", service], timeout=self.command_timeout
        )
        if code == 0:
            return None
        return Report(
            "failed",
            f"`supervisorctl restart {service}` failed in the DMS container "
            f"(exit {code}: {_first_line(output) or 'no output'})",
        )

    def _not_yet_handled(self, container: Any, written: Mapping[str, str]) -> bool:
        """DMS's change detector has neither started on (its lock) nor recorded any of `written`:
        its `amavisd reload` for them comes after the amavis.cf copy just made."""
        code, output = self.run(
            container,
            ["sh", "-c", f"test ! -e {DMS_DIR}/{LOCK_NAME} && cat {CHKSUM_FILE}"],
        )
        if code != 0:  # DMS is handling a change, or has no checksum file yet: restart
            return False
        recorded = parse_chksum(output)
        return all(recorded.get(name) != digest for name, digest in written.items())

    def reload_restrictions(self) -> Report:
        """Put each access file in Postfix's restrictions as DMS's start-up does (once), then
        `postfix reload`, which `setup email restrict` runs: texthash tables are read when a
        Postfix process starts."""
        try:
            container = self.find()
            wired = []
            for name, parameter, check in ACCESS_WIRING:
                path = f"{DMS_DIR}/{name}"
                if self.run(container, ["test", "-f", path])[0] != 0:
                    continue
                entry = f"{check} texthash:{path}"
                if self.run(container, ["grep", "-q", "-F", entry, MAIN_CF])[0] == 0:
                    continue
                # the same sed as setup.d/postfix.sh, so the result is what a restart would give
                script = f"s|^({parameter} =)|\\1 {entry},|"
                code, output = self.run(container, ["sed", "-i", "-E", script, MAIN_CF])
                if code != 0:
                    return Report(
                        "failed",
                        f"adding {name} to {parameter} in {MAIN_CF} failed (exit {code}: "
                        f"{_first_line(output)})",
                    )
                wired.append(name)
            code, output = self.run(container, ["postfix", "reload"], timeout=self.command_timeout)
            if code != 0:
                return Report(
                    "failed",
                    f"`postfix reload` failed in the DMS container (exit {code}: "
                    f"{_first_line(output) or 'no output'})",
                )
        except DmsUnavailable as exc:
            return Report(
                "unconfirmed", f"restrictions changed but Postfix was not reloaded: {exc}"
            )
        except DmsCommandFailed as exc:
            return Report("failed", f"restrictions changed but Postfix was not reloaded: {exc}")
        added = f"added {', '.join(wired)} to Postfix's restrictions and " if wired else ""
        return Report("ok", f"{added}reloaded Postfix for the new restrictions")

    def reload_opendkim(self) -> Report:
        """Install opendkim/ as DMS's start-up does (setup.d/dmarc_dkim_spf.sh: copy to
        /etc/opendkim, owner opendkim, keys 0700) and restart OpenDKIM."""
        try:
            container = self.find()
            if _env(container, "ENABLE_OPENDKIM") == "0":
                return Report(
                    "skipped",
                    "OpenDKIM is disabled in the DMS container (ENABLE_OPENDKIM=0); "
                    "opendkim/ is not used",
                )
            source = f"{DMS_DIR}/{opendkim.DIRECTORY}"
            steps = [
                ["mkdir", "-p", f"{OPENDKIM_DIR}/keys"],
                ["cp", "-a", f"{source}/KeyTable", f"{source}/SigningTable", f"{OPENDKIM_DIR}/"],
                ["cp", "-a", f"{source}/keys/.", f"{OPENDKIM_DIR}/keys/"],
            ]
            # DMS appends PERMIT_DOCKER's networks to the container's TrustedHosts after copying
            # it at start-up: a copy of ours now would drop them, so it is only put in place
            # when the container has none
            if self.run(container, ["test", "-s", f"{OPENDKIM_DIR}/TrustedHosts"])[0] != 0:
                steps.append(["cp", "-a", f"{source}/TrustedHosts", f"{OPENDKIM_DIR}/"])
            steps += [
                ["chown", "-R", "opendkim:opendkim", OPENDKIM_DIR],
                ["chmod", "-R", "0700", f"{OPENDKIM_DIR}/keys"],
            ]
            for argv in steps:
                code, output = self.run(container, list(argv))
                if code != 0:
                    return Report(
                        "failed",
                        f"`{' '.join(argv[:2])}` failed in the DMS container (exit {code}: "
                        f"{_first_line(output)})",
                    )
            if failed := self._restart(container, "opendkim"):
                return failed
        except DmsUnavailable as exc:
            return Report("unconfirmed", f"opendkim/ changed but OpenDKIM was not restarted: {exc}")
        except DmsCommandFailed as exc:
            return Report("failed", f"opendkim/ changed but OpenDKIM was not restarted: {exc}")
        return Report("ok", f"installed opendkim/ in {OPENDKIM_DIR} and restarted OpenDKIM")

    def read_facts(self) -> DmsFacts:
        """DMS's release and settings from the container's environment (`docker inspect`
        Config.Env), DMS's defaults for unset ones; never raises: why not, in the facts.

        Asked before every plan, so it waits at most FACTS_TIMEOUT_SECONDS for the engine: a
        slow or hung engine must not hold a change back for a whole query timeout."""
        api_timeout = self.api_timeout
        self.api_timeout = min(api_timeout, FACTS_TIMEOUT_SECONDS)
        api = getattr(self._docker, "api", None)  # the client, when one was made already
        if api is not None:
            api.timeout = self.api_timeout
        try:
            container = self.find()
        except DmsUnavailable as exc:
            return dms_target.unreadable(self.describe(), str(exc))
        finally:
            self.api_timeout = api_timeout
            api = getattr(self._docker, "api", None)  # made now, or before: the usual timeout
            if api is not None:
                api.timeout = api_timeout
        name = str(getattr(container, "name", "") or self.describe())
        env = (getattr(container, "attrs", None) or {}).get("Config", {}) or {}
        items = env.get("Env") if isinstance(env, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return dms_target.unreadable(
                name, "the container's environment (Config.Env) could not be read"
            )
        values = dict(item.partition("=")[::2] for item in items)
        return dms_target.facts_from_env(values, name)

    def close(self) -> None:
        self._forget_client()


def _env(container: Any, name: str) -> str | None:
    for item in (container.attrs.get("Config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        if key == name:
            return value
    return None


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= 300 else line[:297] + "..."
    return ""


def _api_why(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)[:300]


def _why(exc: BaseException, timeout: float | None = None) -> str:
    """The root cause in a few words: 'connection refused', 'no such file or directory', 'no
    answer within 10 s' ..."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            within = f" within {timeout:g} s" if timeout else " in time"
            return f"no answer{within} (the engine is hung or overloaded)"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        todo.extend([getattr(current, "__cause__", None), getattr(current, "__context__", None)])
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
    text = str(exc)
    return text if len(text) <= 300 else text[:297] + "..."

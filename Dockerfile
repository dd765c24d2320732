# The dms-reconciler sidecar: `dms-reconciler watch` next to docker-mailserver (DMS).
#
#   docker build -t dms-reconciler .
#
# Base image: pinned by tag here. In production pin it by digest too (Renovate or Dependabot keep
# it current):  docker buildx imagetools inspect python:3.13-slim-trixie
#   --build-arg PYTHON_IMAGE=python:3.13-slim-trixie@sha256:<digest>
# Any Python from 3.11 to 3.13 works (README, "Supported Python versions"): passwords are hashed
# with libpass, which needs no stdlib `crypt`. Debian 13 (trixie) is what DMS v16 is built on.
ARG PYTHON_IMAGE=python:3.13-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/dms-reconciler
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schema/mailserver.schema.json schema/
COPY reconciler/ reconciler/
# [sops]: the real sops binary, for a SOPS-encrypted mailserver.yaml (README, Passwords)
RUN /opt/dms-reconciler/bin/pip install '.[sops]' \
 && /opt/dms-reconciler/bin/python -m compileall -q /opt/dms-reconciler

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/dms-reconciler /opt/dms-reconciler
# A fixed, unprivileged uid/gid so volumes can be chowned to it (see docs/sidecar.md).
RUN groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin reconciler
ENV PATH=/opt/dms-reconciler/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DMS_RECONCILER_FILE=/desired/mailserver.yaml \
    DMS_CONFIG_DIR=/dms/config \
    DMS_CRON_FILE=/dms/cron/sa-learn \
    DMS_RECONCILER_LISTEN=0.0.0.0:9000
# Non-root by default. It needs more in two cases (docs/sidecar.md, "Permissions"):
# - the Docker socket (to confirm DMS applied a change and to restart Amavis) is owned by the
#   host's `docker` group: add that gid (compose `group_add`, `docker run --group-add`);
# - managing sa_learn: Debian's cron only runs files in /etc/cron.d owned by root and not writable
#   by group or others, and the sidecar rewrites that file in place, so it must run as root
#   (`user: "0:0"`). DMS's config folder is root-owned too unless you chown it to 10001.
USER 10001:10001
EXPOSE 9000
# Liveness only: an invalid mailserver.yaml fails /readyz, not /healthz (a restart cannot fix it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('DMS_RECONCILER_LISTEN', ':9000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["dms-reconciler"]
CMD ["watch"]

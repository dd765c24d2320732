#!/bin/bash
# Run DMS's OWN change-detector handlers on each config volume under /in, in a throwaway container
# of the DMS image (entrypoint replaced by this script), and leave what they generated in /out.
#
# For each /in/<case>/ (a copy of a config volume): restore the image's pristine /etc/postfix,
# /etc/dovecot and /etc/aliases, empty /var/mail, copy the volume to /tmp/docker-mailserver, then
# call check-for-changes.sh's own `_handle_changes` (its file, minus the polling loop) with
# CHANGED = every monitored file that exists, exactly as the change detector does for a change of
# all of them. Only the reloads are stubbed (no daemons run here). Then copy the generated files,
# their owner and mode, the folders under /var/mail, `postconf -n` and 10-auth.conf to
# /out/<case>/.
# no `set -u`: DMS's own functions read unset variables (e.g. DMS_DIR in _handle_changes)
export LOG_LEVEL=${LOG_LEVEL:-warn}
# shellcheck source=/dev/null
source /usr/local/bin/helpers/index.sh
# shellcheck source=/dev/null
source /usr/local/bin/variables-stack.sh
_early_variables_setup >/dev/null 2>&1    # /etc/dms-settings, as DMS's start-up writes it
cp /etc/dms-settings /out/dms-settings
: >/tmp/docker-mailserver-config-chksum
sed -e '/^while true; do/,$d' /usr/local/bin/check-for-changes.sh >/tmp/check-for-changes-functions.sh
mkdir -p /tmp/docker-mailserver
TRACKED=(/etc/dovecot/userdb /etc/dovecot/masterdb /etc/postfix/vmailbox /etc/postfix/vhost
         /etc/postfix/virtual /etc/postfix/regexp /etc/aliases /etc/postfix/relayhost_map
         /etc/postfix/sasl_passwd)
tar -C / -cf /tmp/pristine.tar etc/postfix etc/dovecot etc/aliases 2>/dev/null
postconf -n >/out/postconf.pristine
mkdir -p /out/pristine
for FILE in "${TRACKED[@]}"; do [[ -e ${FILE} ]] && cp "${FILE}" "/out/pristine/${FILE//\//_}"; done
cp /etc/dovecot/conf.d/10-auth.conf /out/pristine/10-auth.conf

for CASE_DIR in /in/*/; do
  CASE=$(basename "${CASE_DIR}")
  OUT=/out/${CASE}
  mkdir -p "${OUT}/files"
  rm -rf /etc/postfix /etc/dovecot /etc/aliases /var/mail/* /tmp/docker-mailserver/*
  tar -C / -xf /tmp/pristine.tar
  cp -a "${CASE_DIR}." /tmp/docker-mailserver/
  (
    # shellcheck source=/dev/null
    source /tmp/check-for-changes-functions.sh >/dev/null 2>&1
    function _reload_postfix() { :; }
    function dovecot() { :; }
    function amavisd() { :; }
    # DMS's panic (`_shutdown`) SIGTERMs PID 1 (this script): note it and end this case only
    function _shutdown() { echo panic >"${OUT}/panic"; exit 1; }
    CHANGED=$(_monitored_files_checksums | sed -r 's/^\S+[[:space:]]+//')
    started=$(date +%s%N)
    _handle_changes >"${OUT}/dms.log" 2>&1
    echo $(( $(date +%s%N) - started )) >"${OUT}/nanoseconds"
  )
  for FILE in "${TRACKED[@]}"; do
    if [[ -e ${FILE} ]]; then
      cp "${FILE}" "${OUT}/files/${FILE//\//_}"
      stat -c '%U:%G %a %n' "${FILE}" >>"${OUT}/stat.txt"
    fi
  done
  (cd /var/mail && find . -mindepth 1 -printf '%u:%g %y %p\n' | sort) >"${OUT}/mail.txt"
  postconf -n >"${OUT}/postconf.txt"
  cp /etc/dovecot/conf.d/10-auth.conf "${OUT}/10-auth.conf"
done
echo done >/out/finished

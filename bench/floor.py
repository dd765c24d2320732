"""The floor: the least any tool must do to plan, with nothing but PyYAML's libyaml loader.

Loads mailserver.yaml with `yaml.load(..., Loader=yaml.CSafeLoader)` and reads every managed file
of the volume, splitting it into lines and each line into its fields. No checks, no diff, no
output. The benchmark reports every command's time as a multiple of this one.

    python -m bench.floor mailserver.yaml CONFIG_DIR CRON_FILE
"""

import os
import sys

import yaml

# (file, field separator) for the files a plan reads; None splits on whitespace.
FILES = (
    ("postfix-accounts.cf", "|"),
    ("postfix-virtual.cf", None),
    ("postfix-aliases.cf", ":"),
    ("dovecot-quotas.cf", ":"),
    ("amavis.cf", None),
    ("dms-reconciler.state.json", None),
)


def main() -> None:
    desired, config_dir, cron_file = sys.argv[1:4]
    with open(desired, "rb") as handle:
        document = yaml.load(handle, Loader=yaml.CSafeLoader)
    fields = 0
    paths = [(os.path.join(config_dir, name), sep) for name, sep in FILES] + [(cron_file, None)]
    for path, sep in paths:
        try:
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8")
        except FileNotFoundError:
            continue
        for line in text.split("\n"):
            fields += len(line.split(sep))
    print(len(document), fields)


if __name__ == "__main__":
    main()

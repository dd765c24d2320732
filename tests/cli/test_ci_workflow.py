"""examples/ci/github-actions.yml: valid, calls only real commands and options, and works.

The validate and plan steps' shell scripts are run as GitHub would run them (bash -eo pipefail)
in a real git repository with an `origin/main` to plan against; the comment step's JavaScript runs
in Node.js against a stand-in of the GitHub API, to prove it keeps ONE comment per pull request.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from reconciler.cli.main import cli
from tests.cli.test_ci_plan import BASE, HEAD
from tests.support.ci_util import Repo, git, load_plan_schema, make_repo
from tests.support.util import PYTHONPATH, REPO

WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
MARKER = "<!-- dms-reconciler-plan -->"


def load() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())  # type: ignore[no-any-return]


def steps() -> list[dict[str, Any]]:
    return load()["jobs"]["plan"]["steps"]  # type: ignore[no-any-return]


def step(step_id: str) -> dict[str, Any]:
    return next(s for s in steps() if s.get("id") == step_id)


def uses(action: str) -> dict[str, Any]:
    return next(s for s in steps() if str(s.get("uses", "")).startswith(action + "@"))


def invocations(script: str) -> list[list[str]]:
    """Every `dms-reconciler ...` command line in a shell script, as argv lists (redirections
    and what follows a pipe or `&&` left out)."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] != "dms-reconciler":
            continue
        argv: list[str] = []
        skip = False
        for word in words[1:]:
            if word in ("|", "||", "&&", ";"):
                break
            if skip:
                skip = False
            elif re.fullmatch(r"\d?>>?|<", word):
                skip = True  # the redirection's target follows
            elif not re.match(r"\d?>>?&?\d*", word):
                argv.append(word)
        out.append(argv)
    return out


# --- static checks ---------------------------------------------------------------------------

def test_workflow_is_valid_yaml_for_pull_requests() -> None:
    workflow = load()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    checkout = uses("actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0
    assert uses("actions/github-script")
    for s in steps():
        assert ("run" in s) != ("uses" in s), s


def test_no_expression_is_pasted_into_a_shell_script() -> None:
    """`${{ ... }}` in `run:` is a script-injection hole; values go through `env:`."""
    for s in steps():
        assert "${{" not in s.get("run", ""), s.get("name")
    assert step("plan")["env"]["BASE_REF"] == "${{ github.base_ref }}"


def test_the_install_step_installs_from_the_repository(tmp_path: Path) -> None:
    """The workflow installs dms-reconciler from its repository at DMS_RECONCILER_REV (it is not
    on a package index): the step's script, run with this checkout as the repository and its
    HEAD as the rev, in a fresh virtualenv, gives a working `dms-reconciler`."""
    workflow_env = load()["env"]
    assert workflow_env["DMS_RECONCILER_REPO"] == "https://github.com/dms-reconciler/dms-reconciler"
    assert "DMS_RECONCILER_VERSION" not in workflow_env
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    script = tmp_path / "install.sh"
    script.write_text(step("install")["run"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMS_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", DMS_RECONCILER_REPO=f"file://{REPO}",
               DMS_RECONCILER_REV=git(REPO, "rev-parse", "HEAD"))
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    version = subprocess.run([str(venv / "bin" / "dms-reconciler"), "--version"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and "dms-reconciler" in version.stdout, version.stderr


def test_every_dms_reconciler_call_uses_real_commands_and_options() -> None:
    calls = [argv for s in steps() for argv in invocations(s.get("run", ""))]
    assert [argv[0] for argv in calls] == ["validate", "plan", "plan"]
    for argv in calls:
        command = cli.commands[argv[0]]
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)
                 if isinstance(p, click.Option)}
        for word in argv[1:]:
            if word.startswith("-"):
                assert word.split("=")[0] in known, f"{argv[0]} has no option {word}"
        # click itself accepts the whole command line
        with command.make_context(argv[0], [w.replace("${BASE_REF}", "main") for w in argv[1:]],
                                  resilient_parsing=False) as ctx:
            assert ctx.command is command
    plan_calls = [a for a in calls if a[0] == "plan"]
    for argv in plan_calls:
        assert argv[argv.index("--against-ref") + 1] == "origin/${BASE_REF}"
    assert {a[a.index("--format") + 1] for a in plan_calls} == {"markdown", "json"}
    assert "--detailed-exitcode" in plan_calls[0]


# --- running the steps ---------------------------------------------------------------------

EXPRESSIONS = {"github.base_ref": "main", "github.repository": "acme/mail",
               "github.event.pull_request.head.repo.full_name": "acme/mail"}


def expand(value: str, outcomes: dict[str, str]) -> str:
    """`${{ ... }}` in env values, with the few expressions the workflow uses."""
    return re.sub(r"\$\{\{(.+?)\}\}", lambda m: _value(m.group(1).strip(), outcomes), str(value))


def _value(expression: str, outcomes: dict[str, str]) -> str:
    if expression.startswith("steps.") and expression.endswith(".outcome"):
        return outcomes.get(expression.split(".")[1], "skipped")
    return EXPRESSIONS[expression]


def runs(step_id: str, outcomes: dict[str, str]) -> bool:
    """Evaluate a step's `if:` (the subset of GitHub's expression syntax the workflow uses)."""
    condition = step(step_id).get("if")
    if condition is None:
        return all(o == "success" for o in outcomes.values())  # GitHub's implicit success()
    python = re.sub(r"[a-z_]+(\.[a-z_]+)+",
                    lambda m: repr(_value(m.group(0), outcomes)), condition)
    python = python.replace("always()", "True").replace("||", " or ").replace("&&", " and ")
    return bool(eval(python, {"__builtins__": {}}))  # our own file, a tiny subset


class Runner:
    """Runs workflow steps' shell scripts the way a GitHub runner does."""

    def __init__(self, workspace: Path, tmp: Path) -> None:
        self.workspace = workspace
        self.outcomes: dict[str, str] = {}
        self.bin = tmp / "bin"
        self.bin.mkdir(exist_ok=True)
        shim = self.bin / "dms-reconciler"
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m reconciler \"$@\"\n")
        shim.chmod(0o755)
        self.output = tmp / "github_output"
        self.summary = tmp / "step_summary"
        for f in (self.output, self.summary):
            f.write_text("")

    def env(self, s: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
        env.update(PATH=f"{self.bin}:{env['PATH']}", PYTHONPATH=PYTHONPATH, NO_COLOR="1",
                   GITHUB_OUTPUT=str(self.output), GITHUB_STEP_SUMMARY=str(self.summary))
        for scope in (load().get("env", {}), s.get("env", {})):
            env.update({k: expand(v, self.outcomes) for k, v in scope.items()})
        return env

    def run(self, step_id: str) -> subprocess.CompletedProcess[str]:
        s = step(step_id)
        script = self.workspace.parent / f"{step_id}.sh"
        script.write_text(s["run"])
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=self.workspace, env=self.env(s), capture_output=True, text=True,
                              timeout=120, check=False)
        self.outcomes[step_id] = "success" if done.returncode == 0 else "failure"
        return done


def pull_request(tmp: Path, head: str = HEAD) -> Repo:
    """A checkout like actions/checkout's: the PR's change on top of origin/main."""
    repo = make_repo(tmp / "workspace")
    repo.commit(BASE, "base")
    git(repo.root, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(repo.root, "checkout", "-q", "-b", "pr")
    repo.commit(head, "the pull request")
    return repo


def test_validate_and_plan_steps_run_and_produce_the_comment_and_json(tmp_path: Path) -> None:
    repo = pull_request(tmp_path)
    runner = Runner(repo.root, tmp_path)
    validate = runner.run("validate")
    assert validate.returncode == 0, validate.stderr
    assert "mailserver.yaml is valid" in (repo.root / "validate.txt").read_text()
    assert runs("plan", runner.outcomes)
    plan = runner.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    markdown = (repo.root / "plan.md").read_text()
    assert markdown.startswith("### dms-reconciler plan\n\n**Plan: 3 to add, 7 to change, "
                               "4 to destroy.**")
    assert "changes=true" in runner.output.read_text()
    assert markdown in runner.summary.read_text()
    data = json.loads((repo.root / "plan.json").read_text())
    jsonschema.validate(data, load_plan_schema())
    assert data["baseline"]["ref"] == "origin/main"
    assert runs("comment", runner.outcomes)
    assert not runs("fail", runner.outcomes)


def test_no_change_pull_request_reports_no_changes(tmp_path: Path) -> None:
    repo = pull_request(tmp_path, head=BASE + "# only a comment changed\n")
    runner = Runner(repo.root, tmp_path)
    assert runner.run("validate").returncode == 0
    plan = runner.run("plan")
    assert plan.returncode == 0, plan.stderr
    assert "changes=false" in runner.output.read_text()
    assert "**No changes. The config volume matches mailserver.yaml.**" in \
        (repo.root / "plan.md").read_text()


def test_an_invalid_file_fails_the_job(tmp_path: Path) -> None:
    repo = pull_request(tmp_path, head=HEAD.replace("quota: 10G", "quota: huge"))
    runner = Runner(repo.root, tmp_path)
    validate = runner.run("validate")
    assert validate.returncode == 1
    assert "mailserver.yaml:4:" in (repo.root / "validate.txt").read_text()
    assert not runs("plan", runner.outcomes)
    assert runs("comment", runner.outcomes) and runs("fail", runner.outcomes)
    fail = runner.run("fail")
    assert fail.returncode == 1
    assert "::error file=mailserver.yaml::" in fail.stdout


def test_a_missing_base_branch_fails_the_plan_step(tmp_path: Path) -> None:
    repo = pull_request(tmp_path)
    git(repo.root, "update-ref", "-d", "refs/remotes/origin/main")
    runner = Runner(repo.root, tmp_path)
    runner.run("validate")
    plan = runner.run("plan")
    assert plan.returncode == 1
    assert "--against-ref origin/main: no such commit" in (repo.root / "plan.err").read_text()
    assert runs("fail", runner.outcomes)


# --- the comment step, in Node.js ------------------------------------------------------------

HARNESS = r"""
const fs = require('fs');
const [scriptFile, stateFile] = process.argv.slice(2);
const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
const bot = { login: 'github-actions[bot]', type: 'Bot' };
const github = {
  rest: { issues: {
    listComments: async (p) => ({
      data: state.comments.filter((c) => c.issue_number === p.issue_number),
    }),
    createComment: async (p) => {
      const c = { id: state.nextId++, issue_number: p.issue_number, body: p.body, user: bot };
      state.comments.push(c);
      return { data: c };
    },
    updateComment: async (p) => {
      const c = state.comments.find((x) => x.id === p.comment_id);
      if (!c || c.user.type !== 'Bot') throw new Error('cannot update comment ' + p.comment_id);
      c.body = p.body;
      state.updates++;
      return { data: c };
    },
  } },
  paginate: async (fn, params) => (await fn(params)).data,
};
const context = { repo: { owner: 'acme', repo: 'mail' }, payload: { pull_request: { number: 7 } },
                  serverUrl: 'https://github.com', runId: 42 };
const core = { setFailed: (m) => { throw new Error(m); }, info: () => {} };
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction('require', 'github', 'context', 'core', fs.readFileSync(scriptFile, 'utf8'))(
  require, github, context, core,
).then(() => fs.writeFileSync(stateFile, JSON.stringify(state)))
  .catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    assert found, "Node.js runs the workflow's github-script step (apt-get install nodejs)"
    return found


def run_comment_step(node: str, runner: Runner, state_file: Path) -> None:
    s = uses("actions/github-script")
    assert runs("comment", runner.outcomes)  # always() && same repository: runs for our PRs
    script = runner.workspace.parent / "comment.js"
    script.write_text(s["with"]["script"])
    harness = runner.workspace.parent / "harness.js"
    harness.write_text(HARNESS)
    done = subprocess.run([node, str(harness), str(script), str(state_file)],
                          cwd=runner.workspace, env=runner.env(s), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_plan_is_one_comment_updated_on_every_push(tmp_path: Path, node: str) -> None:
    repo = pull_request(tmp_path)
    runner = Runner(repo.root, tmp_path)
    state_file = tmp_path / "comments.json"
    human = {"id": 1, "issue_number": 7, "body": MARKER + " quoted by a person",
             "user": {"login": "jane", "type": "User"}}
    other_pr = {"id": 2, "issue_number": 8, "body": MARKER + " old", "user": {"type": "Bot"}}
    state_file.write_text(json.dumps({"comments": [human, other_pr], "nextId": 10, "updates": 0}))

    runner.run("validate")
    runner.run("plan")
    run_comment_step(node, runner, state_file)
    state = json.loads(state_file.read_text())
    mine = [c for c in state["comments"] if c["issue_number"] == 7 and c["user"]["type"] == "Bot"]
    assert len(mine) == 1 and state["updates"] == 0
    body = mine[0]["body"]
    assert body.startswith(MARKER + "\n### dms-reconciler plan\n")
    assert "(https://github.com/acme/mail/actions/runs/42)" in body
    assert (repo.root / "plan.md").read_text().strip() in body

    # a second push breaks the file: the same comment now shows the errors
    repo.commit(HEAD.replace("quota: 10G", "quota: huge"), "oops")
    runner.outcomes.clear()
    runner.run("validate")
    run_comment_step(node, runner, state_file)
    state = json.loads(state_file.read_text())
    mine = [c for c in state["comments"] if c["issue_number"] == 7 and c["user"]["type"] == "Bot"]
    assert len(mine) == 1 and state["updates"] == 1
    assert "**`mailserver.yaml` is invalid.** Fix these errors:" in mine[0]["body"]
    assert "mailserver.yaml:4:" in mine[0]["body"]
    assert state["comments"][0] == human and state["comments"][1] == other_pr  # untouched


def test_the_ci_docs_use_real_commands_and_options() -> None:
    """docs/ci.md's recipes call only commands and options that exist."""
    doc = (REPO / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", doc, flags=re.DOTALL)
    calls = [argv for block in blocks for argv in invocations(block)]
    assert len(calls) >= 4
    for argv in calls:
        command = cli.commands[argv[0]]
        with command.make_context(argv[0], argv[1:], resilient_parsing=False):
            pass
    for option in ("--against-ref", "--against-dir", "--offline", "--no-offline",
                   "--detailed-exitcode", "--cron-file"):
        assert option in doc
        assert any(option in (*p.opts, *p.secondary_opts) for p in cli.commands["plan"].params)

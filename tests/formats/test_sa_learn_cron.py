"""The sa-learn cron file: lines as the DMS FAQ writes them; the canonical file round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.formats import cron
from reconciler.formats.cron import CronLine, SaLearnLine
from tests.formats._corpus import comments, corpus_files, domains, read

DIR = "sa-learn"
DB = "--dbpath /var/mail-state/lib-amavis/.spamassassin > /dev/null"
FAQ_SPAM = f"0 2 * * * root sa-learn --spam /var/mail/example.com/alice/.Junk {DB}"
FAQ_HAM = f"0 3 * * * root sa-learn --ham /var/mail/example.com/alice/.Archive* {DB}"

EXPECTED = {
    "dms-faq.cf": ([FAQ_SPAM, FAQ_HAM], ("# From the DMS FAQ",)),
    # cron keeps a CR as part of the command: such a line is not the clean line (its key shows \\r)
    "crlf-no-final-newline.cf": ([FAQ_SPAM + "\\r", FAQ_HAM], ("# From the DMS FAQ",)),
    "canonical.cf": ([  # what dms-reconciler writes
        cron.job_line("0 2 * * *", "spam", "example.com", "alice", ".Junk"),
        cron.job_line("30 3 * * *", "ham", "example.org", "*", "cur"),
        cron.job_line("@daily", "spam", "*", "*", ".Junk"),
    ], ()),
    "canonical-emptied.cf": ([], ()),
}


def test_every_corpus_file_has_an_expectation():
    assert sorted(EXPECTED) == corpus_files(DIR)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_parses_to_whitespace_normalised_lines(name):
    lines, comments_ = EXPECTED[name]
    parsed = cron.parse(read(DIR, name))
    assert list(parsed.entries) == lines
    assert parsed.comments == comments_
    assert parsed.invalid == ()
    assert [p.message.split(":")[0] for p in parsed.problems] == (
        ["CRLF line ending"] if name.startswith("crlf") else [])


def test_lines_we_write_read_back_as_jobs_and_others_do_not():
    # the FAQ's form (what dms-reconciler wrote before): the same jobs, marked to be rewritten
    assert cron.read_job_line(FAQ_SPAM) == SaLearnLine("0 2 * * *", "spam", "example.com", "alice",
                                                       ".Junk", old_form=True)
    assert cron.read_job_line(f"30 3 * * *  root sa-learn --ham /var/mail/example.org/*/cur {DB}") \
        == SaLearnLine("30 3 * * *", "ham", "example.org", "*", "cur", old_form=True)
    new = cron.job_line("0 2 * * *", "spam", "example.com", "alice", ".Junk")
    assert cron.read_job_line(new) == SaLearnLine("0 2 * * *", "spam", "example.com", "alice",
                                                  ".Junk")
    # a guard for another folder than the one learnt is not ours
    assert cron.read_job_line(new.replace("ls -d /var/mail/example.com/alice/.Junk",
                                          "ls -d /var/mail/example.com/bob/.Junk")) is None
    assert cron.read_job_line("0 2 * * * root /usr/local/bin/other-job") is None
    assert cron.read_job_line(FAQ_SPAM.replace(" root ", " amavis ")) is None


def test_rendered_file_is_what_debian_cron_accepts():
    text = cron.render([CronLine(FAQ_SPAM)])
    assert text.endswith("\n") and "\r" not in text  # cron ignores a last line without newline
    assert all(len(line) < 1000 for line in text.splitlines())


schedules = st.sampled_from(["0 2 * * *", "30 3 * * 1-5", "@daily", "*/15 * * * *"])
jobs = st.builds(
    cron.job_line, schedules, st.sampled_from(["spam", "ham"]),
    st.one_of(st.just("*"), domains),
    st.one_of(st.just("*"),
              st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=10)),
    st.sampled_from([".Junk", "cur", ".Archive*", ".INBOX.spam"]),
)


@given(st.lists(jobs, max_size=8, unique=True), st.lists(comments, max_size=2))
def test_parse_of_render_gives_back_the_lines_and_jobs(lines, comment_lines):
    text = cron.render([CronLine(line) for line in lines], comments=comment_lines)
    parsed = cron.parse(text)
    assert list(parsed.entries) == lines
    assert parsed.comments == tuple(comment_lines)
    for line in lines:
        job = cron.read_job_line(line)
        assert job is not None
        assert cron.job_line(job.schedule, job.learn, job.domain, job.user, job.folder) == line

"""Focused tests of jobmanager.journal.RemoteJournal's reading of what a
target's journal sends: a real target sends only journal answers (the
integration tests follow jobs through real journals), but a target may
send anything.  The answers are handed to it by hand."""

import errno
import json

import pytest
from unit import needs_flux

pytestmark = needs_flux


class Answer:
    """A journal answer as RemoteJournal.on_answer takes it."""

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error
        self.resets = 0

    def get(self):
        if self.error is not None:
            raise self.error
        return self.value

    def reset(self):
        self.resets += 1


class Runtime:
    unloaded = False

    def __init__(self):
        self.counts = {"journal-malformed": 0, "ended-by-journal": 0}
        self.jobs = {}
        self.logged = []

    def log(self, level, text):
        self.logged.append(text)


class Remote:
    uri = "local:///nowhere"

    def __init__(self, runtime):
        self.runtime = runtime


class Follower:
    def __init__(self):
        self.events = []
        self.ended = []

    def on_journal_event(self, remote_id, event, R):
        self.events.append((remote_id, event.name, R))

    def journal_ended(self, remote):
        self.ended.append(remote)


@pytest.fixture(autouse=True)
def current_runtime(monkeypatch):
    """The runtime log() writes to (the broker's log, in the broker)."""
    from flux_delegate.jobmanager import current

    runtime = Runtime()
    monkeypatch.setattr(current, "runtime", runtime)
    return runtime


def journal_with_follower(remote_id=7):
    from flux_delegate.jobmanager import current
    from flux_delegate.jobmanager.journal import END_OF_BACKLOG, RemoteJournal

    journal = RemoteJournal(Remote(current.runtime))
    journal.on_answer(Answer({"id": END_OF_BACKLOG[0], "events": []}))
    follower = Follower()
    journal.followers[remote_id] = follower
    return journal, follower


def event(name, **context):
    return {"name": name, "timestamp": 1.5, "context": context}


def test_what_is_no_journal_answer_or_event_is_counted_and_let_go():
    journal, follower = journal_with_follower()
    for answer in (
        "%n%s text",
        ["a", "list"],
        {"id": 7},  # no events
        {"id": 7, "events": "finish"},
        {"id": 7, "events": [None, 5, {"name": 3}, {"name": "finish", "context": "x"}]},
    ):
        journal.on_answer(Answer(answer))
    assert journal.runtime.counts["journal-malformed"] == 8
    assert follower.events == [] and journal.state() == "reading"
    # The first one logged, the target's text quoted as data.
    (line,) = journal.runtime.logged
    assert "an answer that is not a journal's: '%n%s text'" in line
    # The next good entries are taken, in order, those of an answer with a
    # bad one among them too.
    journal.on_answer(Answer({"id": 7, "events": [event("start"), "junk", event("finish")]}))
    assert [name for _, name, _ in follower.events] == ["start", "finish"]
    assert journal.runtime.counts["journal-malformed"] == 9
    journal.on_answer(Answer({"id": 7, "events": [event("clean")]}))
    assert follower.events[-1][1] == "clean" and 7 not in journal.followers


def test_an_ended_journal_says_why_and_hands_its_jobs_to_their_watches():
    journal, follower = journal_with_follower()
    journal.on_answer(Answer(error=OSError(errno.ENOSYS, "gone %n%s")))
    assert journal.state() == "ended: gone %n%s"
    assert "journal of local:///nowhere ended (gone %n%s)" in journal.runtime.logged[-1]
    assert follower.ended == [journal.remote] and journal.followers == {}
    # Nothing more is read from it.
    journal.on_answer(Answer({"id": 7, "events": [event("clean")]}))
    assert follower.events == []


def test_an_answer_that_is_not_json_is_taken_and_the_next_ones_read():
    # The bindings' get() raises on a payload that is not JSON (or not
    # UTF-8) and leaves it unread: left so, it would stop every answer
    # after it, for every job followed there.
    journal, follower = journal_with_follower()
    for error in (
        json.JSONDecodeError("Expecting value", "not json %n", 0),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ):
        bad = Answer(error=error)
        journal.on_answer(bad)
        assert bad.resets == 1
    assert journal.runtime.counts["journal-malformed"] == 2 and journal.state() == "reading"
    assert "an answer that is not JSON" in journal.runtime.logged[0]
    journal.on_answer(Answer({"id": 7, "events": [event("finish"), event("clean")]}))
    assert [name for _, name, _ in follower.events] == ["finish", "clean"]

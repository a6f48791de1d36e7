"""Focused tests of jobmanager.retry.Retrying, the one "connect, act, retry
until a deadline" loop of the remote cancel, the search after an
interrupted submit and the reconnect of a followed job.  The job-manager's
reactor is replaced by a clock and timers the test advances by hand."""

import pytest
from unit import needs_flux

pytestmark = needs_flux


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.timers = []

    def monotonic(self):
        return self.now

    def advance(self, seconds):
        """Move time on, firing the timers that come due, in order."""
        self.now += seconds
        while True:
            due = [t for t in self.timers if t.at <= self.now and not t.canceled]
            if not due:
                return
            timer = min(due, key=lambda t: t.at)
            self.timers.remove(timer)
            timer.callback()


class Connections:
    """Answers every connect with what the test put in 'answers'."""

    def __init__(self):
        self.answers = []
        self.asked = 0

    def get(self, uri, on_open, on_error, job=None):
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, str):
            on_error(answer)
        else:
            on_open(answer)


class Runtime:
    unloaded = False
    reconnect_interval = 2.0
    reconnect_timeout = 10.0

    def __init__(self):
        self.connections = Connections()


@pytest.fixture
def clock(monkeypatch):
    from flux_delegate.jobmanager import retry

    clock = Clock()

    class FakeTimer:
        def __init__(self, seconds, callback, owner=None):
            self.at = clock.now + seconds
            self.callback = callback
            self.canceled = False
            clock.timers.append(self)

        def cancel(self):
            self.canceled = True

    monkeypatch.setattr(retry, "Timer", FakeTimer)
    monkeypatch.setattr(retry, "guard", lambda callback, job=None, owner=None: callback)
    monkeypatch.setattr(retry.time, "monotonic", clock.monotonic)
    return clock


def make(clock, deadline=None, answers=()):
    from flux_delegate.jobmanager.retry import Retrying

    runtime = Runtime()
    runtime.connections.answers = list(answers)
    acted, gave_up = [], []
    retrying = Retrying(runtime, "local:///t", acted.append, gave_up.append, deadline=deadline)
    return retrying, runtime, acted, gave_up


def test_connect_errors_are_retried_every_interval_until_the_deadline(clock):
    retrying, runtime, acted, gave_up = make(
        clock, deadline=clock.now + 5.0, answers=["refused"] * 10
    )
    retrying.start()
    assert runtime.connections.asked == 1 and retrying.waiting
    clock.advance(2.0)
    clock.advance(2.0)
    assert runtime.connections.asked == 3 and gave_up == []
    clock.advance(2.0)  # the fourth connect fails after the deadline
    assert gave_up == ["refused"] and retrying.connect_failed
    assert not retrying.waiting and acted == []


def test_act_runs_on_the_connection_and_failures_retry_it(clock):
    remote = object()
    retrying, runtime, acted, gave_up = make(
        clock, deadline=clock.now + 30.0, answers=[remote, remote]
    )
    retrying.start()
    assert acted == [remote]
    assert retrying.failed("lost") is True and not retrying.connect_failed
    assert retrying.failed("lost again") is True  # one retry at a time
    clock.advance(2.0)
    assert acted == [remote, remote] and runtime.connections.asked == 2


def test_a_per_loss_deadline_starts_again_after_contact(clock):
    remote = object()
    retrying, runtime, acted, gave_up = make(clock, answers=[remote] * 20)
    retrying.start()
    retrying.contact()  # heard from the target
    clock.advance(100.0)  # a long quiet time costs nothing
    assert retrying.failed("lost") is True  # deadline: now + 10
    clock.advance(9.0)
    retrying.contact()
    clock.advance(5.0)
    assert retrying.failed("lost") is True  # counted from this loss
    clock.advance(9.0)
    assert retrying.failed("lost") is True
    clock.advance(1.5)
    assert retrying.failed("still lost") is False
    assert gave_up == ["still lost"]


def test_unwanted_work_is_neither_connected_nor_acted_on(clock):
    remote = object()
    wanted = [True]
    from flux_delegate.jobmanager.retry import Retrying

    runtime = Runtime()
    runtime.connections.answers = [remote, remote]
    acted = []
    retrying = Retrying(
        runtime, "local:///t", acted.append, lambda reason: None,
        deadline=clock.now + 30, wanted=lambda: wanted[0],
    )
    retrying.start(delay=1.0)
    wanted[0] = False
    clock.advance(1.0)
    assert runtime.connections.asked == 0 and acted == []

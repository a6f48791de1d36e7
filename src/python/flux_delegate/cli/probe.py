"""Asking targets questions from a command ('flux remote list', 'check'):
every target at once, each on a thread of its own with its own handle, so
that a slow or hung target (an ssh login that never completes, a socket
that accepts and never answers) costs only its own timeout.

This is for commands, where blocking is allowed: the job-manager's plugin
asks the same questions with futures on its reactor (jobmanager/), which
a command must not import.
"""

import errno
import threading
import time

import flux

#: Errors that mean the connection broke, not that the target answered.
BROKEN = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN, errno.EHOSTUNREACH)


class Probe:
    """What one target answered.

    connected: a handle was opened in time; error: why not (text).
    answers: {question: payload}; errors: {question: OSError};
    outstanding: questions still unanswered when its time was up;
    asked: how many questions were sent.
    """

    def __init__(self, uri, questions):
        self.uri = uri
        self.questions = questions
        self.connected = False
        self.error = None
        self.answers = {}
        self.errors = {}
        self.unsent = {}
        self.outstanding = set()
        self.asked = 0
        self.started = None
        self.connected_at = None
        self.done = False
        self.given_up = False

    def answer(self, name):
        """(payload, OSError or None), or None if unanswered."""
        if name in self.answers:
            return self.answers[name], None
        if name in self.errors:
            return None, self.errors[name]
        return None

    def __repr__(self):
        state = "connected" if self.connected else f"unreachable: {self.error}"
        return f"Probe({self.uri!r}, {state})"


def connect(uri):
    """A handle on uri (flux.Flux(uri), which waits for the handshake)."""
    return flux.Flux(uri)


def run_probe(probe, timeout, lock, changed, open_handle=connect):
    """On a helper thread: connect, send every question at once, and wait
    at most timeout seconds for the answers."""
    handle = None
    try:
        try:
            handle = open_handle(probe.uri)
        except Exception as exc:  # pylint: disable=broad-except
            with lock:
                if not probe.given_up:
                    probe.error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return
        with lock:
            if probe.given_up:
                return
            probe.connected = True
            probe.connected_at = time.monotonic()
        futures, answers, errors, unsent, outstanding = {}, {}, {}, {}, set()
        for name, send in probe.questions.items():
            try:
                futures[name] = send(handle)
            except OSError as exc:
                unsent[name] = exc
        deadline = time.monotonic() + timeout
        for name, future in futures.items():
            try:
                future.wait_for(max(0.0, deadline - time.monotonic()))
                answers[name] = future.get()
            except OSError as exc:
                if exc.errno == errno.ETIMEDOUT and not future.is_ready():
                    outstanding.add(name)
                elif exc.errno in BROKEN:
                    unsent[name] = exc  # the connection broke: no answer
                else:
                    errors[name] = exc
        with lock:
            if not probe.given_up:
                probe.answers, probe.errors, probe.unsent = answers, errors, unsent
                probe.outstanding = outstanding
                probe.asked = len(futures) + len(unsent)
    except Exception as exc:  # pylint: disable=broad-except
        with lock:
            if not probe.given_up:
                probe.error = probe.error or f"{type(exc).__name__}: {exc}"
    finally:
        with lock:
            probe.done = True
            changed.notify_all()
        del handle


def ask(targets, timeout, open_handle=connect):
    """Ask every target its questions concurrently: targets is a list of
    (uri, {name: send(handle) -> future}).  Each gets timeout seconds to
    connect and timeout more to answer.  Returns one Probe per target, in
    order; a target that did not connect in time has connected False and
    error saying so."""
    lock = threading.Lock()
    changed = threading.Condition(lock)
    probes = [Probe(uri, questions) for uri, questions in targets]
    for probe in probes:
        probe.started = time.monotonic()
        thread = threading.Thread(
            target=run_probe,
            args=(probe, timeout, lock, changed, open_handle),
            name=f"probe {probe.uri}",
            daemon=True,  # a hung connect must not keep the command alive
        )
        thread.start()
    with lock:
        while True:
            now = time.monotonic()
            waiting = []
            for probe in probes:
                if probe.done or probe.given_up:
                    continue
                if probe.connected:
                    # Its thread gives up on answers by itself.
                    waiting.append(probe.connected_at + timeout + 1.0)
                elif now >= probe.started + timeout:
                    probe.given_up = True
                    probe.error = f"could not connect within {timeout:g}s"
                else:
                    waiting.append(probe.started + timeout)
            if not waiting:
                break
            changed.wait(max(0.01, min(waiting) - now))
        for probe in probes:
            if probe.connected and not probe.done:
                probe.given_up = True
                probe.asked = len(probe.questions)
                probe.outstanding = set(probe.questions)
    return probes

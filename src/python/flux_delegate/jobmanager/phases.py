"""The phases of a delegated job (see flux_delegate.jobmanager.job): their
names, and the base of the unit that does each one (Phase)."""

WAITING = "waiting"  # held; waiting for other dependencies
SUBMITTING = "submitting"  # resolving, connecting, submitting remotely
RECOVERING = "recovering"  # looking for the job a lost submit may have made
FOLLOWING = "following"  # the remote job exists and is followed
RELEASING = "releasing"  # remote finished; local job run through to its end
ENDED = "ended"  # nothing left to do


class Phase:
    """One phase of a job's life (waiting.py, choosing.py, ...): what it
    does, acting on the job's state, which job.py holds."""

    __slots__ = ("job",)

    def __init__(self, job):
        self.job = job

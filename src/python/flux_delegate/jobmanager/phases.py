"""The phases of a delegated job (see flux_delegate.jobmanager.job)."""

WAITING = "waiting"  # held; waiting for other dependencies
SUBMITTING = "submitting"  # resolving, connecting, submitting remotely
RECOVERING = "recovering"  # looking for the job a lost submit may have made
FOLLOWING = "following"  # the remote job exists and is followed
RELEASING = "releasing"  # remote finished; local job run through to its end
ENDED = "ended"  # nothing left to do

"""Admission: how many jobs may be on their way from the look at their
eventlog to their remote job at once, so that a burst does not starve the
job-manager.
"""

import collections

from .phases import WAITING
from .reactor import guard

#: Jobs being delegated at once (from job.new, or the look at their
#: eventlog, to the creation of their remote job): more wait their turn.
ADMISSION_WINDOW = 32


class Admission:
    """At most ADMISSION_WINDOW jobs being delegated at once.

    Each delegation asks the job-manager, the KVS and the target a few
    questions; a burst of a thousand jobs asking all at once fills every
    queue on the way, and a plain local job submitted meanwhile waits
    behind all of it.  A window a few dozen jobs wide keeps the target
    busy and the job-manager answering.
    """

    def __init__(self, limit=ADMISSION_WINDOW):
        self.limit = limit
        self.active = set()  # ids of jobs being delegated
        self.waiting = collections.OrderedDict()  # id -> job, in order

    def admit(self, job):
        """Whether job may go ahead now; if not, it is called back
        (Waiting.check_ready()) when its turn comes."""
        if job.id in self.active:
            return True
        if len(self.active) < self.limit and not self.waiting:
            self.active.add(job.id)
            return True
        self.waiting[job.id] = job
        return False

    def leave(self, job):
        """job is no longer being delegated (its remote job exists, it
        ended, or it waits for other dependencies): let the next in."""
        self.waiting.pop(job.id, None)
        if job.id not in self.active:
            return
        self.active.discard(job.id)
        while self.waiting and len(self.active) < self.limit:
            _, following = self.waiting.popitem(last=False)
            self.active.add(following.id)
            guard(following.waiting.check_ready, following)()
            if following.phase == WAITING and not following.checking:
                self.active.discard(following.id)  # nothing to do now (held)

"""The layer of flux_delegate that runs inside the job-manager.

Only this subpackage imports delegate.so's module (delegate_jobtap), and
everything here runs on the job-manager's own thread and reactor: nothing
may block.  Where a jobtap callback becomes Python: entry.py.  A delegated
job's state: job.py; each phase of its life is a unit of its own
(waiting.py, choosing.py, submitting.py, failover.py, following.py,
releasing.py, resuming.py).  Where the choice is made: choosing.py and
..policies.  Remote I/O: remote.py (requests) and connections.py
(connecting, in helper threads).
"""

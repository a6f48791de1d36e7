"""Names with a fixed meaning: the dependency that holds a delegated job,
its exception type, the jobspec attributes that belong to the local
instance only, and the built-in policy names (no registry label may take
one).
"""

#: The dependency that holds a delegated job in the source instance.
DEPENDENCY = "delegated"


#: Job exception type for every delegation failure (the C delegate plugin's).
EXCEPTION_TYPE = "DelegationFailure"


#: Jobspec attributes that belong to the local instance only.
LOCAL_ONLY_ATTRIBUTES = (
    "dependencies",
    "delegate",
    "delegate-origin",
    "delegate-requeue",
    "delegate-release",
    "delegate-remote",
)


#: The system attribute that names, in a remote job, the local job it runs
#: for: {"jobid", "t_submit", "host"}.  With it a submit whose answer was
#: lost (the source stopped or the plugin was reloaded in between) is found
#: again instead of being made twice.
ORIGIN_ATTRIBUTE = "delegate-origin"


#: The system attribute the plugin gives a job it releases (its remote job
#: ended with a wait status): {"wait_status": W}.  A plugin loaded again
#: while a prolog holds the job's run (reload, restart) knows it by this
#: for one of its own to run; no job may be submitted with it.
RELEASE_ATTRIBUTE = "delegate-release"


#: The system attribute that holds, in a local job whose remote job is
#: followed, that job's state ("pending", "running"): its jobspec update
#: is how the plugin keeps the local job's annotation user.delegate
#: current (the job-manager takes a plugin's annotations only in the
#: callback of a state change or of a jobspec update).
REMOTE_STATE_ATTRIBUTE = "delegate-remote"


#: Policies built into this handler (site policies are added by config).
BUILTIN_POLICIES = ("random", "least_pending", "shortest_match", "assign", "earliest_start")


#: Policy for --dependency=delegate with no value, unless configured.
DEFAULT_POLICY = "least_pending"

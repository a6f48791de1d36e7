"""flux-delegate: send Flux jobs to other Flux instances and mirror them.

The modules at this level decide and parse; they import nothing but the
standard library and flux-core's Python bindings, so that commands (and
tests) can use them outside the broker:

    targets    what a user writes after delegate: (URI, job id, label, policy)
    registry   the targets a site and a user have named, merged
    policies   candidates, the built-in orders, site policies
    preflight  what a candidate is asked before a job goes to it
    jobspec    the remote copy of a job, its origin record, the release
    eventlog   what a job's eventlog says about its delegation
    options    the plugin's options and their defaults
    names      names delegation writes into jobs and eventlogs
    text       user and remote text as it appears in messages
    userfile   editing the user's registry file (flux remote add, remove)

flux_delegate.cli is what the 'flux remote' command runs (blocking, on
handles of its own): it uses the modules above, never the jobmanager layer.

flux_delegate.jobmanager is the layer that runs inside the job-manager
(the only importer of delegate.so's own module): nothing here imports it.
"""

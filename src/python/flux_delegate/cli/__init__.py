"""What the 'flux remote' command runs (src/cmd/flux-remote.py): it blocks,
on handles of its own, one thread per target.  Nothing here is imported
by the job-manager's plugin, and nothing here imports
flux_delegate.jobmanager (which only works inside the job-manager).

    site           the instance the command runs against: its registry
                   (broker config and the user's file), policies, the
                   plugin's view
    probe          asking every target questions at once, each with a timeout
    status         what 'flux remote list' and 'show' ask a target and show
    check          the plugin's pre-flight and choice, without submitting
    delegated      what a local job's eventlog says of its delegation
    jobs           the delegated jobs and their remote jobs ('flux remote jobs')
    follow         a delegated job's output and exit code ('flux remote attach')

The subcommands themselves (src/cmd/flux-remote.py parses their arguments
and calls them):

    registry_cmds  'flux remote list', 'show', 'add' and 'remove'
    submit         'flux remote check' and 'submit' (flux submit's options)
    jobs           list_jobs: 'flux remote jobs'
    follow         attach_job: 'flux remote attach'
    formats        the tables' rows and named output formats (-o FORMAT)
    command        what they share: the logger, --timeout's type and
                   defaults, fail() and the registry's warnings
"""

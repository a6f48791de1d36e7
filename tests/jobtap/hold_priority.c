/* hold_priority.c - a jobtap plugin for the tests: every job waits in
 * PRIORITY (as under a priority plugin that takes its time, e.g.
 * flux-accounting's) until 'job-manager.hold-priority.release {"id": ID}'
 * gives it a priority.  Built by the tests themselves (conftest.py).
 */
#include <flux/core.h>
#include <flux/jobtap.h>

static void release_cb (flux_t *h,
                        flux_msg_handler_t *mh,
                        const flux_msg_t *msg,
                        void *arg)
{
    flux_plugin_t *p = arg;
    flux_jobid_t id;

    if (flux_request_unpack (msg, NULL, "{s:I}", "id", &id) < 0
        || flux_jobtap_reprioritize_job (p, id, 16) < 0) {
        if (flux_respond_error (h, msg, errno, NULL) < 0)
            flux_log_error (h, "hold-priority: respond");
        return;
    }
    if (flux_respond (h, msg, NULL) < 0)
        flux_log_error (h, "hold-priority: respond");
}

/* No priority yet: the job stays in PRIORITY. */
static int priority_cb (flux_plugin_t *p,
                        const char *topic,
                        flux_plugin_arg_t *args,
                        void *arg)
{
    return flux_jobtap_priority_unavail (p, args);
}

static const struct flux_plugin_handler tab[] = {
    { "job.state.priority", priority_cb, NULL },
    { "job.priority.get", priority_cb, NULL },
    { 0 },
};

int flux_plugin_init (flux_plugin_t *p)
{
    if (flux_plugin_register (p, "hold-priority", tab) < 0
        || flux_jobtap_service_register (p, "release", release_cb, p) < 0)
        return -1;
    return 0;
}

/* delegate.c - jobtap entry points of flux-delegate.
 *
 * This is where a jobtap event enters.  Each callback below hands the
 * topic and the job-manager's arguments to the Python handler
 * (delegate_handler.py, function 'callback') and applies what it returns;
 * the handler makes every decision.  The shim's own rules are few:
 *
 *  - job.dependency.delegate always reaches the handler: it is how a job
 *    asks for delegation, at submit and, for jobs still waiting, when the
 *    plugin is (re)loaded or the instance restarts.
 *  - job.create reaches it only for jobs that have one of the jobspec
 *    attributes the handler lists in JOB_CREATE_ATTRIBUTES (e.g.
 *    system.delegate): plain jobs never enter Python.  At submit an error
 *    there rejects the job, and so does a handler that failed to load, for
 *    a job with system.delegate: it asked for delegation.
 *  - job.new, job.state.*, job.event.* and job.destroy reach the handler
 *    only for jobs it has taken on (delegate_jobtap.job_attach()), so
 *    other jobs never enter Python.
 *  - A Python exception never escapes: pyerror.c turns it into a rejected
 *    submit, a job exception (of the handler's EXCEPTION_TYPE), or a log
 *    line.
 *  - Each load gets a delegate_jobtap.Jobtap object of its own, passed to
 *    plugin_load(conf, jobtap) and invalidated when the load ends, so that
 *    nothing of an old load acts through a new one.
 *
 * Plugin configuration (flux jobtap load delegate.so KEY=VALUE ...):
 *   handler=PATH     handler file to use instead of the installed one.
 *   pythonpath=DIR   where the flux_delegate package is, instead of the
 *                    installed one ('make check': the source tree's).
 * All of it is passed to the handler's plugin_load(), for its own keys.
 */
#if HAVE_CONFIG_H
#include "config.h"
#endif
#include "delegate.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <jansson.h>

struct delegate {
    flux_plugin_t *p;
    flux_t *h;
    char *handler_path;
    char *python_path;      /* put first on sys.path for the package   */
    bool path_added;        /* ... by this load, to be taken off again */
    PyObject *handler;      /* the handler module, NULL if it failed   */
    PyObject *jobtap;       /* this load's delegate_jobtap.Jobtap       */
    char *load_error;       /* why the handler failed to load, or NULL */
    char **job_topics;      /* the handler's JOB_TOPICS, NULL: all      */
    char **create_attributes; /* its JOB_CREATE_ATTRIBUTES, NULL: none  */
    char *exception_type;   /* its EXCEPTION_TYPE                       */
};

/* The jobspec attributes that ask for delegation whatever the handler:
 * while it failed to load, a job submitted with one is rejected, as one
 * with --dependency=delegate is, rather than run here.
 */
static const char *const builtin_create_attributes[] = {
    "system.delegate",
    NULL,
};

/* The plugin of the load in force: jobtap calls a second plugin's init
 * before it finds the name taken (see flux_plugin_init).
 */
static flux_plugin_t *loaded_plugin = NULL;

/* Whether the handler wants 'topic' for the jobs it took on: its
 * JOB_TOPICS, read at load.  A job sees a score of events (each with its
 * jobspec converted for Python) and the handler needs a few: the others
 * never take the GIL.
 */
static bool wants_job_topic (struct delegate *d, const char *topic)
{
    char **t;

    if (!d->job_topics)
        return true;
    for (t = d->job_topics; *t; t++) {
        if (strcmp (*t, topic) == 0)
            return true;
    }
    return false;
}

static void strings_free (char **strings)
{
    char **t;

    if (strings) {
        for (t = strings; *t; t++)
            free (*t);
        free (strings);
    }
}

/* The handler's attribute 'name', a sequence of str, as a NULL-terminated
 * array in *out (left NULL if the handler has no such attribute).  GIL
 * held.  Returns 0, or -1 with a Python exception set.
 */
static int handler_strings (struct delegate *d, const char *name, char ***out)
{
    PyObject *seq = NULL;
    PyObject *obj;
    char **strings = NULL;
    Py_ssize_t i, n;
    int rc = -1;

    if (!PyObject_HasAttrString (d->handler, name))
        return 0;
    if (!(obj = PyObject_GetAttrString (d->handler, name)))
        goto done;
    /* ("system.delegate") is a str, not a tuple: its letters would do. */
    if (PyUnicode_Check (obj) || PyBytes_Check (obj)) {
        PyErr_Format (PyExc_TypeError,
                      "%s must be a tuple or list of str, not a single str"
                      " (a missing comma?)",
                      name);
        goto done;
    }
    if (!(seq = PySequence_Fast (obj, "must be a sequence of str")))
        goto done;
    n = PySequence_Fast_GET_SIZE (seq);
    if (!(strings = calloc (n + 1, sizeof (char *)))) {
        PyErr_NoMemory ();
        goto done;
    }
    for (i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8 (PySequence_Fast_GET_ITEM (seq, i));
        if (!s)
            goto done;
        /* An empty name, or an empty part of a dotted path, would match
         * every job. */
        if (*s == '\0' || *s == '.' || strstr (s, "..")
            || s[strlen (s) - 1] == '.') {
            PyErr_Format (PyExc_ValueError,
                          "%s: '%s' is not a name or dotted path",
                          name,
                          s);
            goto done;
        }
        if (!(strings[i] = strdup (s))) {
            PyErr_NoMemory ();
            goto done;
        }
    }
    *out = strings;
    strings = NULL;
    rc = 0;
done:
    strings_free (strings);
    Py_XDECREF (seq);
    Py_XDECREF (obj);
    return rc;
}

/* The handler's EXCEPTION_TYPE (a str), or the default.  GIL held.
 * Returns 0, or -1 with a Python exception set.
 */
static int handler_exception_type (struct delegate *d)
{
    const char *type = DELEGATE_DEFAULT_EXCEPTION_TYPE;
    PyObject *obj = NULL;
    int rc = -1;

    if (PyObject_HasAttrString (d->handler, "EXCEPTION_TYPE")
        && (!(obj = PyObject_GetAttrString (d->handler, "EXCEPTION_TYPE"))
            || !(type = PyUnicode_AsUTF8 (obj))))
        goto done;
    free (d->exception_type);
    if (!(d->exception_type = strdup (type))) {
        PyErr_NoMemory ();
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF (obj);
    return rc;
}

/* Does the job in 'args' have one of 'paths' (dotted paths under the
 * jobspec's attributes, e.g. "system.delegate"; NULL-terminated)?
 */
static bool has_attribute (const char *const *paths, flux_plugin_arg_t *args)
{
    json_t *jobspec = NULL;
    const char *const *path;

    if (!paths
        || flux_plugin_arg_unpack (args,
                                   FLUX_PLUGIN_ARG_IN,
                                   "{s:o}",
                                   "jobspec", &jobspec) < 0)
        return false;
    for (path = paths; *path; path++) {
        json_t *o = json_object_get (jobspec, "attributes");
        char *copy = strdup (*path);
        char *saveptr = NULL;
        char *key;

        if (!copy)
            return false;
        for (key = strtok_r (copy, ".", &saveptr);
             key && o;
             key = strtok_r (NULL, ".", &saveptr))
            o = json_object_get (o, key);
        free (copy);
        if (o)
            return true;
    }
    return false;
}

/* Call handler.callback (topic, args, job) and merge the dict it returns,
 * if any, into the callback's OUT arguments (e.g. "R" in job.state.sched).
 * GIL held.  Returns 0, or -1 with a Python exception set.
 */
static int call_handler (struct delegate *d,
                         const char *topic,
                         flux_plugin_arg_t *args,
                         PyObject *job)
{
    char *in = NULL;
    PyObject *pyargs = NULL;
    PyObject *result = NULL;
    char *out = NULL;
    json_t *o = NULL;
    json_error_t error;
    int rc = -1;

    /* Some callbacks (plugin.query) come with no IN arguments at all. */
    if (flux_plugin_arg_get (args, FLUX_PLUGIN_ARG_IN, &in) < 0
        && errno != ENOENT) {
        PyErr_Format (PyExc_OSError,
                      "%s: reading arguments: %s",
                      topic,
                      flux_plugin_arg_strerror (args));
        goto done;
    }
    if (!(pyargs = json_to_python (in ? in : "{}")))
        goto done;
    if (!(result = PyObject_CallMethod (d->handler,
                                        "callback",
                                        "sOO",
                                        topic,
                                        pyargs,
                                        job ? job : Py_None)))
        goto done;
    if (result != Py_None) {
        if (!PyDict_Check (result)) {
            PyErr_Format (PyExc_TypeError,
                          "callback(%s) must return a dict or None",
                          topic);
            goto done;
        }
        if (PyDict_Size (result) > 0) {
            if (!(out = python_to_json (result)))
                goto done;
            if (!(o = json_loads (out, 0, &error))
                || flux_plugin_arg_pack (args,
                                         FLUX_PLUGIN_ARG_OUT,
                                         "O",
                                         o) < 0) {
                PyErr_Format (PyExc_OSError,
                              "%s: setting returned values: %s",
                              topic,
                              o ? flux_plugin_arg_strerror (args)
                                : error.text);
                goto done;
            }
        }
    }
    rc = 0;
done:
    json_decref (o);
    free (out);
    free (in);
    Py_XDECREF (result);
    Py_XDECREF (pyargs);
    return rc;
}

static flux_jobid_t job_id (flux_plugin_arg_t *args)
{
    flux_jobid_t id = FLUX_JOBTAP_CURRENT_JOB;
    (void) flux_plugin_arg_unpack (args, FLUX_PLUGIN_ARG_IN, "{s?I}",
                                   "id", &id);
    return id;
}

/* Enter Python for one callback: call the handler and report any
 * exception as 'site' says (enum pyerror_site, delegate.h).  Returns the callback's rc.
 */
static int dispatch (struct delegate *d,
                     flux_plugin_t *p,
                     const char *topic,
                     flux_plugin_arg_t *args,
                     PyObject *job,
                     enum pyerror_site site)
{
    int rc = 0;

    PYTHON_ENTER
    if (call_handler (d, topic, args, job) < 0)
        rc = pyerror_report_current (p,
                                     args,
                                     site,
                                     job_id (args),
                                     topic,
                                     d->exception_type);
    PYTHON_LEAVE
    return rc;
}

/* Reject a job that asks for delegation while the handler failed to
 * load, with the reason.
 */
static int reject_without_handler (struct delegate *d,
                                   flux_plugin_t *p,
                                   flux_plugin_arg_t *args)
{
    char *message = NULL;
    int rc;

    /* The reason first: flux keeps only 160 bytes of it. */
    if (asprintf (&message,
                  "%s (the handler %s failed to load; see the broker log)",
                  d->load_error ? d->load_error : "unknown error",
                  d->handler_path) < 0)
        message = NULL;
    rc = reject_job (p, args, message ? message : "the handler failed to load");
    free (message);
    return rc;
}

/* job.dependency.delegate: a job asks to be delegated.  At submit, an
 * error here rejects the job; for a job already waiting (plugin load,
 * instance restart), the job-manager logs it and the job keeps waiting.
 */
static int dependency_delegate_cb (flux_plugin_t *p,
                                   const char *topic,
                                   flux_plugin_arg_t *args,
                                   void *arg)
{
    struct delegate *d = arg;

    if (!d->handler)
        return reject_without_handler (d, p, args);
    return dispatch (d, p, topic, args, NULL, PYERROR_SUBMIT);
}

/* job.create: only for jobs with one of the handler's JOB_CREATE_ATTRIBUTES;
 * other jobs never enter Python.  At submit (state NEW) an error rejects
 * the job, so a job that asked for the handler never runs as if it had
 * not; on plugin load or restart it is a job exception.  (job.new comes
 * too late for either: the job-manager ignores its result.)
 */
static int job_create_cb (flux_plugin_t *p,
                          const char *topic,
                          flux_plugin_arg_t *args,
                          void *arg)
{
    struct delegate *d = arg;
    int state = 0;

    (void) flux_plugin_arg_unpack (args,
                                   FLUX_PLUGIN_ARG_IN,
                                   "{s?i}",
                                   "state", &state);
    if (!d->handler) {
        if (state == FLUX_JOB_STATE_NEW
            && has_attribute (builtin_create_attributes, args))
            return reject_without_handler (d, p, args);
        return 0;
    }
    if (!has_attribute ((const char *const *) d->create_attributes, args))
        return 0;
    return dispatch (d,
                     p,
                     topic,
                     args,
                     NULL,
                     state == FLUX_JOB_STATE_NEW ? PYERROR_SUBMIT : PYERROR_JOB);
}

/* job.new, job.state.*, job.event.*, job.destroy: only for jobs the
 * handler has taken on. */
static int job_cb (flux_plugin_t *p,
                   const char *topic,
                   flux_plugin_arg_t *args,
                   void *arg)
{
    struct delegate *d = arg;
    PyObject *job;

    if (!d->handler
        || !wants_job_topic (d, topic)
        || !(job = flux_jobtap_job_aux_get (p,
                                            FLUX_JOBTAP_CURRENT_JOB,
                                            DELEGATE_JOB_AUX)))
        return 0;
    return dispatch (d, p, topic, args, job, PYERROR_JOB);
}

/* conf.update: the broker configuration changed (or the plugin was just
 * loaded).  An error here makes 'flux config reload' fail with the message.
 */
static int conf_update_cb (flux_plugin_t *p,
                           const char *topic,
                           flux_plugin_arg_t *args,
                           void *arg)
{
    struct delegate *d = arg;

    if (!d->handler)
        return 0;
    return dispatch (d, p, topic, args, NULL, PYERROR_PLUGIN);
}

/* plugin.query: 'flux jobtap query delegate.so'.  The shim reports which
 * handler it runs (and why it failed, if it did); the handler adds its own.
 */
static int plugin_query_cb (flux_plugin_t *p,
                            const char *topic,
                            flux_plugin_arg_t *args,
                            void *arg)
{
    struct delegate *d = arg;

    if (flux_plugin_arg_pack (args,
                              FLUX_PLUGIN_ARG_OUT,
                              "{s:s s:s s:s?}",
                              "handler", d->handler_path,
                              "pythonpath", d->python_path,
                              "handler_error", d->load_error) < 0)
        return flux_jobtap_error (p, args, "delegate: %s",
                                  flux_plugin_arg_strerror (args));
    if (!d->handler)
        return 0;
    return dispatch (d, p, topic, args, NULL, PYERROR_PLUGIN);
}

/* Log why the handler could not be used, with its traceback, and keep the
 * reason for rejected submits and 'flux jobtap query'.  GIL held.
 */
static void handler_failed (struct delegate *d, const char *what)
{
    char *summary;
    char *tb;
    char *line;
    char *saveptr = NULL;

    pyerror_fetch (&summary, &tb);
    flux_log (d->h, LOG_ERR, "delegate: handler %s %s: %s",
              d->handler_path, what, summary);
    for (line = strtok_r (tb, "\n", &saveptr);
         line != NULL;
         line = strtok_r (NULL, "\n", &saveptr))
        flux_log (d->h, LOG_ERR, "delegate:   %s", line);
    free (tb);
    free (d->load_error);
    d->load_error = summary;
    Py_CLEAR (d->handler);
}

/* Import the handler and call its plugin_load (conf, jobtap).  GIL held.
 * A handler that fails leaves the plugin loaded: delegated submits are
 * then rejected with the reason, and jobs already waiting keep waiting
 * until a good handler is loaded.  Failing the load instead would fail the
 * job-manager itself when the plugin is loaded from broker config.
 */
static void handler_start (struct delegate *d)
{
    const char *conf = flux_plugin_get_conf (d->p);
    PyObject *pyconf = NULL;
    PyObject *result;

    if (!(d->jobtap = jobtap_object_new (d->p))) {
        handler_failed (d, "cannot be given its jobtap object");
        return;
    }
    /* The package from pythonpath, read afresh: a reload runs the edited
     * files, not what an earlier load left in sys.modules.
     */
    if (package_path_add (d->python_path) == 0)
        d->path_added = true;
    if (!d->path_added || package_modules_drop (DELEGATE_PACKAGE) < 0) {
        handler_failed (d, "cannot be given its package");
        return;
    }
    if (!(d->handler = handler_import (d->handler_path))) {
        handler_failed (d, "failed to import");
        return;
    }
    /* Its declarations first: a handler refused after its plugin_load
     * would never be given its plugin_unload. */
    if (handler_strings (d, "JOB_TOPICS", &d->job_topics) < 0
        || handler_strings (d,
                            "JOB_CREATE_ATTRIBUTES",
                            &d->create_attributes) < 0
        || handler_exception_type (d) < 0) {
        handler_failed (d, "has a bad JOB_TOPICS, JOB_CREATE_ATTRIBUTES or"
                        " EXCEPTION_TYPE");
        return;
    }
    if (!(pyconf = json_to_python (conf ? conf : "{}"))
        || !(result = PyObject_CallMethod (d->handler,
                                           "plugin_load",
                                           "OO",
                                           pyconf,
                                           d->jobtap))) {
        handler_failed (d, "plugin_load failed");
        Py_XDECREF (pyconf);
        return;
    }
    Py_DECREF (result);
    Py_DECREF (pyconf);
    flux_log (d->h, LOG_INFO, "delegate: handler %s loaded", d->handler_path);
}

/* Plugin destructor ('flux jobtap remove', or job-manager unload).
 * Detach the module functions first, so that the handler's plugin_unload
 * (and any late continuation) cannot call into a plugin being destroyed.
 * Python itself stays up.
 */
static void delegate_destroy (void *arg)
{
    struct delegate *d = arg;
    PyObject *result;

    if (!d)
        return;
    if (loaded_plugin == d->p)
        loaded_plugin = NULL;
    if (d->jobtap) {
        PYTHON_ENTER
        jobtap_object_invalidate (d->jobtap);
        PYTHON_LEAVE
    }
    if (d->handler) {
        PYTHON_ENTER
        if (!(result = PyObject_CallMethod (d->handler,
                                            "plugin_unload",
                                            NULL)))
            handler_failed (d, "plugin_unload failed");
        Py_XDECREF (result);
        Py_CLEAR (d->handler);
        PYTHON_LEAVE
    }
    /* Only what this load did in Python: if Python never started
     * (interpreter_start failed), it must not be entered at all. */
    if (d->path_added || d->jobtap) {
        PYTHON_ENTER
        if (d->path_added)
            package_path_remove (d->python_path);
        Py_CLEAR (d->jobtap);
        PYTHON_LEAVE
    }
    free (d->handler_path);
    free (d->python_path);
    free (d->load_error);
    free (d->exception_type);
    strings_free (d->job_topics);
    strings_free (d->create_attributes);
    free (d);
}

static const struct flux_plugin_handler tab[] = {
    { "job.dependency.delegate", dependency_delegate_cb, NULL },
    { "job.create",              job_create_cb,          NULL },
    { "job.new",                 job_cb,                 NULL },
    { "job.state.*",             job_cb,                 NULL },
    { "job.event.*",             job_cb,                 NULL },
    { "job.destroy",             job_cb,                 NULL },
    { "job.update",              job_cb,                 NULL },
    { "conf.update",             conf_update_cb,         NULL },
    { "plugin.query",            plugin_query_cb,        NULL },
    { 0 },
};

int flux_plugin_init (flux_plugin_t *p)
{
    flux_t *h = flux_jobtap_get_flux (p);
    const char *path = DELEGATE_HANDLER_PATH;
    const char *python_path = DELEGATE_PYTHON_DIR;
    struct delegate *d;
    flux_error_t error;
    const struct flux_plugin_handler *t;

    /* No arguments at all is fine: the installed handler is used. */
    /* jobtap runs init before it finds a plugin of the same name already
     * loaded: a second 'flux jobtap load delegate.so' must not take the
     * module functions away from the first one.
     */
    if (loaded_plugin) {
        flux_log (h, LOG_ERR, "delegate: delegate.so is already loaded"
                  " (flux jobtap remove delegate.so first)");
        return -1;
    }
    if (flux_plugin_get_conf (p)
        && flux_plugin_conf_unpack (p,
                                    "{s?s s?s}",
                                    "handler", &path,
                                    "pythonpath", &python_path) < 0) {
        flux_log (h, LOG_ERR,
                  "delegate: handler=PATH and pythonpath=DIR must be strings");
        return -1;
    }
    if (!(d = calloc (1, sizeof (*d)))
        || !(d->handler_path = strdup (path))
        || !(d->python_path = strdup (python_path))) {
        if (d)
            free (d->handler_path);
        free (d);
        return -1;
    }
    d->p = p;
    d->h = h;
    if (!(d->exception_type = strdup (DELEGATE_DEFAULT_EXCEPTION_TYPE))) {
        delegate_destroy (d);
        return -1;
    }
    if (flux_plugin_aux_set (p, NULL, d, delegate_destroy) < 0) {
        delegate_destroy (d);
        return -1;
    }
    if (interpreter_start (&error) < 0) {
        flux_log (h, LOG_ERR, "delegate: %s", error.text);
        return -1;
    }
    loaded_plugin = p;

    PYTHON_ENTER
    handler_start (d);
    PYTHON_LEAVE

    if (flux_plugin_set_name (p, "delegate") < 0)
        return -1;
    for (t = tab; t->topic; t++) {
        if (flux_plugin_add_handler (p, t->topic, t->cb, d) < 0)
            return -1;
    }
    return 0;
}

// vi:ts=4 sw=4 expandtab

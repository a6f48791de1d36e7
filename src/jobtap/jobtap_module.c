/* jobtap_module.c - "delegate_jobtap", the module the handler sees.
 *
 * A small, literal binding of the jobtap calls the handler needs, as the
 * methods of a Jobtap object.  Each load of delegate.so makes its own and
 * passes it to the handler's plugin_load(); when that load ends ('flux
 * jobtap remove') the object is invalidated, and its methods raise
 * RuntimeError instead of touching a destroyed plugin or acting through
 * the next load (a late continuation of an unloaded handler may still call
 * them).  Errors from jobtap become OSError with errno set.
 *
 * The module and its type are created once per broker process; this shim
 * is pinned in memory (interpreter.c), so its functions never dangle.
 */
#if HAVE_CONFIG_H
#include "config.h"
#endif
#include "delegate.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <jansson.h>

static PyObject *module_object = NULL;

/* delegate_jobtap.Jobtap: the jobtap calls of one load of the plugin. */
typedef struct {
    PyObject_HEAD
    flux_plugin_t *p;       /* NULL once that load is over */
} JobtapObject;

/* Set in a helper thread of the handler (clean_child_signals()): children
 * it forks start with no signal blocked.  The broker blocks every signal in
 * its module threads (it takes them through signalfd), threads started from
 * the job-manager inherit that mask, and so would whatever they spawn: an
 * ssh started by flux_open() for an ssh:// URI would then ignore the
 * SIGTERM meant to end it, and outlive the job and the broker.  The mask
 * cannot simply be cleared in the thread itself: a signal meant for the
 * broker could then be delivered to that thread and kill the broker.
 */
static __thread int child_signals_clean = 0;

static void atfork_child (void)
{
    if (child_signals_clean) {
        sigset_t none;
        sigemptyset (&none);
        (void) sigprocmask (SIG_SETMASK, &none, NULL);
    }
}

/* The plugin 'self' acts on, or NULL with RuntimeError set. */
static flux_plugin_t *plugin (PyObject *self)
{
    flux_plugin_t *p = ((JobtapObject *)self)->p;

    if (!p)
        PyErr_SetString (PyExc_RuntimeError,
                         "this load of delegate.so is over (removed or reloaded)");
    return p;
}

/* OSError(errno, strerror, what), e.g. "[Errno 2] No such file or
 * directory: 'dependency_remove'".
 */
static PyObject *os_error (const char *what)
{
    if (errno == 0)
        errno = EINVAL;
    return PyErr_SetFromErrnoWithFilename (PyExc_OSError, what);
}

/* Convert a Python object to a jansson object through the json module, so
 * that what the handler passes is exactly JSON (no silent conversions).
 */
static json_t *to_json (PyObject *obj)
{
    char *s;
    json_t *o;
    json_error_t error;

    if (!(s = python_to_json (obj)))
        return NULL;
    if (!(o = json_loads (s, JSON_DECODE_ANY, &error)))
        PyErr_Format (PyExc_ValueError, "cannot convert to JSON: %s",
                      error.text);
    free (s);
    return o;
}

static PyObject *jt_dependency_add (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *description;

    if (!PyArg_ParseTuple (args, "Ks", &id, &description) || !(p = plugin (self)))
        return NULL;
    if (flux_jobtap_dependency_add (p, id, description) < 0)
        return os_error ("dependency_add");
    Py_RETURN_NONE;
}

static PyObject *jt_dependency_remove (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *description;

    if (!PyArg_ParseTuple (args, "Ks", &id, &description) || !(p = plugin (self)))
        return NULL;
    if (flux_jobtap_dependency_remove (p, id, description) < 0)
        return os_error ("dependency_remove");
    Py_RETURN_NONE;
}

static PyObject *jt_raise_exception (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *type;
    int severity;
    const char *note;
    char *copy;
    int rc;

    if (!PyArg_ParseTuple (args, "Ksis", &id, &type, &severity, &note)
        || !(p = plugin (self)))
        return NULL;
    /* The handler's notes are cut to fit here, on a character boundary. */
    if (!(copy = strdup (note)))
        return PyErr_NoMemory ();
    utf8_cut (copy, DELEGATE_NOTE_SIZE);
    rc = flux_jobtap_raise_exception (p, id, type, severity, "%s", copy);
    free (copy);
    if (rc < 0)
        return os_error ("raise_exception");
    Py_RETURN_NONE;
}

static PyObject *jt_post_event (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *name;
    PyObject *context = Py_None;
    json_t *o = NULL;
    int rc;

    if (!PyArg_ParseTuple (args, "Ks|O", &id, &name, &context)
        || !(p = plugin (self)))
        return NULL;
    if (context == Py_None)
        rc = flux_jobtap_event_post_pack (p, id, name, NULL);
    else {
        if (!PyDict_Check (context))
            return PyErr_Format (PyExc_TypeError,
                                 "event context must be a dict");
        if (!(o = to_json (context)))
            return NULL;
        rc = flux_jobtap_event_post_pack (p, id, name, "O", o);
        json_decref (o);
    }
    if (rc < 0)
        return os_error ("post_event");
    Py_RETURN_NONE;
}

static PyObject *jt_set_flag (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *flag;

    if (!PyArg_ParseTuple (args, "Ks", &id, &flag) || !(p = plugin (self)))
        return NULL;
    if (flux_jobtap_job_set_flag (p, id, flag) < 0)
        return os_error ("set_flag");
    Py_RETURN_NONE;
}

static PyObject *jt_jobspec_update (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    PyObject *updates;
    json_t *o;
    int rc;

    if (!PyArg_ParseTuple (args, "KO!", &id, &PyDict_Type, &updates)
        || !(p = plugin (self)))
        return NULL;
    if (!(o = to_json (updates)))
        return NULL;
    rc = flux_jobtap_jobspec_update_id_pack (p, id, "O", o);
    json_decref (o);
    if (rc < 0)
        return os_error ("jobspec_update");
    Py_RETURN_NONE;
}

static PyObject *jt_subscribe (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;

    if (!PyArg_ParseTuple (args, "K", &id) || !(p = plugin (self)))
        return NULL;
    if (flux_jobtap_job_subscribe (p, id) < 0)
        return os_error ("subscribe");
    Py_RETURN_NONE;
}

static PyObject *jt_unsubscribe (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;

    if (!PyArg_ParseTuple (args, "K", &id) || !(p = plugin (self)))
        return NULL;
    flux_jobtap_job_unsubscribe (p, id);
    Py_RETURN_NONE;
}

static PyObject *jt_event_posted (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *name;
    int rc;

    if (!PyArg_ParseTuple (args, "Ks", &id, &name) || !(p = plugin (self)))
        return NULL;
    if ((rc = flux_jobtap_job_event_posted (p, id, name)) < 0)
        return os_error ("event_posted");
    return PyBool_FromLong (rc);
}

/* Job aux destructor for the per-job Python object: the job-manager calls
 * it when the job is destroyed or the plugin removed, without the GIL.
 */
static void job_object_release (void *arg)
{
    PyObject *obj = arg;

    PYTHON_ENTER
    Py_DECREF (obj);
    PYTHON_LEAVE
}

static PyObject *jt_job_attach (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    PyObject *obj;

    if (!PyArg_ParseTuple (args, "KO", &id, &obj) || !(p = plugin (self)))
        return NULL;
    Py_INCREF (obj);
    if (flux_jobtap_job_aux_set (p,
                                 id,
                                 DELEGATE_JOB_AUX,
                                 obj,
                                 job_object_release) < 0) {
        Py_DECREF (obj);
        return os_error ("job_attach");
    }
    Py_RETURN_NONE;
}

static PyObject *jt_job_get (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    PyObject *obj;

    if (!PyArg_ParseTuple (args, "K", &id) || !(p = plugin (self)))
        return NULL;
    if (!(obj = flux_jobtap_job_aux_get (p, id, DELEGATE_JOB_AUX)))
        Py_RETURN_NONE;
    Py_INCREF (obj);
    return obj;
}

static PyObject *jt_handle (PyObject *self, PyObject *noargs)
{
    flux_plugin_t *p;
    flux_t *h;

    if (!(p = plugin (self)))
        return NULL;
    if (!(h = flux_jobtap_get_flux (p)))
        return os_error ("handle");
    return PyLong_FromVoidPtr (h);
}

/* Called from a handler's 'except' block (an async continuation, outside
 * any jobtap callback): report the exception being handled the same way a
 * failing callback is reported, against job 'id'.
 */
static PyObject *jt_report_exception (PyObject *self, PyObject *args)
{
    flux_plugin_t *p;
    unsigned long long id;
    const char *where;
    const char *exception_type;
    PyObject *type, *value, *tb;

    if (!PyArg_ParseTuple (args, "Kss", &id, &where, &exception_type)
        || !(p = plugin (self)))
        return NULL;
    PyErr_GetExcInfo (&type, &value, &tb);
    if (!type || type == Py_None) {
        Py_XDECREF (type);
        Py_XDECREF (value);
        Py_XDECREF (tb);
        return PyErr_Format (PyExc_RuntimeError,
                             "report_exception called outside 'except'");
    }
    (void) pyerror_report (p,
                           NULL,
                           PYERROR_JOB,
                           id,
                           where,
                           exception_type,
                           type,
                           value,
                           tb);
    Py_XDECREF (type);
    Py_XDECREF (value);
    Py_XDECREF (tb);
    Py_RETURN_NONE;
}

static PyObject *jt_clean_child_signals (PyObject *self, PyObject *noargs)
{
    child_signals_clean = 1;
    Py_RETURN_NONE;
}

static PyMethodDef jobtap_object_methods[] = {
    { "handle", jt_handle, METH_NOARGS,
      "handle() -> int: the job-manager's flux_t pointer" },
    { "dependency_add", jt_dependency_add, METH_VARARGS,
      "dependency_add(id, description)" },
    { "dependency_remove", jt_dependency_remove, METH_VARARGS,
      "dependency_remove(id, description)" },
    { "raise_exception", jt_raise_exception, METH_VARARGS,
      "raise_exception(id, type, severity, note)" },
    { "post_event", jt_post_event, METH_VARARGS,
      "post_event(id, name, context=None): post to the job's eventlog" },
    { "set_flag", jt_set_flag, METH_VARARGS,
      "set_flag(id, flag)" },
    { "jobspec_update", jt_jobspec_update, METH_VARARGS,
      "jobspec_update(id, {dotted.key: value}): post a jobspec-update" },
    { "subscribe", jt_subscribe, METH_VARARGS,
      "subscribe(id): receive job.event.* callbacks for job id" },
    { "unsubscribe", jt_unsubscribe, METH_VARARGS,
      "unsubscribe(id)" },
    { "event_posted", jt_event_posted, METH_VARARGS,
      "event_posted(id, name) -> bool" },
    { "job_attach", jt_job_attach, METH_VARARGS,
      "job_attach(id, obj): keep obj as the job's state (job aux); job"
      " callbacks for this job are then passed to the handler with obj" },
    { "job_get", jt_job_get, METH_VARARGS,
      "job_get(id) -> obj or None" },
    { "clean_child_signals", jt_clean_child_signals, METH_NOARGS,
      "clean_child_signals(): processes this thread forks from now on start"
      " with no signal blocked (for helper threads; works after the load is"
      " over)" },
    { "report_exception", jt_report_exception, METH_VARARGS,
      "report_exception(id, where, type): from an except block, log the"
      " traceback and raise a 'type' exception on job id" },
    { NULL, NULL, 0, NULL },
};

static PyTypeObject JobtapType = {
    PyVarObject_HEAD_INIT (NULL, 0)
    .tp_name = "delegate_jobtap.Jobtap",
    .tp_doc = "the jobtap calls of one load of delegate.so",
    .tp_basicsize = sizeof (JobtapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = jobtap_object_methods,
};

static struct PyModuleDef jobtap_moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "delegate_jobtap",
    .m_doc = "jobtap calls for the flux-delegate handler (from delegate.so)",
    .m_size = -1,
};

PyObject *jobtap_object_new (flux_plugin_t *p)
{
    JobtapObject *obj;

    if (!(obj = PyObject_New (JobtapObject, &JobtapType)))
        return NULL;
    obj->p = p;
    return (PyObject *)obj;
}

void jobtap_object_invalidate (PyObject *obj)
{
    if (obj)
        ((JobtapObject *)obj)->p = NULL;
}

PyObject *jobtap_module_get (void)
{
    if (!module_object) {
        PyObject *sys_modules;

        if (PyType_Ready (&JobtapType) < 0
            || !(module_object = PyModule_Create (&jobtap_moduledef)))
            return NULL;
        /* Once per process, like the module: this shim stays mapped. */
        (void) pthread_atfork (NULL, NULL, atfork_child);
        Py_INCREF (&JobtapType);
        if (PyModule_AddObject (module_object,
                                "Jobtap",
                                (PyObject *)&JobtapType) < 0
            || !(sys_modules = PyImport_GetModuleDict ())
            || PyDict_SetItemString (sys_modules,
                                     "delegate_jobtap",
                                     module_object) < 0) {
            Py_CLEAR (module_object);
            return NULL;
        }
    }
    Py_INCREF (module_object);
    return module_object;
}

// vi:ts=4 sw=4 expandtab

/* interpreter.c - lifetime of the embedded CPython interpreter.
 *
 * The interpreter is started once per broker process and is never
 * finalized: futures, reactor watchers and cffi callbacks created by the
 * handler may outlive a plugin unload, and Py_Finalize() would leave them
 * pointing into freed memory.  Reloading the plugin re-imports the handler
 * file into the running interpreter instead.
 */
#if HAVE_CONFIG_H
#include "config.h"
#endif
/* Python.h (via delegate.h) comes before any system header, as the
 * embedding docs require; it also defines _GNU_SOURCE. */
#include "delegate.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>

static bool interpreter_started = false;

/* Keep this shim mapped after 'flux jobtap remove': Python holds pointers to
 * functions defined here (the delegate_jobtap module, job aux destructors),
 * and unmapping the code under them would crash the broker on the next
 * call.  With RTLD_NODELETE the next 'flux jobtap load' gets the same
 * mapping back, so those pointers stay valid for the life of the broker.
 */
static int pin_self (flux_error_t *errp)
{
    Dl_info info;

    if (dladdr ((void *) pin_self, &info) == 0 || !info.dli_fname)
        return errorf (errp, "dladdr on delegate.so failed");
    if (!dlopen (info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE))
        return errorf (errp, "pinning %s: %s", info.dli_fname, dlerror ());
    return 0;
}

/* jobtap plugins are opened RTLD_LOCAL, so libpython (a dependency of this
 * shim) is not in the global namespace.  Extension modules such as
 * _cffi_backend and flux's _flux._core do not link libpython themselves and
 * expect its symbols to be global; without this, 'import flux' fails with
 * "undefined symbol: PyExc_SystemError".  Re-open the libpython we are
 * linked against (found from one of its symbols, so no library name is
 * hard-coded) with RTLD_GLOBAL.
 */
static int make_libpython_global (flux_error_t *errp)
{
    Dl_info info;

    if (dladdr ((void *) Py_IsInitialized, &info) == 0 || !info.dli_fname)
        return errorf (errp, "dladdr on libpython failed");
    if (!dlopen (info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL))
        return errorf (errp,
                       "making %s global: %s",
                       info.dli_fname,
                       dlerror ());
    return 0;
}

static int init_python (flux_error_t *errp)
{
    PyStatus status;
    PyPreConfig preconfig;
    PyConfig config;

    /* Leave the broker's locale and environment alone: by default Python
     * sets LC_CTYPE (and may setenv LC_CTYPE=C.UTF-8 in a C locale), on
     * this thread, while other broker threads read the environment, and
     * every process the broker starts would inherit the change.  UTF-8
     * mode gives Python its encoding without touching the process locale.
     */
    PyPreConfig_InitPythonConfig (&preconfig);
    preconfig.configure_locale = 0;
    preconfig.coerce_c_locale = 0;
    preconfig.utf8_mode = 1;
    status = Py_PreInitialize (&preconfig);
    if (PyStatus_Exception (status))
        return errorf (errp,
                       "Python pre-initialization failed: %s",
                       status.err_msg ? status.err_msg : "unknown error");

    PyConfig_InitPythonConfig (&config);
    /* The broker's stdio is not Python's to reconfigure. */
    config.configure_c_stdio = 0;
    /* The broker owns signals (it blocks them in module threads and
     * handles them in its reactor): Python must not install handlers.
     */
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    /* Name the interpreter flux-core's bindings were built for, so that
     * Python finds the same prefix and site-packages as 'flux python'.
     */
    status = PyConfig_SetBytesString (&config,
                                      &config.program_name,
                                      DELEGATE_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception (status))
        status = Py_InitializeFromConfig (&config);
    PyConfig_Clear (&config);
    if (PyStatus_Exception (status))
        return errorf (errp,
                       "Python initialization failed: %s",
                       status.err_msg ? status.err_msg : "unknown error");
    return 0;
}

/* Put flux-core's Python bindings first on sys.path: the broker's
 * environment does not necessarily point there.  GIL held.
 */
static int add_flux_python_path (flux_error_t *errp)
{
    const char *path = flux_conf_builtin_get ("python_path", FLUX_CONF_AUTO);
    PyObject *sys_path;
    PyObject *entry;
    int rc = -1;

    if (!path)
        return errorf (errp, "flux-core does not name its python_path");
    if (!(sys_path = PySys_GetObject ("path"))) // borrowed
        return errorf (errp, "sys.path is missing");
    if (!(entry = PyUnicode_DecodeFSDefault (path))) {
        PyErr_Clear ();
        return errorf (errp, "cannot decode python_path %s", path);
    }
    switch (PySequence_Contains (sys_path, entry)) {
        case 1:
            rc = 0;
            break;
        case 0:
            if (PyList_Insert (sys_path, 0, entry) == 0)
                rc = 0;
            break;
    }
    if (rc < 0) {
        PyErr_Clear ();
        errorf (errp, "cannot add %s to sys.path", path);
    }
    Py_DECREF (entry);
    return rc;
}

/* Remove the first occurrence of 'entry' from the list sys_path (the one
 * package_path_add put first; another, e.g. flux's own python directory,
 * stays where it was).  Returns 0, or -1 with a Python exception set.
 */
static int package_path_remove_entry (PyObject *sys_path, PyObject *entry)
{
    Py_ssize_t i;

    for (i = 0; i < PyList_GET_SIZE (sys_path); i++) {
        int same = PyObject_RichCompareBool (PyList_GET_ITEM (sys_path, i),
                                             entry,
                                             Py_EQ);
        if (same < 0)
            return -1;
        if (same)
            return PySequence_DelItem (sys_path, i);
    }
    return 0;
}

/* This thread's own Python thread state, made once and kept.  The thread
 * that started Python has one (Py_InitializeFromConfig's).  A job-manager
 * reloaded ('flux module reload job-manager') runs on a new thread, which
 * has none: PyGILState_Ensure() would make one for each callback and
 * destroy it at the matching PyGILState_Release(), and per-thread state
 * (threading.local, anything the handler keeps per thread) would not
 * outlive a callback.  (cffi keeps one alive after its first callback on
 * a thread, for speed; nothing here should rest on that.)  One made by
 * PyThreadState_New() is this thread's for PyGILState_Ensure() from then
 * on, and no release destroys it (its count starts at one).  One per
 * job-manager thread, kept for the life of the process, as the interpreter
 * is.
 */
static void keep_thread_state (void)
{
    if (PyGILState_GetThisThreadState () == NULL)
        (void) PyThreadState_New (PyInterpreterState_Main ());
}

int interpreter_start (flux_error_t *errp)
{
    PyObject *module;
    int rc = -1;

    if (interpreter_started) {
        keep_thread_state ();
        return 0;
    }
    if (pin_self (errp) < 0 || make_libpython_global (errp) < 0)
        return -1;

    /* Another component of this process may already run Python; share it
     * (and its GIL) rather than start a second one.
     */
    if (!Py_IsInitialized ()) {
        if (init_python (errp) < 0)
            return -1;
        /* Py_InitializeFromConfig() leaves the GIL held by this thread:
         * release it once, so that the GIL macros work uniformly.
         */
        (void) PyEval_SaveThread ();
    }
    keep_thread_state ();  /* Python started by another component, maybe elsewhere */

    PYTHON_ENTER
    if (add_flux_python_path (errp) == 0) {
        if ((module = jobtap_module_get ())) {
            Py_DECREF (module);
            rc = 0;
        }
        else {
            char *summary, *tb;
            pyerror_fetch (&summary, &tb);
            errorf (errp, "creating delegate_jobtap: %s", summary);
            free (summary);
            free (tb);
        }
    }
    PYTHON_LEAVE

    /* On failure the interpreter stays up (it is never finalized) and the
     * next load retries the steps above.
     */
    if (rc == 0)
        interpreter_started = true;
    return rc;
}

/* Put 'dir' first on sys.path (where the handler finds the flux_delegate
 * package); package_path_remove takes that one away again.  GIL held.
 * Returns 0, or -1 with a Python exception set.
 */
int package_path_add (const char *dir)
{
    PyObject *sys_path;
    PyObject *entry;
    int rc = -1;

    if (!(sys_path = PySys_GetObject ("path"))) { // borrowed
        PyErr_SetString (PyExc_RuntimeError, "sys.path is missing");
        return -1;
    }
    if (!(entry = PyUnicode_DecodeFSDefault (dir)))
        return -1;
    if (PyList_Insert (sys_path, 0, entry) == 0)
        rc = 0;
    Py_DECREF (entry);
    return rc;
}

void package_path_remove (const char *dir)
{
    PyObject *sys_path;
    PyObject *entry;

    if ((sys_path = PySys_GetObject ("path")) // borrowed
        && (entry = PyUnicode_DecodeFSDefault (dir))) {
        (void) package_path_remove_entry (sys_path, entry);
        Py_DECREF (entry);
    }
    PyErr_Clear ();
}

/* Forget every module of package 'name' (name and name.*), so that the
 * next import reads the files again: a reload runs the edited package,
 * not the copy in sys.modules.  GIL held.  Returns 0, or -1 with a Python
 * exception set.
 */
int package_modules_drop (const char *name)
{
    PyObject *sys_modules = PyImport_GetModuleDict (); // borrowed
    PyObject *keys;
    Py_ssize_t i, n;
    size_t len = strlen (name);
    int rc = 0;

    if (!sys_modules || !(keys = PyDict_Keys (sys_modules)))
        return -1;
    n = PyList_GET_SIZE (keys);
    for (i = 0; i < n && rc == 0; i++) {
        PyObject *key = PyList_GET_ITEM (keys, i);
        const char *s;
        if (!PyUnicode_Check (key) || !(s = PyUnicode_AsUTF8 (key))) {
            PyErr_Clear ();
            continue;
        }
        if (strncmp (s, name, len) == 0 && (s[len] == '\0' || s[len] == '.'))
            rc = PyDict_DelItem (sys_modules, key);
    }
    Py_DECREF (keys);
    return rc;
}

PyObject *handler_import (const char *path)
{
    PyObject *util = NULL;
    PyObject *spec = NULL;
    PyObject *module = NULL;
    PyObject *loader = NULL;
    PyObject *sys_modules;
    PyObject *result;

    /* The file is imported under its own module name, as a new module
     * object each time: importlib.util.spec_from_file_location() +
     * module_from_spec() + exec_module() (what "import" does for a path).
     * It is registered in sys.modules while it executes, as a regular
     * import would be, so that dataclasses, pickling and the like work.
     */
    if (!(util = PyImport_ImportModule ("importlib.util")))
        goto error;
    if (!(spec = PyObject_CallMethod (util,
                                      "spec_from_file_location",
                                      "sN",
                                      "delegate_handler",
                                      PyUnicode_DecodeFSDefault (path))))
        goto error;
    if (spec == Py_None) {
        PyErr_Format (PyExc_ImportError,
                      "%s is not a loadable Python file",
                      path);
        goto error;
    }
    if (!(module = PyObject_CallMethod (util, "module_from_spec", "O", spec))
        || !(sys_modules = PyImport_GetModuleDict ()) // borrowed
        || PyDict_SetItemString (sys_modules, "delegate_handler", module) < 0
        || !(loader = PyObject_GetAttrString (spec, "loader")))
        goto error;
    if (!(result = PyObject_CallMethod (loader, "exec_module", "O", module))) {
        /* A half-executed module must not stay importable. */
        PyObject *type, *value, *tb;
        PyErr_Fetch (&type, &value, &tb);
        if (PyDict_GetItemString (sys_modules, "delegate_handler") == module)
            (void) PyDict_DelItemString (sys_modules, "delegate_handler");
        PyErr_Restore (type, value, tb);
        goto error;
    }
    Py_DECREF (result);
    Py_DECREF (loader);
    Py_DECREF (spec);
    Py_DECREF (util);
    return module;
error:
    Py_XDECREF (loader);
    Py_XDECREF (module);
    Py_XDECREF (spec);
    Py_XDECREF (util);
    return NULL;
}

PyObject *json_to_python (const char *s)
{
    PyObject *json;
    PyObject *obj;

    if (!(json = PyImport_ImportModule ("json")))
        return NULL;
    obj = PyObject_CallMethod (json, "loads", "s", s);
    Py_DECREF (json);
    return obj;
}

char *python_to_json (PyObject *obj)
{
    PyObject *json;
    PyObject *str;
    const char *s;
    char *result = NULL;

    if (!(json = PyImport_ImportModule ("json")))
        return NULL;
    if ((str = PyObject_CallMethod (json, "dumps", "O", obj))) {
        if ((s = PyUnicode_AsUTF8 (str)) && !(result = strdup (s)))
            PyErr_NoMemory ();
        Py_DECREF (str);
    }
    Py_DECREF (json);
    return result;
}

// vi:ts=4 sw=4 expandtab

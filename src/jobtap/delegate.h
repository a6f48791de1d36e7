/* flux-delegate: a thin jobtap shim that embeds CPython.
 *
 * Where things live:
 *   delegate.c       jobtap entry points: plugin init, the handler table,
 *                    and the dispatch of each callback into Python.
 *   interpreter.c    interpreter lifetime: start once per broker, make
 *                    libpython global, load (and reload) the handler file.
 *   pyerror.c        the one place a Python exception becomes a Flux error
 *                    (rejection, job exception, log line with traceback).
 *   jobtap_module.c  the module Python sees ("delegate_jobtap"): the jobtap
 *                    calls the handler may make.
 *
 * All decisions and all remote I/O are in Python: delegate_handler.py and
 * the flux_delegate package it is built on.
 */
#ifndef FLUX_DELEGATE_H
#define FLUX_DELEGATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <flux/core.h>
#include <flux/jobtap.h>

/* Job exception type for a handler error when the handler names none of
 * its own (its EXCEPTION_TYPE): the plugin's name.
 */
#define DELEGATE_DEFAULT_EXCEPTION_TYPE "delegate"

/* Name under which the per-job Python object is kept in job aux.
 */
#define DELEGATE_JOB_AUX "delegate::job"

/* The GIL, in two macros.  The job-manager thread does not hold the GIL
 * between callbacks (it is released once Python has started); every entry
 * from the job-manager into Python takes it here.  PyGILState_Ensure() nests,
 * which matters because jobtap callbacks re-enter: a jobtap call made from
 * Python (e.g. removing a dependency) can run another callback of ours
 * before it returns.
 */
#define PYTHON_ENTER \
    { PyGILState_STATE delegate_gil_state_ = PyGILState_Ensure ();
#define PYTHON_LEAVE \
      PyGILState_Release (delegate_gil_state_); }

/* interpreter.c */

/* Start CPython in this broker if it is not running yet (once per process;
 * the interpreter outlives any number of plugin unload/load cycles).
 * Returns 0 on success, -1 with errp set.  On return the GIL is not held.
 */
int interpreter_start (flux_error_t *errp);

/* Import the handler file at 'path' as a fresh module (an edited file takes
 * effect on the next plugin load).  GIL must be held.  Returns a new
 * reference, or NULL with a Python exception set.
 */
PyObject *handler_import (const char *path);

/* Put 'dir' first on sys.path / take it off again (the directory that
 * holds the flux_delegate package).  GIL held.
 */
int package_path_add (const char *dir);
void package_path_remove (const char *dir);

/* Forget package 'name' and its submodules in sys.modules, so that the
 * next import reads the (maybe edited) files again.  GIL held.
 */
int package_modules_drop (const char *name);

/* The Python package the handler is built on. */
#define DELEGATE_PACKAGE "flux_delegate"

/* Convert between JSON text and Python objects with the json module.
 * GIL must be held.  Return new references / malloc'd strings, or NULL with
 * a Python exception set.
 */
PyObject *json_to_python (const char *s);
char *python_to_json (PyObject *obj);

/* pyerror.c */

/* Format an error message into errp (if not NULL).  Returns -1, for
 * 'return errorf (errp, ...)'.
 */
int errorf (flux_error_t *errp, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));

/* Format the Python exception currently being raised as
 * "Type: message" (summary) and the full traceback, then clear it.
 * Both results are malloc'd (caller frees); never NULL.
 */
void pyerror_fetch (char **summary, char **traceback);

/* Room flux gives an exception note (jobtap's note buffer). */
#define DELEGATE_NOTE_SIZE 1024

/* Cut UTF-8 text s to fit in 'size' bytes (with its NUL), on a character
 * boundary, marking the cut with "...".
 */
void utf8_cut (char *s, size_t size);

/* Reject a submitted job with "delegate: message" (text, never a format),
 * cut to fit flux's 160 bytes on a character boundary: put the reason
 * first.  Returns -1.
 */
int reject_job (flux_plugin_t *p, flux_plugin_arg_t *args, const char *message);

/* Raise a severity 0 exception of type 'type' on job id with 'note' (text,
 * never a format), cut to fit on a character boundary.
 */
int raise_job_exception (flux_plugin_t *p,
                         flux_jobid_t id,
                         const char *type,
                         const char *note);

/* Where a Python failure happened, which decides how it is reported.
 */
enum pyerror_site {
    PYERROR_SUBMIT,     /* job.dependency.* or job.create at submit: reject
                         * the job                                          */
    PYERROR_JOB,        /* any other job callback or continuation: job
                         * exception (if the job can still take one)        */
    PYERROR_PLUGIN,     /* not about one job: log, and set the callback's
                         * error message if there are args                  */
};

/* The one place a Python exception becomes a Flux error.  Logs the
 * traceback to the broker log, naming 'where', and then, by site:
 * rejects the job (flux_jobtap_reject_job on 'args'), raises a severity 0
 * exception of type 'exception_type' on job 'id', or only logs.
 * Exceptions of type ValueError are user errors: their message is the whole
 * story, so no traceback is logged for them at submit.
 * 'type', 'value', 'tb' are the exception (references are borrowed).
 * Returns -1 (so callers can 'return pyerror_report (...)').
 */
int pyerror_report (flux_plugin_t *p,
                    flux_plugin_arg_t *args,
                    enum pyerror_site site,
                    flux_jobid_t id,
                    const char *where,
                    const char *exception_type,
                    PyObject *type,
                    PyObject *value,
                    PyObject *tb);

/* Same, for the exception currently being raised (PyErr_Occurred()),
 * which is cleared.
 */
int pyerror_report_current (flux_plugin_t *p,
                            flux_plugin_arg_t *args,
                            enum pyerror_site site,
                            flux_jobid_t id,
                            const char *where,
                            const char *exception_type);

/* jobtap_module.c */

/* The "delegate_jobtap" module object (new reference), created once per
 * process and registered in sys.modules.  GIL must be held.
 */
PyObject *jobtap_module_get (void);

/* The plugin the module's functions act on: set on plugin load, cleared on
 * unload, after which every function raises RuntimeError instead of
 * touching a destroyed plugin.
 */
/* A new delegate_jobtap.Jobtap acting on plugin p (new reference), for one
 * load; invalidate it when that load ends: its methods then raise.  GIL held.
 */
PyObject *jobtap_object_new (flux_plugin_t *p);
void jobtap_object_invalidate (PyObject *obj);

#endif /* !FLUX_DELEGATE_H */

// vi:ts=4 sw=4 expandtab

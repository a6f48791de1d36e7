/* pyerror.c - the one place a Python exception becomes a Flux error.
 *
 * Whatever the handler raises ends up here, from a jobtap callback (via
 * delegate.c) or from a future continuation (via
 * delegate_jobtap.report_exception()): the traceback goes to the broker
 * log, and the job gets a clear rejection or DelegationFailure exception.
 * The broker itself never sees the exception: nothing propagates, nothing
 * stops the job-manager's reactor.
 */
#if HAVE_CONFIG_H
#include "config.h"
#endif
/* Python.h (via delegate.h) comes before any system header, as the
 * embedding docs require; it also defines _GNU_SOURCE. */
#include "delegate.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

int errorf (flux_error_t *errp, const char *fmt, ...)
{
    if (errp) {
        va_list ap;
        va_start (ap, fmt);
        vsnprintf (errp->text, sizeof (errp->text), fmt, ap);
        va_end (ap);
    }
    return -1;
}

/* Cut s (UTF-8) to at most 'size - 1' bytes, on a character boundary,
 * ending in "..." if anything was cut.  flux cuts a rejection (160 bytes)
 * or an exception note (1 KiB) itself, mid-character, and a message that
 * is no longer UTF-8 is lost on its way to the user.
 */
void utf8_cut (char *s, size_t size)
{
    size_t len = strlen (s);
    size_t end;

    if (len < size)
        return;
    end = size - 4;  /* room for "..." and the NUL */
    /* Back up over continuation bytes (10xxxxxx) to a character start. */
    while (end > 0 && ((unsigned char) s[end] & 0xC0) == 0x80)
        end--;
    memcpy (s + end, "...", 4);
}

int reject_job (flux_plugin_t *p, flux_plugin_arg_t *args, const char *message)
{
    flux_error_t error;

    snprintf (error.text, sizeof (error.text), "delegate: %s", message);
    if (strlen (message) + strlen ("delegate: ") >= sizeof (error.text)) {
        /* snprintf cut it anywhere: cut again on a character boundary */
        char *copy = NULL;
        if (asprintf (&copy, "delegate: %s", message) >= 0) {
            utf8_cut (copy, sizeof (error.text) - 1);
            snprintf (error.text, sizeof (error.text), "%s", copy);
        }
        free (copy);
    }
    return flux_jobtap_reject_job (p, args, "%s", error.text);
}

static char *xstrdup_or_fallback (const char *s, const char *fallback)
{
    char *copy = strdup (s ? s : fallback);
    /* Out of memory while reporting an error: a static string would be
     * wrong to free(), so retry with the (short) fallback once.
     */
    if (!copy)
        copy = strdup (fallback);
    return copy;
}

/* str(value), or "" if it has none.  GIL held; never raises. */
static char *format_message (PyObject *value)
{
    PyObject *text = NULL;
    const char *s = NULL;
    char *result;

    if (value && (text = PyObject_Str (value)))
        s = PyUnicode_AsUTF8 (text);
    PyErr_Clear ();
    result = xstrdup_or_fallback (s, "");
    Py_XDECREF (text);
    return result;
}

/* "Type: message" (or "Type" alone).  GIL held; never raises. */
static char *format_summary (PyObject *type, PyObject *value)
{
    PyObject *name = NULL;
    const char *name_s = NULL;
    char *message = format_message (value);
    char *result = NULL;

    if (type && (name = PyObject_GetAttrString (type, "__name__")))
        name_s = PyUnicode_AsUTF8 (name);
    PyErr_Clear ();
    if (!name_s)
        name_s = "Exception";
    if (message && *message) {
        if (asprintf (&result, "%s: %s", name_s, message) < 0)
            result = NULL;
    }
    else
        result = strdup (name_s);
    Py_XDECREF (name);
    free (message);
    return result ? result : xstrdup_or_fallback (NULL, "unknown error");
}

/* The whole traceback, as traceback.format_exception() prints it. */
static char *format_traceback (PyObject *type, PyObject *value, PyObject *tb)
{
    PyObject *module = NULL;
    PyObject *lines = NULL;
    PyObject *empty = NULL;
    PyObject *joined = NULL;
    const char *s = NULL;
    char *result;

    if ((module = PyImport_ImportModule ("traceback"))
        && (lines = PyObject_CallMethod (module,
                                         "format_exception",
                                         "OOO",
                                         type ? type : Py_None,
                                         value ? value : Py_None,
                                         tb ? tb : Py_None))
        && (empty = PyUnicode_FromString (""))
        && (joined = PyUnicode_Join (empty, lines)))
        s = PyUnicode_AsUTF8 (joined);
    PyErr_Clear ();
    result = xstrdup_or_fallback (s, "(traceback unavailable)");
    Py_XDECREF (joined);
    Py_XDECREF (empty);
    Py_XDECREF (lines);
    Py_XDECREF (module);
    return result;
}

void pyerror_fetch (char **summary, char **traceback)
{
    PyObject *type, *value, *tb;

    PyErr_Fetch (&type, &value, &tb);
    PyErr_NormalizeException (&type, &value, &tb);
    *summary = format_summary (type, value);
    *traceback = format_traceback (type, value, tb);
    Py_XDECREF (type);
    Py_XDECREF (value);
    Py_XDECREF (tb);
}

/* Log a multi-line traceback one line at a time: the broker log is line
 * oriented, and 'flux dmesg' shows each line with its own header.
 */
static void log_traceback (flux_t *h, int level, const char *tb)
{
    char *copy = strdup (tb);
    char *saveptr = NULL;
    char *line;

    if (!copy)
        return;
    for (line = strtok_r (copy, "\n", &saveptr);
         line != NULL;
         line = strtok_r (NULL, "\n", &saveptr))
        flux_log (h, level, "delegate:   %s", line);
    free (copy);
}

int raise_job_exception (flux_plugin_t *p,
                         flux_jobid_t id,
                         const char *type,
                         const char *note)
{
    char *copy = strdup (note);
    int rc;

    if (!copy)
        return -1;
    utf8_cut (copy, DELEGATE_NOTE_SIZE);
    rc = flux_jobtap_raise_exception (p, id, type, 0,
                                      "%s", copy);
    free (copy);
    return rc;
}

/* Is the job still able to take a fatal exception?  Not from a callback
 * of a NEW job (job.new at submit, job.destroy of a rejected one): the
 * job-manager refuses it there, and the job goes on to DEPEND, where the
 * handler looks at it again.  (Outside its callbacks a NEW job takes one:
 * it is posted once its submit is committed.)  Once it is in CLEANUP it is
 * ending anyway; another exception there would only add noise.
 */
static bool job_can_take_exception (flux_plugin_t *p,
                                    flux_plugin_arg_t *args,
                                    flux_jobid_t id)
{
    flux_plugin_arg_t *lookup = NULL;
    int state = 0;
    bool result = false;

    if (args)
        (void) flux_plugin_arg_unpack (args,
                                       FLUX_PLUGIN_ARG_IN,
                                       "{s?i}",
                                       "state", &state);
    else if ((lookup = flux_jobtap_job_lookup (p, id)))
        (void) flux_plugin_arg_unpack (lookup,
                                       FLUX_PLUGIN_ARG_IN,
                                       "{s?i}",
                                       "state", &state);
    else
        return false;
    result = !(state & (FLUX_JOB_STATE_CLEANUP | FLUX_JOB_STATE_INACTIVE))
             && !(args && state == FLUX_JOB_STATE_NEW);
    flux_plugin_arg_destroy (lookup);
    return result;
}

/* At submit a ValueError is the handler's way of saying "this value is
 * wrong": the user's error.  Not a UnicodeError nor a json.JSONDecodeError,
 * though they are ValueErrors too: text that could not be decoded is a
 * handler bug or what a target sent, never what the user typed wrong, and
 * its traceback is kept.  json is in sys.modules (the handler imports it).
 */
static bool is_user_error (PyObject *type)
{
    PyObject *json;
    PyObject *decode_error = NULL;
    bool result;

    if (!type
        || !PyErr_GivenExceptionMatches (type, PyExc_ValueError)
        || PyErr_GivenExceptionMatches (type, PyExc_UnicodeError))
        return false;
    if ((json = PyImport_ImportModule ("json")))
        decode_error = PyObject_GetAttrString (json, "JSONDecodeError");
    result = !(decode_error && PyErr_GivenExceptionMatches (type, decode_error));
    Py_XDECREF (decode_error);
    Py_XDECREF (json);
    PyErr_Clear ();
    return result;
}

int pyerror_report (flux_plugin_t *p,
                    flux_plugin_arg_t *args,
                    enum pyerror_site site,
                    flux_jobid_t id,
                    const char *where,
                    const char *exception_type,
                    PyObject *type,
                    PyObject *value,
                    PyObject *tb)
{
    flux_t *h = flux_jobtap_get_flux (p);
    bool user_error = is_user_error (type);
    char *summary = format_summary (type, value);
    char *traceback = format_traceback (type, value, tb);
    char idbuf[64] = "";

    (void) flux_job_id_encode (id, "f58", idbuf, sizeof (idbuf));

    switch (site) {
        case PYERROR_SUBMIT:
            /* A ValueError (is_user_error) is the handler's way of
             * saying "this value is wrong": the message is for the user,
             * as is.  Anything else is a handler bug: say so, and keep
             * the traceback for the admin.
             */
            if (user_error) {
                char *message = format_message (value);
                flux_log (h, LOG_INFO, "delegate: %s: rejected: %s",
                          where, message);
                reject_job (p, args, message);
                free (message);
            }
            else {
                char *message = NULL;
                flux_log (h, LOG_ERR, "delegate: %s: handler error: %s",
                          where, summary);
                log_traceback (h, LOG_ERR, traceback);
                if (asprintf (&message,
                              "handler error (traceback in broker log): %s",
                              summary) < 0)
                    message = NULL;
                reject_job (p, args, message ? message : summary);
                free (message);
            }
            break;
        case PYERROR_JOB: {
            char *note = NULL;
            flux_log (h, LOG_ERR, "delegate: %s: %s: handler error: %s",
                      idbuf, where, summary);
            log_traceback (h, LOG_ERR, traceback);
            if (asprintf (&note,
                          "delegate: handler error in %s (traceback in"
                          " broker log): %s",
                          where,
                          summary) < 0)
                note = NULL;
            if (job_can_take_exception (p, args, id)
                && raise_job_exception (p,
                                        id,
                                        exception_type,
                                        note ? note : summary) < 0)
                flux_log_error (h, "delegate: %s: raising exception", idbuf);
            free (note);
            break;
        }
        case PYERROR_PLUGIN:
            flux_log (h, LOG_ERR, "delegate: %s: handler error: %s",
                      where, summary);
            log_traceback (h, LOG_ERR, traceback);
            /* e.g. conf.update: the message reaches 'flux config reload' */
            if (args)
                (void) flux_jobtap_error (p, args, "delegate: %s", summary);
            break;
    }
    free (summary);
    free (traceback);
    return -1;
}

int pyerror_report_current (flux_plugin_t *p,
                            flux_plugin_arg_t *args,
                            enum pyerror_site site,
                            flux_jobid_t id,
                            const char *where,
                            const char *exception_type)
{
    PyObject *type, *value, *tb;
    int rc;

    PyErr_Fetch (&type, &value, &tb);
    PyErr_NormalizeException (&type, &value, &tb);
    if (tb && value)
        (void) PyException_SetTraceback (value, tb);
    rc = pyerror_report (p, args, site, id, where, exception_type, type, value, tb);
    Py_XDECREF (type);
    Py_XDECREF (value);
    Py_XDECREF (tb);
    return rc;
}

// vi:ts=4 sw=4 expandtab

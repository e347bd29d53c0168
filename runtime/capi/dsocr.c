/* libdsocr: the C API of dsocr over an embedded CPython running dsocr.runtime (see dsocr.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsocr.h"

struct dsocr_model { PyObject *obj; };
struct dsocr_session { PyObject *obj; };
struct dsocr_result {
    char *markdown;
    char *stop_reason;
    size_t n_boxes;
    dsocr_box *boxes; /* labels are separately malloc'ed strings */
};

static __thread char g_error[4096];
static PyObject *g_bridge = NULL; /* dsocr.runtime.capi.bridge, imported once */
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

static void set_error(const char *msg) { snprintf(g_error, sizeof g_error, "%s", msg ? msg : ""); }
const char *dsocr_last_error(void) { return g_error; }
int dsocr_api_version(void) { return DSOCR_API_VERSION; }

dsocr_run_options dsocr_run_options_default(void) {
    dsocr_run_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    return o;
}

/* Map the pending Python exception to a status (bridge.status_of) and store its message. GIL held. */
static dsocr_status take_py_error(void) {
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    dsocr_status code = DSOCR_ERR_INTERNAL;
    PyObject *pair = (g_bridge && value) ? PyObject_CallMethod(g_bridge, "status_of", "O", value) : NULL;
    if (pair && PyTuple_Check(pair) && PyTuple_Size(pair) == 2) {
        code = (dsocr_status)PyLong_AsLong(PyTuple_GetItem(pair, 0));
        const char *msg = PyUnicode_AsUTF8(PyTuple_GetItem(pair, 1));
        set_error(msg ? msg : "unknown error");
    } else {
        PyObject *s = value ? PyObject_Str(value) : NULL;
        const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
        set_error(msg ? msg : "unknown Python error");
        Py_XDECREF(s);
    }
    Py_XDECREF(pair);
    PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return code;
}

/* Start the interpreter if the host has none (then release the GIL so any thread can take it). */
dsocr_status dsocr_init(void) {
    pthread_mutex_lock(&g_init_lock);
    if (!Py_IsInitialized()) {
        Py_InitializeEx(0);
        PyEval_SaveThread();
    }
    pthread_mutex_unlock(&g_init_lock);
    PyGILState_STATE gil = PyGILState_Ensure();
    dsocr_status st = DSOCR_OK;
    if (!g_bridge) {
        g_bridge = PyImport_ImportModule("dsocr.runtime.capi.bridge");
        if (!g_bridge) {
            take_py_error();
            char msg[4096];
            snprintf(msg, sizeof msg, "cannot import dsocr.runtime (set PYTHONPATH/PYTHONHOME?): %.3900s", g_error);
            set_error(msg);
            st = DSOCR_ERR_BACKEND;
        }
    }
    PyGILState_Release(gil);
    return st;
}

int dsocr_bundle_format_version(void) {
    if (dsocr_init() != DSOCR_OK) return -1;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *v = PyObject_CallMethod(g_bridge, "bundle_format_version", NULL);
    int out = v ? (int)PyLong_AsLong(v) : -1;
    if (!v) take_py_error();
    Py_XDECREF(v);
    PyGILState_Release(gil);
    return out;
}

#define REQUIRE(cond, msg)                                  \
    do {                                                    \
        if (!(cond)) {                                      \
            set_error(msg);                                 \
            return DSOCR_ERR_INVALID_ARGUMENT;              \
        }                                                   \
    } while (0)

dsocr_status dsocr_model_open(const char *bundle_dir, dsocr_model **out) {
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(bundle_dir, "bundle_dir must not be NULL");
    dsocr_status st = dsocr_init();
    if (st != DSOCR_OK) return st;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *obj = PyObject_CallMethod(g_bridge, "Model", "s", bundle_dir);
    if (obj) {
        *out = calloc(1, sizeof **out);
        if (*out) (*out)->obj = obj; else { Py_DECREF(obj); set_error("out of memory"); st = DSOCR_ERR_INTERNAL; }
    } else {
        st = take_py_error();
    }
    PyGILState_Release(gil);
    return st;
}

static void release(PyObject *obj) {
    if (!obj || !Py_IsInitialized()) return;
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_DECREF(obj);
    PyGILState_Release(gil);
}

void dsocr_model_destroy(dsocr_model *model) {
    if (!model) return;
    release(model->obj);
    free(model);
}

dsocr_status dsocr_session_create(dsocr_model *model, dsocr_session **out) {
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(model && model->obj, "model must not be NULL");
    PyGILState_STATE gil = PyGILState_Ensure();
    dsocr_status st = DSOCR_OK;
    PyObject *obj = PyObject_CallMethod(g_bridge, "Session", "O", model->obj);
    if (obj) {
        *out = calloc(1, sizeof **out);
        if (*out) (*out)->obj = obj; else { Py_DECREF(obj); set_error("out of memory"); st = DSOCR_ERR_INTERNAL; }
    } else {
        st = take_py_error();
    }
    PyGILState_Release(gil);
    return st;
}

void dsocr_session_destroy(dsocr_session *session) {
    if (!session) return;
    release(session->obj);
    free(session);
}

/* ---- streaming: a Python callable wrapping the host's C callback ---- */
typedef struct { dsocr_text_callback fn; void *user_data; } callback_data;

static PyObject *callback_trampoline(PyObject *capsule, PyObject *piece) {
    callback_data *d = PyCapsule_GetPointer(capsule, "dsocr.callback");
    const char *s = d ? PyUnicode_AsUTF8(piece) : NULL;
    if (!s) return NULL;
    return PyBool_FromLong(d->fn(s, d->user_data) != 0);
}

static PyMethodDef callback_def = {"on_text", callback_trampoline, METH_O, NULL};

static char *dup_utf8(PyObject *obj, const char *attr) {
    PyObject *v = PyObject_GetAttrString(obj, attr);
    const char *s = v ? PyUnicode_AsUTF8(v) : NULL;
    char *copy = s ? strdup(s) : NULL;
    Py_XDECREF(v);
    return copy;
}

static dsocr_status to_result(PyObject *res, dsocr_result **out) {
    dsocr_result *r = calloc(1, sizeof *r);
    PyObject *boxes = PyObject_GetAttrString(res, "boxes");
    if (!r || !boxes) { Py_XDECREF(boxes); free(r); return take_py_error(); }
    r->markdown = dup_utf8(res, "markdown");
    r->stop_reason = dup_utf8(res, "stop_reason");
    r->n_boxes = (size_t)PyList_Size(boxes);
    r->boxes = calloc(r->n_boxes ? r->n_boxes : 1, sizeof *r->boxes);
    for (size_t i = 0; r->boxes && i < r->n_boxes; i++) {
        const char *label = NULL;
        int x1 = 0, y1 = 0, x2 = 0, y2 = 0;
        if (PyArg_ParseTuple(PyList_GetItem(boxes, (Py_ssize_t)i), "siiii", &label, &x1, &y1, &x2, &y2)) {
            r->boxes[i] = (dsocr_box){strdup(label), x1, y1, x2, y2};
        }
    }
    Py_DECREF(boxes);
    if (!r->markdown || !r->stop_reason || !r->boxes || PyErr_Occurred()) {
        dsocr_result_destroy(r);
        return PyErr_Occurred() ? take_py_error() : (set_error("out of memory"), DSOCR_ERR_INTERNAL);
    }
    *out = r;
    return DSOCR_OK;
}

/* Shared by both run calls: method "run_encoded"/"run_rgb" with positional args built by the caller. */
static dsocr_status run(dsocr_session *session, const dsocr_run_options *opts, dsocr_result **out,
                        const char *method, PyObject *head_args) {
    dsocr_run_options o = dsocr_run_options_default();
    if (opts) {
        size_t n = opts->struct_size && opts->struct_size < sizeof o ? opts->struct_size : sizeof o;
        memcpy(&o, opts, n);
    }
    callback_data cb = {o.on_text, o.user_data};
    PyObject *callback = Py_None, *capsule = NULL;
    Py_INCREF(Py_None);
    if (cb.fn) {
        capsule = PyCapsule_New(&cb, "dsocr.callback", NULL);
        Py_DECREF(Py_None);
        callback = capsule ? PyCFunction_New(&callback_def, capsule) : NULL;
    }
    dsocr_status st;
    PyObject *res = NULL;
    if (!callback) {
        st = take_py_error();
    } else {
        PyObject *tail = Py_BuildValue("(zziO)", o.mode, o.prompt, (int)o.max_new_tokens, callback);
        PyObject *args = tail ? PySequence_Concat(head_args, tail) : NULL;
        PyObject *fn = PyObject_GetAttrString(session->obj, method);
        res = (args && fn) ? PyObject_CallObject(fn, args) : NULL;
        st = res ? to_result(res, out) : take_py_error();
        Py_XDECREF(tail);
        Py_XDECREF(args);
        Py_XDECREF(fn);
    }
    Py_XDECREF(res);
    Py_XDECREF(callback);
    Py_XDECREF(capsule);
    return st;
}

dsocr_status dsocr_session_run_encoded(dsocr_session *session, const uint8_t *bytes, size_t len,
                                       const dsocr_run_options *opts, dsocr_result **out) {
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(session && session->obj, "session must not be NULL");
    REQUIRE(bytes || len == 0, "bytes must not be NULL");
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *head = Py_BuildValue("(y#)", (const char *)(bytes ? bytes : (const uint8_t *)""), (Py_ssize_t)len);
    dsocr_status st = head ? run(session, opts, out, "run_encoded", head) : take_py_error();
    Py_XDECREF(head);
    PyGILState_Release(gil);
    return st;
}

dsocr_status dsocr_session_run_rgb(dsocr_session *session, const uint8_t *rgb, int32_t width, int32_t height,
                                   int32_t stride, const dsocr_run_options *opts, dsocr_result **out) {
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(session && session->obj, "session must not be NULL");
    REQUIRE(rgb, "rgb must not be NULL");
    REQUIRE(width > 0 && height > 0 && stride >= 0, "width and height must be positive, stride >= 0");
    size_t row = stride ? (size_t)stride : 3u * (size_t)width;
    size_t len = row * (size_t)(height - 1) + 3u * (size_t)width;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *head = Py_BuildValue("(y#iii)", (const char *)rgb, (Py_ssize_t)len, (int)width, (int)height, (int)stride);
    dsocr_status st = head ? run(session, opts, out, "run_rgb", head) : take_py_error();
    Py_XDECREF(head);
    PyGILState_Release(gil);
    return st;
}

const char *dsocr_result_markdown(const dsocr_result *result) { return result ? result->markdown : NULL; }
const char *dsocr_result_stop_reason(const dsocr_result *result) { return result ? result->stop_reason : NULL; }
size_t dsocr_result_box_count(const dsocr_result *result) { return result ? result->n_boxes : 0; }

dsocr_status dsocr_result_box(const dsocr_result *result, size_t index, dsocr_box *out) {
    REQUIRE(result && out, "result and out must not be NULL");
    REQUIRE(index < result->n_boxes, "box index out of range");
    *out = result->boxes[index];
    return DSOCR_OK;
}

void dsocr_result_destroy(dsocr_result *result) {
    if (!result) return;
    for (size_t i = 0; result->boxes && i < result->n_boxes; i++) free((char *)result->boxes[i].label);
    free(result->boxes);
    free(result->markdown);
    free(result->stop_reason);
    free(result);
}

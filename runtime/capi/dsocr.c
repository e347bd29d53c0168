/* libdsocr: the C API of dsocr (dsocr.h) over an embedded CPython running dsocr.runtime.
 *
 * Every entry point that runs Python brackets it with PyGILState_Ensure/Release; the interpreter
 * is started once (start_python) and its GIL released right after, so any host thread can call in.
 * Python objects live only inside model/session handles; results are plain C copies. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsocr.h"

#define BRIDGE_MODULE "dsocr.runtime.capi.bridge"
#define MIN_RUN_OPTIONS_SIZE sizeof(dsocr_run_options)     /* API version 1 is the first layout */
#define MIN_MODEL_OPTIONS_SIZE sizeof(dsocr_model_options)

struct dsocr_model { PyObject *obj; /* bridge.Model */ };
struct dsocr_session { PyObject *obj; /* bridge.Session */ atomic_flag busy; };
struct dsocr_result {
    char *markdown, *raw, *stop_reason;
    size_t n_tokens, n_boxes;
    dsocr_box *boxes; /* each label a separate malloc'ed string */
};

static _Thread_local char g_error[4096];
static PyObject *_Atomic g_bridge = NULL;    /* the bridge module, imported once, never released */
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_start_error[1024];             /* why the interpreter failed to start, under g_init_lock */

/* ---- errors ------------------------------------------------------------------------------------ */
static void set_error(const char *msg) { snprintf(g_error, sizeof g_error, "%s", msg ? msg : ""); }
static void clear_error(void) { g_error[0] = '\0'; }
const char *dsocr_last_error(void) { return g_error; }

static dsocr_status fail(dsocr_status st, const char *msg) { set_error(msg); return st; }

#define REQUIRE(cond, msg) do { if (!(cond)) return fail(DSOCR_ERR_INVALID_ARGUMENT, msg); } while (0)

const char *dsocr_status_name(dsocr_status s) {
    static const char *const names[] = {
        "DSOCR_OK", "DSOCR_ERR_INVALID_ARGUMENT", "DSOCR_ERR_IO", "DSOCR_ERR_BAD_IMAGE",
        "DSOCR_ERR_BAD_BUNDLE", "DSOCR_ERR_MODE", "DSOCR_ERR_BACKEND", "DSOCR_ERR_CACHE_FULL",
        "DSOCR_ERR_INTERNAL", "DSOCR_ERR_PYTHON", "DSOCR_ERR_OUT_OF_MEMORY", "DSOCR_ERR_BUSY"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "DSOCR_ERR_UNKNOWN";
}

/* The pending Python exception -> a status (bridge.status_of) and this thread's message. GIL held. */
static dsocr_status take_py_error(void) {
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    dsocr_status code = PyErr_GivenExceptionMatches(type, PyExc_MemoryError) ? DSOCR_ERR_OUT_OF_MEMORY
                                                                            : DSOCR_ERR_INTERNAL;
    PyObject *bridge = atomic_load(&g_bridge);
    PyObject *pair = (bridge && value) ? PyObject_CallMethod(bridge, "status_of", "O", value) : NULL;
    const char *msg = NULL;
    PyObject *str = NULL;
    if (pair && PyTuple_Check(pair) && PyTuple_Size(pair) == 2) {
        long c = PyLong_AsLong(PyTuple_GetItem(pair, 0));
        if (c > DSOCR_OK && c <= DSOCR_ERR_BUSY) code = (dsocr_status)c;
        msg = PyUnicode_AsUTF8(PyTuple_GetItem(pair, 1));
    } else if (value) {
        PyErr_Clear();
        str = PyObject_Str(value);
        msg = str ? PyUnicode_AsUTF8(str) : NULL;
    }
    set_error(msg ? msg : "unknown Python error");
    PyErr_Clear();
    Py_XDECREF(str);
    Py_XDECREF(pair);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return code;
}

/* ---- interpreter ------------------------------------------------------------------------------- */
static dsocr_status status_failure(const char *what, PyStatus st) {
    snprintf(g_start_error, sizeof g_start_error, "cannot start the embedded Python (%s: %s%s%s)", what,
             st.func ? st.func : "", st.func ? ": " : "", st.err_msg ? st.err_msg : "exit requested");
    return fail(DSOCR_ERR_PYTHON, g_start_error);
}

/* Start CPython unless the process already runs it. Like Py_InitializeEx(0), but a failure is a
 * status, not an abort, and the host's locale, signal handlers and C stdio are left as they are.
 * PYTHONHOME / PYTHONPATH are honoured. Called under g_init_lock. */
static dsocr_status start_python(void) {
    if (Py_IsInitialized()) return DSOCR_OK;
    if (g_start_error[0]) return fail(DSOCR_ERR_PYTHON, g_start_error); /* never retried */
    PyPreConfig pre;
    PyPreConfig_InitPythonConfig(&pre);
    pre.configure_locale = 0;
    pre.coerce_c_locale = 0;
    PyStatus st = Py_PreInitialize(&pre);
    if (PyStatus_Exception(st)) return status_failure("pre-initialization", st);
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    config.configure_c_stdio = 0;
    st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) return status_failure("initialization", st);
    PyEval_SaveThread(); /* release the GIL; every call takes it with PyGILState_Ensure */
    return DSOCR_OK;
}

static dsocr_status import_bridge(void) {
    PyGILState_STATE gil = PyGILState_Ensure();
    dsocr_status st = DSOCR_OK;
    if (!atomic_load(&g_bridge)) {
        PyObject *mod = PyImport_ImportModule(BRIDGE_MODULE);
        if (mod) {
            atomic_store(&g_bridge, mod);
        } else {
            take_py_error();
            char msg[sizeof g_error];
            snprintf(msg, sizeof msg, "cannot import " BRIDGE_MODULE " in the embedded Python: %.3500s "
                     "(set PYTHONPATH/PYTHONHOME so that it finds dsocr and its dependencies)", g_error);
            st = fail(DSOCR_ERR_PYTHON, msg);
        }
    }
    PyGILState_Release(gil);
    return st;
}

dsocr_status dsocr_init(void) {
    clear_error();
    if (atomic_load(&g_bridge)) return DSOCR_OK;
    pthread_mutex_lock(&g_init_lock);
    dsocr_status st = start_python();
    if (st == DSOCR_OK) st = import_bridge(); /* an import failure is retried on the next call */
    pthread_mutex_unlock(&g_init_lock);
    return st;
}

int dsocr_api_version(void) { return DSOCR_API_VERSION; }

int dsocr_bundle_format_version(void) {
    if (dsocr_init() != DSOCR_OK) return -1;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *v = PyObject_CallMethod(atomic_load(&g_bridge), "bundle_format_version", NULL);
    int out = v ? (int)PyLong_AsLong(v) : -1;
    if (!v || PyErr_Occurred()) { take_py_error(); out = -1; }
    Py_XDECREF(v);
    PyGILState_Release(gil);
    return out;
}

dsocr_model_options dsocr_model_options_default(void) {
    dsocr_model_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    return o;
}

dsocr_run_options dsocr_run_options_default(void) {
    dsocr_run_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    return o;
}

/* Copy a caller's options struct of any size >= min into `dst` (defaults beyond its struct_size). */
static dsocr_status read_options(void *dst, size_t dst_size, const void *src, size_t min, const char *what) {
    size_t given = *(const size_t *)src;
    if (given < min) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s.struct_size=%zu; set it to sizeof(%s) (or start from %s_default())",
                 what, given, what, what);
        return fail(DSOCR_ERR_INVALID_ARGUMENT, msg);
    }
    memcpy(dst, src, given < dst_size ? given : dst_size); /* fields newer than this library: ignored */
    return DSOCR_OK;
}

/* ---- handles ----------------------------------------------------------------------------------- */
/* Call bridge.<name>(*args) and keep the returned object in a new handle of `size` bytes. */
static dsocr_status new_handle(const char *name, PyObject *args, size_t size, void **out) {
    PyObject *obj = NULL, *fn = PyObject_GetAttrString(atomic_load(&g_bridge), name);
    if (fn && args) obj = PyObject_CallObject(fn, args);
    Py_XDECREF(fn);
    if (!obj) return take_py_error();
    void *h = calloc(1, size);
    if (!h) { Py_DECREF(obj); return fail(DSOCR_ERR_OUT_OF_MEMORY, "out of memory"); }
    *(PyObject **)h = obj; /* both handle structs start with their PyObject * */
    *out = h;
    return DSOCR_OK;
}

dsocr_status dsocr_model_create(const char *bundle_dir, const dsocr_model_options *opts, dsocr_model **out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(bundle_dir, "bundle_dir must not be NULL");
    dsocr_model_options o = dsocr_model_options_default();
    dsocr_status st = opts ? read_options(&o, sizeof o, opts, MIN_MODEL_OPTIONS_SIZE, "dsocr_model_options")
                           : DSOCR_OK;
    if (st == DSOCR_OK) st = dsocr_init();
    if (st != DSOCR_OK) return st;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *path = PyUnicode_DecodeFSDefault(bundle_dir); /* stolen by "N"; NULL fails the build */
    PyObject *args = Py_BuildValue("(Nzii)", path, o.device, (int)o.threads, (int)o.max_seq_len);
    st = args ? new_handle("Model", args, sizeof **out, (void **)out) : take_py_error();
    Py_XDECREF(args);
    PyGILState_Release(gil);
    return st;
}

static void release(PyObject *obj) {
    if (!obj || !Py_IsInitialized()) return; /* a Python host already shutting down: leave it */
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
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(model && model->obj, "model must not be NULL");
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *args = PyTuple_Pack(1, model->obj);
    dsocr_status st = args ? new_handle("Session", args, sizeof **out, (void **)out) : take_py_error();
    Py_XDECREF(args);
    PyGILState_Release(gil);
    if (st == DSOCR_OK) atomic_flag_clear(&(*out)->busy);
    return st;
}

void dsocr_session_destroy(dsocr_session *session) {
    if (!session) return;
    release(session->obj);
    free(session);
}

/* ---- streaming: a Python callable over the host's C callback ------------------------------------- */
typedef struct { dsocr_text_callback fn; void *user_data; } callback_data;

static PyObject *callback_trampoline(PyObject *capsule, PyObject *piece) {
    callback_data *d = PyCapsule_GetPointer(capsule, "dsocr.callback");
    const char *s = d ? PyUnicode_AsUTF8(piece) : NULL; /* owned by `piece`, alive during the call */
    if (!s) return NULL;
    int stop;
    Py_BEGIN_ALLOW_THREADS /* a slow host callback does not hold up other sessions */
    stop = d->fn(s, d->user_data);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(stop != 0);
}

static PyMethodDef callback_def = {"on_text", callback_trampoline, METH_O, NULL};

/* A new reference: None, or a callable valid while `data` lives. NULL with an exception on failure. */
static PyObject *make_callback(callback_data *data) {
    if (!data->fn) Py_RETURN_NONE;
    PyObject *capsule = PyCapsule_New(data, "dsocr.callback", NULL);
    PyObject *fn = capsule ? PyCFunction_New(&callback_def, capsule) : NULL;
    Py_XDECREF(capsule); /* the function holds it */
    return fn;
}

/* ---- results ----------------------------------------------------------------------------------- */
static char *dup_attr(PyObject *obj, const char *attr) {
    PyObject *v = PyObject_GetAttrString(obj, attr);
    Py_ssize_t n = 0;
    const char *s = v ? PyUnicode_AsUTF8AndSize(v, &n) : NULL;
    char *copy = s ? malloc((size_t)n + 1) : NULL;
    if (copy) memcpy(copy, s, (size_t)n + 1);
    else if (s) PyErr_NoMemory();
    Py_XDECREF(v);
    return copy;
}

static int copy_boxes(PyObject *res, dsocr_result *r) {
    PyObject *boxes = PyObject_GetAttrString(res, "boxes");
    Py_ssize_t n = boxes ? PyList_Size(boxes) : -1;
    if (n < 0) { Py_XDECREF(boxes); return -1; }
    r->boxes = calloc(n ? (size_t)n : 1, sizeof *r->boxes);
    if (!r->boxes) { Py_DECREF(boxes); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++, r->n_boxes++) {
        const char *label = NULL;
        dsocr_box *b = &r->boxes[i];
        if (!PyArg_ParseTuple(PyList_GetItem(boxes, i), "siiii", &label, &b->x1, &b->y1, &b->x2, &b->y2)) break;
        if (!(b->label = strdup(label))) { PyErr_NoMemory(); break; }
    }
    Py_DECREF(boxes);
    return PyErr_Occurred() ? -1 : 0;
}

/* bridge.Result -> a new dsocr_result (plain C copies). GIL held. */
static dsocr_status to_result(PyObject *res, dsocr_result **out) {
    dsocr_result *r = calloc(1, sizeof *r);
    if (!r) return fail(DSOCR_ERR_OUT_OF_MEMORY, "out of memory");
    PyObject *n = PyObject_GetAttrString(res, "n_generated");
    r->n_tokens = n ? PyLong_AsSize_t(n) : 0;
    Py_XDECREF(n);
    if (!PyErr_Occurred() && (r->markdown = dup_attr(res, "markdown")) && (r->raw = dup_attr(res, "raw"))
        && (r->stop_reason = dup_attr(res, "stop_reason")) && copy_boxes(res, r) == 0) {
        *out = r;
        return DSOCR_OK;
    }
    dsocr_result_destroy(r);
    return take_py_error();
}

/* ---- running ----------------------------------------------------------------------------------- */
/* session.<method>(*head, mode, prompt, ref, max_new_tokens, on_text). `head` holds a memoryview
 * over the caller's buffer, released before returning so Python never reads it after the call. */
static dsocr_status call_run(dsocr_session *s, const char *method, PyObject *head, PyObject *view,
                             const dsocr_run_options *o, dsocr_result **out) {
    callback_data cb = {o->on_text, o->user_data};
    PyObject *callback = make_callback(&cb);
    PyObject *tail = callback ? Py_BuildValue("(zzziO)", o->mode, o->prompt, o->ref, (int)o->max_new_tokens,
                                              callback) : NULL;
    PyObject *args = tail ? PySequence_Concat(head, tail) : NULL;
    PyObject *fn = args ? PyObject_GetAttrString(s->obj, method) : NULL;
    PyObject *res = fn ? PyObject_CallObject(fn, args) : NULL;
    dsocr_status st = res ? to_result(res, out) : take_py_error();
    PyObject *done = PyObject_CallMethod(view, "release", NULL);
    if (!done && st == DSOCR_OK) { /* Python kept an export of the caller's memory: refuse the result */
        dsocr_result_destroy(*out);
        *out = NULL;
        st = take_py_error();
    }
    PyErr_Clear();
    Py_XDECREF(done);
    Py_XDECREF(res);
    Py_XDECREF(fn);
    Py_XDECREF(args);
    Py_XDECREF(tail);
    Py_XDECREF(callback);
    return st;
}

typedef struct { const uint8_t *data; size_t len; int32_t width, height, stride; int rgb; } image_input;

/* Checks shared by both run calls, then the call itself under the GIL and the session's busy flag. */
static dsocr_status run(dsocr_session *s, const image_input *in, const dsocr_run_options *opts,
                        dsocr_result **out) {
    dsocr_run_options o = dsocr_run_options_default();
    dsocr_status st = opts ? read_options(&o, sizeof o, opts, MIN_RUN_OPTIONS_SIZE, "dsocr_run_options")
                           : DSOCR_OK;
    if (st != DSOCR_OK) return st;
    if (atomic_flag_test_and_set(&s->busy))
        return fail(DSOCR_ERR_BUSY, "this session is already running a call (use one session per thread)");
    PyGILState_STATE gil = PyGILState_Ensure();
    static const char empty[1];
    PyObject *view = PyMemoryView_FromMemory((char *)(in->data ? (const char *)in->data : empty),
                                             (Py_ssize_t)in->len, PyBUF_READ);
    PyObject *head = !view ? NULL
                     : in->rgb ? Py_BuildValue("(Oiii)", view, (int)in->width, (int)in->height, (int)in->stride)
                               : PyTuple_Pack(1, view);
    st = head ? call_run(s, in->rgb ? "run_rgb" : "run_encoded", head, view, &o, out) : take_py_error();
    Py_XDECREF(head);
    Py_XDECREF(view);
    PyGILState_Release(gil);
    atomic_flag_clear(&s->busy);
    return st;
}

dsocr_status dsocr_session_run_encoded(dsocr_session *session, const uint8_t *bytes, size_t len,
                                       const dsocr_run_options *opts, dsocr_result **out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(session && session->obj, "session must not be NULL");
    REQUIRE(bytes || len == 0, "bytes must not be NULL (len > 0)");
    REQUIRE(len <= (size_t)PY_SSIZE_T_MAX, "len is too large");
    image_input in = {bytes, len, 0, 0, 0, 0};
    return run(session, &in, opts, out);
}

dsocr_status dsocr_session_run_rgb(dsocr_session *session, const uint8_t *rgb, int32_t width, int32_t height,
                                   int32_t stride, const dsocr_run_options *opts, dsocr_result **out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(session && session->obj, "session must not be NULL");
    REQUIRE(rgb, "rgb must not be NULL");
    REQUIRE(width > 0 && height > 0, "width and height must be positive");
    REQUIRE(stride >= 0, "stride must be >= 0 (0: 3 * width)");
    size_t row = 3u * (size_t)width, step = stride ? (size_t)stride : row;
    if (step < row) {
        char msg[160];
        snprintf(msg, sizeof msg, "stride=%d is smaller than a row of %d RGB pixels (%zu bytes)", (int)stride,
                 (int)width, row);
        return fail(DSOCR_ERR_BAD_IMAGE, msg);
    }
    image_input in = {rgb, step * (size_t)(height - 1) + row, width, height, stride, 1};
    return run(session, &in, opts, out);
}

/* ---- result getters ---------------------------------------------------------------------------- */
const char *dsocr_result_markdown(const dsocr_result *r) { return r ? r->markdown : NULL; }
const char *dsocr_result_raw(const dsocr_result *r) { return r ? r->raw : NULL; }
const char *dsocr_result_stop_reason(const dsocr_result *r) { return r ? r->stop_reason : NULL; }
size_t dsocr_result_token_count(const dsocr_result *r) { return r ? r->n_tokens : 0; }
size_t dsocr_result_box_count(const dsocr_result *r) { return r ? r->n_boxes : 0; }

dsocr_status dsocr_result_box(const dsocr_result *r, size_t index, dsocr_box *out) {
    clear_error();
    REQUIRE(r && out, "result and out must not be NULL");
    REQUIRE(index < r->n_boxes, "box index out of range (see dsocr_result_box_count)");
    *out = r->boxes[index];
    return DSOCR_OK;
}

void dsocr_result_destroy(dsocr_result *r) {
    if (!r) return;
    for (size_t i = 0; r->boxes && i < r->n_boxes; i++) free((char *)r->boxes[i].label);
    free(r->boxes);
    free(r->markdown);
    free(r->raw);
    free(r->stop_reason);
    free(r);
}

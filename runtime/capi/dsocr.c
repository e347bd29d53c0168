/* libdsocr: the C API of dsocr (dsocr.h) over an embedded CPython running dsocr.runtime.
 *
 * Every entry point that runs Python brackets it with PyGILState_Ensure/Release; the interpreter
 * is started once (start_python) and its GIL released right after, so any host thread can call in.
 * Python objects live only inside model/session objects; results are plain C copies.
 *
 * Handles are ids in a registry (handles.c), never pointers the library dereferences: a stale, doubled
 * or made-up handle is refused without ever reading freed memory. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsocr.h"
#include "handles.h"

#ifndef DSOCR_VERSION_STRING
#define DSOCR_VERSION_STRING "unknown" /* build.py and the Makefile pass the package's version */
#endif

#define BRIDGE_MODULE "dsocr.runtime.capi.bridge"
#define VENV_ENV "DSOCR_PYTHON_VENV"
#define MIN_RUN_OPTIONS_SIZE offsetof(dsocr_run_options, ngram_size)    /* API version 1 layout */
#define MIN_MODEL_OPTIONS_SIZE offsetof(dsocr_model_options, backend)  /* API version 1 layout */
#define MAX_OPTIONS_SIZE ((size_t)1 << 16)

struct dsocr_model { PyObject *obj; /* bridge.Model */ };
struct dsocr_session { PyObject *obj; /* bridge.Session */ atomic_flag busy; };
typedef struct { char *name; uint8_t *data; size_t size; int32_t width, height; } figure;
struct dsocr_result {
    char *markdown, *raw, *stop_reason;
    size_t n_tokens, n_boxes, n_figures;
    dsocr_box *boxes; /* each label a separate malloc'ed string */
    figure *figures;
};

static _Thread_local char g_error[4096];
static PyObject *_Atomic g_bridge = NULL;    /* the bridge module, imported once, never released */
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_start_error[2048];             /* why the interpreter failed to start, under g_init_lock */

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

/* ---- handles ------------------------------------------------------------------------------------ */
static const char *const KIND_NAMES[] = {"", "dsocr_model", "dsocr_session", "dsocr_result"};

static dsocr_status stale(int kind) {
    char msg[256];
    snprintf(msg, sizeof msg, "not a live %s handle (NULL, destroyed already, or of another kind)", KIND_NAMES[kind]);
    return fail(DSOCR_ERR_INVALID_ARGUMENT, msg);
}

/* Unlink `handle`; its object is freed now or by the last call still using it. */
static dsocr_status destroy_handle(void *handle, int kind) {
    clear_error();
    if (!handle) return DSOCR_OK;
    if (handles_remove(handle, kind) == 0) return DSOCR_OK;
    char msg[256];
    snprintf(msg, sizeof msg, "not a live %s handle: it was destroyed already, or did not come from "
             "%s_create (a handle is invalid after destroy, as a pointer is after free)",
             KIND_NAMES[kind], KIND_NAMES[kind]);
    return fail(DSOCR_ERR_INVALID_ARGUMENT, msg);
}

/* ---- interpreter ------------------------------------------------------------------------------- */
static dsocr_status status_failure(const char *what, PyStatus st) {
    snprintf(g_start_error, sizeof g_start_error, "cannot start the embedded Python (%s: %s%s%s)", what,
             st.func ? st.func : "", st.func ? ": " : "", st.err_msg ? st.err_msg : "exit requested");
    return fail(DSOCR_ERR_PYTHON, g_start_error);
}

/* site.addsitedir(<venv>/lib/pythonX.Y/site-packages), moved to the front of sys.path, after checking
 * that the venv was made by this Python's X.Y. Raises RuntimeError with a message for a person. */
static const char VENV_CODE[] =
    "def add_venv(venv):\n"
    "    import os, site, sys\n"
    "    want = '%d.%d' % sys.version_info[:2]\n"
    "    where = 'DSOCR_PYTHON_VENV=' + venv\n"
    "    cfg = os.path.join(venv, 'pyvenv.cfg')\n"
    "    if not os.path.isfile(cfg):\n"
    "        raise RuntimeError(where + ' has no pyvenv.cfg: it must name a virtual environment '\n"
    "                           '(python' + want + ' -m venv DIR)')\n"
    "    version = None\n"
    "    with open(cfg, encoding='utf-8', errors='replace') as f:\n"
    "        for line in f:\n"
    "            key, sep, value = line.partition('=')\n"
    "            if sep and key.strip().lower() == 'version':\n"
    "                version = value.strip()\n"
    "    if version is not None and '.'.join(version.split('.')[:2]) != want:\n"
    "        raise RuntimeError(where + ' was made by Python ' + version + ' but libdsocr embeds Python '\n"
    "                           + want + ': make it with python' + want + ' -m venv')\n"
    "    packages = os.path.join(venv, 'lib', 'python' + want, 'site-packages')\n"
    "    if not os.path.isdir(packages):\n"
    "        raise RuntimeError(where + ': no ' + packages + ' (is it a Python ' + want + ' environment?)')\n"
    "    n = len(sys.path)\n"
    "    site.addsitedir(packages)\n"
    "    added = sys.path[n:]\n"
    "    del sys.path[n:]\n"
    "    sys.path[0:0] = [p for p in added if p not in sys.path] or [packages]\n";

/* Run VENV_CODE for $DSOCR_PYTHON_VENV, if set. GIL held. */
static dsocr_status add_venv(void) {
    const char *venv = getenv(VENV_ENV);
    if (!venv || !*venv) return DSOCR_OK;
    PyObject *globals = PyDict_New();
    PyObject *builtins = PyEval_GetBuiltins(); /* borrowed */
    PyObject *done = NULL, *result = NULL, *fn = NULL;
    if (globals && PyDict_SetItemString(globals, "__builtins__", builtins) == 0)
        done = PyRun_String(VENV_CODE, Py_file_input, globals, globals);
    fn = done ? PyDict_GetItemString(globals, "add_venv") : NULL; /* borrowed */
    PyObject *arg = fn ? PyUnicode_DecodeFSDefault(venv) : NULL;
    if (arg) result = PyObject_CallOneArg(fn, arg);
    dsocr_status st = DSOCR_OK;
    if (!result) {
        PyObject *type = NULL, *value = NULL, *tb = NULL;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *s = value ? PyObject_Str(value) : NULL;
        const char *m = s ? PyUnicode_AsUTF8(s) : NULL;
        snprintf(g_start_error, sizeof g_start_error, "cannot use the virtual environment: %s",
                 m ? m : "unknown error");
        PyErr_Clear();
        Py_XDECREF(s);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        st = fail(DSOCR_ERR_PYTHON, g_start_error);
    }
    Py_XDECREF(result);
    Py_XDECREF(arg);
    Py_XDECREF(done);
    Py_XDECREF(globals);
    return st;
}

/* Start CPython unless the process already runs it. Like Py_InitializeEx(0), but a failure is a
 * status, not an abort, and the host's locale, signal handlers and C stdio are left as they are.
 * PYTHONHOME / PYTHONPATH are honoured; DSOCR_PYTHON_VENV is added. Called under g_init_lock. */
static dsocr_status start_python(void) {
    if (g_start_error[0]) return fail(DSOCR_ERR_PYTHON, g_start_error); /* never retried */
    if (Py_IsInitialized()) return DSOCR_OK;
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
    dsocr_status venv = add_venv();
    PyEval_SaveThread(); /* release the GIL; every call takes it with PyGILState_Ensure */
    return venv;
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
            snprintf(msg, sizeof msg, "cannot import " BRIDGE_MODULE " in the embedded Python: %.3000s "
                     "(set " VENV_ENV " to the virtual environment where dsocr is installed, or "
                     "PYTHONPATH/PYTHONHOME so that Python finds dsocr and its dependencies)", g_error);
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

const char *dsocr_version(void) { return DSOCR_VERSION_STRING; }

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
    if (given < min || given > MAX_OPTIONS_SIZE) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s.struct_size=%zu; set it to sizeof(%s) (or start from %s_default())",
                 what, given, what, what);
        return fail(DSOCR_ERR_INVALID_ARGUMENT, msg);
    }
    memcpy(dst, src, given < dst_size ? given : dst_size); /* fields newer than this library: ignored */
    return DSOCR_OK;
}

/* ---- arguments -> Python --------------------------------------------------------------------- */
/* kwargs[key] = s as str (None for NULL). A string that is not UTF-8 is the caller's error: -1 with
 * this thread's message set and no Python exception pending. GIL held. */
static int put_str(PyObject *kwargs, const char *key, const char *s, dsocr_status *st) {
    PyObject *v = s ? PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "strict") : Py_NewRef(Py_None);
    if (!v) {
        int oom = PyErr_ExceptionMatches(PyExc_MemoryError);
        PyErr_Clear();
        char msg[256];
        snprintf(msg, sizeof msg, "%s is not valid UTF-8; pass UTF-8 text", key);
        *st = fail(oom ? DSOCR_ERR_OUT_OF_MEMORY : DSOCR_ERR_INVALID_ARGUMENT, oom ? "out of memory" : msg);
        return -1;
    }
    int r = PyDict_SetItemString(kwargs, key, v);
    Py_DECREF(v);
    if (r) *st = take_py_error();
    return r;
}

static int put_int(PyObject *kwargs, const char *key, long value, dsocr_status *st) {
    PyObject *v = PyLong_FromLong(value);
    int r = v ? PyDict_SetItemString(kwargs, key, v) : -1;
    Py_XDECREF(v);
    if (r) *st = take_py_error();
    return r;
}

/* ---- model and session -------------------------------------------------------------------------- */
/* obj.close() and the last reference to obj, under the GIL (nothing when the host Python is gone). */
static void release_py(PyObject *obj) {
    if (!obj || !Py_IsInitialized()) return; /* a Python host already shutting down: leave it */
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *r = PyObject_CallMethod(obj, "close", NULL);
    if (!r) PyErr_Clear(); /* destroy has no status for a failing close; the object goes anyway */
    Py_XDECREF(r);
    Py_DECREF(obj);
    PyGILState_Release(gil);
}

static void destroy_result(dsocr_result *r);

void handles_free_object(int kind, void *obj) {
    if (kind == KIND_MODEL) release_py(((dsocr_model *)obj)->obj);
    if (kind == KIND_SESSION) release_py(((dsocr_session *)obj)->obj);
    if (kind == KIND_RESULT) destroy_result(obj);
    else free(obj);
}

/* Call bridge.<name>(*args, **kwargs); keep the returned object in a new registered handle. GIL held. */
static dsocr_status new_handle(const char *name, PyObject *args, PyObject *kwargs, int kind, size_t size, void **out) {
    PyObject *obj = NULL, *fn = PyObject_GetAttrString(atomic_load(&g_bridge), name);
    if (fn) obj = PyObject_Call(fn, args, kwargs);
    Py_XDECREF(fn);
    if (!obj) return take_py_error();
    void *h = calloc(1, size);
    void *handle = h ? handles_add(kind, h) : NULL;
    if (!handle) {
        free(h);
        PyObject *r = PyObject_CallMethod(obj, "close", NULL);
        Py_XDECREF(r);
        PyErr_Clear();
        Py_DECREF(obj);
        return fail(DSOCR_ERR_OUT_OF_MEMORY, "out of memory");
    }
    *(PyObject **)h = obj; /* both handle structs start with their PyObject * */
    *out = handle;
    return DSOCR_OK;
}

static PyObject *model_kwargs(const dsocr_model_options *o, dsocr_status *st) {
    PyObject *kw = PyDict_New();
    if (!kw) { *st = take_py_error(); return NULL; }
    if (put_str(kw, "device", o->device, st) || put_str(kw, "backend", o->backend, st)
        || put_int(kw, "threads", o->threads, st) || put_int(kw, "max_seq_len", o->max_seq_len, st)
        || put_int(kw, "max_batch", o->max_batch, st)) {
        Py_DECREF(kw);
        return NULL;
    }
    return kw;
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
    PyObject *path = PyUnicode_DecodeFSDefault(bundle_dir); /* stolen by "(N)"; NULL fails the build */
    PyObject *args = path ? Py_BuildValue("(N)", path) : NULL;
    PyObject *kwargs = args ? model_kwargs(&o, &st) : NULL;
    if (!args) st = take_py_error();
    if (kwargs) st = new_handle("Model", args, kwargs, KIND_MODEL, sizeof **out, (void **)out);
    Py_XDECREF(kwargs);
    Py_XDECREF(args);
    PyGILState_Release(gil);
    return st;
}

dsocr_status dsocr_model_destroy(dsocr_model *model) { return destroy_handle(model, KIND_MODEL); }

dsocr_status dsocr_session_create(dsocr_model *model, dsocr_session **out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    handle_entry *e = handles_acquire(model, KIND_MODEL);
    if (!e) return stale(KIND_MODEL);
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *args = PyTuple_Pack(1, ((dsocr_model *)handles_object(e))->obj);
    dsocr_status st = args ? new_handle("Session", args, NULL, KIND_SESSION, sizeof **out, (void **)out)
                           : take_py_error();
    Py_XDECREF(args);
    PyGILState_Release(gil);
    handles_release(e);
    return st; /* the session's busy flag starts clear (calloc) */
}

dsocr_status dsocr_session_destroy(dsocr_session *session) { return destroy_handle(session, KIND_SESSION); }

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
static char *dup_str(PyObject *v) {
    Py_ssize_t n = 0;
    const char *s = v ? PyUnicode_AsUTF8AndSize(v, &n) : NULL;
    char *copy = s ? malloc((size_t)n + 1) : NULL;
    if (copy) memcpy(copy, s, (size_t)n + 1);
    else if (s) PyErr_NoMemory();
    return copy;
}

static char *dup_attr(PyObject *obj, const char *attr) {
    PyObject *v = PyObject_GetAttrString(obj, attr);
    char *copy = dup_str(v);
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

static int copy_figures(PyObject *res, dsocr_result *r) {
    PyObject *figs = PyObject_GetAttrString(res, "figures");
    Py_ssize_t n = figs ? PyList_Size(figs) : -1;
    if (n < 0) { Py_XDECREF(figs); return -1; }
    r->figures = calloc(n ? (size_t)n : 1, sizeof *r->figures);
    if (!r->figures) { Py_DECREF(figs); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++, r->n_figures++) {
        const char *name = NULL, *data = NULL;
        Py_ssize_t size = 0;
        figure *f = &r->figures[i];
        if (!PyArg_ParseTuple(PyList_GetItem(figs, i), "sy#ii", &name, &data, &size, &f->width, &f->height)) break;
        f->data = malloc(size ? (size_t)size : 1);
        f->name = f->data ? strdup(name) : NULL;
        if (!f->name) { free(f->data); f->data = NULL; PyErr_NoMemory(); break; }
        memcpy(f->data, data, (size_t)size);
        f->size = (size_t)size;
    }
    Py_DECREF(figs);
    return PyErr_Occurred() ? -1 : 0;
}

static void destroy_result(dsocr_result *r) {
    if (!r) return;
    for (size_t i = 0; r->boxes && i < r->n_boxes; i++) free((char *)r->boxes[i].label);
    for (size_t i = 0; r->figures && i < r->n_figures; i++) {
        free(r->figures[i].name);
        free(r->figures[i].data);
    }
    free(r->boxes);
    free(r->figures);
    free(r->markdown);
    free(r->raw);
    free(r->stop_reason);
    free(r);
}

/* bridge.Result -> a new registered dsocr_result (plain C copies). GIL held. */
static dsocr_status to_result(PyObject *res, dsocr_result **out) {
    dsocr_result *r = calloc(1, sizeof *r);
    if (!r) return fail(DSOCR_ERR_OUT_OF_MEMORY, "out of memory");
    PyObject *n = PyObject_GetAttrString(res, "n_generated");
    r->n_tokens = n ? PyLong_AsSize_t(n) : 0;
    Py_XDECREF(n);
    if (!PyErr_Occurred() && (r->markdown = dup_attr(res, "markdown")) && (r->raw = dup_attr(res, "raw"))
        && (r->stop_reason = dup_attr(res, "stop_reason")) && copy_boxes(res, r) == 0
        && copy_figures(res, r) == 0) {
        void *handle = handles_add(KIND_RESULT, r);
        if (handle) {
            *out = handle;
            return DSOCR_OK;
        }
        PyErr_NoMemory();
    }
    destroy_result(r);
    return take_py_error();
}

/* ---- running ----------------------------------------------------------------------------------- */
static PyObject *run_kwargs(const dsocr_run_options *o, PyObject *callback, dsocr_status *st) {
    PyObject *kw = PyDict_New();
    if (!kw) { *st = take_py_error(); return NULL; }
    if (put_str(kw, "mode", o->mode, st) || put_str(kw, "prompt", o->prompt, st) || put_str(kw, "ref", o->ref, st)
        || put_str(kw, "figure_prefix", o->figure_prefix, st)
        || put_int(kw, "max_new_tokens", o->max_new_tokens, st) || put_int(kw, "ngram_size", o->ngram_size, st)
        || put_int(kw, "ngram_window", o->ngram_window, st) || put_int(kw, "max_tiles", o->max_tiles, st)
        || put_int(kw, "loop_detection", o->loop_detection, st)) {
        Py_DECREF(kw);
        return NULL;
    }
    if (PyDict_SetItemString(kw, "callback", callback)) { *st = take_py_error(); Py_DECREF(kw); return NULL; }
    return kw;
}

/* session.<method>(*head, **options). `head` holds a memoryview over the caller's buffer, released
 * before returning so Python never reads it after the call. GIL held. */
static dsocr_status call_run(dsocr_session *s, const char *method, PyObject *head, PyObject *view,
                             const dsocr_run_options *o, dsocr_result **out) {
    callback_data cb = {o->on_text, o->user_data};
    dsocr_status st = DSOCR_OK;
    PyObject *callback = make_callback(&cb);
    PyObject *kwargs = callback ? run_kwargs(o, callback, &st) : NULL;
    if (!callback) st = take_py_error();
    PyObject *fn = kwargs ? PyObject_GetAttrString(s->obj, method) : NULL;
    PyObject *res = fn ? PyObject_Call(fn, head, kwargs) : NULL;
    if (res) st = to_result(res, out);
    else if (kwargs) st = take_py_error();
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
    Py_XDECREF(kwargs);
    Py_XDECREF(callback);
    return st;
}

typedef struct { const uint8_t *data; size_t len; int32_t width, height, stride; int rgb; } image_input;

/* Checks shared by both run calls, then the call itself under the GIL and the session's busy flag. */
static dsocr_status run(dsocr_session *handle, const image_input *in, const dsocr_run_options *opts,
                        dsocr_result **out) {
    dsocr_run_options o = dsocr_run_options_default();
    dsocr_status st = opts ? read_options(&o, sizeof o, opts, MIN_RUN_OPTIONS_SIZE, "dsocr_run_options")
                           : DSOCR_OK;
    if (st != DSOCR_OK) return st;
    handle_entry *e = handles_acquire(handle, KIND_SESSION);
    if (!e) return stale(KIND_SESSION);
    dsocr_session *s = handles_object(e);
    if (atomic_flag_test_and_set(&s->busy)) {
        handles_release(e);
        return fail(DSOCR_ERR_BUSY, "this session is already running a call (use one session per thread)");
    }
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
    handles_release(e); /* frees the session if it was destroyed during the call */
    return st;
}

dsocr_status dsocr_session_run_encoded(dsocr_session *session, const uint8_t *bytes, size_t len,
                                       const dsocr_run_options *opts, dsocr_result **out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
    REQUIRE(bytes || len == 0, "bytes must not be NULL (len > 0)");
    REQUIRE(len <= (size_t)PY_SSIZE_T_MAX, "len is too large");
    image_input in = {bytes, len, 0, 0, 0, 0};
    return run(session, &in, opts, out);
}

dsocr_status dsocr_session_run_rgb(dsocr_session *session, const uint8_t *rgb, size_t len, int32_t width,
                                   int32_t height, int32_t stride, const dsocr_run_options *opts, dsocr_result **out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    *out = NULL;
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
    size_t need = step * (size_t)(height - 1) + row; /* < 2^63: both factors < 2^32 */
    if (len < need) {
        char msg[256];
        snprintf(msg, sizeof msg, "the RGB buffer holds %zu bytes but %dx%d pixels with stride %zu need %zu "
                 "(stride * (height - 1) + 3 * width); pass the buffer's real length", len, (int)width,
                 (int)height, step, need);
        return fail(DSOCR_ERR_INVALID_ARGUMENT, msg);
    }
    REQUIRE(need <= (size_t)PY_SSIZE_T_MAX, "the image is too large");
    image_input in = {rgb, need, width, height, stride, 1};
    return run(session, &in, opts, out);
}

/* ---- result getters ---------------------------------------------------------------------------- */
/* The result behind a live handle, read under the registry's reference (NULL when stale). */
#define RESULT_GETTER(type, name, expr, none)                        \
    type name(const dsocr_result *handle) {                          \
        handle_entry *e = handles_acquire(handle, KIND_RESULT);                 \
        if (!e) return none;                                         \
        const dsocr_result *r = handles_object(e);                              \
        type v = (expr);                                             \
        handles_release(e);                                              \
        return v;                                                    \
    }

RESULT_GETTER(const char *, dsocr_result_markdown, r->markdown, NULL)
RESULT_GETTER(const char *, dsocr_result_raw, r->raw, NULL)
RESULT_GETTER(const char *, dsocr_result_stop_reason, r->stop_reason, NULL)
RESULT_GETTER(size_t, dsocr_result_token_count, r->n_tokens, 0)
RESULT_GETTER(size_t, dsocr_result_box_count, r->n_boxes, 0)
RESULT_GETTER(size_t, dsocr_result_figure_count, r->n_figures, 0)

dsocr_status dsocr_result_box(const dsocr_result *handle, size_t index, dsocr_box *out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    handle_entry *e = handles_acquire(handle, KIND_RESULT);
    if (!e) return stale(KIND_RESULT);
    const dsocr_result *r = handles_object(e);
    dsocr_status st = index < r->n_boxes ? DSOCR_OK
                                         : fail(DSOCR_ERR_INVALID_ARGUMENT, "box index out of range (see dsocr_result_box_count)");
    if (st == DSOCR_OK) *out = r->boxes[index];
    handles_release(e);
    return st;
}

dsocr_status dsocr_result_figure(const dsocr_result *handle, size_t index, dsocr_figure *out) {
    clear_error();
    REQUIRE(out, "out must not be NULL");
    REQUIRE(out->struct_size >= offsetof(dsocr_figure, name) + sizeof out->name && out->struct_size <= MAX_OPTIONS_SIZE,
            "dsocr_figure.struct_size must be set to sizeof(dsocr_figure)");
    handle_entry *e = handles_acquire(handle, KIND_RESULT);
    if (!e) return stale(KIND_RESULT);
    const dsocr_result *r = handles_object(e);
    dsocr_status st = index < r->n_figures ? DSOCR_OK
                                           : fail(DSOCR_ERR_INVALID_ARGUMENT, "figure index out of range (see dsocr_result_figure_count)");
    if (st == DSOCR_OK) {
        const figure *f = &r->figures[index];
        dsocr_figure full = {sizeof full, f->name, f->data, f->size, f->width, f->height};
        size_t n = out->struct_size < sizeof full ? out->struct_size : sizeof full;
        memcpy((char *)out + sizeof full.struct_size, (const char *)&full + sizeof full.struct_size,
               n - sizeof full.struct_size); /* the caller's struct_size stays */
    }
    handles_release(e);
    return st;
}

dsocr_status dsocr_result_destroy(dsocr_result *result) { return destroy_handle(result, KIND_RESULT); }

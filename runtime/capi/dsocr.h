/*
 * dsocr.h -- C API of the dsocr runtime (DeepSeek-OCR: page image in, UTF-8 markdown, boxes and figure
 * crops out).
 *
 * Worked example (build libdsocr with `make -C runtime/capi` or dsocr.runtime.capi.build_library):
 *
 *     dsocr_model *model = NULL;  dsocr_session *session = NULL;  dsocr_result *result = NULL;
 *     dsocr_model_options mo = dsocr_model_options_default();                      // sets struct_size
 *     mo.max_batch = 8;                          // sessions on 8 threads decode together (0: each alone)
 *     if (dsocr_model_create("bundles/small", &mo, &model) != DSOCR_OK            // NULL: default options
 *         || dsocr_session_create(model, &session) != DSOCR_OK) {                  // one per thread
 *         fprintf(stderr, "dsocr: %s\n", dsocr_last_error());                      // this thread's message
 *         return 1;
 *     }
 *     dsocr_run_options opts = dsocr_run_options_default();                        // sets struct_size
 *     opts.max_new_tokens = 2048;                                                  // mode NULL: the bundle's
 *     dsocr_status st = dsocr_session_run_encoded(session, png, png_len, &opts, &result);
 *     if (st == DSOCR_OK) {
 *         fputs(dsocr_result_markdown(result), stdout);                            // owned by result
 *         for (size_t i = 0; i < dsocr_result_box_count(result); i++) {
 *             dsocr_box b;
 *             dsocr_result_box(result, i, &b);                                     // b.label owned by result
 *             printf("%s [%d %d %d %d]\n", b.label, b.x1, b.y1, b.x2, b.y2);
 *         }
 *         for (size_t i = 0; i < dsocr_result_figure_count(result); i++) {
 *             dsocr_figure f = {.struct_size = sizeof f};                          // struct_size first
 *             dsocr_result_figure(result, i, &f);       // JPEG bytes the markdown references as images/<name>
 *             write_file(f.name, f.data, f.size);
 *         }
 *     } else {
 *         fprintf(stderr, "%s: %s\n", dsocr_status_name(st), dsocr_last_error());
 *     }
 *     dsocr_result_destroy(result);  dsocr_session_destroy(session);  dsocr_model_destroy(model);
 *
 * IMPLEMENTATION. libdsocr embeds CPython and calls the Python runtime (dsocr.runtime: numpy, Pillow,
 * tokenizers, ONNX Runtime or TensorRT; never torch) through the module dsocr.runtime.capi.bridge. A
 * native port over ONNX Runtime's C API is out of scope: it would duplicate preprocessing, tokenizer,
 * prompt layout and the decode loop, a second implementation to keep in parity. The interpreter is
 * started once, on the first dsocr_init() / dsocr_model_create() (or dsocr_bundle_format_version()),
 * with the host's signal handlers, locale and stdio left alone, and is never finalized (numpy and ONNX
 * Runtime do not support re-initialization). If the host process already runs Python (a Python host
 * loading libdsocr with ctypes.CDLL), that interpreter is used as it is.
 *
 * FINDING dsocr. The embedded Python must import dsocr and its dependencies. If they are installed in
 * a virtual environment (also an editable `pip install -e .`), set DSOCR_PYTHON_VENV to that
 * environment's directory: on start the library checks that its pyvenv.cfg names the Python version
 * libdsocr was linked against and adds its site-packages with site.addsitedir (so .pth files, and
 * with them editable installs, work) in front of sys.path. PYTHONHOME (the prefix of the Python
 * libdsocr was linked against, when it was moved) and PYTHONPATH (plain directories, no .pth
 * processing) are honoured as usual. DSOCR_PYTHON_VENV is read once, when the interpreter starts,
 * and not at all in a Python host.
 *
 * THREAD SAFETY. A dsocr_model is shared by any number of threads. A dsocr_session serves one call at
 * a time: use one session per thread (a second concurrent call on the same session returns
 * DSOCR_ERR_BUSY). With dsocr_model_options.max_batch = N > 0 the sessions of one model share one
 * decode engine with N slots: pages of sessions running on different threads are decoded together,
 * one graph call per step for all of them (each call still returns its own page). With max_batch = 0
 * (the default) each session decodes on its own. Every call that runs Python takes the GIL; a call
 * waiting for its page releases it. Any thread may call in; no call needs the thread that initialized
 * dsocr. Every call that takes a handle checks it against the registry of live handles under a lock.
 *
 * ERRORS. Every call that can fail returns a dsocr_status and, on failure, stores a message that
 * dsocr_last_error() returns on the same thread. Each such call clears the message on entry. Plain
 * getters that cannot fail (versions, result text and counts) return their value, and return NULL or 0
 * for a NULL or stale handle. No call exits, aborts, or lets a Python exception cross this boundary.
 * Messages say what was wrong and what to do; they never contain memory addresses.
 *
 * HANDLES AND OWNERSHIP. Every handle comes from a *_create call (or a run call, for results) and is
 * freed by the matching *_destroy; destroy(NULL) is a no-op that returns DSOCR_OK. A handle is invalid
 * after its destroy, as a pointer is after free(): handles are opaque values never dereferenced by the
 * library, looked up in a registry of live handles and never reused, so a destroyed handle (destroyed
 * twice, or used after destroy), a handle of another kind, or a made-up value is refused with
 * DSOCR_ERR_INVALID_ARGUMENT and never reads freed memory. Destroying a session while it runs a call on
 * another thread is allowed: the handle is invalid at once and its memory is released when the call
 * returns. A model may be destroyed before its sessions (they keep what they use alive). Every pointer
 * a dsocr_result getter returns (markdown, raw text, stop reason, box labels, figure names and bytes)
 * is owned by the result and valid until dsocr_result_destroy. The result copies its data; it does not
 * need the model, the session or the GIL. Input buffers are only read during the call. Strings are
 * UTF-8 and NUL-terminated.
 *
 * OPTION STRUCTS start with struct_size (sizeof the struct the caller was compiled with); fields are
 * only ever appended. The library reads the first struct_size bytes and uses defaults for newer fields
 * it was not given (a caller built against an older header keeps working); fields newer than the
 * library are ignored. Start from *_default(), which sets struct_size and every default. A struct_size
 * smaller than the first (API version 1) layout or larger than 64 KiB is DSOCR_ERR_INVALID_ARGUMENT.
 */
#ifndef DSOCR_H
#define DSOCR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DSOCR_API __attribute__((visibility("default")))
#else
#define DSOCR_API
#endif

#define DSOCR_API_VERSION 2 /* incremented on every change of this header's ABI */

/* Every failure maps to one status (bridge.py's table; a test keeps the two in step):
 *   status                      raised for                                              what to do
 *   DSOCR_ERR_INVALID_ARGUMENT  NULL/stale/wrong-kind handle, NULL pointer, bad          fix the call: the message
 *                               struct_size, an option out of range, a string option     names the argument
 *                               that is not UTF-8, a raw buffer shorter than its size
 *   DSOCR_ERR_IO                a missing bundle directory, an unreadable file            check the path
 *   DSOCR_ERR_BAD_IMAGE         undecodable, truncated, empty or oversized image data,    pass another image
 *                               a format Pillow cannot decode (e.g. some DDS), stride
 *                               smaller than a row
 *   DSOCR_ERR_BAD_BUNDLE        no manifest, another format version, files that do not    rebuild the bundle
 *                               match it (size, SHA-256, graph I/O contract)              (dsocr-export build)
 *   DSOCR_ERR_MODE              an unknown mode, or one the bundle was not built for      another mode, or rebuild
 *   DSOCR_ERR_BACKEND           onnxruntime / TensorRT not installed (the message names   install the named extra
 *                               the package and extra), a device not available, a         or pick another device
 *                               TensorRT plan built for another GPU or TensorRT
 *   DSOCR_ERR_CACHE_FULL        the prompt does not fit the session's KV cache            raise max_seq_len
 *   DSOCR_ERR_INTERNAL          anything else: a bug; the message names the exception     report it
 *   DSOCR_ERR_PYTHON            the embedded Python cannot start, DSOCR_PYTHON_VENV is     fix the environment
 *                               not a usable venv, or dsocr cannot be imported            (see FINDING dsocr)
 *   DSOCR_ERR_OUT_OF_MEMORY     an allocation failed (C or Python)                        free memory, smaller pages
 *   DSOCR_ERR_BUSY              the session is running a call on another thread (or the   one session per thread
 *                               call is made from its own streaming callback)
 */
typedef enum dsocr_status {
    DSOCR_OK = 0,
    DSOCR_ERR_INVALID_ARGUMENT = 1,
    DSOCR_ERR_IO = 2,
    DSOCR_ERR_BAD_IMAGE = 3,
    DSOCR_ERR_BAD_BUNDLE = 4,
    DSOCR_ERR_MODE = 5,
    DSOCR_ERR_BACKEND = 6,
    DSOCR_ERR_CACHE_FULL = 7,
    DSOCR_ERR_INTERNAL = 8,
    DSOCR_ERR_PYTHON = 9,
    DSOCR_ERR_OUT_OF_MEMORY = 10,
    DSOCR_ERR_BUSY = 11
} dsocr_status;

typedef struct dsocr_model dsocr_model;     /* a loaded, verified bundle; shared by threads */
typedef struct dsocr_session dsocr_session; /* one caller's decode state (KV cache, or a slot's share) */
typedef struct dsocr_result dsocr_result;   /* one page: markdown, raw text, boxes, figures; owns its data */

/* Streaming: called on the calling thread with each new piece of text (UTF-8, NUL-terminated, valid
 * only during the call; never a split character). Runs without the GIL. Return non-zero to stop:
 * the run then succeeds with the text so far and stop reason "cancelled" (with max_batch > 0 the
 * page leaves its slot at the engine's next step; the other sessions' pages go on). The callback
 * must not call into the same session (that call returns DSOCR_ERR_BUSY). */
typedef int (*dsocr_text_callback)(const char *utf8_piece, void *user_data);

typedef struct dsocr_model_options {
    size_t struct_size;  /* sizeof(dsocr_model_options); set by dsocr_model_options_default() */
    const char *device;  /* ONNX Runtime device: "cpu", "cuda", "tensorrt" (its execution provider);
                            NULL: "cpu". Must be NULL or "cuda" with backend "tensorrt" */
    int32_t threads;     /* intra-op threads per graph; 0: ONNX Runtime's default */
    int32_t max_seq_len; /* KV cache positions per session (per slot); 0: the bundle's maximum */
    /* ---- API version 2 ---- */
    const char *backend; /* "ort" (ONNX Runtime over the bundle's .onnx graphs) or "tensorrt" (the
                            bundle's TensorRT plans, engines/engines.json); NULL: "ort" */
    int32_t max_batch;   /* 0: each session decodes alone (the default); N >= 1: one engine with N slots
                            shared by every session of this model, at most 256 */
} dsocr_model_options;

typedef struct dsocr_run_options {
    size_t struct_size;          /* sizeof(dsocr_run_options); set by dsocr_run_options_default() */
    const char *mode;            /* "tiny" | "small" | "base" | "large" | "gundam"; NULL: the bundle's first */
    const char *prompt;          /* template name (document, ocr, free, figure, describe, locate) or
                                    text containing <image>; NULL: "document" */
    const char *ref;             /* the referring expression of the "locate" prompt; NULL otherwise */
    int32_t max_new_tokens;      /* 0: the bundle's default (manifest generation_defaults; 8192 for a real checkpoint) */
    dsocr_text_callback on_text; /* optional streaming callback */
    void *user_data;             /* passed to on_text */
    /* ---- API version 2 ---- */
    int32_t ngram_size;          /* no-repeat n-gram ban: 0: the default (20); -1: off; else the n-gram size */
    int32_t ngram_window;        /* generated ids the ban looks back over; 0: the default (50) */
    int32_t max_tiles;           /* gundam tiles at most, 2..9; 0: the default (9) */
    int32_t loop_detection;      /* stop a page whose text repeats (stop reason "loop"): 0: the default
                                    (on); 1: on; -1: off */
    const char *figure_prefix;   /* prepended to figure names ("<prefix>0.jpg"), letters, digits, '-', '_'
                                    and '.' only; NULL: "" */
} dsocr_run_options;

typedef struct dsocr_box {
    const char *label; /* owned by the result */
    int32_t x1, y1, x2, y2; /* page pixels, x1 <= x2, y1 <= y2 */
} dsocr_box;

/* A figure crop of the page (every box labelled "image"), JPEG-encoded. The caller sets struct_size;
 * the library fills the fields that fit in it. */
typedef struct dsocr_figure {
    size_t struct_size;   /* sizeof(dsocr_figure), set by the caller */
    const char *name;     /* "<figure_prefix><k>.jpg"; the markdown references it as images/<name> */
    const uint8_t *data;  /* the encoded bytes, owned by the result */
    size_t size;          /* bytes at data */
    int32_t width, height; /* the crop in pixels */
} dsocr_figure;

/* ---- library ------------------------------------------------------------------------------------ */
DSOCR_API int dsocr_api_version(void);                   /* DSOCR_API_VERSION the library was built with */
DSOCR_API const char *dsocr_version(void);               /* dsocr's version, e.g. "0.1.0"; static storage,
                                                            does not start Python */
DSOCR_API int dsocr_bundle_format_version(void);         /* bundle manifest format read; -1 on error (starts Python) */
DSOCR_API const char *dsocr_last_error(void);            /* this thread's last message, "" if none; thread-local
                                                            storage, valid until this thread's next call */
DSOCR_API const char *dsocr_status_name(dsocr_status s); /* "DSOCR_ERR_IO", ...; static storage */
DSOCR_API dsocr_status dsocr_init(void); /* optional: start Python and import dsocr now (else on first create) */

DSOCR_API dsocr_model_options dsocr_model_options_default(void);
DSOCR_API dsocr_run_options dsocr_run_options_default(void);

/* ---- model: a bundle directory, loaded and verified (manifest, SHA-256 of every file) ------------ */
DSOCR_API dsocr_status dsocr_model_create(const char *bundle_dir, const dsocr_model_options *opts /* NULL ok */,
                                          dsocr_model **out);
DSOCR_API dsocr_status dsocr_model_destroy(dsocr_model *model); /* DSOCR_ERR_INVALID_ARGUMENT: not live */

/* ---- session: one per thread ------------------------------------------------------------------- */
DSOCR_API dsocr_status dsocr_session_create(dsocr_model *model, dsocr_session **out);
DSOCR_API dsocr_status dsocr_session_destroy(dsocr_session *session); /* DSOCR_ERR_INVALID_ARGUMENT: not live */

/* Encoded image bytes (PNG, JPEG, WebP, TIFF, ... anything Pillow decodes; EXIF orientation applied).
 * opts NULL: defaults. On success *out is a new result for the caller to destroy; on failure NULL. */
DSOCR_API dsocr_status dsocr_session_run_encoded(dsocr_session *session, const uint8_t *bytes, size_t len,
                                                 const dsocr_run_options *opts, dsocr_result **out);
/* Raw RGB8 pixels, rows top to bottom, `stride` bytes apart (0: 3 * width). `len` is the size of the
 * buffer at `rgb`: it must hold stride * (height - 1) + 3 * width bytes (else
 * DSOCR_ERR_INVALID_ARGUMENT; nothing beyond len is ever read). */
DSOCR_API dsocr_status dsocr_session_run_rgb(dsocr_session *session, const uint8_t *rgb, size_t len, int32_t width,
                                             int32_t height, int32_t stride, const dsocr_run_options *opts,
                                             dsocr_result **out);

/* ---- result: every returned pointer is owned by the result, valid until dsocr_result_destroy ---- */
DSOCR_API const char *dsocr_result_markdown(const dsocr_result *result);    /* clean markdown */
DSOCR_API const char *dsocr_result_raw(const dsocr_result *result);         /* model text, grounding tags kept */
DSOCR_API const char *dsocr_result_stop_reason(const dsocr_result *result); /* eos, max_tokens, loop,
                                                                               cache_full, cancelled */
DSOCR_API size_t dsocr_result_token_count(const dsocr_result *result);      /* ids generated; 0 when
                                                                               cancelled (not counted) */
DSOCR_API size_t dsocr_result_box_count(const dsocr_result *result);
DSOCR_API dsocr_status dsocr_result_box(const dsocr_result *result, size_t index, dsocr_box *out);
DSOCR_API size_t dsocr_result_figure_count(const dsocr_result *result);
DSOCR_API dsocr_status dsocr_result_figure(const dsocr_result *result, size_t index, dsocr_figure *out);
DSOCR_API dsocr_status dsocr_result_destroy(dsocr_result *result); /* DSOCR_ERR_INVALID_ARGUMENT: not live */

#ifdef __cplusplus
}
#endif
#endif /* DSOCR_H */

/*
 * dsocr.h -- C API of the dsocr runtime (DeepSeek-OCR: page image in, UTF-8 markdown and boxes out).
 *
 * Worked example (build libdsocr with `make -C runtime/capi` or dsocr.runtime.capi.build_library):
 *
 *     dsocr_model *model = NULL;  dsocr_session *session = NULL;  dsocr_result *result = NULL;
 *     if (dsocr_model_create("bundles/small", NULL, &model) != DSOCR_OK           // NULL: default options
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
 *     } else {
 *         fprintf(stderr, "%s: %s\n", dsocr_status_name(st), dsocr_last_error());
 *     }
 *     dsocr_result_destroy(result);  dsocr_session_destroy(session);  dsocr_model_destroy(model);
 *
 * IMPLEMENTATION. libdsocr embeds CPython and calls the Python runtime (dsocr.runtime: numpy, Pillow,
 * tokenizers, ONNX Runtime; never torch) through the module dsocr.runtime.capi.bridge. A native port
 * over ONNX Runtime's C API is out of scope: it would duplicate preprocessing, tokenizer, prompt
 * layout and the decode loop, a second implementation to keep in parity. The interpreter is started
 * once, on the first dsocr_init() / dsocr_model_create(), with the host's signal handlers, locale and
 * stdio left alone, and is never finalized (numpy and ONNX Runtime do not support re-initialization).
 * If the host process already runs Python (a Python host loading libdsocr with ctypes.CDLL), that
 * interpreter is used. The library sets no paths: the embedded Python must find the dsocr package
 * and its dependencies, so set PYTHONHOME (the prefix of the Python libdsocr was linked against) and
 * PYTHONPATH (e.g. a virtual environment's site-packages) when they are not that Python's defaults.
 *
 * THREAD SAFETY. A dsocr_model is shared read-only by any number of threads. A dsocr_session owns one
 * KV cache and serves one call at a time: use one session per thread (a second concurrent call on the
 * same session returns DSOCR_ERR_BUSY). Every call that runs Python takes the GIL (PyGILState_Ensure)
 * and the GIL serialises all Python work of all sessions: preprocessing, prompt assembly and the
 * per-token loop run one thread at a time. ONNX Runtime releases the GIL while a graph runs, so
 * graph execution of different sessions does overlap; expect throughput to scale less than linearly
 * with threads. Any thread may call in; no call needs the thread that initialized dsocr.
 *
 * ERRORS. Every call that can fail returns a dsocr_status and, on failure, stores a message that
 * dsocr_last_error() returns on the same thread. Each such call clears the message on entry. Plain
 * getters that cannot fail (versions, result text and counts) return their value, and return NULL or 0
 * for a NULL handle. No call exits, aborts, or lets a Python exception cross this boundary.
 *
 * OWNERSHIP. Every handle comes from a *_create call and is freed by the matching *_destroy;
 * destroy(NULL) is a no-op. A model may be destroyed before its sessions (they keep what they
 * use alive). Every pointer a dsocr_result getter returns (markdown, raw text, stop reason, box
 * labels) is owned by the result and valid until dsocr_result_destroy. The result copies its data;
 * it does not need the model, the session or the GIL. Input buffers are only read during the call.
 * Strings are UTF-8 and NUL-terminated.
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

#define DSOCR_API_VERSION 1 /* incremented on every change of this header's ABI */

typedef enum dsocr_status {
    DSOCR_OK = 0,
    DSOCR_ERR_INVALID_ARGUMENT = 1, /* NULL handle or pointer, struct_size unset, bad option value */
    DSOCR_ERR_IO = 2,               /* a missing file or directory (the bundle directory) */
    DSOCR_ERR_BAD_IMAGE = 3,        /* undecodable, empty or oversized image; raw buffer with a bad stride */
    DSOCR_ERR_BAD_BUNDLE = 4,       /* no manifest, another format version, files not matching it */
    DSOCR_ERR_MODE = 5,             /* unknown mode, or a mode the bundle was not built for */
    DSOCR_ERR_BACKEND = 6,          /* onnxruntime missing, or the requested device unavailable */
    DSOCR_ERR_CACHE_FULL = 7,       /* the prompt does not fit the session's KV cache */
    DSOCR_ERR_INTERNAL = 8,         /* anything else; the message names the Python exception */
    DSOCR_ERR_PYTHON = 9,           /* the embedded Python could not start or could not import dsocr */
    DSOCR_ERR_OUT_OF_MEMORY = 10,   /* an allocation failed (C or Python) */
    DSOCR_ERR_BUSY = 11             /* the session is already running a call on another thread */
} dsocr_status;

typedef struct dsocr_model dsocr_model;     /* a loaded, verified bundle; shared read-only by threads */
typedef struct dsocr_session dsocr_session; /* per-thread decode state: KV cache, graph bindings */
typedef struct dsocr_result dsocr_result;   /* one page: markdown, raw text, boxes; owns its strings */

/* Streaming: called on the calling thread with each new piece of text (UTF-8, NUL-terminated, valid
 * only during the call; never a split character). Runs without the GIL. Return non-zero to stop:
 * the run then succeeds with the text so far and stop reason "cancelled". The callback must not
 * call into the same session (that call returns DSOCR_ERR_BUSY). */
typedef int (*dsocr_text_callback)(const char *utf8_piece, void *user_data);

typedef struct dsocr_model_options {
    size_t struct_size;  /* sizeof(dsocr_model_options); set by dsocr_model_options_default() */
    const char *device;  /* ONNX Runtime device: "cpu", "cuda", "tensorrt"; NULL: "cpu" */
    int32_t threads;     /* intra-op threads per graph; 0: ONNX Runtime's default */
    int32_t max_seq_len; /* KV cache positions per session; 0: the bundle's maximum */
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
} dsocr_run_options;

typedef struct dsocr_box {
    const char *label; /* owned by the result */
    int32_t x1, y1, x2, y2; /* page pixels, x1 <= x2, y1 <= y2 */
} dsocr_box;

/* ---- library ------------------------------------------------------------------------------------ */
DSOCR_API int dsocr_api_version(void);                   /* DSOCR_API_VERSION the library was built with */
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
DSOCR_API void dsocr_model_destroy(dsocr_model *model);

/* ---- session: one per thread ------------------------------------------------------------------- */
DSOCR_API dsocr_status dsocr_session_create(dsocr_model *model, dsocr_session **out);
DSOCR_API void dsocr_session_destroy(dsocr_session *session);

/* Encoded image bytes (PNG, JPEG, WebP, TIFF, ... anything Pillow decodes; EXIF orientation applied).
 * opts NULL: defaults. On success *out is a new result for the caller to destroy; on failure NULL. */
DSOCR_API dsocr_status dsocr_session_run_encoded(dsocr_session *session, const uint8_t *bytes, size_t len,
                                                 const dsocr_run_options *opts, dsocr_result **out);
/* Raw RGB8 pixels, rows top to bottom, `stride` bytes apart (0: 3 * width); the buffer must hold
 * stride * (height - 1) + 3 * width bytes. */
DSOCR_API dsocr_status dsocr_session_run_rgb(dsocr_session *session, const uint8_t *rgb, int32_t width,
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
DSOCR_API void dsocr_result_destroy(dsocr_result *result);

#ifdef __cplusplus
}
#endif
#endif /* DSOCR_H */

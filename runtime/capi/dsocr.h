/*
 * dsocr.h -- C API of the dsocr runtime (DeepSeek-OCR: page image in, markdown out).
 *
 * Worked example (error handling shortened; every call returns a dsocr_status):
 *
 *     dsocr_model *model = NULL;  dsocr_session *session = NULL;  dsocr_result *result = NULL;
 *     if (dsocr_model_open("bundles/small", &model) != DSOCR_OK) {
 *         fprintf(stderr, "dsocr: %s\n", dsocr_last_error());  return 1;
 *     }
 *     dsocr_session_create(model, &session);
 *     dsocr_run_options opts = dsocr_run_options_default();     // mode NULL = the bundle's first
 *     opts.max_new_tokens = 2048;
 *     if (dsocr_session_run_encoded(session, png_bytes, png_len, &opts, &result) == DSOCR_OK)
 *         puts(dsocr_result_markdown(result));                  // owned by result
 *     dsocr_result_destroy(result);  dsocr_session_destroy(session);  dsocr_model_destroy(model);
 *
 * Implementation: libdsocr embeds CPython and calls the Python runtime (dsocr.runtime, numpy +
 * ONNX Runtime, no torch) through dsocr/runtime/capi/bridge.py. A native port over ONNX Runtime's C
 * API would duplicate preprocessing, tokenizer and decoding logic; embedding keeps one implementation.
 * The interpreter is started on first use (or by dsocr_init) unless the host already runs one (a
 * Python host using ctypes). It must find the dsocr package: set PYTHONHOME / PYTHONPATH if the
 * library's Python prefix is not the one dsocr is installed in.
 *
 * Thread safety: a dsocr_model is shared read-only by any number of threads; a dsocr_session must be
 * used by one thread at a time (it owns a KV cache); use one session per thread. Calls take the Python
 * GIL, so Python work is serialised; ONNX Runtime releases the GIL while a graph runs, so sessions on
 * different threads do overlap in inference. dsocr_last_error() is per thread.
 *
 * Ownership: handles are created by *_create / *_open and freed by the matching *_destroy; destroy(NULL)
 * is a no-op. Every pointer returned by a dsocr_result getter is owned by the result and valid until
 * dsocr_result_destroy. Strings are UTF-8, NUL-terminated. No call exits, aborts or lets an exception
 * cross this boundary: failures come back as a status, with a message in dsocr_last_error().
 */
#ifndef DSOCR_H
#define DSOCR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSOCR_API_VERSION 1

typedef enum dsocr_status {
    DSOCR_OK = 0,
    DSOCR_ERR_INVALID_ARGUMENT = 1, /* NULL handle or pointer, bad option value */
    DSOCR_ERR_IO = 2,               /* missing file or directory */
    DSOCR_ERR_BAD_IMAGE = 3,        /* undecodable, empty or oversized image, bad raw buffer */
    DSOCR_ERR_BAD_BUNDLE = 4,       /* no manifest, other format version, files not matching it */
    DSOCR_ERR_MODE = 5,             /* unknown mode, or a mode the bundle was not built for */
    DSOCR_ERR_BACKEND = 6,          /* onnxruntime / tensorrt missing or failing */
    DSOCR_ERR_CACHE_FULL = 7,       /* the prompt does not fit the KV cache */
    DSOCR_ERR_INTERNAL = 8          /* anything else (message says what) */
} dsocr_status;

typedef struct dsocr_model dsocr_model;     /* a loaded bundle; shared read-only */
typedef struct dsocr_session dsocr_session; /* per-thread decode state (KV cache) */
typedef struct dsocr_result dsocr_result;   /* markdown + boxes of one page */

/* Streaming: called with each new piece of text; return non-zero to stop generation early. */
typedef int (*dsocr_text_callback)(const char *utf8_piece, void *user_data);

typedef struct dsocr_run_options {
    size_t struct_size;           /* sizeof(dsocr_run_options), for ABI growth */
    const char *mode;             /* "tiny" | "small" | "base" | "large" | "gundam"; NULL: bundle default */
    const char *prompt;           /* template name or text with <image>; NULL: "document" */
    int32_t max_new_tokens;       /* <= 0: the default (8192) */
    dsocr_text_callback on_text;  /* optional */
    void *user_data;              /* passed to on_text */
} dsocr_run_options;

typedef struct dsocr_box {
    const char *label;            /* owned by the result */
    int32_t x1, y1, x2, y2;       /* page pixels */
} dsocr_box;

int dsocr_api_version(void);                 /* DSOCR_API_VERSION of the library */
int dsocr_bundle_format_version(void);       /* manifest format version this library reads (-1 on error) */
const char *dsocr_last_error(void);          /* this thread's last error message ("" if none); static storage */
dsocr_status dsocr_init(void);               /* optional: start the embedded Python now */
dsocr_run_options dsocr_run_options_default(void);

dsocr_status dsocr_model_open(const char *bundle_dir, dsocr_model **out);
void dsocr_model_destroy(dsocr_model *model);

dsocr_status dsocr_session_create(dsocr_model *model, dsocr_session **out);
void dsocr_session_destroy(dsocr_session *session);

/* Encoded image bytes (PNG, JPEG, ...). */
dsocr_status dsocr_session_run_encoded(dsocr_session *session, const uint8_t *bytes, size_t len,
                                       const dsocr_run_options *opts, dsocr_result **out);
/* Raw RGB8, rows top to bottom, `stride` bytes apart (0: 3*width). */
dsocr_status dsocr_session_run_rgb(dsocr_session *session, const uint8_t *rgb, int32_t width, int32_t height,
                                   int32_t stride, const dsocr_run_options *opts, dsocr_result **out);

const char *dsocr_result_markdown(const dsocr_result *result);   /* NULL if result is NULL */
const char *dsocr_result_stop_reason(const dsocr_result *result); /* eos, max_tokens, loop, cache_full, cancelled */
size_t dsocr_result_box_count(const dsocr_result *result);
dsocr_status dsocr_result_box(const dsocr_result *result, size_t index, dsocr_box *out);
void dsocr_result_destroy(dsocr_result *result);

#ifdef __cplusplus
}
#endif
#endif /* DSOCR_H */

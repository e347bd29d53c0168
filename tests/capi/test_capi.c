/* C test of libdsocr: good and bad calls, streaming and cancelling, raw RGB, re-entrance, stale and
 * doubled handles, option structs of the first layout, sessions on threads sharing one model (each alone
 * and batched in one engine), and resident memory over create/run/destroy cycles.
 *
 * usage: test_capi BUNDLE_DIR PAGE_PNG SESSION_CYCLES [MODEL_CYCLES]
 * env DSOCR_TEST_NO_TENSORRT=1: TensorRT is not installed here (backend "tensorrt" must say so)
 * prints "RSS_KB <phase> <cycle> <kB>" samples, then "PASS" (exit 0) or "<n> FAILED" (exit 1). */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsocr.h"

static int failures = 0;
#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond,          \
                    dsocr_last_error());                                                             \
            failures++;                                                                              \
        }                                                                                            \
    } while (0)

typedef struct { const unsigned char *data; size_t len; } bytes;

static bytes read_file(const char *path) {
    bytes b = {NULL, 0};
    FILE *f = fopen(path, "rb");
    if (!f) return b;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = n > 0 ? malloc((size_t)n) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) { b.data = buf; b.len = (size_t)n; } else free(buf);
    fclose(f);
    return b;
}

static long rss_kb(void) { /* resident pages, from /proc/self/statm */
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) { if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0; fclose(f); }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static dsocr_run_options tokens(int n) {
    dsocr_run_options o = dsocr_run_options_default();
    o.max_new_tokens = n;
    return o;
}

static void test_bad_calls(const char *bundle, bytes png) {
    dsocr_model *m = NULL;
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    CHECK(dsocr_api_version() == DSOCR_API_VERSION);
    CHECK(dsocr_bundle_format_version() == 1);
    CHECK(strcmp(dsocr_status_name(DSOCR_ERR_IO), "DSOCR_ERR_IO") == 0);
    CHECK(strcmp(dsocr_status_name((dsocr_status)999), "DSOCR_ERR_UNKNOWN") == 0);
    CHECK(dsocr_init() == DSOCR_OK && dsocr_init() == DSOCR_OK);
    CHECK(dsocr_model_create(NULL, NULL, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    CHECK(dsocr_model_create(bundle, NULL, NULL) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_model_create("/nonexistent/bundle", NULL, &m) == DSOCR_ERR_IO && m == NULL);
    CHECK(strstr(dsocr_last_error(), "/nonexistent/bundle") != NULL);
    CHECK(dsocr_model_create("/tmp", NULL, &m) == DSOCR_ERR_BAD_BUNDLE && m == NULL);
    CHECK(strstr(dsocr_last_error(), "manifest") != NULL);
    dsocr_model_options mo = dsocr_model_options_default();
    mo.struct_size = 0; /* a struct the caller forgot to initialize */
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT);
    mo = dsocr_model_options_default();
    mo.threads = -1;
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    mo = dsocr_model_options_default();
    mo.device = "abacus";
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    mo = dsocr_model_options_default();
    mo.backend = "onnx";
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    CHECK(strstr(dsocr_last_error(), "tensorrt") != NULL); /* names the choices */
    mo = dsocr_model_options_default();
    mo.max_batch = 257;
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    mo.max_batch = -1;
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    mo = dsocr_model_options_default();
    mo.backend = "tensorrt";
    mo.device = "cpu"; /* plans run on CUDA */
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    mo.device = NULL;
    if (getenv("DSOCR_TEST_NO_TENSORRT")) { /* the option reaches the TensorRT backend, which says what is missing */
        CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_BACKEND && m == NULL);
        CHECK(strstr(dsocr_last_error(), "TensorRT is not installed") && strstr(dsocr_last_error(), "dsocr[trt]"));
    }
    mo = dsocr_model_options_default();
    mo.device = "\xff\xfe";
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    CHECK(strstr(dsocr_last_error(), "device is not valid UTF-8") != NULL);
    CHECK(dsocr_session_create(NULL, &s) == DSOCR_ERR_INVALID_ARGUMENT && s == NULL);
    CHECK(dsocr_session_run_encoded(NULL, png.data, png.len, NULL, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_session_run_rgb(NULL, png.data, png.len, 1, 1, 0, NULL, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_result_box(NULL, 0, NULL) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_result_markdown(NULL) == NULL && dsocr_result_raw(NULL) == NULL);
    CHECK(dsocr_result_stop_reason(NULL) == NULL && dsocr_result_box_count(NULL) == 0);
    CHECK(dsocr_result_token_count(NULL) == 0 && dsocr_result_figure_count(NULL) == 0);
    CHECK(dsocr_model_destroy(NULL) == DSOCR_OK);
    CHECK(dsocr_session_destroy(NULL) == DSOCR_OK);
    CHECK(dsocr_result_destroy(NULL) == DSOCR_OK);
    /* made-up handles are refused, never dereferenced */
    CHECK(dsocr_session_destroy((dsocr_session *)(uintptr_t)0x1234) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_session_run_encoded((dsocr_session *)(uintptr_t)0xdeadbeef0, png.data, png.len, NULL, &r)
          == DSOCR_ERR_INVALID_ARGUMENT && r == NULL);
    CHECK(dsocr_result_markdown((dsocr_result *)(uintptr_t)0x77) == NULL);
    CHECK(dsocr_version() && strcmp(dsocr_version(), "unknown") != 0 && strchr(dsocr_version(), '.'));
    dsocr_session_run_encoded(NULL, NULL, 0, NULL, &r);
    CHECK(strlen(dsocr_last_error()) > 0);
    CHECK(dsocr_init() == DSOCR_OK && dsocr_last_error()[0] == '\0'); /* cleared on entry */
}

static int count_pieces(const char *piece, void *user_data) {
    (void)piece;
    (*(int *)user_data)++;
    return 0;
}

static int stop_at_two(const char *piece, void *user_data) {
    (void)piece;
    return ++(*(int *)user_data) >= 2;
}

static void test_run(dsocr_session *s, bytes png) {
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(8);
    int pieces = 0;
    o.on_text = count_pieces;
    o.user_data = &pieces;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && r != NULL);
    CHECK(dsocr_result_markdown(r) != NULL && dsocr_result_raw(r) != NULL && pieces > 0);
    CHECK(strcmp(dsocr_result_stop_reason(r), "max_tokens") == 0 && dsocr_result_token_count(r) == 8);
    dsocr_box box;
    for (size_t i = 0; i < dsocr_result_box_count(r); i++)
        CHECK(dsocr_result_box(r, i, &box) == DSOCR_OK && box.label && box.x1 <= box.x2 && box.y1 <= box.y2);
    CHECK(dsocr_result_box(r, dsocr_result_box_count(r), &box) == DSOCR_ERR_INVALID_ARGUMENT);
    dsocr_figure fig = {.struct_size = sizeof fig};
    for (size_t i = 0; i < dsocr_result_figure_count(r); i++)
        CHECK(dsocr_result_figure(r, i, &fig) == DSOCR_OK && fig.name && fig.data && fig.size > 0);
    CHECK(dsocr_result_figure(r, dsocr_result_figure_count(r), &fig) == DSOCR_ERR_INVALID_ARGUMENT);
    fig.struct_size = 0;
    CHECK(dsocr_result_figure(r, 0, &fig) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_result_destroy(r) == DSOCR_OK);
    CHECK(dsocr_result_destroy(r) == DSOCR_ERR_INVALID_ARGUMENT); /* doubled: refused, nothing read */
    CHECK(strstr(dsocr_last_error(), "destroyed already") != NULL);
    CHECK(dsocr_result_markdown(r) == NULL && dsocr_result_token_count(r) == 0); /* stale: nothing read */
    CHECK(dsocr_result_box(r, 0, &box) == DSOCR_ERR_INVALID_ARGUMENT);

    /* a caller compiled against the API version 1 header: its shorter struct, defaults for the rest */
    o = tokens(3);
    o.struct_size = offsetof(dsocr_run_options, ngram_size);
    o.ngram_size = -7; /* beyond its struct_size: never read */
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && dsocr_result_token_count(r) == 3);
    dsocr_result_destroy(r);
    o = tokens(3);
    o.ngram_size = -1; /* off */
    o.loop_detection = -1;
    o.max_tiles = 4;
    o.figure_prefix = "page-7_";
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && dsocr_result_token_count(r) == 3);
    dsocr_result_destroy(r);

    int calls = 0; /* the callback stops the run: success with the text so far */
    o = tokens(50);
    o.on_text = stop_at_two;
    o.user_data = &calls;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && r != NULL);
    CHECK(calls == 2 && r && strcmp(dsocr_result_stop_reason(r), "cancelled") == 0);
    dsocr_result_destroy(r);
}

static void test_cache_full(const char *bundle, bytes png) { /* a KV cache too small for the prompt */
    dsocr_model *m = NULL;
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    dsocr_model_options mo = dsocr_model_options_default();
    mo.max_seq_len = 64;
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_OK && dsocr_session_create(m, &s) == DSOCR_OK);
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, NULL, &r) == DSOCR_ERR_CACHE_FULL && !r);
    dsocr_session_destroy(s);
    dsocr_model_destroy(m);
}

static void test_bad_inputs(dsocr_session *s, bytes png) {
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(2);
    CHECK(dsocr_session_run_encoded(s, (const uint8_t *)"garbage!", 8, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r);
    CHECK(dsocr_session_run_encoded(s, png.data, png.len / 2, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r);
    CHECK(dsocr_session_run_encoded(s, png.data, 0, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r);
    CHECK(dsocr_session_run_encoded(s, NULL, 0, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r);
    CHECK(dsocr_session_run_encoded(s, NULL, 5, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o.mode = "huge";
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_MODE && !r);
    o.mode = "large"; /* a real mode this bundle was not built for */
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_MODE && !r);
    CHECK(strstr(dsocr_last_error(), "rebuild") != NULL);
    o = tokens(-3);
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o = tokens(2);
    o.prompt = "no image placeholder here";
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) != DSOCR_OK && !r);
    o = tokens(2);
    o.struct_size = 4;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o = tokens(2);
    o.prompt = "<image>\n\xc3\x28 free OCR."; /* not UTF-8 */
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(strstr(dsocr_last_error(), "prompt is not valid UTF-8") != NULL);
    o = tokens(2);
    o.mode = "sm\xe4ll";
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o = tokens(2);
    o.figure_prefix = "../../etc/";
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(strstr(dsocr_last_error(), "figure_prefix") != NULL);
    o = tokens(2);
    o.ngram_size = -2;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o = tokens(2);
    o.loop_detection = 2;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o = tokens(2);
    o.max_tiles = 12;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    o = tokens(2);
    CHECK(dsocr_session_run_encoded(s, (const uint8_t *)"garbage!", 8, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r);
    CHECK(strstr(dsocr_last_error(), "0x") == NULL && strstr(dsocr_last_error(), " at ") == NULL); /* no reprs */
    unsigned char dds[128] = {'D', 'D', 'S', ' ', 124}; /* a DDS whose pixel format Pillow does not implement */
    dds[12] = dds[16] = 8;                               /* height, width */
    dds[76] = 32;                                        /* pixel format size */
    dds[80] = 4;                                         /* DDPF_FOURCC */
    memcpy(dds + 84, "ZZZZ", 4);                         /* an unknown FourCC: NotImplementedError */
    CHECK(dsocr_session_run_encoded(s, dds, sizeof dds, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r);
    CHECK(strstr(dsocr_last_error(), "not a readable image") != NULL);
}

static void test_rgb(dsocr_session *s) {
    enum { W = 64, H = 48, STRIDE = 3 * W + 8 };
    unsigned char *rgb = calloc(STRIDE * H, 1);
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(2);
    size_t len = STRIDE * H;
    CHECK(dsocr_session_run_rgb(s, rgb, len, W, H, 10, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r); /* stride < row */
    CHECK(strstr(dsocr_last_error(), "stride") != NULL);
    CHECK(dsocr_session_run_rgb(s, rgb, len, W, H, -1, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(dsocr_session_run_rgb(s, rgb, len, 0, H, 0, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    unsigned char small[16] = {0}; /* 10000x10000 claimed over 16 bytes: refused, never read past 16 */
    CHECK(dsocr_session_run_rgb(s, small, sizeof small, 10000, 10000, 0, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(strstr(dsocr_last_error(), "holds 16 bytes") != NULL);
    CHECK(dsocr_session_run_rgb(s, rgb, STRIDE * (H - 1) + 3 * W - 1, W, H, STRIDE, &o, &r)
          == DSOCR_ERR_INVALID_ARGUMENT && !r); /* one byte short of the last row */
    CHECK(dsocr_session_run_rgb(s, rgb, len, 100000, 100000, 3 * 100000, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(dsocr_session_run_rgb(s, rgb, len, W, H, 0, &o, &r) == DSOCR_OK && r != NULL);
    dsocr_result_destroy(r);
    CHECK(dsocr_session_run_rgb(s, rgb, STRIDE * (H - 1) + 3 * W, W, H, STRIDE, &o, &r) == DSOCR_OK && r != NULL);
    dsocr_result_destroy(r);
    free(rgb);
}

typedef struct { dsocr_session *s; bytes png; dsocr_status inner; } reentry;

static int call_back_in(const char *piece, void *user_data) { /* a callback calling the same session */
    (void)piece;
    reentry *re = user_data;
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(1);
    re->inner = dsocr_session_run_encoded(re->s, re->png.data, re->png.len, &o, &r);
    dsocr_result_destroy(r);
    return 1;
}

static void test_reentrant(dsocr_session *s, bytes png) {
    reentry re = {s, png, DSOCR_OK};
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(4);
    o.on_text = call_back_in;
    o.user_data = &re;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && r != NULL);
    CHECK(re.inner == DSOCR_ERR_BUSY);
    dsocr_result_destroy(r);
}

typedef struct { dsocr_session *s; dsocr_status destroyed; int calls; } self_destroy;

static int destroy_own_session(const char *piece, void *user_data) { /* destroy during the session's own call */
    (void)piece;
    self_destroy *d = user_data;
    if (d->calls++ == 0) d->destroyed = dsocr_session_destroy(d->s);
    return 0;
}

static void test_handles(dsocr_model *m, bytes png) {
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(3);
    CHECK(dsocr_session_create(m, &s) == DSOCR_OK);
    CHECK(dsocr_session_run_encoded((dsocr_session *)m, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_model_destroy((dsocr_model *)s) == DSOCR_ERR_INVALID_ARGUMENT); /* another kind: refused */
    self_destroy d = {s, DSOCR_ERR_INTERNAL, 0};
    o.on_text = destroy_own_session;
    o.user_data = &d;
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && r != NULL); /* the call finishes */
    CHECK(d.destroyed == DSOCR_OK && d.calls >= 1 && dsocr_result_token_count(r) == 3);
    dsocr_result_destroy(r);
    o = tokens(1);
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r); /* stale */
    CHECK(strstr(dsocr_last_error(), "not a live dsocr_session") != NULL);
    CHECK(dsocr_session_destroy(s) == DSOCR_ERR_INVALID_ARGUMENT); /* doubled */
    dsocr_session *again = NULL; /* a new session never takes the old handle's value */
    CHECK(dsocr_session_create(m, &again) == DSOCR_OK && again != s);
    CHECK(dsocr_session_destroy(again) == DSOCR_OK);
}

typedef struct { dsocr_model *model; bytes png; int n_tokens; dsocr_status status; char markdown[4096]; } job;

static void *worker(void *arg) { /* one create/run/destroy cycle */
    job *j = arg;
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(j->n_tokens);
    j->status = dsocr_session_create(j->model, &s);
    if (j->status == DSOCR_OK) j->status = dsocr_session_run_encoded(s, j->png.data, j->png.len, &o, &r);
    if (j->status == DSOCR_OK) snprintf(j->markdown, sizeof j->markdown, "%s", dsocr_result_markdown(r));
    dsocr_result_destroy(r);
    dsocr_session_destroy(s);
    return NULL;
}

/* `like`'s job on `model` from n threads at once: each must succeed with `like`'s markdown. */
static void same_on_threads(const job *like, dsocr_model *model, int n) {
    pthread_t th[8];
    job jobs[8];
    CHECK(n <= 8);
    if (n > 8) return;
    for (int i = 0; i < n; i++) {
        jobs[i] = *like;
        jobs[i].model = model;
        jobs[i].status = DSOCR_ERR_INTERNAL;
        jobs[i].markdown[0] = '\0';
        CHECK(pthread_create(&th[i], NULL, worker, &jobs[i]) == 0);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].status == DSOCR_OK);
        CHECK(strcmp(jobs[i].markdown, like->markdown) == 0);
    }
}

static void test_threads(dsocr_model *m, bytes png, job *reference_out) {
    enum { N = 4 };
    job reference = {m, png, 6, DSOCR_ERR_INTERNAL, ""};
    worker(&reference);
    *reference_out = reference;
    CHECK(reference.status == DSOCR_OK);
    same_on_threads(&reference, m, N); /* no state shared between sessions */
}

typedef struct { dsocr_model *model; bytes png; int stop_after; int pieces; dsocr_status status;
                 char stop_reason[32]; size_t n_tokens; } stream_job;

static int stop_after(const char *piece, void *user_data) {
    (void)piece;
    stream_job *j = user_data;
    return ++j->pieces >= j->stop_after && j->stop_after > 0;
}

static void *stream_worker(void *arg) { /* a streamed run that may stop itself, next to others */
    stream_job *j = arg;
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(12);
    o.on_text = stop_after;
    o.user_data = j;
    j->status = dsocr_session_create(j->model, &s);
    if (j->status == DSOCR_OK) j->status = dsocr_session_run_encoded(s, j->png.data, j->png.len, &o, &r);
    if (j->status == DSOCR_OK) {
        snprintf(j->stop_reason, sizeof j->stop_reason, "%s", dsocr_result_stop_reason(r));
        j->n_tokens = dsocr_result_token_count(r);
    }
    dsocr_result_destroy(r);
    dsocr_session_destroy(s);
    return NULL;
}

/* max_batch = 4: sessions on 4 threads share one engine; each gets the page it would get alone, a
 * callback stopping one page does not stop the others. */
static void test_batched(const char *bundle, bytes png, const job *alone) {
    enum { N = 4 };
    dsocr_model *m = NULL;
    dsocr_model_options mo = dsocr_model_options_default();
    mo.max_seq_len = 512;
    mo.max_batch = N;
    CHECK(dsocr_model_create(bundle, &mo, &m) == DSOCR_OK);
    same_on_threads(alone, m, N); /* batched == alone */
    pthread_t th[N];
    stream_job streams[N];
    for (int i = 0; i < N; i++) {
        memset(&streams[i], 0, sizeof streams[i]);
        streams[i].model = m;
        streams[i].png = png;
        streams[i].stop_after = i == 0 ? 2 : 0; /* the first stops itself after two pieces */
        CHECK(pthread_create(&th[i], NULL, stream_worker, &streams[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CHECK(streams[i].status == DSOCR_OK && streams[i].pieces > 0);
        if (i == 0) CHECK(strcmp(streams[i].stop_reason, "cancelled") == 0 && streams[i].pieces == 2);
        else CHECK(strcmp(streams[i].stop_reason, "max_tokens") == 0 && streams[i].n_tokens == 12);
    }
    dsocr_session *s = NULL; /* the model goes first; its session keeps the shared engine alive */
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(2);
    CHECK(dsocr_session_create(m, &s) == DSOCR_OK && dsocr_model_destroy(m) == DSOCR_OK);
    CHECK(dsocr_session_run_encoded(s, png.data, png.len, &o, &r) == DSOCR_OK && dsocr_result_token_count(r) == 2);
    dsocr_result_destroy(r);
    CHECK(dsocr_session_destroy(s) == DSOCR_OK);
    CHECK(dsocr_model_destroy(m) == DSOCR_ERR_INVALID_ARGUMENT);
}

static void measure_sessions(dsocr_model *m, bytes png, int cycles) {
    job j = {m, png, 8, DSOCR_OK, ""};
    for (int i = 0; i < 5; i++) worker(&j); /* warm-up: allocator arenas, ORT buffers, lazy imports */
    printf("RSS_KB session 0 %ld\n", rss_kb());
    int every = cycles >= 10 ? cycles / 10 : 1;
    for (int i = 1; i <= cycles && j.status == DSOCR_OK; i++) {
        worker(&j);
        if (i % every == 0 || i == cycles) printf("RSS_KB session %d %ld\n", i, rss_kb());
    }
    CHECK(j.status == DSOCR_OK);
    fflush(stdout);
}

static void measure_models(const char *bundle, int cycles) {
    for (int i = 0; i <= cycles; i++) {
        dsocr_model *m = NULL;
        dsocr_session *s = NULL;
        CHECK(dsocr_model_create(bundle, NULL, &m) == DSOCR_OK && dsocr_session_create(m, &s) == DSOCR_OK);
        dsocr_model_destroy(m); /* before its session: the session keeps what it uses alive */
        dsocr_session_destroy(s);
        if (i == 0 || i == cycles) printf("RSS_KB model %d %ld\n", i, rss_kb());
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s BUNDLE PAGE SESSION_CYCLES [MODEL_CYCLES]\n", argv[0]); return 2; }
    bytes png = read_file(argv[2]);
    CHECK(png.data != NULL);
    test_bad_calls(argv[1], png);
    dsocr_model *m = NULL;
    dsocr_session *s = NULL;
    dsocr_model_options mo = dsocr_model_options_default();
    mo.max_seq_len = 512;
    CHECK(dsocr_model_create(argv[1], &mo, &m) == DSOCR_OK && dsocr_session_create(m, &s) == DSOCR_OK);
    if (failures) { printf("%d FAILED\n", failures); return 1; }
    test_run(s, png);
    test_bad_inputs(s, png);
    test_rgb(s);
    test_reentrant(s, png);
    CHECK(dsocr_session_destroy(s) == DSOCR_OK);
    test_handles(m, png);
    test_cache_full(argv[1], png);
    job alone;
    test_threads(m, png, &alone);
    test_batched(argv[1], png, &alone);
    measure_sessions(m, png, atoi(argv[3]));
    CHECK(dsocr_model_destroy(m) == DSOCR_OK);
    if (argc > 4) measure_models(argv[1], atoi(argv[4]));
    free((void *)png.data);
    if (failures) { printf("%d FAILED\n", failures); return 1; }
    printf("PASS\n");
    return 0;
}

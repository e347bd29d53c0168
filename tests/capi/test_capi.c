/* C test of libdsocr: good and bad calls, streaming and cancelling, raw RGB, re-entrance, sessions on
 * threads sharing one model, and resident memory over create/run/destroy cycles.
 *
 * usage: test_capi BUNDLE_DIR PAGE_PNG SESSION_CYCLES [MODEL_CYCLES]
 * prints "RSS_KB <phase> <cycle> <kB>" samples, then "PASS" (exit 0) or "<n> FAILED" (exit 1). */
#include <pthread.h>
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
    CHECK(dsocr_session_create(NULL, &s) == DSOCR_ERR_INVALID_ARGUMENT && s == NULL);
    CHECK(dsocr_session_run_encoded(NULL, png.data, png.len, NULL, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_session_run_rgb(NULL, png.data, 1, 1, 0, NULL, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_result_box(NULL, 0, NULL) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_result_markdown(NULL) == NULL && dsocr_result_raw(NULL) == NULL);
    CHECK(dsocr_result_stop_reason(NULL) == NULL && dsocr_result_box_count(NULL) == 0);
    CHECK(dsocr_result_token_count(NULL) == 0);
    dsocr_model_destroy(NULL);
    dsocr_session_destroy(NULL);
    dsocr_result_destroy(NULL);
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
}

static void test_rgb(dsocr_session *s) {
    enum { W = 64, H = 48, STRIDE = 3 * W + 8 };
    unsigned char *rgb = calloc(STRIDE * H, 1);
    dsocr_result *r = NULL;
    dsocr_run_options o = tokens(2);
    CHECK(dsocr_session_run_rgb(s, rgb, W, H, 10, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r); /* stride < row */
    CHECK(strstr(dsocr_last_error(), "stride") != NULL);
    CHECK(dsocr_session_run_rgb(s, rgb, W, H, -1, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(dsocr_session_run_rgb(s, rgb, 0, H, 0, &o, &r) == DSOCR_ERR_INVALID_ARGUMENT && !r);
    CHECK(dsocr_session_run_rgb(s, rgb, 100000, 100000, 0, &o, &r) == DSOCR_ERR_BAD_IMAGE && !r); /* > limit */
    CHECK(dsocr_session_run_rgb(s, rgb, W, H, 0, &o, &r) == DSOCR_OK && r != NULL);
    dsocr_result_destroy(r);
    CHECK(dsocr_session_run_rgb(s, rgb, W, H, STRIDE, &o, &r) == DSOCR_OK && r != NULL);
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

static void test_threads(dsocr_model *m, bytes png) {
    enum { N = 4 };
    job reference = {m, png, 6, DSOCR_ERR_INTERNAL, ""};
    worker(&reference);
    CHECK(reference.status == DSOCR_OK);
    pthread_t th[N];
    job jobs[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = reference;
        jobs[i].status = DSOCR_ERR_INTERNAL;
        jobs[i].markdown[0] = '\0';
        CHECK(pthread_create(&th[i], NULL, worker, &jobs[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].status == DSOCR_OK);
        CHECK(strcmp(jobs[i].markdown, reference.markdown) == 0); /* no state shared between sessions */
    }
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
    dsocr_session_destroy(s);
    test_cache_full(argv[1], png);
    test_threads(m, png);
    measure_sessions(m, png, atoi(argv[3]));
    dsocr_model_destroy(m);
    if (argc > 4) measure_models(argv[1], atoi(argv[4]));
    free((void *)png.data);
    if (failures) { printf("%d FAILED\n", failures); return 1; }
    printf("PASS\n");
    return 0;
}

/* C test of libdsocr: good and bad calls, streaming, threads, and RSS over create/run/destroy cycles.
 * usage: test_capi BUNDLE_DIR PAGE_PNG CYCLES  -> prints "RSS_KB before after" and "PASS" */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsocr.h"

static int failures = 0;
#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    dsocr_last_error());                                              \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(*len);
    if (buf && fread(buf, 1, *len, f) != *len) { free(buf); buf = NULL; }
    fclose(f);
    return buf;
}

static long rss_kb(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) { if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0; fclose(f); }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int count_pieces(const char *piece, void *user_data) { (*(int *)user_data)++; return 0; }
static int stop_at_two(const char *piece, void *user_data) { return ++(*(int *)user_data) >= 2; }

typedef struct { dsocr_model *model; const unsigned char *png; size_t len; dsocr_status status; } job;

static void *worker(void *arg) {
    job *j = arg;
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    dsocr_run_options o = dsocr_run_options_default();
    o.max_new_tokens = 3;
    j->status = dsocr_session_create(j->model, &s);
    if (j->status == DSOCR_OK) j->status = dsocr_session_run_encoded(s, j->png, j->len, &o, &r);
    if (j->status == DSOCR_OK && !dsocr_result_markdown(r)) j->status = DSOCR_ERR_INTERNAL;
    dsocr_result_destroy(r);
    dsocr_session_destroy(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s BUNDLE PAGE CYCLES\n", argv[0]); return 2; }
    size_t len = 0;
    unsigned char *png = read_file(argv[2], &len);
    CHECK(png != NULL);
    CHECK(dsocr_api_version() == DSOCR_API_VERSION);
    CHECK(dsocr_bundle_format_version() == 1);

    /* bad calls: documented statuses, never a crash */
    dsocr_model *m = NULL;
    dsocr_session *s = NULL;
    dsocr_result *r = NULL;
    CHECK(dsocr_model_open(NULL, &m) == DSOCR_ERR_INVALID_ARGUMENT && m == NULL);
    CHECK(dsocr_model_open(argv[1], NULL) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_model_open("/nonexistent/bundle", &m) == DSOCR_ERR_IO && strlen(dsocr_last_error()) > 0);
    CHECK(dsocr_model_open("/tmp", &m) == DSOCR_ERR_BAD_BUNDLE);
    CHECK(dsocr_session_create(NULL, &s) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_session_run_encoded(NULL, png, len, NULL, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_result_markdown(NULL) == NULL && dsocr_result_box_count(NULL) == 0);
    dsocr_model_destroy(NULL);
    dsocr_session_destroy(NULL);
    dsocr_result_destroy(NULL);

    CHECK(dsocr_model_open(argv[1], &m) == DSOCR_OK);
    CHECK(dsocr_session_create(m, &s) == DSOCR_OK);
    dsocr_run_options o = dsocr_run_options_default();
    o.max_new_tokens = 4;
    int pieces = 0;
    o.on_text = count_pieces;
    o.user_data = &pieces;
    CHECK(dsocr_session_run_encoded(s, png, len, &o, &r) == DSOCR_OK);
    CHECK(r && dsocr_result_markdown(r) != NULL && pieces > 0);
    CHECK(strcmp(dsocr_result_stop_reason(r), "max_tokens") == 0);
    dsocr_box box;
    CHECK(dsocr_result_box(r, dsocr_result_box_count(r), &box) == DSOCR_ERR_INVALID_ARGUMENT);
    dsocr_result_destroy(r);
    r = NULL;

    int calls = 0;
    o.max_new_tokens = 50;
    o.on_text = stop_at_two;
    o.user_data = &calls;
    CHECK(dsocr_session_run_encoded(s, png, len, &o, &r) == DSOCR_OK);
    CHECK(r && calls == 2 && strcmp(dsocr_result_stop_reason(r), "cancelled") == 0);
    dsocr_result_destroy(r);
    r = NULL;

    dsocr_run_options bad = dsocr_run_options_default();
    bad.max_new_tokens = 2;
    CHECK(dsocr_session_run_encoded(s, (const uint8_t *)"garbage!", 8, &bad, &r) == DSOCR_ERR_BAD_IMAGE && r == NULL);
    CHECK(dsocr_session_run_encoded(s, png, 0, &bad, &r) == DSOCR_ERR_BAD_IMAGE);
    bad.mode = "huge";
    CHECK(dsocr_session_run_encoded(s, png, len, &bad, &r) == DSOCR_ERR_MODE);
    bad.mode = "large"; /* a real mode this bundle was not built for */
    CHECK(dsocr_session_run_encoded(s, png, len, &bad, &r) == DSOCR_ERR_MODE);
    CHECK(strstr(dsocr_last_error(), "rebuild") != NULL);
    bad.mode = NULL;

    unsigned char *rgb = calloc(64 * 48 * 3, 1);
    CHECK(dsocr_session_run_rgb(s, rgb, 64, 48, 10, &bad, &r) == DSOCR_ERR_BAD_IMAGE); /* stride < row */
    CHECK(dsocr_session_run_rgb(s, rgb, 0, 48, 0, &bad, &r) == DSOCR_ERR_INVALID_ARGUMENT);
    CHECK(dsocr_session_run_rgb(s, rgb, 64, 48, 0, &bad, &r) == DSOCR_OK && r != NULL);
    dsocr_result_destroy(r);
    r = NULL;
    free(rgb);
    dsocr_session_destroy(s);

    /* several sessions on threads, one shared model */
    enum { N = 3 };
    pthread_t th[N];
    job jobs[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = (job){m, png, len, DSOCR_ERR_INTERNAL};
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].status == DSOCR_OK);
    }

    /* create/run/destroy cycles: memory stays flat */
    int cycles = atoi(argv[3]);
    job j = {m, png, len, DSOCR_OK};
    for (int i = 0; i < 5; i++) worker(&j); /* warm-up: allocator arenas, lazy imports */
    long before = rss_kb();
    for (int i = 0; i < cycles && j.status == DSOCR_OK; i++) worker(&j);
    long after = rss_kb();
    CHECK(j.status == DSOCR_OK);
    printf("RSS_KB %ld %ld\n", before, after);

    dsocr_model_destroy(m);
    free(png);
    if (failures) { printf("%d FAILED\n", failures); return 1; }
    printf("PASS\n");
    return 0;
}

/* The registry of live handles (handles.h): ids -> objects in a chained hash table under one mutex. */
#include "handles.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

enum { BUCKETS = 1024 };

struct handle_entry {
    uint64_t id;               /* (serial << HANDLE_KIND_BITS) | kind */
    void *obj;                 /* struct dsocr_model / dsocr_session / dsocr_result */
    unsigned refs;             /* calls using obj now */
    int dead;                  /* removed: unlinked from the table, freed when refs drops to 0 */
    struct handle_entry *next; /* bucket chain */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static handle_entry *g_table[BUCKETS];
static uint64_t g_serial = 0;

static uint64_t id_of(const void *handle) { return (uint64_t)(uintptr_t)handle; }
static int kind_of(uint64_t id) { return (int)(id & ((1u << HANDLE_KIND_BITS) - 1)); }
static handle_entry **bucket(uint64_t id) { return &g_table[(id >> HANDLE_KIND_BITS) % BUCKETS]; }

void *handles_add(int kind, void *obj) {
    handle_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    pthread_mutex_lock(&g_lock);
    e->id = (++g_serial << HANDLE_KIND_BITS) | (uint64_t)kind;
    e->obj = obj;
    handle_entry **b = bucket(e->id);
    e->next = *b;
    *b = e;
    pthread_mutex_unlock(&g_lock);
    return (void *)(uintptr_t)e->id;
}

handle_entry *handles_acquire(const void *handle, int kind) {
    uint64_t id = id_of(handle);
    if (!id || kind_of(id) != kind) return NULL;
    pthread_mutex_lock(&g_lock);
    handle_entry *e = *bucket(id);
    while (e && e->id != id) e = e->next;
    if (e) e->refs++;
    pthread_mutex_unlock(&g_lock);
    return e;
}

void *handles_object(const handle_entry *e) { return e->obj; }

void handles_release(handle_entry *e) {
    pthread_mutex_lock(&g_lock);
    int last = --e->refs == 0 && e->dead;
    pthread_mutex_unlock(&g_lock);
    if (last) {
        handles_free_object(kind_of(e->id), e->obj);
        free(e);
    }
}

int handles_remove(void *handle, int kind) {
    uint64_t id = id_of(handle);
    handle_entry *e = NULL, **link = NULL;
    pthread_mutex_lock(&g_lock);
    if (id && kind_of(id) == kind)
        for (link = bucket(id); (e = *link) && e->id != id; link = &e->next) {}
    int now = 0;
    if (e) {
        *link = e->next;
        e->dead = 1;
        now = e->refs == 0;
    }
    pthread_mutex_unlock(&g_lock);
    if (!e) return -1;
    if (now) {
        handles_free_object(kind, e->obj);
        free(e);
    }
    return 0;
}

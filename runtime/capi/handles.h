/* handles.h -- libdsocr's registry of live handles (internal; not installed, not exported).
 *
 * A handle is an id, (serial << HANDLE_KIND_BITS) | kind, cast to the opaque pointer type of dsocr.h;
 * serials count up and are never reused, so a destroyed handle never names a new object. The library
 * never dereferences a handle: it looks the id up here. A call takes a reference while it uses the
 * object; destroy unlinks the id at once, and the object is freed (handles_free_object) when the last
 * reference goes. All functions are thread-safe (one mutex; every critical section is a few loads). */
#ifndef DSOCR_HANDLES_H
#define DSOCR_HANDLES_H

enum { KIND_MODEL = 1, KIND_SESSION = 2, KIND_RESULT = 3, HANDLE_KIND_BITS = 2 };

typedef struct handle_entry handle_entry;

void *handles_add(int kind, void *obj);                       /* a new handle for obj; NULL: out of memory */
handle_entry *handles_acquire(const void *handle, int kind);  /* +1 reference; NULL: not live or another kind */
void *handles_object(const handle_entry *e);                  /* the object, while a reference is held */
void handles_release(handle_entry *e);                        /* -1 reference; frees a destroyed object */
int handles_remove(void *handle, int kind);                   /* 0: unlinked (freed now or on last release);
                                                                 -1: not a live handle of this kind */
void handles_free_object(int kind, void *obj);                /* defined by the library (dsocr.c) */

#endif /* DSOCR_HANDLES_H */

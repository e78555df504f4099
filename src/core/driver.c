/* driver.c: the real driver's entry points. libcuda.so.1 is looked up only when the program
 * makes its first intercepted call, so a process that never touches CUDA never loads it. */
#include "gs.h"

#include <dlfcn.h>
#include <pthread.h>

void *(*gs_real_dlsym)(void *, const char *);
void *gs_driver_handle;

/* Bootstrap: the real dlsym comes from dlvsym, which we do not interpose. glibc 2.34 moved dlsym
 * into libc with a new version node; older libdl has only GLIBC_2.2.5. */
void *(*gs_resolve_real_dlsym(void))(void *, const char *)
{
    void *(*real)(void *, const char *) = gs_real_dlsym;
    if (real == NULL) {
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (real == NULL)
            real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
        gs_real_dlsym = real;
    }
    return real;
}

static gs_driver_t gs_driver_table;
static const gs_driver_t *_Atomic gs_driver_ready;
static pthread_mutex_t gs_driver_lock = PTHREAD_MUTEX_INITIALIZER;

static void load_driver(gs_driver_t *table)
{
    /* Never plain dlsym: inside libgpushim.so it binds to our own, which hands out wrappers. */
    void *(*lookup)(void *, const char *) = gs_resolve_real_dlsym();
    /* Already loaded (the runtime opens it by soname, a program may link it): reuse it. */
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL)
        handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        gs_log_warning("cannot load libcuda.so.1: %s", dlerror());
        return;
    }
    gs_driver_handle = handle;
#define GS_DRIVER_LOAD(field, symbol, type) table->field = (type)lookup(handle, symbol);
    GS_DRIVER_FUNCS(GS_DRIVER_LOAD)
#undef GS_DRIVER_LOAD
}

const gs_driver_t *gs_driver(void)
{
    const gs_driver_t *ready = atomic_load_explicit(&gs_driver_ready, memory_order_acquire);
    if (ready)
        return ready;
    pthread_mutex_lock(&gs_driver_lock);
    ready = atomic_load_explicit(&gs_driver_ready, memory_order_relaxed);
    if (ready == NULL) {
        load_driver(&gs_driver_table);
        ready = &gs_driver_table;
        atomic_store_explicit(&gs_driver_ready, ready, memory_order_release);
    }
    pthread_mutex_unlock(&gs_driver_lock);
    return ready;
}

void gs_driver_override(const gs_driver_t *fake)
{
    atomic_store_explicit(&gs_driver_ready, fake, memory_order_release);
}

/* trace.c: GPUSHIM_TRACE. Every allocation and free, as CSV in RMM's logging format:
 *
 *     Thread,Time,Action,Pointer,Size,Stream
 *     4242,13:05:59:123456,allocate,0x7f2a00000000,4096,0
 *
 * Actions: allocate, allocate failure, free. Time is UTC wall-clock HH:MM:SS:microseconds, as
 * rmm::mr::logging_resource_adaptor writes it; RMM's replay benchmark and `gpushim replay` read it.
 *
 * Cost on the allocation path: a tick count and a few stores into a per-thread buffer. A full
 * buffer is formatted and written by its thread; at exit every buffer is written, so nothing is
 * lost (records a still-running thread adds after that point are not). */
#include "gs.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRACE_RECORDS 4096

bool gs_tracing;

typedef struct trace_record {
    uint64_t ticks, ptr, bytes, stream;
    uint32_t thread;
    uint32_t action;
} trace_record_t;

typedef struct trace_buffer {
    pthread_mutex_t lock; /* taken to write the buffer out: by its owner when full, or at exit */
    _Atomic size_t count;
    atomic_bool owned;
    struct trace_buffer *next;
    trace_record_t records[TRACE_RECORDS];
} trace_buffer_t;

static trace_buffer_t *_Atomic gs_trace_buffers;
static pthread_mutex_t gs_trace_lock = PTHREAD_MUTEX_INITIALIZER; /* the file, the buffer list */
static int gs_trace_fd = -1;
static bool gs_trace_append; /* a forked child adds to the file rather than truncating it */
static pthread_key_t gs_trace_key;
static pthread_once_t gs_trace_once = PTHREAD_ONCE_INIT;
static GS_TLS trace_buffer_t *gs_my_trace;
static GS_TLS uint32_t gs_my_thread;

static const char *const action_names[] = {"allocate", "allocate failure", "free"};

/* Hand-made number formatting: snprintf cost about 0.5 us a record, more than the allocation. */
static char *put_decimal(char *out, uint64_t value)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *out++ = digits[--n];
    return out;
}

static char *put_hex(char *out, uint64_t value)
{
    static const char hex[] = "0123456789abcdef";
    char digits[16];
    int n = 0;
    do {
        digits[n++] = hex[value & 15];
        value >>= 4;
    } while (value);
    *out++ = '0';
    *out++ = 'x';
    while (n)
        *out++ = digits[--n];
    return out;
}

static char *put_padded(char *out, unsigned value, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
    return out + width;
}

static char *put_text(char *out, const char *text)
{
    while (*text)
        *out++ = *text++;
    return out;
}

/* One CSV line: Thread,Time,Action,Pointer,Size,Stream. At most about 130 bytes. */
static char *put_record(char *out, const trace_record_t *r, double ticks_per_ns)
{
    uint64_t day_us = gs_ticks_to_epoch_ns(r->ticks, ticks_per_ns) / 1000 % (86400ull * 1000000);
    out = put_decimal(out, r->thread);
    *out++ = ',';
    out = put_padded(out, (unsigned)(day_us / 3600000000ull), 2);
    *out++ = ':';
    out = put_padded(out, (unsigned)(day_us / 60000000ull % 60), 2);
    *out++ = ':';
    out = put_padded(out, (unsigned)(day_us / 1000000ull % 60), 2);
    *out++ = ':';
    out = put_padded(out, (unsigned)(day_us % 1000000ull), 6);
    *out++ = ',';
    out = put_text(out, action_names[r->action]);
    *out++ = ',';
    out = put_hex(out, r->ptr);
    *out++ = ',';
    out = put_decimal(out, r->bytes);
    *out++ = ',';
    out = put_decimal(out, r->stream);
    *out++ = '\n';
    return out;
}

/* Formats and writes a buffer (its lock held). */
static void write_out(trace_buffer_t *b)
{
    size_t count = atomic_load_explicit(&b->count, memory_order_acquire);
    if (count == 0)
        return;
    double ticks_per_ns = gs_ticks_per_ns();
    pthread_mutex_lock(&gs_trace_lock);
    if (gs_trace_fd < 0) {
        char path[GS_PATH_MAX];
        gs_expand_path(gs_opts.trace_path, path, sizeof path);
        gs_trace_fd =
            open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (gs_trace_append ? 0 : O_TRUNC),
                 0644);
        if (gs_trace_fd < 0)
            gs_log_warning("cannot write the trace to %s; tracing stops", path);
        else if (!gs_trace_append)
            gs_write_all(gs_trace_fd, "Thread,Time,Action,Pointer,Size,Stream\n", 39);
    }
    if (gs_trace_fd >= 0) {
        static char text[65536];
        size_t len = 0;
        for (size_t i = 0; i < count; i++) {
            len = (size_t)(put_record(text + len, &b->records[i], ticks_per_ns) - text);
            if (len > sizeof text - 256) {
                gs_write_all(gs_trace_fd, text, len);
                len = 0;
            }
        }
        gs_write_all(gs_trace_fd, text, len);
    }
    pthread_mutex_unlock(&gs_trace_lock);
    atomic_store_explicit(&b->count, 0, memory_order_release);
}

/* A thread ends: its records go out, its buffer to the next thread. */
static void release_buffer(void *arg)
{
    trace_buffer_t *b = arg;
    pthread_mutex_lock(&b->lock);
    write_out(b);
    pthread_mutex_unlock(&b->lock);
    atomic_store(&b->owned, false);
    gs_my_trace = NULL;
}

static void make_key(void)
{
    pthread_key_create(&gs_trace_key, release_buffer);
}

static trace_buffer_t *my_buffer(void)
{
    pthread_once(&gs_trace_once, make_key);
    pthread_mutex_lock(&gs_trace_lock);
    trace_buffer_t *b = atomic_load(&gs_trace_buffers);
    for (; b; b = b->next) {
        bool expected = false;
        if (atomic_compare_exchange_strong(&b->owned, &expected, true))
            break;
    }
    if (b == NULL && (b = calloc(1, sizeof *b)) != NULL) {
        pthread_mutex_init(&b->lock, NULL);
        atomic_store(&b->owned, true);
        b->next = atomic_load(&gs_trace_buffers);
        atomic_store(&gs_trace_buffers, b);
    }
    pthread_mutex_unlock(&gs_trace_lock);
    if (b)
        pthread_setspecific(gs_trace_key, b);
    gs_my_thread = (uint32_t)syscall(SYS_gettid);
    return b;
}

void gs_trace_record(int action, CUdeviceptr ptr, uint64_t bytes, CUstream stream)
{
    trace_buffer_t *b = gs_my_trace;
    if (__builtin_expect(b == NULL, 0) && (b = gs_my_trace = my_buffer()) == NULL)
        return;
    size_t n = atomic_load_explicit(&b->count, memory_order_relaxed);
    if (n == TRACE_RECORDS) {
        pthread_mutex_lock(&b->lock);
        write_out(b);
        pthread_mutex_unlock(&b->lock);
        n = 0;
    }
    b->records[n] = (trace_record_t){.ticks = gs_ticks(),
                                     .ptr = ptr,
                                     .bytes = bytes,
                                     .stream = (uint64_t)(uintptr_t)stream,
                                     .thread = gs_my_thread,
                                     .action = (uint32_t)action};
    atomic_store_explicit(&b->count, n + 1, memory_order_release);
}

void gs_trace_flush(void)
{
    if (!gs_tracing)
        return;
    for (trace_buffer_t *b = atomic_load(&gs_trace_buffers); b; b = b->next) {
        pthread_mutex_lock(&b->lock);
        write_out(b);
        pthread_mutex_unlock(&b->lock);
    }
}

/* Fork child: the parent's records are the parent's to write. The child appends its own to the
 * same file (use %p in GPUSHIM_TRACE for one file per process). */
void gs_trace_forget(void)
{
    pthread_mutex_init(&gs_trace_lock, NULL);
    for (trace_buffer_t *b = atomic_load(&gs_trace_buffers); b; b = b->next) {
        pthread_mutex_init(&b->lock, NULL);
        atomic_store(&b->count, 0);
        atomic_store(&b->owned, b == gs_my_trace);
    }
    if (gs_trace_fd >= 0)
        close(gs_trace_fd);
    gs_trace_fd = -1;
    gs_trace_append = true;
    gs_my_thread = (uint32_t)syscall(SYS_gettid);
}

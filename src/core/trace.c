/* trace.c: GPUSHIM_TRACE. Every allocation and free, as CSV in RMM's logging format:
 *
 *     Thread,Time,Action,Pointer,Size,Stream
 *     4242,13:05:59:123456,allocate,0x7f2a00000000,4096,0
 *
 * Actions: allocate, allocate failure, free. Time is UTC wall-clock HH:MM:SS:microseconds, as
 * rmm::mr::logging_resource_adaptor writes it; RMM's replay benchmark and `gpushim replay` read it.
 *
 * Cost on the allocation path: a 32-byte store into the thread's buffer, and a tick count
 * (rdtsc: 16-23 ns on the hosts measured, more than the rest) unless the thread allocates in a
 * tight loop (see read_clock). Formatting a line costs more than a pool allocation, so a full
 * buffer goes to a queue that a writer thread formats and writes; the thread takes an empty
 * buffer and goes on. If the writer falls behind (more than TRACE_QUEUED_MAX buffers waiting),
 * the thread writes its buffer itself, so memory stays bounded. At exit every buffer is written,
 * so nothing is lost: the exit report is rendered first and the trace flushed after, so every
 * record it counts is in the file (a thread preempted between its count and its record aside).
 * A thread's current buffer may be flushed while the thread goes on filling it (see
 * trace_buffer_t.written). */
#include "gs.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TRACE_RECORDS 8192 /* 256 KiB a buffer */
#define TRACE_QUEUED_MAX 32
#define TRACE_ACTION_SHIFT 62 /* the action rides in the tick count's top bits */

bool gs_tracing;

typedef struct trace_record {
    uint64_t ticks_action, ptr, bytes, stream;
} trace_record_t;

typedef struct trace_buffer {
    struct trace_buffer *next;  /* on the queue or the spare list */
    struct trace_buffer *every; /* the list of all buffers, for the exit flush */
    uint32_t thread;            /* whose records these are */
    /* Records [0, count) are complete: the owner stores count (release) after each one. A flush
     * that does not hold the buffer alone (at exit, of a thread's current buffer) writes
     * [written, count) and moves written on; who holds it alone writes the rest and empties it.
     * written, and count's reset to 0, only under gs_trace_lock. */
    size_t written;
    _Atomic size_t count;
    trace_record_t records[TRACE_RECORDS];
} trace_buffer_t;

/* gs_trace_lock guards the file, gs_queue_lock the lists and the writer's state. Order: the
 * file lock may be taken with the queue lock free only (the writer never holds both). */
static pthread_mutex_t gs_trace_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t gs_queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gs_queue_filled = PTHREAD_COND_INITIALIZER;
static pthread_cond_t gs_writer_idle = PTHREAD_COND_INITIALIZER;
static trace_buffer_t *gs_queue_head, *gs_queue_tail, *gs_spares, *gs_every;
static int gs_queued;
static bool gs_writer_started, gs_writer_busy, gs_stopping;

static int gs_trace_fd = -1;
/* Whether this process adds to the file rather than starting it afresh (see gs_trace_start). */
static bool gs_trace_append;
static bool gs_trace_per_process; /* the path has %p: every process has a file of its own */
static atomic_bool gs_trace_write_warned;
static pthread_key_t gs_trace_key;
static pthread_once_t gs_trace_once = PTHREAD_ONCE_INIT;
static GS_TLS trace_buffer_t *gs_my_trace;

/* Hand-made number formatting: snprintf cost about 0.5 us a record, more than the allocation, and
 * the writer thread has to keep up with threads that allocate every 100 ns. Two digits (two hex
 * digits) a step from tables, and fixed-size copies: 216 instructions a record where one digit a
 * step took 347 (callgrind, the pair loop on the test driver, every record's time formatted). */
static const char two_digits[201] = "00010203040506070809101112131415161718192021222324"
                                    "25262728293031323334353637383940414243444546474849"
                                    "50515253545556575859606162636465666768697071727374"
                                    "75767778798081828384858687888990919293949596979899";

static char two_hex[513]; /* "000102...feff", filled at the first write_out */

static void fill_two_hex(void)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 256; i++) {
        two_hex[2 * i] = hex[i >> 4];
        two_hex[2 * i + 1] = hex[i & 15];
    }
}

static char *put_decimal(char *out, uint64_t value)
{
    char digits[40]; /* filled backwards from 20; 20 bytes copied from wherever it starts */
    int n = 20;
    while (value >= 100) {
        n -= 2;
        memcpy(digits + n, two_digits + 2 * (value % 100), 2);
        value /= 100;
    }
    if (value >= 10) {
        n -= 2;
        memcpy(digits + n, two_digits + 2 * value, 2);
    } else {
        digits[--n] = (char)('0' + value);
    }
    memcpy(out, digits + n, 20); /* fixed size: one move; the caller's buffer has room */
    return out + (20 - n);
}

static char *put_hex(char *out, uint64_t value)
{
    int nibbles = value ? (67 - __builtin_clzll(value)) / 4 : 1;
    int bytes = (nibbles + 1) / 2; /* written two digits a byte, the odd leading zero dropped */
    char digits[17];
    for (int i = 0; i < bytes; i++)
        memcpy(digits + 2 * i, two_hex + 2 * ((value >> (8 * (bytes - 1 - i))) & 255), 2);
    out[0] = '0';
    out[1] = 'x';
    memcpy(out + 2, digits + (nibbles & 1), 16);
    return out + 2 + nibbles;
}

/* width digits of value, zero-padded; width even. */
static char *put_padded(char *out, unsigned value, int width)
{
    for (int i = width - 2; i >= 0; i -= 2) {
        memcpy(out + i, two_digits + 2 * (value % 100), 2);
        value /= 100;
    }
    return out + width;
}

/* Wall-clock time of day as RMM writes it, HH:MM:SS:uuuuuu, from a tick count. Consecutive records
 * often share a tick count (a tight run, see read_clock) or a microsecond, and always the
 * HH:MM:SS part for a second: the text is kept from the previous line. */
typedef struct time_format {
    double us_per_tick;
    uint64_t origin_ticks, origin_day_us;
    uint64_t ticks, day_us; /* of the cached text; day_us UINT64_MAX: none */
    char text[15];          /* "HH:MM:SS:uuuuuu" */
} time_format_t;

static time_format_t time_format_start(void)
{
    static double ticks_per_ns; /* calibrated once: the first call may spin for 5 ms */
    if (ticks_per_ns == 0)
        ticks_per_ns = gs_ticks_per_ns();
    uint64_t now = gs_ticks();
    uint64_t now_epoch_us = gs_ticks_to_epoch_ns(now, ticks_per_ns) / 1000;
    return (time_format_t){.us_per_tick = 1 / (ticks_per_ns * 1000),
                           .origin_ticks = now,
                           .origin_day_us = now_epoch_us % (86400ull * 1000000),
                           .ticks = now,
                           .day_us = UINT64_MAX};
}

static char *put_time(char *out, time_format_t *f, uint64_t ticks)
{
    if (ticks != f->ticks || f->day_us == UINT64_MAX) {
        f->ticks = ticks;
        int64_t delta_us = (int64_t)((double)(int64_t)(ticks - f->origin_ticks) * f->us_per_tick);
        uint64_t day_us = (uint64_t)((int64_t)f->origin_day_us + delta_us) % (86400ull * 1000000);
        if (day_us != f->day_us) {
            uint64_t second = day_us / 1000000;
            if (f->day_us == UINT64_MAX || second != f->day_us / 1000000) {
                put_padded(f->text, (unsigned)(second / 3600), 2);
                f->text[2] = ':';
                put_padded(f->text + 3, (unsigned)(second / 60 % 60), 2);
                f->text[5] = ':';
                put_padded(f->text + 6, (unsigned)(second % 60), 2);
                f->text[8] = ':';
            }
            put_padded(f->text + 9, (unsigned)(day_us % 1000000), 6);
            f->day_us = day_us;
        }
    }
    memcpy(out, f->text, 15);
    return out + 15;
}

/* ",allocate,", ",allocate failure,", ",free," with their lengths, each padded to 18 bytes so
 * that one fixed-size move copies any of them. */
static const struct {
    char text[18];
    size_t len;
} action_fields[] = {{",allocate,", 10}, {",allocate failure,", 18}, {",free,", 6}};

/* One CSV line: Thread,Time,Action,Pointer,Size,Stream. At most about 130 bytes. */
static char *put_record(char *out, const char *thread, size_t thread_len, time_format_t *f,
                        const trace_record_t *r)
{
    memcpy(out, thread, 16); /* fixed size: the thread's text is at most 11 bytes */
    out = put_time(out + thread_len, f, r->ticks_action & ((1ull << TRACE_ACTION_SHIFT) - 1));
    unsigned action = (unsigned)(r->ticks_action >> TRACE_ACTION_SHIFT);
    memcpy(out, action_fields[action].text, 18); /* fixed size, see action_fields */
    out = put_hex(out + action_fields[action].len, r->ptr);
    *out++ = ',';
    out = put_decimal(out, r->bytes);
    *out++ = ',';
    if (r->stream == 0)
        *out++ = '0';
    else
        out = put_decimal(out, r->stream);
    *out++ = '\n';
    return out;
}

/* Opens the trace file (trace lock held): afresh, or to add to it (gs_trace_append); the header
 * goes into an empty file. A file that cannot be written stops the trace, said once. Whole lines
 * only ever go into one write(2), and the file is opened O_APPEND, so the processes of a tree
 * that share one path add whole lines and never overwrite each other. */
static void open_trace(void)
{
    char path[GS_PATH_MAX];
    gs_expand_path(gs_opts.trace_path, path, sizeof path);
    gs_trace_fd = gs_output_open(path, !gs_trace_append, "trace");
    if (gs_trace_fd < 0) {
        gs_trace_fd = -2; /* tried: not again */
        return;
    }
    struct stat st;
    if (fstat(gs_trace_fd, &st) == 0 && st.st_size == 0)
        gs_output_write(gs_trace_fd, "Thread,Time,Action,Pointer,Size,Stream\n", 39, "trace",
                        &gs_trace_write_warned);
}

/* At start. A path with %p is every process's own: it starts its file afresh at its first record.
 * A path shared by a process tree is started afresh by the tree's first process, now (so that no
 * later truncation can erase what a child already wrote), and the others add to it: the first
 * marks the environment, which forked and executed children inherit. */
#define TRACE_ROOT_MARK "_GPUSHIM_TRACE_ROOT"
void gs_trace_start(void)
{
    gs_trace_per_process = strstr(gs_opts.trace_path, "%p") != NULL;
    if (gs_trace_per_process)
        return;
    gs_trace_append = getenv(TRACE_ROOT_MARK) != NULL;
    if (gs_trace_append)
        return;
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv(TRACE_ROOT_MARK, pid, 1);
    pthread_mutex_lock(&gs_trace_lock);
    open_trace();
    pthread_mutex_unlock(&gs_trace_lock);
    gs_trace_append = true;
}

/* Locks for the exit paths: after a fatal signal (gs_trace_bounded) the thread it interrupted may
 * hold either lock, so a lock is waited for 200 ms at most, and the work it guards skipped after
 * that; otherwise as pthread_mutex_lock. */
static volatile sig_atomic_t gs_trace_bounded;
/* Set by the exit flush, under the trace lock: nothing is written after it, so that a thread
 * still running cannot leave half a line when the process ends under it. */
static bool gs_trace_closed;

static bool take(pthread_mutex_t *lock)
{
    if (!gs_trace_bounded)
        return pthread_mutex_lock(lock) == 0;
    for (int tries = 0; tries < 200; tries++) {
        if (pthread_mutex_trylock(lock) == 0)
            return true;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return false;
}

/* Formats and writes a buffer's records not written yet. alone: the caller holds the buffer
 * alone (taken off the queue, or its owner's, handing it off), and empties it; otherwise (the exit
 * flush of a thread's current buffer, which may go on filling it) only what is complete now. */
static void write_out(trace_buffer_t *b, bool alone)
{
    if (!take(&gs_trace_lock))
        return;
    size_t count = atomic_load_explicit(&b->count, memory_order_acquire), from = b->written;
    if (count <= from || gs_trace_closed) {
        pthread_mutex_unlock(&gs_trace_lock);
        return;
    }
    if (gs_trace_fd == -1)
        open_trace();
    if (gs_trace_fd >= 0) {
        static pthread_once_t tables = PTHREAD_ONCE_INIT;
        pthread_once(&tables, fill_two_hex);
        static char text[65536];
        char thread[32];
        size_t thread_len = (size_t)(put_decimal(thread, b->thread) - thread);
        thread[thread_len++] = ',';
        time_format_t times = time_format_start();
        size_t len = 0;
        for (size_t i = from; i < count; i++) {
            len =
                (size_t)(put_record(text + len, thread, thread_len, &times, &b->records[i]) - text);
            if (len > sizeof text - 256) {
                gs_output_write(gs_trace_fd, text, len, "trace", &gs_trace_write_warned);
                len = 0;
            }
        }
        gs_output_write(gs_trace_fd, text, len, "trace", &gs_trace_write_warned);
    }
    if (alone) {
        b->written = 0;
        atomic_store_explicit(&b->count, 0, memory_order_release);
    } else {
        b->written = count;
    }
    pthread_mutex_unlock(&gs_trace_lock);
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&gs_queue_lock);
    for (;;) {
        while (gs_queue_head == NULL || gs_stopping)
            pthread_cond_wait(&gs_queue_filled, &gs_queue_lock);
        trace_buffer_t *b = gs_queue_head;
        gs_queue_head = b->next;
        if (gs_queue_head == NULL)
            gs_queue_tail = NULL;
        gs_queued--;
        gs_writer_busy = true;
        pthread_mutex_unlock(&gs_queue_lock);
        write_out(b, true);
        pthread_mutex_lock(&gs_queue_lock);
        gs_writer_busy = false;
        b->next = gs_spares;
        gs_spares = b;
        pthread_cond_broadcast(&gs_writer_idle);
    }
    return NULL;
}

/* The writer starts with the first full buffer, so a short trace costs no thread. It blocks every
 * signal: they belong to the program's threads. Fails quietly: threads then write themselves. */
static void start_writer(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    gs_writer_started = pthread_create(&thread, &attr, writer_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (gs_writer_started)
        pthread_setname_np(thread, "gpushim-trace");
}

/* A spare buffer, or a new one (NULL when out of host memory). Queue lock held. */
static trace_buffer_t *take_spare(uint32_t thread)
{
    trace_buffer_t *b = gs_spares;
    if (b)
        gs_spares = b->next;
    else if ((b = malloc(sizeof *b)) != NULL) {
        atomic_init(&b->count, 0);
        b->written = 0;
        b->every = gs_every;
        gs_every = b;
    }
    if (b)
        b->thread = thread;
    return b;
}

/* Hands b to the writer. Returns a buffer for the thread to go on with (NULL if none can be
 * had, and then b is not lost: it was queued or written here). */
static trace_buffer_t *hand_off(trace_buffer_t *b, bool want_another)
{
    pthread_mutex_lock(&gs_queue_lock);
    if (!gs_writer_started && !gs_stopping)
        start_writer();
    bool queue = gs_writer_started && !gs_stopping && gs_queued < TRACE_QUEUED_MAX;
    if (queue) {
        b->next = NULL;
        if (gs_queue_tail)
            gs_queue_tail->next = b;
        else
            gs_queue_head = b;
        gs_queue_tail = b;
        gs_queued++;
        pthread_cond_signal(&gs_queue_filled);
    }
    trace_buffer_t *next = want_another && queue ? take_spare(b->thread) : NULL;
    pthread_mutex_unlock(&gs_queue_lock);
    if (!queue) { /* the writer is behind, absent or stopped: write it here */
        write_out(b, true);
        if (want_another)
            return b;
        pthread_mutex_lock(&gs_queue_lock);
        b->next = gs_spares;
        gs_spares = b;
        pthread_mutex_unlock(&gs_queue_lock);
    }
    return next;
}

/* A thread ends: its records go to the writer, its buffer is not its any more. */
static void release_buffer(void *arg)
{
    if (gs_my_trace == arg)
        gs_my_trace = NULL;
    hand_off(arg, false);
}

static void make_key(void)
{
    pthread_key_create(&gs_trace_key, release_buffer);
}

static trace_buffer_t *my_buffer(void)
{
    pthread_once(&gs_trace_once, make_key);
    pthread_mutex_lock(&gs_queue_lock);
    trace_buffer_t *b = take_spare((uint32_t)syscall(SYS_gettid));
    pthread_mutex_unlock(&gs_queue_lock);
    if (b)
        pthread_setspecific(gs_trace_key, b);
    return b;
}

/* Time. When a thread's events come less than gs_trace_tight_ns apart on average, the events
 * that follow on blocks this thread touched last take the time of its last clock read instead of
 * reading the clock again, for as many events as should take ten times that at this pace (at
 * most SKIP_MAX): a time is then early by about 2 us at most, unless the program paused inside
 * such a run. Order stays right where replays need it: a thread's own events keep their order
 * (equal times, file order), and an event on a block another thread touched last always reads the
 * clock, so it comes after that thread's event (whose time is its true time or earlier). */
#define SKIP_MAX 255
uint64_t gs_trace_tight_ns = 200; /* a variable so that tests need not be fast */

static GS_TLS struct {
    uint64_t last;  /* ticks of the thread's last clock read; 0: none yet */
    uint32_t skips; /* events that may still take `last` ... */
    uint32_t run;   /* ... out of this many when it was read (run - skips: events since) */
    uint64_t retry; /* ticks: when to ask for the clock's rate again */
} gs_trace_clock;

static double gs_trace_rate; /* ticks per ns; 0 until known */

static uint64_t read_clock(void)
{
    uint64_t now = gs_ticks();
    double rate;
    __atomic_load(&gs_trace_rate, &rate, __ATOMIC_RELAXED);
    if (__builtin_expect(rate == 0, 0) && now >= gs_trace_clock.retry) {
        /* Known 1 ms after load (10% would do); until then, asked every 2^20 ticks. */
        rate = gs_ticks_per_ns_since_start(1000000);
        __atomic_store(&gs_trace_rate, &rate, __ATOMIC_RELAXED);
        gs_trace_clock.retry = now + (1u << 20);
    }
    uint64_t tight = (uint64_t)(rate * (double)gs_trace_tight_ns);
    uint64_t events = (uint64_t)(gs_trace_clock.run - gs_trace_clock.skips) + 1;
    uint64_t elapsed = gs_trace_clock.last ? now - gs_trace_clock.last : UINT64_MAX;
    uint64_t run = 0;
    if (elapsed < events * tight) /* a tight run: skip what ten times that takes at this pace */
        run = elapsed == 0 ? SKIP_MAX : 10 * tight * events / elapsed;
    if (run > SKIP_MAX)
        run = SKIP_MAX;
    gs_trace_clock.skips = gs_trace_clock.run = (uint32_t)run;
    gs_trace_clock.last = now;
    return now;
}

static inline void put(trace_buffer_t *b, size_t n, uint64_t ticks, int action, CUdeviceptr ptr,
                       uint64_t bytes, CUstream stream)
{
    b->records[n] = (trace_record_t){.ticks_action = ticks | (uint64_t)action << TRACE_ACTION_SHIFT,
                                     .ptr = ptr,
                                     .bytes = bytes,
                                     .stream = (uint64_t)(uintptr_t)stream};
    atomic_store_explicit(&b->count, n + 1, memory_order_release);
}

/* gs_trace_record's other cases: the clock to read, no buffer yet, or a full one. */
static __attribute__((noinline)) void record_slow(int action, CUdeviceptr ptr, uint64_t bytes,
                                                  CUstream stream, bool same_thread)
{
    trace_buffer_t *b = gs_my_trace;
    if (b == NULL) {
        if ((b = gs_my_trace = my_buffer()) == NULL)
            return;
    } else if (atomic_load_explicit(&b->count, memory_order_relaxed) == TRACE_RECORDS) {
        b = gs_my_trace = hand_off(b, true);
        pthread_setspecific(gs_trace_key, b);
        if (b == NULL) /* out of host memory: this record is lost, the next may find a buffer */
            return;
        if (atomic_load_explicit(&b->count, memory_order_relaxed) == TRACE_RECORDS)
            return; /* the exit flush has it in hand: too late for this record */
    }
    uint64_t ticks = same_thread && gs_trace_clock.skips
                         ? (gs_trace_clock.skips--, gs_trace_clock.last)
                         : read_clock();
    put(b, atomic_load_explicit(&b->count, memory_order_relaxed), ticks, action, ptr, bytes,
        stream);
}

/* The common case first, with no call: room in the buffer and no clock to read. */
void gs_trace_record(int action, CUdeviceptr ptr, uint64_t bytes, CUstream stream, bool same_thread)
{
    trace_buffer_t *b = gs_my_trace;
    if (__builtin_expect(b != NULL && same_thread && gs_trace_clock.skips != 0, 1)) {
        size_t n = atomic_load_explicit(&b->count, memory_order_relaxed);
        if (__builtin_expect(n != TRACE_RECORDS, 1)) {
            gs_trace_clock.skips--;
            put(b, n, gs_trace_clock.last, action, ptr, bytes, stream);
            return;
        }
    }
    record_slow(action, ptr, bytes, stream, same_thread);
}

/* At exit: the writer finishes the buffer in its hands and takes no other; then the queue, then
 * every thread's current buffer are written here, so the file is complete when exit goes on. */
void gs_trace_flush(void)
{
    if (!gs_tracing || !take(&gs_queue_lock))
        return;
    gs_stopping = true;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1; /* after a signal, the writer is not waited for longer */
    while (gs_writer_busy) {
        if (!gs_trace_bounded)
            pthread_cond_wait(&gs_writer_idle, &gs_queue_lock);
        else if (pthread_cond_timedwait(&gs_writer_idle, &gs_queue_lock, &until) != 0)
            break;
    }
    trace_buffer_t *queued = gs_queue_head;
    gs_queue_head = gs_queue_tail = NULL;
    gs_queued = 0;
    trace_buffer_t *every = gs_every;
    pthread_mutex_unlock(&gs_queue_lock);
    for (trace_buffer_t *b = queued; b; b = b->next)
        write_out(b, true);
    for (trace_buffer_t *b = every; b; b = b->every)
        write_out(b, false); /* current buffers, whose threads may go on */
    if (take(&gs_trace_lock)) {
        gs_trace_closed = true;
        pthread_mutex_unlock(&gs_trace_lock);
    }
}

void gs_trace_flush_after_signal(void)
{
    gs_trace_bounded = 1;
    gs_trace_flush();
}

/* Fork child: the parent's records are the parent's to write, and its writer thread did not come
 * along. The child appends its own records to the same file (use %p in GPUSHIM_TRACE for one file
 * per process) and starts a writer of its own when it needs one. */
void gs_trace_forget(void)
{
    pthread_mutex_init(&gs_trace_lock, NULL);
    pthread_mutex_init(&gs_queue_lock, NULL);
    pthread_cond_init(&gs_queue_filled, NULL);
    pthread_cond_init(&gs_writer_idle, NULL);
    gs_queue_head = gs_queue_tail = NULL;
    gs_queued = 0;
    gs_writer_started = gs_writer_busy = gs_stopping = false;
    gs_spares = NULL;
    for (trace_buffer_t *b = gs_every; b; b = b->every) {
        atomic_store(&b->count, 0);
        b->written = 0;
        if (b != gs_my_trace) {
            b->next = gs_spares;
            gs_spares = b;
        }
    }
    if (gs_my_trace)
        gs_my_trace->thread = (uint32_t)syscall(SYS_gettid);
    if (gs_trace_fd >= 0)
        close(gs_trace_fd);
    gs_trace_fd = -1;
    gs_trace_append = !gs_trace_per_process; /* a file of its own (%p) starts afresh */
    gs_trace_closed = false;
    atomic_store(&gs_trace_write_warned, false);
}

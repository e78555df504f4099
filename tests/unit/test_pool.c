/* test_pool.c: the pool backend against a fake upstream driver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_upstream.h"

#define MiB (1ull << 20)

extern uint64_t gs_pool_cheap_sync_ns; /* pool_central.c: what counts as a quick synchronization */

static int start(uint64_t limit, gs_reuse_t reuse)
{
    fake_upstream_install(limit);
    gs_options_defaults(&gs_opts);
    gs_opts.pool_reuse = reuse;
    gs_opts.pool_chunk = (gs_size_spec_t){.bytes = 8 * MiB};
    gs_pool_destroy();
    gs_stats_reset();
    gs_dispatch_use(&gs_backend_pool);
    return 0;
}

static int immediate(void **state)
{
    (void)state;
    return start(1ull << 30, GS_REUSE_IMMEDIATE);
}

static int safe(void **state)
{
    (void)state;
    return start(1ull << 30, GS_REUSE_SAFE);
}

/* The device offers virtual memory management: the large heap grows in place. */
static int expandable(void **state)
{
    (void)state;
    start(1ull << 30, GS_REUSE_IMMEDIATE);
    fake.vmm = true;
    return 0;
}

static const char *pool_report_text(void);

/* The program issues GPU work, as the shim's wrappers of the driver's launch, copy and memset
 * entry points report it (interpose/work.c). */
static void issue_work(void)
{
    gs_work_enqueued();
}

static void serves_aligned_blocks_from_few_driver_calls(void **state)
{
    (void)state;
    CUdeviceptr p[100];
    for (int i = 0; i < 100; i++) {
        assert_int_equal(gs_mem_alloc(&p[i], 1000 + (size_t)i * 37), CUDA_SUCCESS);
        assert_int_equal(p[i] % 512, 0);
        for (int j = 0; j < i; j++)
            assert_true(p[j] != p[i]);
    }
    assert_int_equal(fake.allocs, 1); /* one chunk */
    for (int i = 0; i < 100; i++)
        assert_int_equal(gs_mem_free(p[i]), CUDA_SUCCESS);
    assert_int_equal(fake.frees, 0); /* the pool keeps its chunk */
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.allocations, 100);
    assert_int_equal(s.frees, 100);
    assert_int_equal(s.in_use, 0);
}

static void reuses_freed_blocks_at_once_when_asked(void **state)
{
    (void)state;
    CUdeviceptr a, b;
    assert_int_equal(gs_mem_alloc(&a, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 4096), CUDA_SUCCESS);
    assert_int_equal(a, b);
}

/* The default keeps cudaFree's guarantee: no reuse until a synchronization after the free. */
static void safe_reuse_waits_for_a_synchronization(void **state)
{
    (void)state;
    CUdeviceptr a, b, c;
    assert_int_equal(gs_mem_alloc(&a, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 4096), CUDA_SUCCESS);
    assert_true(b != a);
    assert_int_equal(fake.syncs, 0);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS); /* the program's own */
    assert_int_equal(gs_mem_alloc(&c, 4096), CUDA_SUCCESS);
    assert_int_equal(c, a);
}

/* No GPU work issued since the program's synchronization: a freed block is safe at once, even a
 * large one, with no synchronization or event of the shim's. Work issued after it makes the next
 * free wait again (here for a synchronization, events being off). */
static void a_quiet_device_reuses_blocks_at_once(void **state)
{
    (void)state;
    CUdeviceptr a, p;
    assert_int_equal(gs_mem_alloc(&a, 48 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS); /* the program's own */
    int allocs = fake.allocs;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(gs_mem_alloc(&p, 48 * MiB), CUDA_SUCCESS);
        assert_int_equal(p, a);
        assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS); /* small ones too */
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    }
    assert_int_equal(fake.syncs, 1);
    assert_true(fake.allocs <= allocs + 1); /* at most a chunk for the small blocks */
    assert_non_null(strstr(pool_report_text(), "in flight: on; 2000 frees were reusable at once"));
    assert_int_equal(gs_mem_alloc(&p, 48 * MiB), CUDA_SUCCESS);
    issue_work(); /* a kernel that may use p */
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&p, 48 * MiB), CUDA_SUCCESS);
    assert_true(p != a);
}

/* The same with events: the mark recorded at the first allocation covers every later free
 * while nothing is issued, so no further mark is recorded. */
static void a_quiet_device_needs_no_new_marks(void **state)
{
    (void)state;
    fake.events = true;
    CUdeviceptr p, q;
    assert_int_equal(gs_mem_alloc(&p, 48 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(gs_mem_alloc(&q, 48 * MiB), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free(q), CUDA_SUCCESS);
    }
    assert_int_equal(fake.event_records, 1);
    assert_int_equal(fake.syncs, 0);
    assert_true(fake.used <= 2 * 48 * MiB); /* the block, and one more until the mark completed */
    issue_work();
    for (int i = 0; i < 10; i++) { /* work in flight: marks again */
        assert_int_equal(gs_mem_alloc(&q, 48 * MiB), CUDA_SUCCESS);
        issue_work();
        assert_int_equal(gs_mem_free(q), CUDA_SUCCESS);
    }
    assert_true(fake.event_records > 1);
}

/* A buffer beyond the thread cache's budget (4 MiB for blocks reusable at once), allocated again
 * and again, stays in the thread's cache: the central pool and its lock are not touched. */
static void one_buffer_beyond_the_budget_stays_in_the_thread_cache(void **state)
{
    (void)state;
    CUdeviceptr a, p;
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS); /* safe reuse: a quiet device */
    assert_int_equal(gs_mem_alloc(&a, 16 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    for (int i = 0; i < 999; i++) {
        assert_int_equal(gs_mem_alloc(&p, 16 * MiB), CUDA_SUCCESS);
        assert_int_equal(p, a);
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    }
    assert_non_null(strstr(pool_report_text(), "(999 of 1000 allocations from thread caches"));
    /* Then another size: the thread keeps the latest such block, and the loop stays there. */
    assert_int_equal(gs_mem_alloc(&a, 256 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    for (int i = 0; i < 999; i++) {
        assert_int_equal(gs_mem_alloc(&p, 256 * MiB), CUDA_SUCCESS);
        assert_int_equal(p, a);
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    }
    assert_non_null(strstr(pool_report_text(), "(1998 of 2000 allocations from thread caches"));
}

/* GPUSHIM_POOL_IDLE_REUSE=off: every free waits for a synchronization or mark after it. */
static void idle_reuse_off_waits_as_ever(void **state)
{
    (void)state;
    gs_opts.pool_idle_reuse = GS_IDLE_REUSE_OFF;
    CUdeviceptr a, b;
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&a, 48 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 48 * MiB), CUDA_SUCCESS);
    assert_true(b != a);
    assert_non_null(strstr(pool_report_text(), "in flight: off, GPUSHIM_POOL_IDLE_REUSE=off"));
}

/* With pending bytes past the bound, the shim synchronizes itself instead of growing. */
static void pending_bytes_are_bounded(void **state)
{
    (void)state;
    gs_opts.pool_pending_max = (gs_size_spec_t){.bytes = 4 * MiB};
    gs_pool_destroy();
    for (int i = 0; i < 200; i++) {
        CUdeviceptr p;
        assert_int_equal(gs_mem_alloc(&p, MiB), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    }
    assert_true(fake.syncs > 0);
    assert_true(fake.used <= 24 * MiB); /* bound + thread cache + a chunk, not 200 MiB */
}

/* cudaFree's guarantee, checked on every reuse (each block is used by GPU work before its free): a
 * block comes back only after a synchronization that followed its free, or after an event recorded
 * after its free has completed. Returns how many allocations reused a block; *by_events (if not
 * NULL) counts those no synchronization explains. */
static int pairs_checking_reuse(int pairs, size_t bytes, int *by_events)
{
    enum { TRACKED = 512 };
    CUdeviceptr seen[TRACKED];
    int syncs_at_free[TRACKED], records_at_free[TRACKED], tracked = 0, reused = 0;
    for (int i = 0; i < pairs; i++) {
        CUdeviceptr p;
        assert_int_equal(gs_mem_alloc(&p, bytes), CUDA_SUCCESS);
        int k = 0;
        while (k < tracked && seen[k] != p)
            k++;
        if (k < tracked) {
            assert_true(fake.syncs > syncs_at_free[k] ||
                        fake.last_completed_record > records_at_free[k]);
            reused++;
            if (by_events && fake.syncs == syncs_at_free[k])
                (*by_events)++;
        } else {
            assert_true(tracked < TRACKED);
            seen[tracked++] = p;
        }
        issue_work();
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
        syncs_at_free[k] = fake.syncs;
        records_at_free[k] = fake.event_records;
    }
    return reused;
}

static int tight_loop_keeping_the_guarantee(int pairs, size_t bytes)
{
    return pairs_checking_reuse(pairs, bytes, NULL);
}

/* While a marked stream is busy no mark can complete: every reuse must follow a
 * synchronization. Returns how many did not. */
static int reuses_without_a_sync(int pairs, size_t bytes)
{
    int by_events = 0;
    pairs_checking_reuse(pairs, bytes, &by_events);
    return by_events;
}

/* Tight loops under safe reuse: a thread's cache holds up to 256 pending blocks a class (and the
 * latest freed), and one synchronization (cheap on an idle device) makes them all reusable: the
 * pool does not grow. */
static void safe_reuse_synchronizes_once_per_256_frees_when_cheap(void **state)
{
    (void)state;
    uint64_t cheap = gs_pool_cheap_sync_ns;
    gs_pool_cheap_sync_ns = 1000000000; /* a preempted test thread must not look like a busy GPU */
    int reused = tight_loop_keeping_the_guarantee(5000, 4096);
    gs_pool_cheap_sync_ns = cheap;
    assert_int_equal(reused, 5000 - 257); /* all but the first queue's worth and the latest */
    assert_in_range(fake.syncs, 5000 / 256 - 1, 5000 / 256 + 1);
    assert_true(fake.used <= 8 * MiB); /* one chunk */
}

/* On a busy device a synchronization waits for queued work: after a slow one the shim makes no
 * cheap ones for a while (1 ms, doubling) and lets the pool grow (still within the pending
 * bound), keeping the guarantee. */
static void slow_synchronizations_back_off(void **state)
{
    (void)state;
    fake.sync_ns = 200000; /* 200 us: work was queued */
    int reused = tight_loop_keeping_the_guarantee(2000, 4096);
    assert_true(reused > 0);
    assert_true(fake.syncs <= 8); /* a few, against 31 when they are cheap */
    assert_true(fake.used <= 8 * MiB + gs_size_resolve(gs_opts.pool_pending_max, fake.limit));
    fake.sync_ns = 0;
}

/* Events on the legacy default stream (GPUSHIM_POOL_EVENTS=auto): on a busy device, pending
 * blocks come back when an event recorded after their free completes, with no synchronization
 * once the first slow one has set the back-off. */
static void events_recycle_pending_blocks_without_a_wait(void **state)
{
    (void)state;
    fake.events = true;
    fake.sync_ns = 200000; /* 200 us: work is queued */
    int reused = tight_loop_keeping_the_guarantee(400, 48 * MiB);
    assert_true(reused >= 390);
    assert_true(fake.syncs <= 2);
    assert_true(fake.event_records > 100 && fake.last_completed_record > 100);
    assert_true(fake.used <= 4 * 48 * MiB);
    gs_buf_t report = {.len = 0};
    gs_backend_pool.report(0, &report, false);
    report.data[report.len] = '\0';
    assert_non_null(strstr(report.data, "reuse by events: on; "));
    fake.sync_ns = 0;
}

static const char *pool_report_text(void)
{
    static gs_buf_t report;
    report.len = 0;
    gs_backend_pool.report(0, &report, false);
    report.data[report.len] = '\0';
    return report.data;
}

/* A pool of 146 MiB: blocks of 48 MiB (past the thread cache's budget) a, b, c freed (a stays
 * in the thread's cache, b and c wait in the pool), then a small allocation from what is left,
 * which records a mark after those frees. The pool is full but for 1 MiB. */
static void free_three_large_blocks_under_a_mark(void)
{
    fake.events = true;
    gs_opts.pool_pending_max = (gs_size_spec_t){.bytes = 1ull << 30}; /* not the bound's sync */
    gs_opts.pool_initial = (gs_size_spec_t){.bytes = 146 * MiB};
    gs_pool_destroy();
    CUdeviceptr big[3], small;
    for (int i = 0; i < 3; i++)
        assert_int_equal(gs_mem_alloc(&big[i], 48 * MiB), CUDA_SUCCESS);
    issue_work();
    for (int i = 0; i < 3; i++)
        assert_int_equal(gs_mem_free(big[i]), CUDA_SUCCESS);   /* one cached, two pending */
    assert_int_equal(gs_mem_alloc(&small, MiB), CUDA_SUCCESS); /* its mark covers the frees */
    usleep(200); /* a mark in flight that long: the GPU is behind */
}

/* The pool would grow, but pending blocks wait for a mark in flight: it waits for the GPU to
 * pass that mark (here: three queries) and reuses them, with no synchronization. */
static void the_pool_waits_for_a_mark_rather_than_grow(void **state)
{
    (void)state;
    free_three_large_blocks_under_a_mark();
    int allocs = fake.allocs, syncs = fake.syncs;
    fake.events_busy_queries = 3;
    CUdeviceptr p;
    assert_int_equal(gs_mem_alloc(&p, 48 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, allocs); /* no growth */
    assert_int_equal(fake.syncs, syncs);
    assert_int_equal(fake.events_busy_queries, 0);
    assert_non_null(strstr(pool_report_text(), "instead of growing 1 times"));
    assert_non_null(strstr(pool_report_text(), "0 gave up"));
}

/* A mark that does not complete within 2 ms (a long kernel, or one waiting for the host): the
 * pool gives up waiting and goes on (here a synchronization recycles the blocks). */
static void a_mark_wait_gives_up(void **state)
{
    (void)state;
    free_three_large_blocks_under_a_mark();
    fake.events_busy = true;
    CUdeviceptr p;
    assert_int_equal(gs_mem_alloc(&p, 48 * MiB), CUDA_SUCCESS);
    assert_non_null(strstr(pool_report_text(), "instead of growing 1 times"));
    assert_non_null(strstr(pool_report_text(), "1 gave up"));
    fake.events_busy = false;
}

/* While the events stay incomplete, the pool grows up to the pending bound and then waits. */
static void busy_events_leave_the_bound_to_synchronizations(void **state)
{
    (void)state;
    fake.events = true;
    fake.events_busy = true;
    fake.sync_ns = 200000;
    gs_opts.pool_pending_max = (gs_size_spec_t){.bytes = 128 * MiB};
    gs_pool_destroy();
    int reused = tight_loop_keeping_the_guarantee(100, 48 * MiB);
    assert_true(reused > 0);
    assert_int_equal(fake.last_completed_record, 0);
    assert_true(fake.syncs >= 1);
    assert_true(fake.used <= 128 * MiB + 4 * 48 * MiB); /* the bound, the caches, a block */
    fake.sync_ns = 0;
}

/* A non-blocking stream does not wait for the legacy stream, so each one gets an event of its
 * own in every mark: while its work runs, no block comes back by events (only after a
 * synchronization); once it is idle, events recycle blocks again. */
static void events_mark_each_nonblocking_stream(void **state)
{
    (void)state;
    fake.events = true;
    fake.sync_ns = 200000; /* slow synchronizations back off: events do the recycling */
    CUstream blocking, stream;
    assert_int_equal(gs_stream_create(&blocking, CU_STREAM_DEFAULT), CUDA_SUCCESS);
    assert_int_equal(gs_stream_create(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    assert_false(gs_streams_unmarkable());
    fake.busy_stream = stream;
    assert_int_equal(reuses_without_a_sync(300, 48 * MiB), 0);
    fake.busy_stream = NULL;
    int reused = tight_loop_keeping_the_guarantee(300, 48 * MiB);
    assert_true(reused >= 250);
    assert_non_null(strstr(pool_report_text(), "reuse by events: on; "));
    assert_int_equal(gs_stream_destroy(stream, true), CUDA_SUCCESS); /* idle: no last event */
    gs_streams_forget();
    fake.sync_ns = 0;
}

/* A marked stream destroyed while its work runs: that work may still touch blocks freed before
 * (and, since the stream is gone, after) the destroy; none comes back by events until a last
 * event recorded on it before the destroy has completed. */
static void a_destroyed_stream_holds_blocks_until_its_work_is_done(void **state)
{
    (void)state;
    fake.events = true;
    fake.sync_ns = 200000;
    CUstream stream;
    assert_int_equal(gs_stream_create(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    assert_true(tight_loop_keeping_the_guarantee(50, 48 * MiB) > 0); /* marks on it too */
    fake.busy_stream = stream;
    assert_int_equal(gs_stream_destroy(stream, true), CUDA_SUCCESS);
    assert_int_equal(fake.streams_destroyed, 1);
    assert_int_equal(reuses_without_a_sync(300, 48 * MiB), 0);
    fake.busy_stream = NULL;
    assert_true(tight_loop_keeping_the_guarantee(300, 48 * MiB) >= 250);
    gs_streams_forget();
    fake.sync_ns = 0;
}

/* Up to 16 non-blocking streams are marked; the 17th turns events off for good, and then the
 * synchronizations keep the guarantee. */
static void too_many_nonblocking_streams_turn_events_off(void **state)
{
    (void)state;
    fake.events = true;
    CUstream stream;
    for (int i = 0; i < 16; i++)
        assert_int_equal(gs_stream_create(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    assert_false(gs_streams_unmarkable());
    assert_int_equal(gs_stream_create_with_priority(&stream, CU_STREAM_NON_BLOCKING, -1),
                     CUDA_SUCCESS);
    assert_true(gs_streams_unmarkable());
    fake.sync_ns = 200000;
    int reused = tight_loop_keeping_the_guarantee(100, 48 * MiB);
    assert_true(reused > 0);
    assert_int_equal(fake.event_records, 0);
    assert_non_null(strstr(pool_report_text(),
                           "reuse by events: off, the program created a "
                           "non-blocking stream the shim cannot mark (more than 16, or a green "
                           "context's); 0 events"));
    gs_streams_forget();
    fake.sync_ns = 0;
}

static void coalesces_neighbours_back_into_one_block(void **state)
{
    (void)state;
    CUdeviceptr a, b, c, whole;
    gs_opts.pool_initial = (gs_size_spec_t){.bytes = 8 * MiB}; /* one chunk for all three */
    gs_pool_destroy();
    assert_int_equal(gs_mem_alloc(&a, 2 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 3 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&c, 3 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 1);
    assert_int_equal(b, a + 2 * MiB);
    assert_int_equal(c, b + 3 * MiB);
    /* b and a freed in that order: caches take them; the pool coalesces what reaches it. */
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
    /* Memory pressure drains the caches and must find the whole chunk as one free block. */
    fake.limit = fake.used;
    assert_int_equal(gs_mem_alloc(&whole, 8 * MiB), CUDA_SUCCESS);
    assert_int_equal(whole, a);
    assert_int_equal(fake.allocs, 2); /* one more try at the driver failed, none succeeded */
}

static void grows_in_chunks_and_serves_large_requests_whole(void **state)
{
    (void)state;
    CUdeviceptr small, big;
    assert_int_equal(gs_mem_alloc(&small, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&big, 100 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 2);
    assert_int_equal(fake.used, 2 * MiB + 100 * MiB); /* first chunk 2 MiB; the big one whole */
    assert_int_equal(gs_mem_free(big), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(small), CUDA_SUCCESS);
}

/* Blocks under 256 KiB come from chunks of their own, even where a large block's chunk has room
 * (mixed in, they would pin the holes between large blocks apart). */
static void small_blocks_have_chunks_of_their_own(void **state)
{
    (void)state;
    CUdeviceptr large, small;
    assert_int_equal(gs_mem_alloc(&large, 1 * MiB), CUDA_SUCCESS); /* a 2 MiB chunk */
    assert_int_equal(gs_mem_alloc(&small, 4096), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 2);
    assert_true(small < large || small >= large + 2 * MiB);
    CUdeviceptr next_small, next_large;
    assert_int_equal(gs_mem_alloc(&next_small, 200 * 1024), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&next_large, 512 * 1024), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 2);
    assert_int_equal(next_small, small + 4096);
    assert_int_equal(next_large, large + 1 * MiB);
}

/* ... but when the driver has no more, either kind takes what the other kind's chunks have. */
static void short_of_memory_small_blocks_take_room_beside_large_ones(void **state)
{
    (void)state;
    fake.limit = 2 * MiB;
    CUdeviceptr large, small;
    assert_int_equal(gs_mem_alloc(&large, 1 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&small, 4096), CUDA_SUCCESS);
    assert_int_equal(small, large + 1 * MiB);
    assert_int_equal(fake.allocs, 1);
}

/* GPUSHIM_POOL_INITIAL: no driver call until the pool outgrows it, small blocks included. */
static void the_initial_reservation_serves_small_blocks_too(void **state)
{
    (void)state;
    gs_opts.pool_initial = (gs_size_spec_t){.bytes = 8 * MiB};
    gs_pool_destroy();
    CUdeviceptr large, small;
    assert_int_equal(gs_mem_alloc(&large, 1 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&small, 4096), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 1);
    CUdeviceptr beyond;
    assert_int_equal(gs_mem_alloc(&beyond, 7 * MiB), CUDA_SUCCESS); /* outgrown */
    assert_int_equal(fake.allocs, 2);
    assert_int_equal(gs_mem_alloc(&small, 4096), CUDA_SUCCESS); /* then their own chunks */
    assert_int_equal(fake.allocs, 3);
}

/* GPUSHIM_POOL_EXPANDABLE: blocks of 256 KiB and more come from one range that grows in place,
 * so a block may span two pieces of physical memory; small blocks keep chunks of their own. */
static void the_large_heap_grows_in_place(void **state)
{
    (void)state;
    CUdeviceptr a, b, small;
    assert_int_equal(gs_mem_alloc(&a, 1 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.vmm_maps, 1);
    assert_int_equal(fake.used, 2 * MiB);
    assert_int_equal(gs_mem_alloc(&b, 3 * MiB / 2), CUDA_SUCCESS);
    assert_int_equal(b, a + 1 * MiB); /* across the boundary of the two pieces */
    assert_int_equal(fake.vmm_maps, 2);
    assert_int_equal(fake.used, 4 * MiB);
    assert_int_equal(fake.vmm_access_devices, 1);
    assert_int_equal(fake.va_reserved, 1ull << 30); /* addresses for all the pool may take */
    assert_int_equal(fake.allocs, 0);
    assert_int_equal(gs_mem_alloc(&small, 4096), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 1);
    assert_true(small < a || small >= a + 4 * MiB);
    assert_non_null(strstr(pool_report_text(), "pool growth in place (blocks of 256 KiB and more): "
                                               "on; 4 MiB mapped in 2 pieces"));
    /* Legacy IPC cannot share mapped memory: refused. */
    CUipcMemHandle handle;
    assert_int_equal(gs_ipc_get_mem_handle(&handle, a), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(small), CUDA_SUCCESS);
}

/* The free end of the range is unmapped where wholly free chunks would go back: at the
 * program's synchronization past GPUSHIM_POOL_RELEASE_THRESHOLD, and when memory is short. */
static void the_free_end_of_the_range_is_unmapped(void **state)
{
    (void)state;
    gs_opts.pool_release_threshold = (gs_size_spec_t){.bytes = 0};
    CUdeviceptr a, b, c;
    assert_int_equal(gs_mem_alloc(&a, 2 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 2 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&c, 2 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.used, 6 * MiB);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(fake.vmm_unmaps, 2); /* c's piece and b's; a's stays */
    assert_int_equal(fake.used, 2 * MiB);
    assert_int_equal(gs_mem_alloc(&b, 2 * MiB), CUDA_SUCCESS); /* maps again, in place */
    assert_int_equal(b, a + 2 * MiB);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(fake.used, 0);
    assert_int_equal(gs_mem_alloc(&a, 1 * MiB), CUDA_SUCCESS); /* from the start again */
    assert_int_equal(fake.used, 2 * MiB);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
}

/* Short of memory, the range's free end goes back before the allocation fails; past it, CUDA's
 * out-of-memory error. A request over GPUSHIM_POOL_CHUNK gets a chunk of its own. */
static void the_range_gives_way_when_memory_is_short(void **state)
{
    (void)state;
    fake.limit = 10 * MiB;
    gs_opts.pool_chunk = (gs_size_spec_t){.bytes = 4 * MiB};
    CUdeviceptr a, b, whole;
    assert_int_equal(gs_mem_alloc(&a, 4 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 2 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.vmm_maps, 2);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&whole, 6 * MiB), CUDA_SUCCESS); /* b's piece went back */
    assert_int_equal(fake.allocs,
                     1); /* after the unmapping: the pool max (10 MiB) said no before */
    assert_int_equal(fake.vmm_unmaps, 1);
    assert_int_equal(fake.used, 10 * MiB);
    assert_int_equal(gs_mem_alloc(&b, 2 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.failures, 1);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(whole), CUDA_SUCCESS);
}

/* Where the device has no virtual memory management, or the driver refuses a mapping, the pool
 * takes chunks as before, and the report says why. */
static void without_mappings_the_pool_takes_chunks(void **state)
{
    (void)state;
    CUdeviceptr a, b;
    fake.fail_next_maps = 1;
    assert_int_equal(gs_mem_alloc(&a, 1 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 1);
    assert_int_equal(fake.used, 2 * MiB); /* the refused piece was given back */
    assert_non_null(strstr(pool_report_text(), "pool growth in place (blocks of 256 KiB and more): "
                                               "off, the driver refused to map memory"));
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    start(1ull << 30, GS_REUSE_IMMEDIATE); /* fake.vmm off */
    assert_int_equal(gs_mem_alloc(&b, 1 * MiB), CUDA_SUCCESS);
    assert_non_null(strstr(pool_report_text(), "off, the driver or device has no virtual memory "
                                               "management"));
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
}

/* A mapping refused later: the pool takes chunks from then on, and what it had mapped still
 * serves and still goes back. */
static void a_refused_mapping_keeps_what_is_mapped(void **state)
{
    (void)state;
    gs_opts.pool_release_threshold = (gs_size_spec_t){.bytes = 0};
    CUdeviceptr a, b;
    assert_int_equal(gs_mem_alloc(&a, 1 * MiB), CUDA_SUCCESS);
    fake.fail_next_maps = 1;
    assert_int_equal(gs_mem_alloc(&b, 3 * MiB), CUDA_SUCCESS); /* a chunk */
    assert_int_equal(fake.allocs, 1);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&a, 1 * MiB), CUDA_SUCCESS); /* the range still serves */
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(fake.vmm_unmaps, 1);
    assert_int_equal(fake.used, 0);
    assert_non_null(
        strstr(pool_report_text(), "off, the driver refused to map memory; 0 B mapped"));
}

/* cudaDeviceReset: mapped memory is not the context's, so the pool unmaps it itself. */
static void a_reset_unmaps_the_range(void **state)
{
    (void)state;
    CUdeviceptr a;
    assert_int_equal(gs_mem_alloc(&a, 3 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.used, 4 * MiB);
    assert_int_equal(gs_primary_ctx_reset(0, true), CUDA_SUCCESS);
    assert_int_equal(fake.used, 0);
    assert_int_equal(gs_mem_alloc(&a, 3 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.used, 4 * MiB);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
}

/* cuCtxDestroy frees the context's cuMemAlloc memory, not mapped memory: the range and its
 * blocks outlive the context that was current when it grew. */
static void a_destroyed_context_leaves_the_range(void **state)
{
    (void)state;
    CUdeviceptr a, again;
    fake.ctx = 0x1010;
    assert_int_equal(gs_mem_alloc(&a, MiB), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_destroy((CUcontext)0x1010, true), CUDA_SUCCESS);
    fake.ctx = 0x1020;
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.resets, 0);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&again, MiB), CUDA_SUCCESS);
    assert_int_equal(again, a);
    assert_int_equal(fake.vmm_maps, 1);
    assert_int_equal(gs_mem_free(again), CUDA_SUCCESS);
    fake.ctx = 0;
}

/* Out of device memory: free chunks go back to the driver and the allocation is retried. */
static void gives_free_chunks_back_before_failing(void **state)
{
    (void)state;
    fake.limit = 40 * MiB;
    CUdeviceptr a, b, c;
    assert_int_equal(gs_mem_alloc(&a, 16 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 16 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&c, 30 * MiB), CUDA_SUCCESS);
    assert_true(fake.frees >= 1);
    assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
}

static void out_of_memory_is_cudas_error_and_counted(void **state)
{
    (void)state;
    fake.limit = 32 * MiB;
    CUdeviceptr p;
    assert_int_equal(gs_mem_alloc(&p, 64 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    fake.fail_next_allocs = 100;
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.failures, 2);
    assert_int_equal(gs_mem_alloc(&p, 0), CUDA_ERROR_INVALID_VALUE);
}

static void pool_max_caps_the_reservation(void **state)
{
    (void)state;
    gs_opts.pool_max = (gs_size_spec_t){.bytes = 16 * MiB};
    gs_pool_destroy();
    CUdeviceptr a, b;
    assert_int_equal(gs_mem_alloc(&a, 12 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 12 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    assert_true(fake.used <= 16 * MiB);
}

static void pitch_follows_the_device_alignment(void **state)
{
    (void)state;
    CUdeviceptr p;
    size_t pitch = 0;
    assert_int_equal(gs_mem_alloc_pitch(&p, &pitch, 1000, 10, 4), CUDA_SUCCESS);
    assert_int_equal(pitch, 1024);
    assert_int_equal(p % 512, 0);
    assert_int_equal(gs_mem_alloc_pitch(&p, &pitch, 1000, 10, 3), CUDA_ERROR_INVALID_VALUE);
}

static void bad_frees_get_the_drivers_answer(void **state)
{
    (void)state;
    CUdeviceptr p;
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_ERROR_INVALID_VALUE);      /* double free */
    assert_int_equal(gs_mem_free(0x1000), CUDA_ERROR_INVALID_VALUE); /* foreign: driver */
    assert_int_equal(gs_mem_free(0), CUDA_SUCCESS);
}

static void ranges_describe_the_block_not_the_chunk(void **state)
{
    (void)state;
    CUdeviceptr a, b, base = 0;
    size_t size = 0;
    assert_int_equal(gs_mem_alloc(&a, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 10000), CUDA_SUCCESS);
    assert_int_equal(gs_mem_get_address_range(&base, &size, b + 5000), CUDA_SUCCESS);
    assert_int_equal(base, b);
    assert_int_equal(size, 10000);
    CUipcMemHandle handle;
    assert_int_equal(gs_ipc_get_mem_handle(&handle, b), CUDA_ERROR_INVALID_VALUE);
    CUdeviceptr whole;
    assert_int_equal(gs_mem_alloc(&whole, 64 * MiB), CUDA_SUCCESS); /* a chunk of its own */
    assert_int_equal(gs_ipc_get_mem_handle(&handle, whole), CUDA_SUCCESS);
}

static void free_memory_counts_what_the_pool_holds_unused(void **state)
{
    (void)state;
    CUdeviceptr p;
    size_t free_before, free_after, total;
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_get_info(&free_before, &total), CUDA_SUCCESS);
    assert_int_equal(free_before, total - 4096); /* the rest of the chunk counts as free */
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    assert_int_equal(gs_mem_get_info(&free_after, &total), CUDA_SUCCESS);
    assert_int_equal(free_after, total);
}

static void blocks_go_back_to_their_own_device(void **state)
{
    (void)state;
    CUdeviceptr on1, again;
    fake.devices = 2;
    fake.device = 1;
    assert_int_equal(gs_mem_alloc(&on1, 4096), CUDA_SUCCESS);
    fake.device = 0;
    assert_int_equal(gs_mem_free(on1), CUDA_SUCCESS);
    gs_device_stats_t s;
    gs_stats_snapshot(1, &s);
    assert_int_equal(s.frees, 1);
    fake.device = 1;
    assert_int_equal(gs_mem_alloc(&again, 4096), CUDA_SUCCESS);
    assert_int_equal(again, on1);
    fake.device = 0;
}

/* ---- the express path (pool.c): the commonest calls, in fewer instructions, same results ---- */

static int express_allocs, express_frees; /* calls the express path served */
static int full_allocs, full_frees;       /* calls the full path served */

static CUresult counted_full_alloc(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                                   gs_block_t *block)
{
    full_allocs++;
    return gs_backend_pool.alloc(req, ptr, pitch, block);
}

static int counted_full_free(CUdeviceptr ptr, const gs_free_req_t *req, CUresult *result,
                             gs_block_t *block)
{
    full_frees++;
    return gs_backend_pool.free(ptr, req, result, block);
}

/* The express path serves a call unless it hands it to the full path. */
static CUresult counted_express_alloc(CUdeviceptr *dptr, size_t bytes)
{
    int before = full_allocs;
    CUresult rc = gs_backend_pool.express_mem_alloc(dptr, bytes);
    express_allocs += full_allocs == before;
    return rc;
}

static CUresult counted_express_free(CUdeviceptr ptr)
{
    int before = full_frees;
    CUresult rc = gs_backend_pool.express_mem_free(ptr);
    express_frees += full_frees == before;
    return rc;
}

/* The pool backend with both paths counted, its express path there (express) or taken away. */
static gs_backend_t with_express(bool express)
{
    gs_backend_t b = gs_backend_pool;
    b.alloc = counted_full_alloc;
    b.free = counted_full_free;
    b.express_mem_alloc = express ? counted_express_alloc : NULL;
    b.express_mem_free = express ? counted_express_free : NULL;
    express_allocs = express_frees = full_allocs = full_frees = 0;
    return b;
}

/* Pairs of sizes from 256 B to past the thread cache's budget, with one block live throughout:
 * what the counters and the pool's report say afterwards. */
static char *pairs_of_five_sizes(gs_device_stats_t *stats)
{
    static const size_t sizes[] = {256, 4096, 100000, 3 << 20, 64 << 20};
    CUdeviceptr kept, p;
    assert_int_equal(gs_mem_alloc(&kept, 777), CUDA_SUCCESS);
    for (int i = 0; i < 500; i++) {
        assert_int_equal(gs_mem_alloc(&p, sizes[i % 5]), CUDA_SUCCESS);
        assert_int_equal(p % 512, 0);
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    }
    gs_stats_snapshot(0, stats);
    return strdup(pool_report_text());
}

static void the_express_path_counts_as_the_full_path_does(void **state)
{
    (void)state;
    gs_device_stats_t full, express;
    gs_backend_t backend = with_express(false);
    gs_dispatch_use(&backend);
    char *full_report = pairs_of_five_sizes(&full);
    assert_int_equal(express_allocs + express_frees, 0);

    start(1ull << 30, GS_REUSE_IMMEDIATE);
    backend = with_express(true);
    gs_dispatch_use(&backend);
    char *express_report = pairs_of_five_sizes(&express);
    /* Every allocation but the first of each size (and the block kept) came from the cache
     * through the express path; every free was of a block this thread had just allocated. */
    assert_int_equal(express_allocs, 495);
    assert_int_equal(express_frees, 500);
    assert_int_equal(express.allocations, full.allocations);
    assert_int_equal(express.frees, full.frees);
    assert_int_equal(express.bytes_requested, full.bytes_requested);
    assert_int_equal(express.bytes_freed, full.bytes_freed);
    assert_int_equal(express.in_use, 777);
    assert_int_equal(express.peak, full.peak);
    assert_int_equal(express.peak, 777 + (64 << 20));
    assert_memory_equal(express.histogram, full.histogram, sizeof full.histogram);
    /* One call in 32 timed on either path (where in its count of 32 the thread was when the run
     * began may differ by one). */
    assert_true(full.timed_calls >= 30);
    assert_true(express.timed_calls + 1 >= full.timed_calls &&
                express.timed_calls <= full.timed_calls + 1);
    assert_string_equal(express_report, full_report); /* hits, reserved, cached bytes */
    free(full_report);
    free(express_report);
}

static void the_express_path_never_hands_out_a_pending_block(void **state)
{
    (void)state;
    gs_backend_t backend = with_express(true);
    gs_dispatch_use(&backend);
    CUdeviceptr a, b, c;
    assert_int_equal(gs_mem_alloc(&a, 4096), CUDA_SUCCESS);
    issue_work();
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(express_frees, 1);
    assert_int_equal(gs_mem_alloc(&b, 4096), CUDA_SUCCESS);
    assert_true(b != a);
    assert_int_equal(express_allocs, 0); /* the full path served it */
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&c, 4096), CUDA_SUCCESS);
    assert_int_equal(c, a);
    assert_int_equal(express_allocs, 1);
}

static void the_express_path_leaves_bad_frees_to_the_full_path(void **state)
{
    (void)state;
    gs_backend_t backend = with_express(true);
    gs_dispatch_use(&backend);
    CUdeviceptr p;
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p + 512), CUDA_ERROR_INVALID_VALUE); /* inside: the driver's */
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_ERROR_INVALID_VALUE); /* double free */
    assert_int_equal(express_frees, 1);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.frees, 1);
    assert_int_equal(s.foreign_frees, 1);
    assert_int_equal(s.in_use, 0);
}

static void async_and_managed_pass_through(void **state)
{
    (void)state;
    CUdeviceptr a, m;
    assert_int_equal(gs_mem_alloc_async(&a, 4096, NULL, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc_managed(&m, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    assert_int_equal(fake.async_allocs, 1);
    assert_int_equal(gs_mem_free_async(a, NULL, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(m), CUDA_SUCCESS);
    assert_int_equal(fake.async_frees, 1);
    assert_int_equal(fake.frees, 2);
}

static void *stress_thread(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    CUdeviceptr live[64] = {0};
    for (int i = 0; i < 20000; i++) {
        int k = rand_r(&seed) % 64;
        if (live[k]) {
            assert_int_equal(gs_mem_free(live[k]), CUDA_SUCCESS);
            live[k] = 0;
        } else {
            size_t bytes = (size_t)256 << (rand_r(&seed) % 12);
            assert_int_equal(gs_mem_alloc(&live[k], bytes), CUDA_SUCCESS);
        }
        if (i % 5000 == 0)
            gs_ctx_synchronize();
        if (i % 7 == 0)
            issue_work(); /* quiet spells begin and end while other threads free */
    }
    for (int k = 0; k < 64; k++)
        if (live[k])
            assert_int_equal(gs_mem_free(live[k]), CUDA_SUCCESS);
    return NULL;
}

/* Many threads, both policies (safe with and without events), and the large heap growing in
 * place while the program's synchronizations unmap its free end (both policies): counts stay
 * exact, nothing is handed out twice (the fake's ledger would refuse), every byte comes back.
 * Run under ThreadSanitizer by scripts/test.sh. */
static void many_threads(void **state)
{
    (void)state;
    for (int round = 0; round < 5; round++) {
        start(4ull << 30, round == 2 || round == 3 ? GS_REUSE_IMMEDIATE : GS_REUSE_SAFE);
        fake.events = round == 1 || round == 4;
        fake.vmm = round >= 3;
        if (fake.vmm)
            gs_opts.pool_release_threshold = (gs_size_spec_t){.bytes = 0};
        pthread_t t[16];
        for (int i = 0; i < 16; i++)
            pthread_create(&t[i], NULL, stress_thread, (void *)(uintptr_t)(i + 1));
        for (int i = 0; i < 16; i++)
            pthread_join(t[i], NULL);
        gs_device_stats_t s;
        gs_stats_snapshot(0, &s);
        assert_int_equal(s.allocations, s.frees);
        assert_int_equal(s.in_use, 0);
        assert_int_equal(s.failures, 0);
        if (fake.vmm) { /* it grew in place; with every block free, all goes back */
            assert_true(fake.vmm_maps > 1);
            assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
            assert_int_equal(fake.used, 0);
        }
    }
}

/* The brief's random pattern: 1000 live blocks, log-uniform 256 B..4 MiB, freed in random order.
 * Peak reserved (what the pool took from the driver) over peak requested. The issue asks for
 * 1.15; the large heap growing in place (as on GPUs with virtual memory management) gives 1.131
 * here, 1.126 on average over 40 seeds (scripts/fragmentation-model.sh); in chunks, 1.155 and
 * 1.158 (1.20 before small blocks had chunks of their own). The bounds guard against
 * regressions. */
static void random_pattern_once(const char *policy, bool in_place);

static gs_block_t backend_alloc(CUdeviceptr *ptr)
{
    gs_alloc_req_t req = {.kind = GS_KIND_DEVICE, .bytes = 4096};
    gs_block_t block;
    assert_int_equal(gs_backend_pool.alloc(&req, ptr, NULL, &block), CUDA_SUCCESS);
    return block;
}

static void *backend_free(void *arg)
{
    gs_free_req_t req = {.stream_ordered = false};
    CUresult result;
    static _Thread_local gs_block_t block;
    assert_int_equal(gs_backend_pool.free(*(CUdeviceptr *)arg, &req, &result, &block), 0);
    assert_int_equal(result, CUDA_SUCCESS);
    return &block;
}

/* The trace reads the clock for an event unless this thread made the block's last allocation
 * or free (gs_block_t.same_thread), which keeps each pointer's events in order in the file. */
static void blocks_tell_whether_this_thread_touched_them_last(void **state)
{
    (void)state;
    CUdeviceptr a, again;
    assert_false(backend_alloc(&a).same_thread); /* carved anew */
    assert_true(((gs_block_t *)backend_free(&a))->same_thread);
    assert_true(backend_alloc(&again).same_thread); /* from this thread's cache */
    assert_int_equal(again, a);
    pthread_t other;
    gs_block_t *freed;
    assert_int_equal(pthread_create(&other, NULL, backend_free, &a), 0);
    assert_int_equal(pthread_join(other, (void **)&freed), 0);
    assert_false(freed->same_thread); /* allocated here, freed there */
    /* The other thread ended: its cache went back to the pool, and this thread's next block of
     * that size is the one the other thread touched last. */
    assert_false(backend_alloc(&again).same_thread);
    assert_int_equal(again, a);
}

static void random_pattern_fragmentation(void **state)
{
    (void)state;
    for (int in_place = 0; in_place < 2; in_place++)
        for (int policy = 0; policy < 2; policy++) {
            start(1ull << 30, policy ? GS_REUSE_SAFE : GS_REUSE_IMMEDIATE);
            fake.vmm = in_place;
            random_pattern_once(policy ? "safe" : "immediate", in_place);
        }
}

static void random_pattern_once(const char *policy, bool in_place)
{
    gs_opts.pool_chunk = (gs_size_spec_t){.bytes = 64 * MiB}; /* the default */
    /* scripts/fragmentation-model.sh runs the pattern with other seeds */
    unsigned seed = getenv("GS_RANDOM_SEED") ? (unsigned)atoi(getenv("GS_RANDOM_SEED")) : 42;
    CUdeviceptr live[1000];
    uint64_t size[1000], in_use = 0, peak = 0;
    double lo = log(256.0), hi = log(4.0 * 1024 * 1024);
#define DRAW() ((uint64_t)exp(lo + (hi - lo) * ((double)rand_r(&seed) / RAND_MAX)))
    for (int i = 0; i < 1000; i++) {
        size[i] = DRAW();
        assert_int_equal(gs_mem_alloc(&live[i], size[i]), CUDA_SUCCESS);
        in_use += size[i];
    }
    peak = in_use;
    for (int n = 0; n < 20000; n++) {
        int k = rand_r(&seed) % 1000;
        assert_int_equal(gs_mem_free(live[k]), CUDA_SUCCESS);
        in_use -= size[k];
        size[k] = DRAW();
        assert_int_equal(gs_mem_alloc(&live[k], size[k]), CUDA_SUCCESS);
        in_use += size[k];
        if (in_use > peak)
            peak = in_use;
    }
#undef DRAW
    for (int i = 0; i < 1000; i++)
        assert_int_equal(gs_mem_free(live[i]), CUDA_SUCCESS);
    double ratio = (double)fake.peak_used / (double)peak;
    print_message("random pattern, %s reuse, %s: peak reserved %.1f MiB / peak requested %.1f "
                  "MiB = %.3f\n",
                  policy, in_place ? "expandable" : "chunks", fake.peak_used / 1048576.0,
                  peak / 1048576.0, ratio);
    if (getenv("GS_RANDOM_SEED") == NULL) /* the script collects other seeds' ratios */
        assert_true(ratio <= (in_place ? 1.15 : 1.19));
}

/* cudaDeviceReset frees every allocation of the device: the pool must forget its chunks and
 * its thread cache, never hand out their memory again, count what the program still held as
 * freed, and serve new allocations from new chunks. A pointer from before the reset is the
 * driver's business (CUDA answers CUDA_ERROR_INVALID_VALUE). */
static void a_device_reset_forgets_every_block(void **state)
{
    (void)state;
    CUdeviceptr live_small, live_large, cached, pending, fresh[3];
    assert_int_equal(gs_mem_alloc(&live_small, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&live_large, 64 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&cached, 1 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&pending, 40 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(cached), CUDA_SUCCESS); /* into this thread's cache */
    assert_int_equal(gs_mem_free(pending), CUDA_SUCCESS);
    CUdeviceptr first_new_address = fake.next_address;

    assert_int_equal(gs_primary_ctx_reset(0, true), CUDA_SUCCESS);
    assert_int_equal(fake.resets, 1);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.resets, 1);
    assert_int_equal(s.reset_released, 2);
    assert_int_equal(s.reset_released_bytes, 4096 + 64 * MiB);
    assert_int_equal(s.in_use, 0);
    gs_buf_t *buf = calloc(1, sizeof *buf);
    gs_opts.mode = GS_MODE_POOL;
    gs_report_render(buf);
    assert_non_null(strstr(buf->data, "pool reserved 0 B now"));
    size_t free_bytes, total;
    assert_int_equal(gs_mem_get_info(&free_bytes, &total), CUDA_SUCCESS);
    assert_int_equal(free_bytes, total); /* no stale cached bytes counted as free */

    /* Same sizes again: every block comes from memory the driver gave after the reset. */
    assert_int_equal(gs_mem_alloc(&fresh[0], 1 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&fresh[1], 40 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&fresh[2], 4096), CUDA_SUCCESS);
    for (int i = 0; i < 3; i++)
        assert_true(fresh[i] >= first_new_address);
    assert_int_equal(gs_mem_free(live_small), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(gs_mem_free(cached), CUDA_ERROR_INVALID_VALUE);
    for (int i = 0; i < 3; i++)
        assert_int_equal(gs_mem_free(fresh[i]), CUDA_SUCCESS);
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.in_use, 0);
    assert_int_equal(s.foreign_frees, 2);

    buf->len = 0;
    gs_report_render(buf);
    assert_non_null(strstr(buf->data, "the context holding its memory was reset or destroyed 1 "
                                      "times (cudaDeviceReset, cuCtxDestroy); that released 2 "
                                      "allocations"));
    free(buf);
}

/* The last cuDevicePrimaryCtxRelease destroys the context as a reset does; earlier ones do not. */
static void the_last_primary_context_release_forgets_blocks(void **state)
{
    (void)state;
    CUdeviceptr live, cached, b;
    fake.retained = 2;
    assert_int_equal(gs_mem_alloc(&live, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&cached, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(cached), CUDA_SUCCESS);
    assert_int_equal(gs_primary_ctx_release(0, true), CUDA_SUCCESS);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.resets, 0);
    assert_int_equal(gs_primary_ctx_release(0, true), CUDA_SUCCESS);
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.resets, 1);
    assert_int_equal(s.reset_released, 1);
    assert_int_equal(gs_mem_alloc(&b, 4096), CUDA_SUCCESS);
    assert_true(b != cached && b != live);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
}

/* cuCtxDestroy of the context all of a device's chunks came from frees them: the pool forgets
 * the device as after a reset. If another context's chunks share the pool, it cannot, and says
 * so. */
static void destroying_the_pools_context_forgets_its_memory(void **state)
{
    (void)state;
    CUdeviceptr a, b, c;
    fake.ctx = 0x1010;
    assert_int_equal(gs_mem_alloc(&a, MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);         /* cached */
    assert_int_equal(gs_mem_alloc(&b, 4096), CUDA_SUCCESS); /* held */
    CUdeviceptr first_new_address = fake.next_address;
    assert_int_equal(gs_ctx_destroy((CUcontext)0x1010, true), CUDA_SUCCESS);
    assert_true(fake.destroyed_allocations > 0);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.resets, 1);
    assert_int_equal(s.reset_released, 1);
    fake.ctx = 0x1020;
    assert_int_equal(gs_mem_alloc(&c, MiB), CUDA_SUCCESS);
    assert_true(c >= first_new_address);
    assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
    /* Now a second context's chunk beside the first's: destroying one is not understood. */
    fake.ctx = 0x1030;
    assert_int_equal(gs_mem_alloc(&a, 64 * MiB), CUDA_SUCCESS); /* a chunk of its own */
    assert_int_equal(gs_ctx_destroy((CUcontext)0x1030, true), CUDA_SUCCESS);
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.resets, 1); /* not forgotten: the pool warned instead */
    fake.ctx = 0;
}

/* GPUSHIM_POOL_RELEASE_THRESHOLD: at the program's own synchronization, wholly free chunks go
 * back to the driver beyond the threshold (pending blocks that sync covers included); by default
 * the pool keeps them. */
static void free_chunks_go_back_at_the_programs_synchronization(void **state)
{
    (void)state;
    CUdeviceptr p[6];
    for (int round = 0; round < 2; round++) {
        gs_opts.pool_release_threshold =
            round ? (gs_size_spec_t){.bytes = 0} : (gs_size_spec_t){.percent = 100};
        gs_pool_destroy();
        uint64_t before = fake.used; /* what an earlier round's pool left with the fake */
        for (int i = 0; i < 6; i++)
            assert_int_equal(gs_mem_alloc(&p[i], i < 3 ? 48 * MiB : 4096), CUDA_SUCCESS);
        for (int i = 0; i < 6; i++)
            assert_int_equal(gs_mem_free(p[i]), CUDA_SUCCESS);
        uint64_t reserved = fake.used;
        assert_true(reserved >= before + 3 * 48 * MiB);
        assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
        if (round == 0) {
            assert_int_equal(fake.used, reserved); /* the default keeps everything */
        } else {
            assert_int_equal(fake.used, before);
            assert_int_equal(gs_mem_alloc(&p[0], 4096), CUDA_SUCCESS); /* grows again */
            assert_int_equal(gs_mem_free(p[0]), CUDA_SUCCESS);
        }
    }
}

static void report_tells_reserved_hits_and_pending(void **state)
{
    (void)state;
    CUdeviceptr p;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    }
    gs_buf_t *buf = calloc(1, sizeof *buf);
    gs_opts.mode = GS_MODE_POOL;
    gs_report_render(buf);
    assert_non_null(strstr(buf->data, "mode pool\n"));
    assert_non_null(
        strstr(buf->data,
               "device 0: pool reserved 2 MiB now, peak 2 MiB, in 1 chunks; 1 driver allocations"));
    assert_non_null(strstr(buf->data, "pool hit rate 90.0% (9 of 10 allocations"));
    assert_non_null(strstr(
        buf->data, "pool reuse immediate; pending 0 B, 0 synchronizations made by the shim"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(serves_aligned_blocks_from_few_driver_calls, immediate),
        cmocka_unit_test_setup(reuses_freed_blocks_at_once_when_asked, immediate),
        cmocka_unit_test_setup(safe_reuse_waits_for_a_synchronization, safe),
        cmocka_unit_test_setup(a_quiet_device_reuses_blocks_at_once, safe),
        cmocka_unit_test_setup(a_quiet_device_needs_no_new_marks, safe),
        cmocka_unit_test_setup(idle_reuse_off_waits_as_ever, safe),
        cmocka_unit_test_setup(one_buffer_beyond_the_budget_stays_in_the_thread_cache, safe),
        cmocka_unit_test_setup(one_buffer_beyond_the_budget_stays_in_the_thread_cache, immediate),
        cmocka_unit_test_setup(pending_bytes_are_bounded, safe),
        cmocka_unit_test_setup(safe_reuse_synchronizes_once_per_256_frees_when_cheap, safe),
        cmocka_unit_test_setup(slow_synchronizations_back_off, safe),
        cmocka_unit_test_setup(events_recycle_pending_blocks_without_a_wait, safe),
        cmocka_unit_test_setup(busy_events_leave_the_bound_to_synchronizations, safe),
        cmocka_unit_test_setup(the_pool_waits_for_a_mark_rather_than_grow, safe),
        cmocka_unit_test_setup(a_mark_wait_gives_up, safe),
        cmocka_unit_test_setup(events_mark_each_nonblocking_stream, safe),
        cmocka_unit_test_setup(a_destroyed_stream_holds_blocks_until_its_work_is_done, safe),
        cmocka_unit_test_setup(too_many_nonblocking_streams_turn_events_off, safe),
        cmocka_unit_test_setup(coalesces_neighbours_back_into_one_block, immediate),
        cmocka_unit_test_setup(grows_in_chunks_and_serves_large_requests_whole, immediate),
        cmocka_unit_test_setup(small_blocks_have_chunks_of_their_own, immediate),
        cmocka_unit_test_setup(short_of_memory_small_blocks_take_room_beside_large_ones, immediate),
        cmocka_unit_test_setup(the_initial_reservation_serves_small_blocks_too, immediate),
        cmocka_unit_test_setup(the_large_heap_grows_in_place, expandable),
        cmocka_unit_test_setup(the_free_end_of_the_range_is_unmapped, expandable),
        cmocka_unit_test_setup(the_range_gives_way_when_memory_is_short, expandable),
        cmocka_unit_test_setup(without_mappings_the_pool_takes_chunks, expandable),
        cmocka_unit_test_setup(a_refused_mapping_keeps_what_is_mapped, expandable),
        cmocka_unit_test_setup(a_reset_unmaps_the_range, expandable),
        cmocka_unit_test_setup(a_destroyed_context_leaves_the_range, expandable),
        cmocka_unit_test_setup(gives_free_chunks_back_before_failing, immediate),
        cmocka_unit_test_setup(out_of_memory_is_cudas_error_and_counted, safe),
        cmocka_unit_test_setup(pool_max_caps_the_reservation, immediate),
        cmocka_unit_test_setup(pitch_follows_the_device_alignment, safe),
        cmocka_unit_test_setup(bad_frees_get_the_drivers_answer, safe),
        cmocka_unit_test_setup(ranges_describe_the_block_not_the_chunk, safe),
        cmocka_unit_test_setup(free_memory_counts_what_the_pool_holds_unused, immediate),
        cmocka_unit_test_setup(blocks_go_back_to_their_own_device, immediate),
        cmocka_unit_test_setup(the_express_path_counts_as_the_full_path_does, immediate),
        cmocka_unit_test_setup(the_express_path_never_hands_out_a_pending_block, safe),
        cmocka_unit_test_setup(the_express_path_leaves_bad_frees_to_the_full_path, immediate),
        cmocka_unit_test_setup(async_and_managed_pass_through, safe),
        cmocka_unit_test_setup(report_tells_reserved_hits_and_pending, immediate),
        cmocka_unit_test_setup(a_device_reset_forgets_every_block, safe),
        cmocka_unit_test_setup(a_device_reset_forgets_every_block, immediate),
        cmocka_unit_test_setup(the_last_primary_context_release_forgets_blocks, immediate),
        cmocka_unit_test_setup(destroying_the_pools_context_forgets_its_memory, safe),
        cmocka_unit_test_setup(free_chunks_go_back_at_the_programs_synchronization, safe),
        cmocka_unit_test_setup(free_chunks_go_back_at_the_programs_synchronization, immediate),
        cmocka_unit_test_setup(random_pattern_fragmentation, immediate),
        cmocka_unit_test_setup(blocks_tell_whether_this_thread_touched_them_last, immediate),
        cmocka_unit_test(many_threads),
    };
    int failed = cmocka_run_group_tests_name("pool", tests, NULL, NULL);
    gs_pool_destroy();
    gs_ptrmap_clear();
    return failed;
}

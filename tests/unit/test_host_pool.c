/* test_host_pool.c: the pinned host memory pool (GPUSHIM_HOST_POOL) against a fake upstream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "fake_upstream.h"

extern uint64_t gs_host_pool_cheap_sync_ns; /* host_pool.c: what counts as a quick one */

static void start(gs_mode_t mode, gs_host_pool_t host_pool)
{
    gs_host_pool_destroy(); /* with the previous test's fake */
    fake_upstream_install(1ull << 30);
    gs_options_defaults(&gs_opts);
    gs_opts.mode = mode;
    gs_opts.host_pool = host_pool;
    gs_pool_destroy();
    gs_budget_forget();
    gs_stats_reset();
    gs_work_forget();
    gs_dispatch_use(gs_backend_for_mode(mode));
}

static int pool_mode(void **state)
{
    (void)state;
    start(GS_MODE_POOL, GS_HOST_POOL_AUTO);
    return 0;
}

static const char *report_text(void)
{
    static gs_buf_t buf;
    buf.len = 0;
    gs_host_pool_report(&buf, false);
    buf.data[buf.len] = '\0';
    return buf.data;
}

/* After the program's synchronization, with no GPU work since, a freed block is reusable at
 * once: a thousand pairs take one allocation from the driver and no synchronization. */
static void pairs_reuse_one_block(void **state)
{
    (void)state;
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    int syncs = fake.syncs;
    void *first = NULL;
    for (int i = 0; i < 1000; i++) {
        void *p;
        assert_int_equal(gs_mem_host_alloc(&p, 64 << 10, 0, false), CUDA_SUCCESS);
        memset(p, i, 64 << 10); /* real memory */
        if (i == 0)
            first = p;
        assert_ptr_equal(p, first);
        assert_int_equal(gs_mem_free_host(p), CUDA_SUCCESS);
    }
    assert_int_equal(fake.host_allocs, 1);
    assert_int_equal(fake.host_frees, 0);
    assert_int_equal(fake.syncs, syncs);
    assert_non_null(strstr(report_text(), "pinned host memory (pool on): 1000 allocations (999 "
                                          "reused), 1000 frees, 0 failed; 0 B in use now, peak "
                                          "64 KiB; 64 KiB kept for reuse"));
}

/* A block freed after GPU work was issued comes back only after a synchronization that began
 * after the free: the shim's own while those are cheap, else a fresh block from the driver. */
static void reuse_waits_for_the_work_before_the_free(void **state)
{
    (void)state;
    void *a, *b, *c;
    gs_host_pool_cheap_sync_ns = 10000000000ull; /* valgrind: any synchronization is quick */
    assert_int_equal(gs_mem_host_alloc(&a, 1 << 20, 0, false), CUDA_SUCCESS);
    gs_work_enqueued(); /* an asynchronous copy from a */
    assert_int_equal(gs_mem_free_host(a), CUDA_SUCCESS);
    int syncs = fake.syncs;
    assert_int_equal(gs_mem_host_alloc(&b, 1 << 20, 0, false), CUDA_SUCCESS);
    assert_ptr_equal(b, a);               /* reused ... */
    assert_int_equal(fake.syncs, syncs + 1); /* ... after the shim's synchronization */
    /* A busy device: that synchronization was slow, the next is not made; a fresh block. */
    fake.sync_ns = 200000;
    gs_host_pool_cheap_sync_ns = 50000;
    gs_work_enqueued();
    assert_int_equal(gs_mem_free_host(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_host_alloc(&c, 1 << 20, 0, false), CUDA_SUCCESS);
    assert_int_equal(fake.syncs, syncs + 2);
    void *d;
    gs_work_enqueued();
    assert_int_equal(gs_mem_free_host(c), CUDA_SUCCESS);
    int allocs = fake.host_allocs;
    assert_int_equal(gs_mem_host_alloc(&d, 1 << 20, 0, false), CUDA_SUCCESS);
    assert_ptr_not_equal(d, c);              /* c waits: no synchronization while backing off */
    assert_int_equal(fake.syncs, syncs + 2);
    assert_int_equal(fake.host_allocs, allocs + 1);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS); /* the program's own */
    void *e;
    assert_int_equal(gs_mem_host_alloc(&e, 1 << 20, 0, false), CUDA_SUCCESS);
    assert_ptr_equal(e, c);
    assert_int_equal(gs_mem_free_host(d), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free_host(e), CUDA_SUCCESS);
}

/* Blocks are whole allocations with the program's flags: another flag or kind, another block;
 * range queries answer the size asked for, not the class's. */
static void flags_and_sizes_are_kept(void **state)
{
    (void)state;
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    void *a, *b, *c, *d;
    assert_int_equal(gs_mem_host_alloc(&a, 5000, CU_MEMHOSTALLOC_DEVICEMAP, false), CUDA_SUCCESS);
    assert_int_equal(fake.last_host_flags, CU_MEMHOSTALLOC_DEVICEMAP);
    assert_int_equal(gs_mem_free_host(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_host_alloc(&b, 5000, 0, false), CUDA_SUCCESS);
    assert_ptr_not_equal(b, a);
    assert_int_equal(gs_mem_host_alloc(&c, 5000, 0, true), CUDA_SUCCESS); /* cuMemAllocHost */
    assert_ptr_not_equal(c, a);
    assert_int_equal(gs_mem_host_alloc(&d, 5100, CU_MEMHOSTALLOC_DEVICEMAP, false), CUDA_SUCCESS);
    assert_ptr_equal(d, a); /* same class (5 KiB .. 6 KiB) and flags */
    CUdeviceptr base = 0;
    size_t size = 0;
    assert_int_equal(gs_host_pool_range((CUdeviceptr)(uintptr_t)d + 100, &base, &size), 0);
    assert_int_equal(base, (CUdeviceptr)(uintptr_t)d);
    assert_int_equal(size, 5100);
    void *foreign = malloc(64);
    assert_int_equal(gs_host_pool_range((CUdeviceptr)(uintptr_t)foreign, &base, &size),
                     GS_NOT_OURS);
    free(foreign);
    assert_int_equal(gs_mem_free_host(b), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free_host(c), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free_host(d), CUDA_SUCCESS);
    /* Sizes no host has: the driver's out-of-memory error, without a driver call. */
    void *huge;
    int allocs = fake.host_allocs;
    assert_int_equal(gs_mem_host_alloc(&huge, SIZE_MAX - 100, 0, false), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(fake.host_allocs, allocs);
}

/* Pinned memory ran out: the kept blocks go back to the driver, and the allocation is tried
 * again. */
static void a_refused_allocation_gives_kept_blocks_back(void **state)
{
    (void)state;
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    void *a, *b, *c;
    assert_int_equal(gs_mem_host_alloc(&a, 4096, 0, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_host_alloc(&b, 8192, 0, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free_host(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free_host(b), CUDA_SUCCESS);
    assert_int_equal(fake.host_frees, 0);
    fake.fail_next_host_allocs = 1;
    assert_int_equal(gs_mem_host_alloc(&c, 1 << 20, 0, false), CUDA_SUCCESS);
    assert_int_equal(fake.host_frees, 2);
    fake.fail_next_host_allocs = 2;
    void *d;
    assert_int_equal(gs_mem_host_alloc(&d, 1 << 20, 0, false), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_free_host(c), CUDA_SUCCESS);
    assert_non_null(strstr(report_text(), "1 failed"));
}

/* Off mode by default: every call reaches the driver, counted. */
static void off_mode_counts_and_passes_through(void **state)
{
    (void)state;
    start(GS_MODE_OFF, GS_HOST_POOL_AUTO);
    for (int i = 0; i < 10; i++) {
        void *p;
        assert_int_equal(gs_mem_host_alloc(&p, 4096, 0, true), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free_host(p), CUDA_SUCCESS);
    }
    assert_int_equal(fake.host_allocs, 10);
    assert_int_equal(fake.host_frees, 10);
    assert_non_null(strstr(report_text(), "pinned host memory (pool off): 10 allocations (0 reused)"));
}

/* Several devices: a synchronization of one does not cover the others, so freed blocks wait;
 * past the bound the oldest go back to the driver, whose cuMemFreeHost waits itself. */
static void several_devices_wait_and_give_back(void **state)
{
    (void)state;
    fake.devices = 2;
    for (int i = 0; i < 300; i++) {
        void *p;
        assert_int_equal(gs_mem_host_alloc(&p, 1 << 20, 0, false), CUDA_SUCCESS);
        gs_work_enqueued();
        assert_int_equal(gs_mem_free_host(p), CUDA_SUCCESS);
        assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    }
    assert_int_equal(fake.host_allocs, 300);
    assert_true(fake.host_frees >= 300 - 256);
    assert_non_null(strstr(report_text(), "(0 reused)"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(pairs_reuse_one_block, pool_mode),
        cmocka_unit_test_setup(reuse_waits_for_the_work_before_the_free, pool_mode),
        cmocka_unit_test_setup(flags_and_sizes_are_kept, pool_mode),
        cmocka_unit_test_setup(a_refused_allocation_gives_kept_blocks_back, pool_mode),
        cmocka_unit_test_setup(off_mode_counts_and_passes_through, pool_mode),
        cmocka_unit_test_setup(several_devices_wait_and_give_back, pool_mode),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    gs_host_pool_destroy();
    gs_pool_destroy();
    return failed;
}

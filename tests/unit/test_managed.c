/* test_managed.c: managed mode (the pool over managed memory), spilling to managed memory, and
 * the device budget (GPUSHIM_DEVICE_LIMIT) in every mode, against a fake upstream driver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "fake_upstream.h"

#define MiB (1ull << 20)

static void start(gs_mode_t mode, uint64_t device_memory)
{
    fake_upstream_install(device_memory);
    gs_options_defaults(&gs_opts);
    gs_opts.mode = mode;
    gs_opts.pool_chunk = (gs_size_spec_t){.bytes = 8 * MiB};
    gs_pool_destroy();
    gs_budget_forget();
    gs_stats_reset();
    gs_work_forget();
    gs_dispatch_use(gs_backend_for_mode(mode));
}

static int managed(void **state)
{
    (void)state;
    start(GS_MODE_MANAGED, 1ull << 30);
    return 0;
}

static const char *report_text(void)
{
    static gs_buf_t buf;
    buf.len = 0;
    gs_report_render(&buf);
    buf.data[buf.len < sizeof buf.data ? buf.len : sizeof buf.data - 1] = '\0';
    return buf.data;
}

/* One round of a pipeline's temporaries: a large one, a middling one and a small one. */
static void temporaries(void)
{
    static const size_t sizes[] = {24 * MiB + 100, 3 * MiB, 200 << 10, 5 * MiB};
    CUdeviceptr p[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(gs_mem_alloc(&p[i], sizes[i]), CUDA_SUCCESS);
    gs_work_enqueued(); /* a kernel uses them */
    for (int i = 0; i < 4; i++)
        assert_int_equal(gs_mem_free(p[i]), CUDA_SUCCESS);
}

/* Repeated temporaries cost no new managed allocation (nor prefetch) after the first round: the
 * pool keeps them, and device memory is never asked for. */
static void managed_blocks_are_reused(void **state)
{
    (void)state;
    for (int round = 0; round < 100; round++) {
        temporaries();
        if (round % 4 == 3)
            assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    }
    assert_int_equal(fake.allocs, 0); /* no cuMemAlloc */
    assert_true(fake.managed_allocs <= 8);
    assert_int_equal(fake.prefetches, fake.managed_allocs); /* one per chunk, none per reuse */
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.allocations, 400);
    assert_int_equal(s.frees, 400);
    assert_non_null(strstr(report_text(), "the pool's chunks are managed memory"));
}

/* The safe-reuse rule holds for managed blocks: a block freed after GPU work was issued comes
 * back only after a synchronization that began after the free. */
static void managed_reuse_waits_for_the_work_before_the_free(void **state)
{
    (void)state;
    fake.sync_ns = 200000; /* a busy device: the shim backs off from synchronizing itself */
    CUdeviceptr a, b, c;
    assert_int_equal(gs_mem_alloc(&a, 16 * MiB), CUDA_SUCCESS);
    gs_work_enqueued();
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    int syncs = fake.syncs;
    assert_int_equal(gs_mem_alloc(&b, 16 * MiB), CUDA_SUCCESS);
    assert_true(b != a || fake.syncs > syncs); /* a again only after a synchronization */
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&c, 16 * MiB), CUDA_SUCCESS);
    assert_true(c == a || c == b);
    assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
}

/* Stream-ordered allocations and the program's own managed allocations (global attach) come from
 * the managed pool; host-attached ones keep their semantics and pass through. */
static void managed_mode_pools_async_and_global_managed(void **state)
{
    (void)state;
    CUdeviceptr a, m, h;
    assert_int_equal(gs_mem_alloc_async(&a, 4096, NULL, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc_managed(&m, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    assert_int_equal(fake.async_allocs, 0);
    int managed_allocs = fake.managed_allocs;
    assert_int_equal(gs_mem_alloc_managed(&h, 4096, CU_MEM_ATTACH_HOST), CUDA_SUCCESS);
    assert_int_equal(fake.managed_allocs, managed_allocs + 1);
    assert_int_equal(gs_mem_free_async(a, NULL, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(m), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(h), CUDA_SUCCESS);
    assert_int_equal(fake.async_frees, 0);
}

/* GPUSHIM_MANAGED_LIMIT caps what the pool holds, kept blocks included: past it an allocation is
 * CUDA's out-of-memory error, and kept blocks go back to make room. */
static void the_managed_cap_counts_kept_blocks_and_gives_them_back(void **state)
{
    (void)state;
    gs_opts.managed_limit = (gs_size_spec_t){.bytes = 100 * MiB};
    CUdeviceptr a, b, c;
    assert_int_equal(gs_mem_alloc(&a, 60 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 50 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&c, 70 * MiB), CUDA_SUCCESS); /* a's chunk went back */
    assert_true(fake.managed_used <= 100 * MiB);
    size_t free_bytes = 0, total = 0;
    assert_int_equal(gs_mem_get_info(&free_bytes, &total), CUDA_SUCCESS);
    assert_int_equal(total, 100 * MiB);
    assert_int_equal(free_bytes, 30 * MiB);
    assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
    assert_non_null(strstr(report_text(), "cap 100 MiB, 1 allocation refused at the cap"));
}

/* Under GPUSHIM_DEVICE_LIMIT, managed memory within the budget is preferred on the device and
 * prefetched there; what lies past it is advised to host memory, accessed by the device. */
static void the_device_limit_places_managed_memory_past_it_in_host_memory(void **state)
{
    (void)state;
    gs_opts.device_limit = (gs_size_spec_t){.bytes = 64 * MiB};
    gs_opts.managed_advice = GS_ADVICE_PREFERRED;
    CUdeviceptr a, b;
    assert_int_equal(gs_mem_alloc(&a, 48 * MiB), CUDA_SUCCESS);
    assert_int_equal(fake.prefetched_bytes, 48 * MiB);
    fake.advices = 0;
    assert_int_equal(gs_mem_alloc(&b, 48 * MiB), CUDA_SUCCESS); /* 16 MiB fit, 32 do not */
    assert_int_equal(fake.prefetched_bytes, 64 * MiB);
    assert_int_equal(fake.advices, 3);
    assert_int_equal(fake.advice[0].at, b);
    assert_int_equal(fake.advice[0].bytes, 16 * MiB);
    assert_int_equal(fake.advice[0].where, CU_MEM_LOCATION_TYPE_DEVICE);
    assert_int_equal(fake.advice[1].at, b + 16 * MiB);
    assert_int_equal(fake.advice[1].bytes, 32 * MiB);
    assert_int_equal(fake.advice[1].advice, CU_MEM_ADVISE_SET_PREFERRED_LOCATION);
    assert_int_equal(fake.advice[1].where, CU_MEM_LOCATION_TYPE_HOST);
    assert_int_equal(fake.advice[2].advice, CU_MEM_ADVISE_SET_ACCESSED_BY);
    assert_int_equal(fake.advice[2].where, CU_MEM_LOCATION_TYPE_DEVICE);
    size_t free_bytes = 0, total = 0;
    assert_int_equal(gs_mem_get_info(&free_bytes, &total), CUDA_SUCCESS);
    assert_int_equal(total, 64 * MiB);
    assert_int_equal(free_bytes, 0);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
    assert_non_null(strstr(report_text(), "device limit 64 MiB (GPUSHIM_DEVICE_LIMIT): 64 MiB used "
                                          "now, peak 64 MiB; 0 allocations refused at the limit; "
                                          "32 MiB of managed memory placed in host memory"));
}

/* Off mode: every kind of device allocation counts against the budget; past it CUDA's
 * out-of-memory error, without a driver call; frees give room back. */
static void the_device_limit_refuses_past_it_in_off_mode(void **state)
{
    (void)state;
    start(GS_MODE_OFF, 1ull << 30);
    gs_opts.device_limit = (gs_size_spec_t){.bytes = 10 * MiB};
    CUdeviceptr a, b, c, d;
    size_t pitch;
    assert_int_equal(gs_mem_alloc(&a, 6 * MiB), CUDA_SUCCESS);
    int allocs = fake.allocs;
    assert_int_equal(gs_mem_alloc(&b, 5 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_alloc_async(&b, 5 * MiB, NULL, false), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_alloc_from_pool_async(&b, 5 * MiB, (CUmemoryPool)&b, NULL, false),
                     CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(fake.allocs, allocs); /* refused before the driver */
    assert_int_equal(gs_mem_alloc_pitch(&b, &pitch, 1 << 20, 5, 4), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(fake.used, 6 * MiB); /* the pitched one went back */
    assert_int_equal(gs_mem_alloc_from_pool_async(&c, 2 * MiB, (CUmemoryPool)&c, NULL, false),
                     CUDA_SUCCESS);
    assert_int_equal(fake.pool_allocs, 1);
    size_t free_bytes = 0, total = 0;
    assert_int_equal(gs_mem_get_info(&free_bytes, &total), CUDA_SUCCESS);
    assert_int_equal(total, 10 * MiB);
    assert_int_equal(free_bytes, 2 * MiB);
    /* The program's own virtual memory counts too, until it is released. */
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    assert_int_equal(gs_mem_create(&h, 4 * MiB, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_create(&h, 2 * MiB, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&d, 4096), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_release(h), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&d, 4096), CUDA_SUCCESS);
    /* Managed memory of the program's own is not device memory: not refused. */
    CUdeviceptr m;
    assert_int_equal(gs_mem_alloc_managed(&m, 64 * MiB, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(m), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free_async(c, NULL, false), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(d), CUDA_SUCCESS);
    assert_int_equal(gs_mem_get_info(&free_bytes, &total), CUDA_SUCCESS);
    assert_int_equal(free_bytes, 10 * MiB);
    assert_non_null(strstr(report_text(), "0 B used now, peak 10 MiB; 6 allocations refused"));
}

/* Pool mode: the pool never reserves past the budget; what it keeps counts, and cuMemGetInfo
 * says what the program can still get. */
static void the_device_limit_bounds_the_pool(void **state)
{
    (void)state;
    start(GS_MODE_POOL, 1ull << 30);
    gs_opts.device_limit = (gs_size_spec_t){.percent = 3.125}; /* of 1 GiB: 32 MiB */
    CUdeviceptr a, b;
    assert_int_equal(gs_mem_alloc(&a, 20 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 20 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    assert_true(fake.used <= 32 * MiB);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    size_t free_bytes = 0, total = 0;
    assert_int_equal(gs_mem_get_info(&free_bytes, &total), CUDA_SUCCESS);
    assert_int_equal(total, 32 * MiB);
    assert_int_equal(free_bytes, 32 * MiB); /* the pool's idle bytes are the program's */
    assert_int_equal(gs_mem_alloc(&b, 4 * MiB), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
}

/* Budget arithmetic: a charge that would wrap is refused, not wrapped. */
static void budget_charges_never_wrap(void **state)
{
    (void)state;
    gs_opts.device_limit = (gs_size_spec_t){.bytes = 100 * MiB};
    assert_true(gs_budget_charge(0, 60 * MiB));
    assert_false(gs_budget_charge(0, UINT64_MAX - 10 * MiB));
    assert_false(gs_budget_charge(0, 41 * MiB));
    assert_true(gs_budget_charge(0, 40 * MiB));
    assert_int_equal(gs_budget_place(0, 8 * MiB), 0);
    gs_budget_uncharge(0, 100 * MiB);
    assert_int_equal(gs_budget_place(0, 8 * MiB), 8 * MiB);
    gs_budget_unplace(0, 8 * MiB, 8 * MiB);
    assert_int_equal(gs_budget_place(0, 200 * MiB), 100 * MiB);
}

/* Pool mode with GPUSHIM_ON_OOM=managed: what does not fit in the pool's maximum is spilled, and
 * spilled blocks are reused like any other: no managed allocation per round, no device chunk
 * given back and taken again, few synchronizations. */
static void spilled_blocks_are_reused_without_thrashing(void **state)
{
    (void)state;
    start(GS_MODE_POOL, 1ull << 30);
    gs_opts.on_oom = GS_ON_OOM_MANAGED;
    gs_opts.pool_max = (gs_size_spec_t){.bytes = 16 * MiB};
    fake.sync_ns = 200000; /* a busy GPU: synchronizations are slow, the shim backs off */
    fake.events = true;    /* and events mark when the work before a free is done */
    for (int round = 0; round < 50; round++) {
        CUdeviceptr a, b, c;
        assert_int_equal(gs_mem_alloc(&a, 12 * MiB), CUDA_SUCCESS);
        assert_int_equal(gs_mem_alloc(&b, 12 * MiB), CUDA_SUCCESS);
        assert_int_equal(gs_mem_alloc(&c, 1 * MiB), CUDA_SUCCESS);
        gs_work_enqueued();
        assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
        assert_int_equal(gs_mem_free(c), CUDA_SUCCESS);
        if (round % 5 == 4)
            assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    }
    assert_true(fake.used <= 16 * MiB);
    assert_true(fake.managed_allocs >= 1 && fake.managed_allocs <= 3);
    const char *text = report_text();
    /* The program's 10, and few of the shim's: after a slow one it backs off, 1 ms doubling, so a
     * loaded machine (valgrind) sees a few more; spilling that thrashed made one a round (40). */
    if (fake.syncs - 10 > 15)
        print_message("synchronizations: %d\n", fake.syncs);
    assert_true(fake.syncs - 10 <= 15);
    assert_non_null(strstr(text, " 0 chunks given back"));
    assert_non_null(strstr(text, "spilled to managed memory: "));
    assert_non_null(strstr(text, "on the device, "));
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.failures, 0);
}

/* Sizes within 511 bytes of 2^64, or whose pitch times height wraps, are CUDA's out-of-memory
 * error in pool and managed mode, as the driver's, and counted; nothing wraps to a small block. */
static void huge_sizes_are_out_of_memory(void **state)
{
    (void)state;
    static const gs_mode_t modes[] = {GS_MODE_POOL, GS_MODE_MANAGED};
    for (int m = 0; m < 2; m++) {
        start(modes[m], 1ull << 30);
        CUdeviceptr p = 0;
        size_t pitch = 0;
        for (uint64_t less = 0; less < 600; less += 37)
            assert_int_equal(gs_mem_alloc(&p, SIZE_MAX - less), CUDA_ERROR_OUT_OF_MEMORY);
        assert_int_equal(gs_mem_alloc(&p, (1ull << 62) + 1), CUDA_ERROR_OUT_OF_MEMORY);
        assert_int_equal(gs_mem_alloc_pitch(&p, &pitch, SIZE_MAX, 2, 4), CUDA_ERROR_OUT_OF_MEMORY);
        assert_int_equal(gs_mem_alloc_pitch(&p, &pitch, 1ull << 33, 1ull << 33, 4),
                         CUDA_ERROR_OUT_OF_MEMORY);
        assert_int_equal(gs_mem_alloc_async(&p, SIZE_MAX - 1, NULL, false), /* pool: the driver's */
                         CUDA_ERROR_OUT_OF_MEMORY);
        gs_device_stats_t s;
        gs_stats_snapshot(0, &s);
        assert_int_equal(s.allocations, 0);
        assert_int_equal(s.failures, 21);
        assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS); /* the pool still works */
        assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(managed_blocks_are_reused, managed),
        cmocka_unit_test_setup(managed_reuse_waits_for_the_work_before_the_free, managed),
        cmocka_unit_test_setup(managed_mode_pools_async_and_global_managed, managed),
        cmocka_unit_test_setup(the_managed_cap_counts_kept_blocks_and_gives_them_back, managed),
        cmocka_unit_test_setup(the_device_limit_places_managed_memory_past_it_in_host_memory,
                               managed),
        cmocka_unit_test_setup(the_device_limit_refuses_past_it_in_off_mode, managed),
        cmocka_unit_test_setup(the_device_limit_bounds_the_pool, managed),
        cmocka_unit_test_setup(budget_charges_never_wrap, managed),
        cmocka_unit_test_setup(spilled_blocks_are_reused_without_thrashing, managed),
        cmocka_unit_test_setup(huge_sizes_are_out_of_memory, managed),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    gs_pool_destroy();
    return failed;
}

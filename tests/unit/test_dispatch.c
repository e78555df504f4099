/* test_dispatch.c: the core's accounting around a backend, against a fake upstream driver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "fake_upstream.h"

static int setup(void **state)
{
    (void)state;
    fake_upstream_install(1ull << 30);
    gs_options_defaults(&gs_opts);
    gs_stats_reset();
    gs_ptrmap_clear();
    gs_dispatch_use(&gs_backend_passthrough);
    return 0;
}

static void passthrough_counts_and_forwards(void **state)
{
    (void)state;
    CUdeviceptr a, b;
    assert_int_equal(gs_mem_alloc(&a, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc(&b, 8192), CUDA_SUCCESS);
    assert_int_equal(fake.allocs, 2);
    assert_int_equal(gs_mem_free(a), CUDA_SUCCESS);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.allocations, 2);
    assert_int_equal(s.frees, 1);
    assert_int_equal(s.in_use, 8192);
    assert_int_equal(s.peak, 12288);
    assert_int_equal(s.driver_calls, 3);
    assert_int_equal(s.timed_calls, 3);
    assert_int_equal(gs_mem_free(b), CUDA_SUCCESS);
}

static void driver_errors_pass_unchanged_and_count_as_failures(void **state)
{
    (void)state;
    CUdeviceptr p;
    fake.fail_next_allocs = 1;
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(gs_mem_alloc(&p, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(gs_mem_alloc(NULL, 64), CUDA_ERROR_INVALID_VALUE); /* the driver's answer */
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.failures, 2);
    assert_int_equal(s.allocations, 0);
    assert_int_equal(fake.allocs, 3);
}

static void foreign_and_double_frees_go_to_the_driver(void **state)
{
    (void)state;
    CUdeviceptr p;
    assert_int_equal(gs_mem_free(0), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(0x1234000), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_ERROR_INVALID_VALUE);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.frees, 1);
    assert_int_equal(s.foreign_frees, 2);
    assert_int_equal(fake.frees, 4); /* 0, foreign, real, double */
}

static void nested_calls_go_straight_to_the_driver(void **state)
{
    (void)state;
    CUdeviceptr p;
    gs_depth = 1;
    assert_int_equal(gs_mem_alloc(&p, 4096), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    gs_depth = 0;
    assert_false(gs_stats_active());
    assert_int_equal(fake.allocs, 1);
    assert_int_equal(fake.frees, 1);
}

static void pitch_managed_and_async_are_counted(void **state)
{
    (void)state;
    CUdeviceptr p, m, a;
    size_t pitch;
    assert_int_equal(gs_mem_alloc_pitch(&p, &pitch, 1000, 4, 4), CUDA_SUCCESS);
    assert_int_equal(pitch, 1024);
    assert_int_equal(gs_mem_alloc_managed(&m, 512, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    assert_int_equal(gs_mem_alloc_async(&a, 256, NULL, true), CUDA_SUCCESS);
    assert_int_equal(fake.async_allocs, 1);
    gs_device_stats_t s;
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.bytes_requested, 4096 + 512 + 256);
    assert_int_equal(gs_mem_free_async(a, NULL, false), CUDA_SUCCESS);
    assert_int_equal(fake.async_frees, 1);
    assert_int_equal(gs_mem_free(m), CUDA_SUCCESS);
    assert_int_equal(gs_mem_free(p), CUDA_SUCCESS);
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.in_use, 0);
}

static int before_calls, after_calls;
static uint64_t after_token;
static uint64_t before_hook(int device)
{
    (void)device;
    before_calls++;
    return 77;
}
static void after_hook(int device, uint64_t token)
{
    (void)device;
    after_calls++;
    after_token = token;
}

static void synchronization_reaches_the_backend_hooks(void **state)
{
    (void)state;
    gs_backend_t hooked = gs_backend_passthrough;
    hooked.before_sync = before_hook;
    hooked.after_sync = after_hook;
    gs_dispatch_use(&hooked);
    assert_int_equal(gs_ctx_synchronize(), CUDA_SUCCESS);
    assert_int_equal(fake.syncs, 1);
    assert_int_equal(before_calls, 1);
    assert_int_equal(after_calls, 1);
    assert_int_equal(after_token, 77);
    gs_dispatch_use(&gs_backend_passthrough);
}

static void report_lists_each_active_device(void **state)
{
    (void)state;
    CUdeviceptr p, q;
    fake.devices = 3;
    assert_int_equal(gs_mem_alloc(&p, 3 << 20), CUDA_SUCCESS);
    fake.device = 2;
    assert_int_equal(gs_mem_alloc(&q, 1536), CUDA_SUCCESS);
    gs_buf_t *buf = calloc(1, sizeof *buf);
    gs_report_render(buf);
    assert_non_null(strstr(buf->data, "mode off\n"));
    assert_non_null(strstr(buf->data, "device 0: 1 allocations, 0 frees, 0 failed"));
    assert_non_null(strstr(buf->data, "device 0: requested 3 MiB in total; in use: peak 3 MiB, at exit 3 MiB in 1 live allocations"));
    assert_non_null(strstr(buf->data, "device 2: requested 1.5 KiB in total"));
    assert_null(strstr(buf->data, "device 1:"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(passthrough_counts_and_forwards, setup),
        cmocka_unit_test_setup(driver_errors_pass_unchanged_and_count_as_failures, setup),
        cmocka_unit_test_setup(foreign_and_double_frees_go_to_the_driver, setup),
        cmocka_unit_test_setup(nested_calls_go_straight_to_the_driver, setup),
        cmocka_unit_test_setup(pitch_managed_and_async_are_counted, setup),
        cmocka_unit_test_setup(synchronization_reaches_the_backend_hooks, setup),
        cmocka_unit_test_setup(report_lists_each_active_device, setup),
    };
    return cmocka_run_group_tests_name("dispatch", tests, NULL, NULL);
}

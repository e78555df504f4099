/* test_stats.c: per-thread counters summed per device; in-use and peak. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>

#include "gs.h"

static int reset(void **state)
{
    (void)state;
    gs_stats_reset();
    return 0;
}

static void counts_bytes_peak_and_live(void **state)
{
    (void)state;
    gs_device_stats_t s;
    assert_false(gs_stats_active());
    gs_stats_alloc(0, 1000);
    gs_stats_alloc(0, 3000);
    gs_stats_free(0, 1000);
    gs_stats_alloc(0, 500);
    gs_stats_alloc_failed(0);
    gs_stats_foreign_free(0);
    gs_stats_driver_call(0);
    gs_stats_time(0, 42);
    assert_true(gs_stats_active());
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.allocations, 3);
    assert_int_equal(s.frees, 1);
    assert_int_equal(s.failures, 1);
    assert_int_equal(s.foreign_frees, 1);
    assert_int_equal(s.bytes_requested, 4500);
    assert_int_equal(s.in_use, 3500);
    assert_int_equal(s.peak, 4000);
    assert_int_equal(s.driver_calls, 1);
    assert_int_equal(s.timed_calls, 1);
    assert_int_equal(s.shim_ticks, 42);
    gs_stats_snapshot(1, &s);
    assert_int_equal(s.allocations, 0);
}

static void devices_are_apart_and_out_of_range_goes_to_zero(void **state)
{
    (void)state;
    gs_device_stats_t s;
    gs_stats_alloc(3, 64);
    gs_stats_alloc(GS_MAX_DEVICES + 5, 8);
    gs_stats_snapshot(3, &s);
    assert_int_equal(s.bytes_requested, 64);
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.bytes_requested, 8);
}

/* A large single-thread peak crosses the fold threshold several times: still exact. */
static void peak_is_exact_for_one_thread(void **state)
{
    (void)state;
    gs_device_stats_t s;
    for (int i = 0; i < 10; i++)
        gs_stats_alloc(0, 7u << 20);
    for (int i = 0; i < 10; i++)
        gs_stats_free(0, 7u << 20);
    gs_stats_alloc(0, 1u << 20);
    gs_stats_snapshot(0, &s);
    assert_int_equal(s.peak, 70ll << 20);
    assert_int_equal(s.in_use, 1ll << 20);
}

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 10000; i++) {
        gs_stats_alloc(2, 256);
        gs_stats_free(2, 256);
    }
    gs_stats_alloc(2, 1024); /* left live */
    return NULL;
}

/* Threads that ended keep their counts; their shards are reused by new threads. */
static void threads_sum_exactly(void **state)
{
    (void)state;
    for (int round = 0; round < 2; round++) {
        pthread_t t[8];
        for (int i = 0; i < 8; i++)
            pthread_create(&t[i], NULL, worker, NULL);
        for (int i = 0; i < 8; i++)
            pthread_join(t[i], NULL);
    }
    gs_device_stats_t s;
    gs_stats_snapshot(2, &s);
    assert_int_equal(s.allocations, 16 * 10001);
    assert_int_equal(s.frees, 16 * 10000);
    assert_int_equal(s.in_use, 16 * 1024);
    assert_true(s.peak >= 16 * 1024);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(counts_bytes_peak_and_live, reset),
        cmocka_unit_test_setup(devices_are_apart_and_out_of_range_goes_to_zero, reset),
        cmocka_unit_test_setup(peak_is_exact_for_one_thread, reset),
        cmocka_unit_test_setup(threads_sum_exactly, reset),
    };
    return cmocka_run_group_tests_name("stats", tests, NULL, NULL);
}

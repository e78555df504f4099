/* test_ptrmap.c: the live-block map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>

#include "gs.h"

static void insert_find_remove(void **state)
{
    (void)state;
    gs_ptrmap_clear();
    gs_block_t b = {.base = 0x10000, .bytes = 4096, .device = 1, .kind = GS_KIND_MANAGED}, out;
    assert_int_equal(gs_ptrmap_insert(&b), 0);
    assert_int_equal(gs_ptrmap_insert(&b), -EEXIST);
    assert_int_equal(gs_ptrmap_find(0x10000, &out), 0);
    assert_int_equal(out.bytes, 4096);
    assert_int_equal(out.device, 1);
    assert_int_equal(gs_ptrmap_find(0x10100, &out), -ENOENT); /* interior: not a base */
    assert_int_equal(gs_ptrmap_find(0, &out), -ENOENT);
    assert_int_equal(gs_ptrmap_remove(0x10000, &out), 0);
    assert_int_equal(gs_ptrmap_remove(0x10000, &out), -ENOENT);
    assert_int_equal(gs_ptrmap_count(), 0);
}

/* Many entries, removed in a scrambled order: every survivor stays findable (backward shift). */
static void many_entries_survive_growth_and_removal(void **state)
{
    (void)state;
    gs_ptrmap_clear();
    enum { N = 20000 };
    for (uint64_t i = 1; i <= N; i++) {
        gs_block_t b = {.base = i * 512, .bytes = i};
        assert_int_equal(gs_ptrmap_insert(&b), 0);
    }
    assert_int_equal(gs_ptrmap_count(), N);
    for (uint64_t i = 1; i <= N; i += 3)
        assert_int_equal(gs_ptrmap_remove(((i * 7919) % N + 1) * 512, NULL), 0);
    size_t left = 0;
    for (uint64_t i = 1; i <= N; i++) {
        gs_block_t out;
        if (gs_ptrmap_find(i * 512, &out) == 0) {
            assert_int_equal(out.bytes, i);
            left++;
        }
    }
    assert_int_equal(left, gs_ptrmap_count());
    assert_int_equal(left, N - (N + 2) / 3);
    gs_ptrmap_clear();
}

static void count_dropped(void *ctx, const gs_block_t *block)
{
    uint64_t *seen = ctx;
    assert_int_equal(block->device, 1);
    seen[block->base / 512]++;
}

/* A device's context reset drops its entries, each seen once; other devices' stay findable. */
static void dropping_a_device_keeps_the_others(void **state)
{
    (void)state;
    gs_ptrmap_clear();
    enum { N = 20000 };
    static uint64_t seen[N + 1];
    for (uint64_t i = 1; i <= N; i++) {
        gs_block_t b = {.base = i * 512, .bytes = i, .device = i % 3 == 0 ? 1 : 0};
        assert_int_equal(gs_ptrmap_insert(&b), 0);
    }
    gs_ptrmap_drop_device(1, count_dropped, seen);
    for (uint64_t i = 1; i <= N; i++) {
        assert_int_equal(seen[i], i % 3 == 0 ? 1 : 0);
        assert_int_equal(gs_ptrmap_find(i * 512, NULL), i % 3 == 0 ? -ENOENT : 0);
    }
    assert_int_equal(gs_ptrmap_count(), N - N / 3);
    gs_ptrmap_clear();
}

/* The driver handed out an address the map still lists: the old entry (whose context was
 * destroyed) gives way and comes back to the caller. */
static void a_fresh_block_replaces_a_stale_entry(void **state)
{
    (void)state;
    gs_ptrmap_clear();
    gs_block_t old = {.base = 0x20000, .bytes = 100}, fresh = {.base = 0x20000, .bytes = 200},
               other = {.base = 0x30000, .bytes = 300}, stale, out;
    assert_int_equal(gs_ptrmap_insert(&old), 0);
    assert_int_equal(gs_ptrmap_insert_fresh(&other, &stale), 0);
    assert_int_equal(stale.base, 0);
    assert_int_equal(gs_ptrmap_insert_fresh(&fresh, &stale), 0);
    assert_int_equal(stale.base, 0x20000);
    assert_int_equal(stale.bytes, 100);
    assert_int_equal(gs_ptrmap_find(0x20000, &out), 0);
    assert_int_equal(out.bytes, 200);
    assert_int_equal(gs_ptrmap_count(), 2);
    gs_ptrmap_clear();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(insert_find_remove),
        cmocka_unit_test(many_entries_survive_growth_and_removal),
        cmocka_unit_test(dropping_a_device_keeps_the_others),
        cmocka_unit_test(a_fresh_block_replaces_a_stale_entry),
    };
    return cmocka_run_group_tests_name("ptrmap", tests, NULL, NULL);
}

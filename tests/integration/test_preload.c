/* test_preload.c: the shim preloaded into real programs that use the fake driver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ARGV(...) ((const char *const[]){__VA_ARGS__, NULL})

static void show(const run_result_t *r)
{
    print_message("--- status %d\n--- stdout\n%s--- stderr\n%s---\n", r->status, r->out, r->err);
}

#define EXPECT_STATUS(r, want)                                                                     \
    do {                                                                                           \
        if ((r).status != (want))                                                                  \
            show(&(r));                                                                            \
        assert_int_equal((r).status, (want));                                                      \
    } while (0)

#define EXPECT_IN(r, text, needle)                                                                 \
    do {                                                                                           \
        if (strstr((r).text, (needle)) == NULL) {                                                  \
            print_message("expected in " #text ": %s\n", (needle));                               \
            show(&(r));                                                                            \
        }                                                                                          \
        assert_non_null(strstr((r).text, (needle)));                                               \
    } while (0)

static void runtime_like_counts_every_allocation(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("FAKECUDA_STATS=stderr"), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "10"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok basic 10");
    assert_int_equal(count_of(r.err, "gpushim: report for pid"), 1);
    EXPECT_IN(r, err, "device 0: 10 allocations, 10 frees, 0 failed, 0 frees of pointers not allocated");
    /* 4 KiB * (1 + ... + 10) */
    EXPECT_IN(r, err, "requested 220 KiB in total; in use: peak 220 KiB, at exit 0 B in 0 live");
    EXPECT_IN(r, err, "device 0: 20 calls reached the driver");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAlloc_v2 10\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemFree_v2 10\n");
    assert_true(number_after(r.err, "time in the shim ") >= 0);
    run_free(&r);
}

/* bench/floor.c, preloaded instead of the shim, answers the runtime's cuMemAlloc/cuMemFree
 * itself: one block from the driver, then nothing reaches it (GPU benchmarks take it for the
 * CUDA runtime's own share of a pair, so it must never fall through to the driver). */
static void the_benchmark_floor_takes_the_shims_place(void **state)
{
    (void)state;
    char library_path[4096], preload[4096];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s", path_of("GS_FLOOR"));
    run_result_t r = run_env(ENV(library_path, preload, "FAKECUDA_STATS=stderr"),
                             ARGV(path_of("GS_RUNTIME_LIKE"), "pairs", "50", "4096"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok pairs: 4096 B");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAlloc_v2 1\n"); /* 1000 pairs, one driver block */
    assert_null(strstr(r.err, "cuMemFree_v2"));
    assert_null(strstr(r.err, "gpushim"));
    run_free(&r);
}

static void without_the_shim_there_is_no_report(void **state)
{
    (void)state;
    char library_path[4096];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    run_result_t r = run_env(ENV(library_path), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "3"));
    EXPECT_STATUS(r, 0);
    assert_null(strstr(r.err, "gpushim"));
    run_free(&r);
}

static void directly_linked_program_is_counted(void **state)
{
    (void)state;
    run_result_t r = run_shim(NULL, ARGV(path_of("GS_DIRECT_LINK"), "7"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok direct 7");
    EXPECT_IN(r, err, "device 0: 7 allocations, 7 frees, 0 failed");
    EXPECT_IN(r, err, "requested 448 KiB in total; in use: peak 64 KiB, at exit 0 B");
    run_free(&r);
}

/* Same program, with and without the shim: the same error codes, call for call. */
static void error_codes_are_the_drivers(void **state)
{
    (void)state;
    char library_path[4096];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    run_result_t plain = run_env(ENV(library_path), ARGV(path_of("GS_RUNTIME_LIKE"), "errors"));
    run_result_t shim = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "errors"));
    EXPECT_STATUS(plain, 0);
    EXPECT_STATUS(shim, 0);
    assert_string_equal(plain.out, shim.out);
    EXPECT_IN(shim, out, "free_zero 0\n");
    EXPECT_IN(shim, out, "free_unknown 1\n");
    EXPECT_IN(shim, out, "free_double 1\n");
    EXPECT_IN(shim, out, "alloc_zero 1\n");
    /* the zero-byte request failed; unknown and double free went to the driver */
    EXPECT_IN(shim, err, "device 0: 1 allocations, 1 frees, 1 failed, 2 frees of pointers not allocated");
    run_free(&plain);
    run_free(&shim);
}

static void out_of_memory_is_cudas_error_and_counted(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("FAKECUDA_FAIL=cuMemAlloc_v2:2"), ARGV(path_of("GS_RUNTIME_LIKE"), "oom", "3"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "alloc 1 0\nalloc 2 2\nalloc 3 0\n");
    EXPECT_IN(r, err, "device 0: 2 allocations, 2 frees, 1 failed");
    run_free(&r);
}

static void every_intercepted_entry_point_passes_through(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("FAKECUDA_STATS=stderr"), ARGV(path_of("GS_RUNTIME_LIKE"), "all"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok all pitch 1024");
    /* device, pitch (1024 * 10), managed, async, async per-thread, and the explicit pool's block
     * (passed through, counted) */
    EXPECT_IN(r, err, "device 0: 6 allocations, 6 frees, 0 failed, 0 frees of pointers not allocated");
    EXPECT_IN(r, err, "requested 1.0 MiB in total");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAllocAsync 1\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAllocAsync_ptsz 1\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemFreeAsync 2\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemFreeAsync_ptsz 1\n");
    EXPECT_IN(r, err, "fakecuda: calls cuCtxSynchronize 1\n");
    EXPECT_IN(r, err, "fakecuda: calls cuCtxSynchronize_v2 1\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAllocFromPoolAsync 1\n");
    run_free(&r);
}

static void lookups_land_in_the_shim_only_for_intercepted_names(void **state)
{
    (void)state;
    run_result_t r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "lookups"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "proc cuMemAlloc libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuMemFree libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuMemAllocAsync libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuMemAllocAsync/ptsz libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuGetProcAddress libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuCtxSynchronize libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuInit libcuda.so.1\n");
    EXPECT_IN(r, out, "proc cuMemAllocFromPoolAsync libgpushim.so\n");
    EXPECT_IN(r, out, "proc cuMemcpyHtoD libcuda.so.1\n");
    EXPECT_IN(r, out, "dlsym cuMemAlloc_v2 libgpushim.so\n");
    EXPECT_IN(r, out, "dlsym cuInit libcuda.so.1\n");
    EXPECT_IN(r, out, "dlsym missing null\n");
    EXPECT_IN(r, out, "proc missing rc 0 pfn null status 1\n");
    assert_null(strstr(r.err, "gpushim: report")); /* looked up, never allocated */
    run_free(&r);
}

/* Pool mode, safe reuse: while no GPU work is in flight a freed block is reusable at once; a
 * launch (looked up any way, even before the shim's constructor ran) makes the next free wait;
 * the launch's arguments arrive intact. GPUSHIM_POOL_IDLE_REUSE=off turns it off. */
static void an_idle_device_reuses_blocks_at_once(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "idle"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "idle reused 100 of 100; after a launch 0 of 3\n");
    /* The 100 idle frees, and two that followed a mark the pool recorded on its way to its free
     * lists (100 with GPUSHIM_POOL_EVENTS=off); how often it goes there depends on what the
     * thread cache holds. */
    EXPECT_IN(r, err, "pool reuse while no GPU work was in flight: on; 102 frees were reusable at "
                      "once (5 work-issuing driver functions watched)"); /* 2 launches, 3 copies */
    run_free(&r);
    /* A launch looked up by a library's constructor, before the shim's own has read the
     * options (the loader runs the program's libraries' constructors before preloaded ones). */
    r = run_shim(ENV("GPUSHIM_MODE=pool", "GS_EARLY_LOOKUP=1"),
                 ARGV(path_of("GS_RUNTIME_LIKE"), "idle"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "idle reused 100 of 100; after a launch 0 of 4\n");
    run_free(&r);
    r = run_shim(ENV("GPUSHIM_MODE=pool", "GPUSHIM_POOL_IDLE_REUSE=off"),
                 ARGV(path_of("GS_RUNTIME_LIKE"), "idle"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "after a launch 0 of 3\n");
    EXPECT_IN(r, err, "in flight: off, GPUSHIM_POOL_IDLE_REUSE=off; 0 frees");
    run_free(&r);
}

static void threads_are_counted_exactly(void **state)
{
    (void)state;
    run_result_t r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "threads", "8", "500"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, err, "device 0: 4000 allocations, 4000 frees, 0 failed");
    EXPECT_IN(r, err, "at exit 0 B in 0 live allocations");
    run_free(&r);
}

static void forked_child_prints_no_report(void **state)
{
    (void)state;
    run_result_t r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "fork"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "child-ran\n");
    EXPECT_IN(r, out, "ok fork\n");
    assert_int_equal(count_of(r.err, "gpushim: report for pid"), 1);
    EXPECT_IN(r, err, "device 0: 1 allocations, 1 frees, 0 failed");
    run_free(&r);

    r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "fork", "exec"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "child-exec-ran\n");
    assert_int_equal(count_of(r.err, "gpushim: report for pid"), 1);
    run_free(&r);
}

static void exit_from_a_thread_reports_once(void **state)
{
    (void)state;
    run_result_t r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "exit-thread"));
    EXPECT_STATUS(r, 0);
    assert_int_equal(count_of(r.err, "gpushim: report for pid"), 1);
    EXPECT_IN(r, err, "at exit 8 KiB in 1 live allocations");
    run_free(&r);
}

static void exit_from_a_library_reports_once(void **state)
{
    (void)state;
    run_result_t r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "exit-library"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "exiting from a library");
    assert_int_equal(count_of(r.err, "gpushim: report for pid"), 1);
    EXPECT_IN(r, err, "at exit 8 KiB in 1 live allocations");
    run_free(&r);
}

static void each_device_is_counted_apart(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("FAKECUDA_DEVICES=2"), ARGV(path_of("GS_RUNTIME_LIKE"), "devices"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, err, "device 0: 1 allocations, 1 frees, 0 failed");
    EXPECT_IN(r, err, "device 1: 1 allocations, 1 frees, 0 failed");
    EXPECT_IN(r, err, "device 1: requested 1 MiB in total");
    run_free(&r);
}

/* Bad input stops the program before main with one line naming variable, value, accepted. */
static void bad_variables_stop_the_program_at_start(void **state)
{
    (void)state;
    static const struct {
        const char *env;
        const char *message;
    } cases[] = {
        {"GPUSHIM_MODE=bogus", "gpushim: error: GPUSHIM_MODE=bogus is not valid; accepted: off, pool, managed\n"},
        {"GPUSHIM_MODEE=pool", "gpushim: error: GPUSHIM_MODEE is not a gpushim variable (did you mean GPUSHIM_MODE?)"},
        {"GPUSHIM_REPORT=stdrr", "gpushim: error: GPUSHIM_REPORT=stdrr is not valid; accepted: stderr, off, or a file path"},
        {"GPUSHIM_REPORT=/no/such/folder/r.txt", "gpushim: error: GPUSHIM_REPORT=/no/such/folder/r.txt: the folder does not exist"},
        {"GPUSHIM_POOL_MAX=12Q", "gpushim: error: GPUSHIM_POOL_MAX=12Q is not valid; accepted: bytes (digits, an optional fraction) with K/M/G/T"},
        {"GPUSHIM_REPORT=/tmp/", "gpushim: error: GPUSHIM_REPORT=/tmp/: names a folder, not a file"},
        {"GPUSHIM_TRACE=/dev/null", "gpushim: error: GPUSHIM_TRACE=/dev/null: exists and is not a regular file"},
        {"GPUSHIM_REPORT=/no/such\nfolder/r.txt", "gpushim: error: GPUSHIM_REPORT=/no/such\\x0afolder/r.txt: the folder does not exist"},
        {"GPUSHIM_POOL_INITIAL=150%", "gpushim: error: GPUSHIM_POOL_INITIAL=150% is not valid"},
        {"GPUSHIM_POOL_REUSE=sometimes", "gpushim: error: GPUSHIM_POOL_REUSE=sometimes is not valid; accepted: safe, immediate\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_result_t r = run_shim(ENV(cases[i].env), ARGV(path_of("GS_NO_CUDA")));
        EXPECT_STATUS(r, 1);
        EXPECT_IN(r, err, cases[i].message);
        assert_int_equal(count_of(r.err, "\n"), 1); /* one line */
        assert_string_equal(r.out, "");            /* main never ran */
        run_free(&r);
    }
}

static void report_goes_to_a_file_named_by_pid(void **state)
{
    (void)state;
    char dir[] = "/tmp/gpushim-report-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char env[256], pattern[256];
    snprintf(env, sizeof env, "GPUSHIM_REPORT=%s/report-%%p.txt", dir);
    run_result_t r = run_shim(ENV(env), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "2"));
    EXPECT_STATUS(r, 0);
    assert_null(strstr(r.err, "gpushim"));
    snprintf(pattern, sizeof pattern, "ls %s", dir);
    FILE *ls = popen(pattern, "r");
    char name[256] = "";
    assert_non_null(fgets(name, sizeof name, ls));
    pclose(ls);
    assert_non_null(strstr(name, "report-"));
    long pid = strtol(name + strlen("report-"), NULL, 10);
    assert_true(pid > 1);
    char path[512];
    snprintf(path, sizeof path, "%s/report-%ld.txt", dir, pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char text[4096] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    assert_non_null(strstr(text, "device 0: 2 allocations, 2 frees"));
    unlink(path);
    rmdir(dir);
    run_free(&r);
}

static void report_off_prints_nothing(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_REPORT=off"), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "2"));
    EXPECT_STATUS(r, 0);
    assert_string_equal(r.err, "");
    run_free(&r);
}

static void unused_shim_is_invisible(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=off"), ARGV(path_of("GS_NO_CUDA")));
    EXPECT_STATUS(r, 0);
    assert_string_equal(r.out, "ok no-cuda\n"); /* libcuda was not loaded */
    assert_string_equal(r.err, "");
    run_free(&r);

    r = run_shim(NULL, ARGV("/bin/sh", "-c", "echo shell-ran"));
    EXPECT_STATUS(r, 0);
    assert_string_equal(r.out, "shell-ran\n");
    assert_string_equal(r.err, "");
    run_free(&r);

    /* Loading the driver and looking things up is not allocating: no report. */
    r = run_shim(NULL, ARGV(path_of("GS_RUNTIME_LIKE"), "load-only"));
    EXPECT_STATUS(r, 0);
    assert_string_equal(r.err, "");
    run_free(&r);
}

static void rtld_next_of_other_preload_libraries_still_works(void **state)
{
    (void)state;
    char preload[4096];
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s %s", path_of("GS_SHIM"), path_of("GS_NEXT_LIB"));
    run_result_t r = run_env(ENV(preload), ARGV(path_of("GS_NEXT_USER")));
    EXPECT_STATUS(r, 0);
    assert_string_equal(r.out, "ok next value\n");
    run_free(&r);
}

/* Pool mode serves the same programs with the same results and far fewer driver calls. */
static void pool_mode_serves_the_same_programs(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_STATS=stderr"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "50"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok basic 50");
    EXPECT_IN(r, err, "mode pool\n");
    EXPECT_IN(r, err, "device 0: 50 allocations, 50 frees, 0 failed");
    EXPECT_IN(r, err, "device 0: pool reserved ");
    assert_true(number_after(r.err, "fakecuda: calls cuMemAlloc_v2 ") < 10);
    assert_true(strstr(r.err, "fakecuda: calls cuMemFree_v2") == NULL); /* nothing freed at exit */
    run_free(&r);

    static const char *const scenarios[][3] = {{"all", NULL, NULL}, {"threads", "8", "300"},
                                               {"devices", NULL, NULL}, {"fork", NULL, NULL}};
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_DEVICES=2"),
                     ARGV(path_of("GS_RUNTIME_LIKE"), scenarios[i][0], scenarios[i][1], scenarios[i][2]));
        EXPECT_STATUS(r, 0);
        assert_int_equal(count_of(r.err, "gpushim: report for pid"), 1);
        EXPECT_IN(r, err, "0 B in 0 live allocations");
        run_free(&r);
    }

    char library_path[4096];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    run_result_t plain = run_env(ENV(library_path), ARGV(path_of("GS_RUNTIME_LIKE"), "errors"));
    r = run_shim(ENV("GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "errors"));
    EXPECT_STATUS(r, 0);
    assert_string_equal(plain.out, r.out);
    run_free(&plain);
    run_free(&r);
}

/* Where the driver maps memory (the fake's FAKECUDA_VMM=1), blocks of 256 KiB and more come from
 * one range that grows in place: the programs run as they do in chunks, their data intact in
 * blocks that span two mappings, and the report says so. A refused mapping falls back to
 * chunks, and a program that resets the device runs as before (the unit tests check that the
 * reset unmaps the range). */
static void pool_grows_in_place_where_the_driver_maps(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_VMM=1", "FAKECUDA_STATS=stderr"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "100"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok basic 100");
    EXPECT_IN(r, err, "device 0: 100 allocations, 100 frees, 0 failed");
    EXPECT_IN(r, err, "pool growth in place (blocks of 256 KiB and more): on; ");
    assert_true(number_after(r.err, "fakecuda: calls cuMemMap ") >= 2);
    assert_true(strstr(r.err, "fakecuda: calls cuMemUnmap") == NULL); /* nothing given back */
    run_free(&r);

    static const char *const scenarios[][3] = {
        {"all", NULL, NULL}, {"threads", "8", "300"}, {"devices", NULL, NULL}, {"fork", NULL, NULL}};
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_VMM=1", "FAKECUDA_DEVICES=2"),
                     ARGV(path_of("GS_RUNTIME_LIKE"), scenarios[i][0], scenarios[i][1], scenarios[i][2]));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, err, "0 B in 0 live allocations");
        run_free(&r);
    }

    r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_VMM=1", "FAKECUDA_FAIL=cuMemMap:1=801"),
                 ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "100"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok basic 100");
    EXPECT_IN(r, err, "off, the driver refused to map memory; 0 B mapped");
    run_free(&r);

    static const char *const ways[] = {"reset", "release"};
    for (size_t w = 0; w < 2; w++) {
        r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_VMM=1", "GPUSHIM_POOL_REUSE=immediate"),
                     ARGV(path_of("GS_RUNTIME_LIKE"), "reset", ways[w]));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "ok reset\n");
        run_free(&r);
    }
}

/* The pool's retries exhausted: CUDA's out-of-memory error, counted, and the program goes on. */
static void pool_out_of_memory_is_cudas_error(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_FAIL=cuMemAlloc_v2:1+"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "oom", "2"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "alloc 1 2\nalloc 2 2\n");
    EXPECT_IN(r, err, "device 0: 0 allocations, 0 frees, 2 failed");
    run_free(&r);
}

/* More than the (fake) device holds: managed mode serves it, as managed memory, prefetched. */
static void managed_mode_oversubscribes_the_device(void **state)
{
    (void)state;
    run_result_t off = run_shim(ENV("FAKECUDA_MEMORY=67108864"), ARGV(path_of("GS_RUNTIME_LIKE"), "managed", "8"));
    EXPECT_STATUS(off, 0);
    EXPECT_IN(off, out, "alloc 4 rc 0 managed 0\nalloc 5 rc 2 managed -1\n");
    run_free(&off);

    run_result_t r = run_shim(ENV("FAKECUDA_MEMORY=67108864", "GPUSHIM_MODE=managed", "FAKECUDA_STATS=stderr"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "managed", "8"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "alloc 8 rc 0 managed 1\n");
    assert_int_equal(count_of(r.out, "managed 1\n"), 8);
    EXPECT_IN(r, out, "ipc rc 1\n"); /* CUDA refuses IPC of managed memory ... */
    EXPECT_IN(r, err, "gpushim: warning: cuIpcGetMemHandle failed (error 1): CUDA IPC cannot share managed memory");
    EXPECT_IN(r, err, "mode managed\n");
    EXPECT_IN(r, err, "device 0: 8 allocations, 8 frees, 0 failed");
    EXPECT_IN(r, err, "device 0: managed memory: the pool's chunks are managed memory; 8 prefetches; cap none");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAllocManaged 8\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemPrefetchAsync_v2 8\n");
    assert_null(strstr(r.err, "fakecuda: calls cuMemAlloc_v2"));
    run_free(&r);
}

/* Managed mode asks XLA (JAX, TensorFlow) for managed memory; what the user set stays; other
 * modes leave the environment alone. */
static void managed_mode_asks_xla_for_managed_memory(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=managed"), ARGV("/usr/bin/env"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "\nTF_FORCE_UNIFIED_MEMORY=1\n");
    EXPECT_IN(r, out, "\nXLA_PYTHON_CLIENT_PREALLOCATE=false\n");
    run_free(&r);
    r = run_shim(ENV("GPUSHIM_MODE=managed", "XLA_PYTHON_CLIENT_PREALLOCATE=true"), ARGV("/usr/bin/env"));
    EXPECT_IN(r, out, "\nXLA_PYTHON_CLIENT_PREALLOCATE=true\n");
    assert_null(strstr(r.out, "XLA_PYTHON_CLIENT_PREALLOCATE=false"));
    run_free(&r);
    r = run_shim(ENV("GPUSHIM_MODE=pool"), ARGV("/usr/bin/env"));
    EXPECT_STATUS(r, 0);
    assert_null(strstr(r.out, "TF_FORCE_UNIFIED_MEMORY"));
    assert_null(strstr(r.out, "XLA_PYTHON_CLIENT_PREALLOCATE"));
    run_free(&r);
}

/* Safe reuse by events: on with blocking streams and with the non-blocking ones the shim marks
 * (created by cuStreamCreate or cuStreamCreateWithPriority, resolved the runtime's way); off
 * past 16 non-blocking streams, and with GPUSHIM_POOL_EVENTS=off. */
static void pool_events_follow_the_streams_the_program_makes(void **state)
{
    (void)state;
    static const struct {
        const char *stream, *events_option, *expected;
    } cases[] = {
        {"blocking", NULL, "reuse by events: on; "},
        {"nonblocking", NULL, "reuse by events: on; "},
        {"priority", NULL, "reuse by events: on; "},
        {"many", NULL, "off, the program created a non-blocking stream the shim cannot mark"},
        {"blocking", "GPUSHIM_POOL_EVENTS=off", "off, GPUSHIM_POOL_EVENTS=off; 0 events"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_result_t r =
            run_shim(cases[i].events_option
                         ? ENV("GPUSHIM_MODE=pool", "FAKECUDA_STATS=stderr", cases[i].events_option)
                         : ENV("GPUSHIM_MODE=pool", "FAKECUDA_STATS=stderr"),
                     ARGV(path_of("GS_RUNTIME_LIKE"), "streams", cases[i].stream, "20"));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "ok streams\n");
        EXPECT_IN(r, err, cases[i].expected);
        run_free(&r);
    }
}

/* cudaDeviceReset (or the last release of the primary context) frees every allocation: in every
 * mode the program then gets memory the driver gave after it (the fake refuses writes to freed
 * memory), a free of an old pointer gets the driver's error, and the report says what the reset
 * released. */
static const char *const every_mode[] = {"GPUSHIM_MODE=off", "GPUSHIM_MODE=pool",
                                         "GPUSHIM_MODE=managed"};

static void a_device_reset_leaves_no_stale_memory(void **state)
{
    (void)state;
    static const char *const ways[] = {"reset", "release"};
    for (size_t m = 0; m < 3; m++)
        for (size_t w = 0; w < 2; w++) {
            run_result_t r = run_shim(ENV(every_mode[m], "GPUSHIM_POOL_REUSE=immediate"),
                                      ARGV(path_of("GS_RUNTIME_LIKE"), "reset", ways[w]));
            EXPECT_STATUS(r, 0);
            EXPECT_IN(r, out, "stale free rc 1\n"); /* CUDA_ERROR_INVALID_VALUE */
            EXPECT_IN(r, out, "ok reset\n");
            EXPECT_IN(r, err,
                      "the context holding its memory was reset or destroyed 1 times "
                      "(cudaDeviceReset, cuCtxDestroy); that released 1 allocations (4 KiB)");
            EXPECT_IN(r, err, "1 frees of pointers not allocated through the shim");
            run_free(&r);
        }
}

/* Buffer IDs, mappings and IPC capability describe the block: a reused address is a new buffer
 * (registration caches key by the ID), and legacy IPC, which the pool refuses for a block inside
 * a chunk, says it cannot share it. Without the shim, the fake driver's own answers. */
static void pointer_attributes_describe_the_block(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "GPUSHIM_POOL_REUSE=immediate"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "attributes"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "same address yes; buffer ids differ; mapping base ok, size 4096; legacy ipc "
                      "0\n");
    run_free(&r);
    r = run_shim(ENV("GPUSHIM_MODE=off"), ARGV(path_of("GS_RUNTIME_LIKE"), "attributes"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "buffer ids differ; mapping base ok, size 4096; legacy ipc 1\n");
    run_free(&r);
}

/* A context the program made and destroyed: in pool mode its chunks are forgotten with it, so
 * the next context gets fresh memory (the fake refuses writes to the old). */
static void a_destroyed_context_leaves_no_stale_memory(void **state)
{
    (void)state;
    for (size_t m = 0; m < 3; m++) {
        run_result_t r = run_shim(ENV(every_mode[m], "GPUSHIM_POOL_REUSE=immediate"),
                                  ARGV(path_of("GS_RUNTIME_LIKE"), "context"));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "ok context\n");
        run_free(&r);
    }
}

/* CUDA graphs: while a stream captures, the shim makes no synchronization, legacy-stream event,
 * cuMemFree or prefetch (the fake driver invalidates the capture on any of them, as a GPU does):
 * allocations during the capture leave it valid in every mode and with either kind of stream. */
static void allocations_during_stream_capture_leave_it_valid(void **state)
{
    (void)state;
    static const char *const streams[] = {"blocking", "nonblocking"};
    for (size_t m = 0; m < 3; m++)
        for (size_t k = 0; k < 2; k++) {
            run_result_t r = run_shim(ENV(every_mode[m], "FAKECUDA_EVENT_QUERIES=1000000"),
                                      ARGV(path_of("GS_RUNTIME_LIKE"), "capture", streams[k]));
            EXPECT_STATUS(r, 0);
            EXPECT_IN(r, out, "end capture rc 0\n");
            EXPECT_IN(r, out, "ok capture\n");
            run_free(&r);
        }
}

static void managed_cap_is_cudas_out_of_memory(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=managed", "GPUSHIM_MANAGED_LIMIT=100M",
                                  "GPUSHIM_MANAGED_PREFETCH=off", "GPUSHIM_MANAGED_ADVICE=preferred",
                                  "FAKECUDA_STATS=stderr"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "managed", "8"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "alloc 6 rc 0 managed 1\nalloc 7 rc 2 managed -1\nalloc 8 rc 2 managed -1\n");
    /* free memory as the cap allows: 100 MiB less the 96 MiB held */
    EXPECT_IN(r, out, "info total 104857600 free 4194304\n");
    EXPECT_IN(r, err, "device 0: 6 allocations, 6 frees, 2 failed");
    EXPECT_IN(r, err, "0 prefetches; cap 100 MiB, 2 allocations refused at the cap");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAdvise_v2 6\n");
    assert_null(strstr(r.err, "cuMemPrefetchAsync"));
    run_free(&r);
}

/* Managed mode serves stream-ordered allocations from its pool of managed memory: cuMemFreeAsync
 * keeps the block (reused once the work before the free is done, as any pool block: the unit
 * tests check when) and never waits, nor frees early. */
static void managed_stream_ordered_free_keeps_the_block(void **state)
{
    (void)state;
    static const char *const hows[] = {"nosync", "sync"};
    for (int i = 0; i < 2; i++) {
        run_result_t r = run_shim(ENV("GPUSHIM_MODE=managed", "FAKECUDA_EVENT_QUERIES=1000", "FAKECUDA_STATS=stderr"),
                                  ARGV(path_of("GS_RUNTIME_LIKE"), "managed-async", hows[i]));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "ok managed-async\n");
        EXPECT_IN(r, err, "device 0: 1 allocations, 1 frees, 0 failed");
        EXPECT_IN(r, err, "fakecuda: calls cuMemAllocManaged 1\n");
        assert_null(strstr(r.err, "fakecuda: calls cuMemFree_v2"));
        assert_null(strstr(r.err, "fakecuda: calls cuMemAllocAsync"));
        run_free(&r);
    }
}

/* Pool mode with GPUSHIM_ON_OOM=managed: the pool while memory lasts, managed memory after. */
static void pool_spills_to_managed_memory_on_demand(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "GPUSHIM_ON_OOM=managed", "FAKECUDA_MEMORY=67108864"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "managed", "8"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "alloc 1 rc 0 managed 0\n");
    EXPECT_IN(r, out, "alloc 8 rc 0 managed 1\n");
    EXPECT_IN(r, err, "device 0: 8 allocations, 8 frees, 0 failed");
    EXPECT_IN(r, err, "spilled to managed memory: ");
    long long spilled = number_after(r.err, "spilled to managed memory: ");
    assert_true(spilled >= 4 && spilled <= 5);
    run_free(&r);
}

/* Repeated temporaries: managed mode and pool + spill reuse their blocks, as the pool does; the
 * driver sees a handful of allocations for 160. */
static void temporaries_are_reused_in_managed_and_spill_modes(void **state)
{
    (void)state;
    static const struct {
        const char *mode, *extra, *calls;
    } cases[] = {
        {"GPUSHIM_MODE=managed", "GPUSHIM_POOL_REUSE=safe", "fakecuda: calls cuMemAllocManaged 4\n"},
        {"GPUSHIM_MODE=pool", "GPUSHIM_POOL_MAX=20M", "fakecuda: calls cuMemAllocManaged 1\n"},
    };
    for (size_t i = 0; i < 2; i++) {
        run_result_t r = run_shim(ENV(cases[i].mode, cases[i].extra, "GPUSHIM_ON_OOM=managed", "FAKECUDA_STATS=stderr"),
                                  ARGV(path_of("GS_RUNTIME_LIKE"), "temporaries", "40"));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "ok temporaries\n");
        EXPECT_IN(r, err, "device 0: 160 allocations, 160 frees, 0 failed");
        EXPECT_IN(r, err, cases[i].calls);
        EXPECT_IN(r, err, " 0 chunks given back");
        run_free(&r);
    }
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "GPUSHIM_POOL_MAX=20M", "GPUSHIM_ON_OOM=managed"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "temporaries", "40"));
    EXPECT_IN(r, err, "spilled to managed memory: ");
    EXPECT_IN(r, err, "12 MiB on the device, 26 MiB spilled");
    run_free(&r);
}

/* GPUSHIM_DEVICE_LIMIT through the test driver: refused past it in off and pool mode, placed in
 * host memory past it in managed mode (the driver's range attributes say so), and cuMemGetInfo
 * reports it as the total. */
static void the_device_limit_holds_in_every_mode(void **state)
{
    (void)state;
    for (size_t m = 0; m < 2; m++) {
        run_result_t r = run_shim(ENV(every_mode[m], "GPUSHIM_DEVICE_LIMIT=64M"), ARGV(path_of("GS_RUNTIME_LIKE"), "limit"));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "second rc 2; info total 67108864 free 16777216\n");
        EXPECT_IN(r, err, "device 0: 1 allocations, 1 frees, 1 failed");
        run_free(&r);
    }
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=managed", "GPUSHIM_DEVICE_LIMIT=64M"), ARGV(path_of("GS_RUNTIME_LIKE"), "limit"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "second rc 0; info total 67108864 free 0\n");
    EXPECT_IN(r, out, "past the limit: preferred -1 accessed by 0; within: preferred -2\n");
    EXPECT_IN(r, err, "32 MiB of managed memory placed in host memory");
    run_free(&r);
}

/* Pinned host memory: pool and managed mode reuse it (the flags stay the program's), off mode
 * passes every call through; the report counts both. */
static void pinned_host_memory_is_pooled_outside_off_mode(void **state)
{
    (void)state;
    run_result_t r = run_shim(ENV("GPUSHIM_MODE=pool", "FAKECUDA_STATS=stderr"), ARGV(path_of("GS_RUNTIME_LIKE"), "host", "100"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "host same yes\nok host\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemHostAlloc 1\n");
    EXPECT_IN(r, err, "fakecuda: calls cuMemAllocHost_v2 1\n");
    EXPECT_IN(r, err, "pinned host memory (pool on): 200 allocations (198 reused), 200 frees");
    assert_null(strstr(r.err, "fakecuda: calls cuMemFreeHost"));
    run_free(&r);
    static const char *const off[][2] = {{"GPUSHIM_MODE=off", "GPUSHIM_HOST_POOL=auto"},
                                         {"GPUSHIM_MODE=pool", "GPUSHIM_HOST_POOL=off"}};
    for (size_t i = 0; i < 2; i++) {
        r = run_shim(ENV(off[i][0], off[i][1], "FAKECUDA_STATS=stderr"), ARGV(path_of("GS_RUNTIME_LIKE"), "host", "100"));
        EXPECT_STATUS(r, 0);
        EXPECT_IN(r, out, "ok host\n");
        EXPECT_IN(r, err, "fakecuda: calls cuMemHostAlloc 100\n");
        EXPECT_IN(r, err, "fakecuda: calls cuMemFreeHost 200\n");
        EXPECT_IN(r, err, "pinned host memory (pool off): 200 allocations (0 reused)");
        run_free(&r);
    }
}

static char *command_output(const char *command)
{
    FILE *p = popen(command, "r");
    assert_non_null(p);
    static char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, p);
    text[n] = '\0';
    pclose(p);
    return text;
}

/* Nothing but the intercepted symbols leaves libgpushim.so: the allocation and context entry
 * points, and every work-issuing function cuda.h declares (or maps a per-thread name to), so a
 * program linked to libcuda cannot issue work the pool does not see. A newer cuda.h with a new
 * such function fails this until interpose/work.c and gpushim.map name it. */
static void exports_are_exactly_the_intercepted_symbols(void **state)
{
    (void)state;
    static char command[16384];
    snprintf(command, sizeof command,
             "{ grep -oE 'CUresult CUDAAPI cu[A-Za-z0-9_]+' %s | awk '{print $3}'; "
             "grep -oE '__CUDA_API_PT(DS|SZ)\\(cu[A-Za-z0-9_]+\\)' %s | "
             "sed -E 's/__CUDA_API_PTDS\\((.*)\\)/\\1_ptds/; s/__CUDA_API_PTSZ\\((.*)\\)/\\1_ptsz/'; } | "
             "grep -E 'Memcpy|Memset|Launch|Prefetch|Discard|WriteValue|WaitValue|BatchMemOp|"
             "SemaphoresAsync|MapArrayAsync|Decompress|GraphUpload' | "
             "grep -vE 'Node|^cuGraphAdd|Params' | LC_ALL=C sort -u",
             path_of("GS_CUDA_H"), path_of("GS_CUDA_H"));
    char *work = strdup(command_output(command));
    assert_true(strlen(work) > 1000); /* over a hundred names */
    static const char intercepted[] =
        "cuCtxDestroy\ncuCtxDestroy_v2\ncuCtxSynchronize\ncuCtxSynchronize_v2\n"
        "cuDevicePrimaryCtxRelease\n"
        "cuDevicePrimaryCtxRelease_v2\ncuDevicePrimaryCtxReset\ncuDevicePrimaryCtxReset_v2\n"
        "cuGetProcAddress\ncuGetProcAddress_v2\n"
        "cuGreenCtxStreamCreate\ncuIpcGetMemHandle\ncuMemAllocAsync\ncuMemAllocAsync_ptsz\n"
        "cuMemAllocFromPoolAsync\ncuMemAllocFromPoolAsync_ptsz\ncuMemAllocHost_v2\n"
        "cuMemAllocManaged\ncuMemAllocPitch_v2\ncuMemAlloc_v2\ncuMemCreate\ncuMemFreeAsync\n"
        "cuMemFreeAsync_ptsz\ncuMemFreeHost\ncuMemFree_v2\ncuMemGetAddressRange_v2\n"
        "cuMemGetInfo_v2\ncuMemHostAlloc\ncuMemRelease\n"
        "cuPointerGetAttribute\ncuPointerGetAttributes\ncuStreamBeginCapture\n"
        "cuStreamBeginCaptureToGraph\ncuStreamBeginCaptureToGraph_ptsz\n"
        "cuStreamBeginCapture_ptsz\ncuStreamBeginCapture_v2\ncuStreamBeginCapture_v2_ptsz\n"
        "cuStreamCreate\ncuStreamCreateWithPriority\ncuStreamDestroy\ncuStreamDestroy_v2\n"
        "cuStreamEndCapture\n"
        "cuStreamEndCapture_ptsz\ndlsym\n";
    snprintf(command, sizeof command, "printf '%%s%%s' '%s' '%s' | LC_ALL=C sort -u", intercepted,
             work);
    char *expected = strdup(command_output(command));
    snprintf(command, sizeof command,
             "nm -D --defined-only %s | awk '{print $3}' | LC_ALL=C sort", path_of("GS_SHIM"));
    assert_string_equal(command_output(command), expected);
    free(work);
    free(expected);
}

static void shim_links_no_cuda_library(void **state)
{
    (void)state;
    char command[4096];
    snprintf(command, sizeof command, "readelf -d %s | grep NEEDED", path_of("GS_SHIM"));
    const char *needed = command_output(command);
    assert_non_null(strstr(needed, "libc.so"));
    assert_null(strstr(needed, "libcuda"));
    assert_null(strstr(needed, "libcudart"));
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, (size_t)size + 1);
    size_t n = fread(text, 1, (size_t)size, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static char *make_temp_dir(void)
{
    char *dir = strdup("/tmp/gpushim-obs-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

/* JSON report: valid JSON, per-rank file names, histogram, leaks with sizes, out-of-memory events. */
static void json_report_per_rank_with_leaks_and_oom(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char report[512], path[512], host[128] = "", command[1024];
    gethostname(host, sizeof host - 1);
    snprintf(report, sizeof report, "GPUSHIM_REPORT=%s/r-%%r-%%h-%%p.json", dir);
    run_result_t r = run_shim(ENV(report, "GPUSHIM_REPORT_FORMAT=json", "RANK=3", "GPUSHIM_MODE=pool",
                                  "FAKECUDA_MEMORY=67108864"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "managed", "6"));
    EXPECT_STATUS(r, 0);
    snprintf(command, sizeof command, "ls %s", dir);
    char *listing = strdup(command_output(command));
    char expected_name[256];
    snprintf(expected_name, sizeof expected_name, "r-3-%s-", host);
    assert_non_null(strstr(listing, expected_name));
    snprintf(path, sizeof path, "%s/%s", dir, strtok(listing, "\n"));
    char *json = read_file(path);
    assert_non_null(json);
    snprintf(command, sizeof command, "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
             "v=d[\"devices\"][0]; print(d[\"schema\"], d[\"rank\"], v[\"allocations\"], v[\"failed\"], "
             "len(v[\"out_of_memory\"]), v[\"size_histogram\"], v[\"pool\"][\"chunks\"] > 0)' %s", path);
    const char *parsed = command_output(command);
    if (strstr(parsed, "gpushim-report/1 3 4 2 2 [{'le': 16777216, 'count': 4}] True") == NULL)
        print_message("parsed: %s\n%s\n", parsed, json);
    assert_non_null(strstr(parsed, "gpushim-report/1 3 4 2 2 [{'le': 16777216, 'count': 4}] True"));
    /* Version 1 only adds fields: every pool field the README names is there. */
    snprintf(command, sizeof command,
             "python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))[\"devices\"][0][\"pool\"]; "
             "print(\"missing\", sorted(set(sys.argv[2].split()) - set(p)))' %s '%s'", path,
             "reserved reserved_peak chunks driver_allocations chunks_given_back "
             "peak_reserved_over_peak_in_use cache_hits pool_allocations reuse pending "
             "shim_synchronizations shim_synchronization_mean_us cached_in_threads "
             "largest_free_block event_recycles events mark_waits mark_waits_given_up "
             "mark_wait_mean_us idle_reuse idle_frees work_functions_watched");
    parsed = command_output(command);
    if (strstr(parsed, "missing []") == NULL)
        print_message("%s\n", parsed);
    assert_non_null(strstr(parsed, "missing []"));
    unlink(path);
    rmdir(dir);
    free(json);
    free(listing);
    free(dir);
    run_free(&r);

    r = run_shim(ENV("GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "exit-thread"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, err, "device 0: live at exit, largest first: 0x");
    EXPECT_IN(r, err, " (8 KiB)\n");
    EXPECT_IN(r, err, "after start; sizes: <=8 KiB: 1\n");
    run_free(&r);

    r = run_shim(ENV("FAKECUDA_FAIL=cuMemAlloc_v2:2"), ARGV(path_of("GS_RUNTIME_LIKE"), "oom", "3"));
    EXPECT_IN(r, err, "device 0: out of memory, latest: 1 MiB at ");
    run_free(&r);
}

/* GPUSHIM_TRACE: RMM's CSV, every event, failures too, nothing lost at exit from a thread. */
static void trace_is_rmm_csv_with_every_event(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char trace[600], path[512];
    snprintf(path, sizeof path, "%s/trace.csv", dir);
    snprintf(trace, sizeof trace, "GPUSHIM_TRACE=%s", path);
    run_result_t r = run_shim(ENV(trace, "GPUSHIM_MODE=pool", "FAKECUDA_FAIL=cuMemAlloc_v2:1+"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "oom", "2"));
    EXPECT_STATUS(r, 0);
    char *csv = read_file(path);
    assert_non_null(csv);
    assert_ptr_equal(strstr(csv, "Thread,Time,Action,Pointer,Size,Stream\n"), csv);
    assert_int_equal(count_of(csv, ",allocate failure,0x0,1048576,0\n"), 2);
    free(csv);
    run_free(&r);

    r = run_shim(ENV(trace, "GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "threads", "4", "3000"));
    EXPECT_STATUS(r, 0);
    csv = read_file(path);
    assert_int_equal(count_of(csv, ",allocate,0x"), 12000); /* several buffers' worth per thread */
    assert_int_equal(count_of(csv, ",free,0x"), 12000);
    free(csv);
    run_free(&r);
    /* Many full buffers a thread: they go through the writer thread and its queue. */
    r = run_shim(ENV(trace, "GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "threads", "8", "40000"));
    EXPECT_STATUS(r, 0);
    csv = read_file(path);
    assert_int_equal(count_of(csv, ",allocate,0x"), 320000);
    assert_int_equal(count_of(csv, ",free,0x"), 320000);
    assert_int_equal(count_of(csv, "\n"), 640001);
    free(csv);
    run_free(&r);
    r = run_shim(ENV(trace, "GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "threads", "4", "3000"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    /* Threads' batches interleave in the file; replay puts them back in time order: about
     * 4 threads x 1 MiB were ever live (a little more where two threads' events share a
     * microsecond), and no allocation is left behind. */
    char library_path[4096];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    r = run_env(ENV(library_path), ARGV(path_of("GS_CLI"), "replay", path, "--mode", "off"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "peak in use ");
    long long peak_mib = number_after(r.out, "peak in use ");
    if (peak_mib < 1 || peak_mib > 8)
        show(&r);
    assert_true(peak_mib >= 1 && peak_mib <= 8);
    EXPECT_IN(r, out, "replayed 24000 events in ");
    EXPECT_IN(r, out, " MiB, peak reserved");
    run_free(&r);

    r = run_shim(ENV(trace), ARGV(path_of("GS_RUNTIME_LIKE"), "exit-thread"));
    csv = read_file(path);
    assert_int_equal(count_of(csv, ",allocate,0x"), 1);
    assert_int_equal(count_of(csv, ",8192,0\n"), 1);
    free(csv);
    unlink(path);
    rmdir(dir);
    free(dir);
    run_free(&r);
}

/* The gpushim command, every subcommand, on the test driver. */
static char *file_text(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* The report and trace never harm a file they were not asked to write: a link at the path is
 * refused, not followed (its target keeps its bytes), a FIFO too (no hang); %h folders that
 * exist are accepted; RANK cannot lead out of the folder. */
static void report_and_trace_files_are_opened_safely(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char victim[512], link_path[512], fifo[512], env[4][700];
    snprintf(victim, sizeof victim, "%s/victim.txt", dir);
    snprintf(link_path, sizeof link_path, "%s/link.txt", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo.txt", dir);
    FILE *f = fopen(victim, "w");
    fputs("precious\n", f);
    fclose(f);
    assert_int_equal(symlink(victim, link_path), 0);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    const char *const targets[] = {link_path, fifo};
    for (int t = 0; t < 2; t++)
        for (int v = 0; v < 2; v++) {
            snprintf(env[0], sizeof env[0], "%s=%s", v ? "GPUSHIM_TRACE" : "GPUSHIM_REPORT", targets[t]);
            run_result_t r = run_shim(ENV(env[0]), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "3"));
            EXPECT_STATUS(r, 1);
            EXPECT_IN(r, err, t ? "exists and is not a regular file" : "is a symbolic link");
            assert_int_equal(count_of(r.err, "\n"), 1);
            run_free(&r);
        }
    assert_string_equal(file_text(victim), "precious\n");

    /* %h: a folder named after the host, which exists */
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    for (char *c = host; *c; c++)
        if (!(isalnum((unsigned char)*c) || *c == '_' || *c == '-' || (*c == '.' && c != host)))
            *c = '_';
    char host_dir[800], report[900];
    snprintf(host_dir, sizeof host_dir, "%s/%s", dir, host);
    assert_int_equal(mkdir(host_dir, 0700), 0);
    snprintf(env[0], sizeof env[0], "GPUSHIM_REPORT=%s/%%h/r.txt", dir);
    run_result_t r = run_shim(ENV(env[0]), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "3"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    snprintf(report, sizeof report, "%s/r.txt", host_dir);
    assert_non_null(file_text(report));
    assert_non_null(strstr(file_text(report), "device 0: 3 allocations"));

    /* RANK=../x stays in the folder, as _._x */
    snprintf(env[0], sizeof env[0], "GPUSHIM_REPORT=%s/r-%%r.txt", dir);
    r = run_shim(ENV(env[0], "RANK=../x"), ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "3"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    snprintf(report, sizeof report, "%s/r-_._x.txt", dir);
    assert_non_null(file_text(report));
    free(dir);
}

/* A full disk (here a file size limit: writes to files fail with EFBIG; stderr is a pipe): one
 * warning for the trace, one for the report, and the program goes on and exits 0. */
static void write_errors_are_said_once(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char trace[600], report[600], command[4096];
    snprintf(trace, sizeof trace, "GPUSHIM_TRACE=%s/t.csv", dir);
    snprintf(report, sizeof report, "GPUSHIM_REPORT=%s/r.txt", dir);
    snprintf(command, sizeof command, "(ulimit -f 0; trap '' XFSZ; exec %s temporaries 200) 2>&1 | cat >&2",
             path_of("GS_RUNTIME_LIKE"));
    run_result_t r = run_shim(ENV(trace, report, "GPUSHIM_MODE=pool"), ARGV("/bin/sh", "-c", command));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, err, "gpushim: warning: writing the trace failed (File too large); what follows is lost\n");
    EXPECT_IN(r, err, "gpushim: warning: writing the report failed (File too large)");
    assert_int_equal(count_of(r.err, "writing the trace failed"), 1);
    assert_int_equal(count_of(r.err, "writing the report failed"), 1);
    run_free(&r);
    free(dir);
}

/* Fork, with one trace path for both processes: the child's records survive the parent's (the
 * file was started at load, not at the parent's first write), one header; with %p each process
 * has its own file, each with its header, each readable by replay. */
static void forked_processes_keep_their_trace_records(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char env[600], path[700], library_path[4096];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    snprintf(env, sizeof env, "GPUSHIM_TRACE=%s/shared.csv", dir);
    run_result_t r = run_shim(ENV(env, "GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "fork-trace", "100"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    snprintf(path, sizeof path, "%s/shared.csv", dir);
    char *text = file_text(path);
    assert_int_equal(count_of(text, "Thread,Time,Action"), 1);
    assert_int_equal(count_of(text, ",4096,"), 200); /* the child's pairs */
    assert_int_equal(count_of(text, ",8192,"), 200); /* the parent's */

    snprintf(env, sizeof env, "GPUSHIM_TRACE=%s/own-%%p.csv", dir);
    r = run_shim(ENV(env, "GPUSHIM_MODE=pool"), ARGV(path_of("GS_RUNTIME_LIKE"), "fork-trace", "100"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    char command[1024];
    snprintf(command, sizeof command, "ls %s/own-*.csv", dir);
    char *files = strdup(command_output(command));
    int count = 0;
    for (char *file = strtok(files, "\n"); file; file = strtok(NULL, "\n"), count++) {
        text = file_text(file);
        assert_ptr_equal(strstr(text, "Thread,Time,Action,Pointer,Size,Stream\n"), text);
        run_result_t replay = run_env(ENV(library_path), ARGV(path_of("GS_CLI"), "replay", file, "--mode", "off"));
        EXPECT_STATUS(replay, 0);
        EXPECT_IN(replay, out, "replayed 200 events");
        run_free(&replay);
    }
    assert_int_equal(count, 2);
    free(files);
    free(dir);
}

/* The JSON report escapes every string (a rank cannot inject a key) and carries the version;
 * gpushim report reads any valid JSON (minified too), and says what is wrong with a truncated
 * file, a missing one, or JSON that is not a report. */
static void json_reports_are_escaped_and_parsed(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char env[600], path[600], command[2048];
    snprintf(path, sizeof path, "%s/r.json", dir);
    snprintf(env, sizeof env, "GPUSHIM_REPORT=%s", path);
    run_result_t r = run_shim(ENV(env, "GPUSHIM_REPORT_FORMAT=json", "RANK=1, \"x\": 2\t"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "basic", "3"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    snprintf(command, sizeof command, "python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); "
             "print(repr(r[\"rank\"]), \"x\" in r, r[\"version\"] != \"\")' %s", path);
    assert_string_equal(command_output(command), "'1, \"x\": 2\\t' False True\n");
    /* minified: the same report without white space */
    char minified[700];
    snprintf(minified, sizeof minified, "%s/min.json", dir);
    snprintf(command, sizeof command, "python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1])), "
             "open(sys.argv[2], \"w\"), separators=(\",\", \":\"))' %s %s", path, minified);
    command_output(command);
    r = run_env(NULL, ARGV(path_of("GS_CLI"), "report", minified));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "rank 1, \"x\": 2\\x09, mode off\n  device 0: 3 allocations");
    run_free(&r);
    /* truncated */
    char truncated[700];
    snprintf(truncated, sizeof truncated, "%s/cut.json", dir);
    snprintf(command, sizeof command, "head -c 200 %s > %s", path, truncated);
    command_output(command);
    r = run_env(NULL, ARGV(path_of("GS_CLI"), "report", truncated));
    EXPECT_STATUS(r, 2);
    EXPECT_IN(r, err, "is not valid JSON: line ");
    EXPECT_IN(r, err, "the text ends early (a truncated file?)");
    run_free(&r);
    /* missing */
    r = run_env(NULL, ARGV(path_of("GS_CLI"), "report", "/no/such/report.json"));
    EXPECT_STATUS(r, 2);
    EXPECT_IN(r, err, "cannot read /no/such/report.json (No such file or directory)");
    run_free(&r);
    /* JSON, but not a report */
    snprintf(command, sizeof command, "echo '{\"schema\": \"other\", \"devices\": []}' > %s", truncated);
    command_output(command);
    r = run_env(NULL, ARGV(path_of("GS_CLI"), "report", truncated));
    EXPECT_STATUS(r, 2);
    EXPECT_IN(r, err, "is JSON but not a gpushim report");
    run_free(&r);
    free(dir);
}

/* A job ended by its scheduler's signal (SIGTERM, SIGINT, SIGHUP, SIGXCPU, sent by another
 * thread while the program allocates; the handler may run in either thread): the report is
 * written, the trace holds every record it counts (one may be in flight when the signal comes) in
 * whole lines, and the program ends by that signal. A program with a handler of its own keeps it. */
static void a_scheduler_signal_leaves_report_and_trace(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int number;
    } signals[] = {{"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"XCPU", SIGXCPU}};
    char *dir = make_temp_dir();
    char trace_env[600], report_env[600], trace[600], report[600];
    snprintf(trace, sizeof trace, "%s/t.csv", dir);
    snprintf(report, sizeof report, "%s/r.json", dir);
    snprintf(trace_env, sizeof trace_env, "GPUSHIM_TRACE=%s", trace);
    snprintf(report_env, sizeof report_env, "GPUSHIM_REPORT=%s", report);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        unlink(trace), unlink(report);
        run_result_t r = run_shim(ENV(trace_env, report_env, "GPUSHIM_REPORT_FORMAT=json", "GPUSHIM_MODE=pool"),
                                  ARGV(path_of("GS_RUNTIME_LIKE"), "signal", signals[i].name));
        assert_int_equal(r.status, 128 + signals[i].number);
        run_free(&r);
        char command[2048];
        snprintf(command, sizeof command,
                 "python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))[\"devices\"][0]; "
                 "lines = open(sys.argv[2]).read().split(\"\\n\"); "
                 "ok = lines[0].startswith(\"Thread,\") and lines[-1] == \"\" and "
                 "all(len(l.split(\",\")) == 6 for l in lines[1:-1]); "
                 "a = sum(\",allocate,\" in l for l in lines); f = sum(\",free,\" in l for l in lines); "
                 "print(ok, r[\"allocations\"] > 100, a >= r[\"allocations\"] - 1, f >= r[\"frees\"] - 1)' %s %s",
                 report, trace);
        const char *checked = command_output(command);
        if (strcmp(checked, "True True True True\n") != 0)
            print_message("SIG%s: %s", signals[i].name, checked);
        assert_string_equal(checked, "True True True True\n");
    }
    run_result_t r = run_shim(ENV(trace_env, report_env, "GPUSHIM_MODE=pool"),
                              ARGV(path_of("GS_RUNTIME_LIKE"), "signal", "own"));
    EXPECT_STATUS(r, 7);
    EXPECT_IN(r, out, "own handler ran\n");
    run_free(&r);
    free(dir);
}

/* exit() from one thread while eight others allocate: every record the report counts is in the
 * trace (one a thread may be in flight), in whole lines. */
static void exit_while_threads_allocate_keeps_every_counted_record(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char trace_env[600], report_env[600], trace[600], report[600], command[2048];
    snprintf(trace, sizeof trace, "%s/t.csv", dir);
    snprintf(report, sizeof report, "%s/r.json", dir);
    snprintf(trace_env, sizeof trace_env, "GPUSHIM_TRACE=%s", trace);
    snprintf(report_env, sizeof report_env, "GPUSHIM_REPORT=%s", report);
    for (int round = 0; round < 3; round++) {
        run_result_t r = run_shim(ENV(trace_env, report_env, "GPUSHIM_REPORT_FORMAT=json", "GPUSHIM_MODE=pool"),
                                  ARGV(path_of("GS_RUNTIME_LIKE"), "exit-busy", "8"));
        EXPECT_STATUS(r, 0);
        run_free(&r);
        snprintf(command, sizeof command,
                 "python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))[\"devices\"][0]; "
                 "lines = open(sys.argv[2]).read().split(\"\\n\"); "
                 "ok = lines[-1] == \"\" and all(len(l.split(\",\")) == 6 for l in lines[1:-1]); "
                 "a = sum(\",allocate,\" in l for l in lines); "
                 "print(ok, r[\"allocations\"] > 1000, a >= r[\"allocations\"] - 8, a, r[\"allocations\"])' %s %s",
                 report, trace);
        const char *checked = command_output(command);
        if (strncmp(checked, "True True True ", 15) != 0)
            print_message("round %d: %s", round, checked);
        assert_memory_equal(checked, "True True True ", 15);
    }
    free(dir);
}

/* Fault injection over the driver entry points the shim calls, the Nth call failing (N = 1..50,
 * sampled), in every mode, with every kind of allocation and pinned memory: the program ends by
 * itself (exit 0, or its own check of a failed call), never by a signal or the harness's alarm; one report;
 * frees never exceed allocations. */
static void fault_injection_sweep_never_crashes(void **state)
{
    (void)state;
    static const char *const names[] = {
        "cuMemAlloc_v2", "cuMemFree_v2", "cuMemAllocManaged", "cuMemAllocAsync", "cuMemFreeAsync",
        "cuMemAllocPitch_v2", "cuCtxSynchronize", "cuEventCreate", "cuEventRecord", "cuEventQuery",
        "cuMemPrefetchAsync_v2", "cuMemAdvise_v2", "cuMemHostAlloc", "cuMemAllocHost_v2",
        "cuMemFreeHost", "cuMemGetInfo_v2", "cuPointerGetAttribute", "cuDeviceGetCount"};
    static const int nth[] = {1, 2, 3, 4, 6, 9, 14, 20, 30, 50};
    static const char *const scenarios[][2] = {{"temporaries", "6"}, {"all", NULL}, {"host", "5"}};
    int runs = 0, failed_checks = 0;
    for (size_t m = 0; m < 3; m++)
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            for (size_t k = 0; k < sizeof nth / sizeof nth[0]; k++) {
                const char *const *sc = scenarios[(i + k) % 3];
                char fault[128];
                snprintf(fault, sizeof fault, "FAKECUDA_FAIL=%s:%d", names[i], nth[k]);
                run_result_t r = sc[1] ? run_shim(ENV(every_mode[m], fault, "GPUSHIM_MANAGED_LIMIT=50%"),
                                                  ARGV(path_of("GS_RUNTIME_LIKE"), sc[0], sc[1]))
                                       : run_shim(ENV(every_mode[m], fault, "GPUSHIM_MANAGED_LIMIT=50%"),
                                                  ARGV(path_of("GS_RUNTIME_LIKE"), sc[0]));
                runs++;
                long long allocations = number_after(r.err, "device 0: ");
                long long frees = -1;
                const char *at = strstr(r.err, " allocations, ");
                if (at)
                    frees = strtoll(at + 14, NULL, 10);
                bool ok = r.status >= 0 && r.status < 128 && count_of(r.err, "gpushim: report for pid") <= 1 &&
                          (allocations < 0 || frees <= allocations);
                if (!ok)
                    print_message("%s %s %s: status %d\n%s", every_mode[m], fault, sc[0], r.status, r.err);
                assert_true(ok);
                failed_checks += r.status != 0;
                run_free(&r);
            }
    print_message("fault sweep: %d runs, %d ended by the program's own check of a failed call\n", runs,
                  failed_checks);
}

/* Random GPUSHIM_* values in real processes (2,000, bounded by the harness's alarm): each run
 * exits 0 with nothing on stderr, or 1 with exactly one line, never a signal or a hang. Run in a
 * folder of its own: accepted paths may be created there. */
static void fuzzed_variables_stop_a_program_with_one_line_or_not_at_all(void **state)
{
    (void)state;
    static const char *const names[] = {"GPUSHIM_MODE", "GPUSHIM_REPORT", "GPUSHIM_REPORT_FORMAT",
                                        "GPUSHIM_TRACE", "GPUSHIM_POOL_MAX", "GPUSHIM_POOL_CHUNK",
                                        "GPUSHIM_DEVICE_LIMIT", "GPUSHIM_HOST_POOL", "GPUSHIM_MANAGED_LIMIT",
                                        "GPUSHIM_MANAGED_PREFETCH", "GPUSHIM_POOL_REUSE", "GPUSHIM_ON_OOM",
                                        "GPUSHIM_MODEL", "GPUSHIM_"};
    static const char *const pieces[] = {"0", "1", "512", "1.5", "%", "%host", "K", "GiB", " ",
                                         "\n", "\x1b", "\xff", "/", "..", "%p", "%r", "x.txt",
                                         "pool", "managed", "off", "json", "stderr", "-", "e9", "/dev/null"};
    char *dir = make_temp_dir();
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(dir), 0);
    unsigned seed = 777;
    int stopped = 0, ran = 0;
    for (int i = 0; i < 2000; i++) {
        char entry[512];
        size_t len = (size_t)snprintf(entry, sizeof entry, "%s=", names[i % (sizeof names / sizeof names[0])]);
        int parts = 1 + (int)((seed = seed * 1103515245 + 12345) >> 16) % 4;
        for (int k = 0; k < parts; k++) {
            seed = seed * 1103515245 + 12345;
            len += (size_t)snprintf(entry + len, sizeof entry - len, "%s",
                                    pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])]);
        }
        run_result_t r = run_shim(ENV(entry), ARGV(path_of("GS_NO_CUDA")));
        if (!(r.status == 0 && r.err[0] == '\0') &&
            !(r.status == 1 && count_of(r.err, "\n") == 1 && r.err[strlen(r.err) - 1] == '\n'))
            print_message("entry [%s]: status %d, stderr [%s]\n", entry, r.status, r.err);
        assert_true((r.status == 0 && r.err[0] == '\0') ||
                    (r.status == 1 && count_of(r.err, "\n") == 1 && r.err[strlen(r.err) - 1] == '\n'));
        stopped += r.status == 1;
        ran += r.status == 0;
        run_free(&r);
    }
    assert_int_equal(chdir(cwd), 0);
    print_message("fuzz: %d runs went on, %d stopped with one line\n", ran, stopped);
    assert_true(ran > 50 && stopped > 500);
    free(dir);
}

/* A trace line with a negative, huge or malformed size or pointer: replay and plot name the line
 * and stop, without a crash. */
static void bad_trace_lines_are_refused(void **state)
{
    (void)state;
    static const char *const lines[] = {"1,12:00:00:000001,allocate,0x7f0000000000,-512,0x0\n",
                                        "1,12:00:00:000001,allocate,0x7f0000000000,18446744073709551615,0x0\n",
                                        "1,12:00:00:000001,allocate,0x7f0000000000, 512,0x0\n",
                                        "1,12:00:00:000001,allocate,zz,512,0x0\n"};
    char *dir = make_temp_dir();
    char trace[512], library_path[4096], svg[600];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    snprintf(trace, sizeof trace, "%s/bad.csv", dir);
    snprintf(svg, sizeof svg, "%s/bad.svg", dir);
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        FILE *f = fopen(trace, "w");
        assert_non_null(f);
        fprintf(f, "Thread,Time,Action,Pointer,Size,Stream\n1,12:00:00:000000,allocate,0x7f0000001000,4096,0x0\n%s", lines[i]);
        fclose(f);
        run_result_t r = run_env(ENV(library_path), ARGV(path_of("GS_CLI"), "replay", trace, "--mode", "pool"));
        assert_in_range(r.status, 1, 2); /* an error, not a signal */
        EXPECT_IN(r, err, "bad.csv, line 3: pointer");
        run_free(&r);
        r = run_env(NULL, ARGV(path_of("GS_CLI"), "plot", trace, "-o", svg));
        assert_in_range(r.status, 1, 2); /* an error, not a signal */
        EXPECT_IN(r, err, "is not a hexadecimal address and a byte count up to 2^62");
        run_free(&r);
    }
    free(dir);
}

static void gpushim_command_runs_reports_replays_and_plots(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char library_path[4096], report0[512], report1[512], trace[512], svg[512];
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    snprintf(report0, sizeof report0, "%s/r-0.json", dir);
    snprintf(report1, sizeof report1, "%s/r-1.json", dir);
    snprintf(trace, sizeof trace, "%s/t.csv", dir);
    snprintf(svg, sizeof svg, "%s/p.svg", dir);

    run_result_t r = run_env(ENV(library_path, "RANK=0"),
                             ARGV(path_of("GS_CLI"), "run", "--mode", "pool", "--format", "json",
                                  "--report", report0, "--trace", trace, "--", path_of("GS_RUNTIME_LIKE"),
                                  "basic", "20"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "ok basic 20");
    run_free(&r);
    r = run_env(ENV(library_path, "RANK=1"),
                ARGV(path_of("GS_CLI"), "run", "--format", "json", "--report", report1, "--",
                     path_of("GS_RUNTIME_LIKE"), "exit-thread"));
    EXPECT_STATUS(r, 0);
    run_free(&r);

    r = run_env(NULL, ARGV(path_of("GS_CLI"), "report", report0, report1));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "rank 0, mode pool\n  device 0: 20 allocations, 0 failed (0 out of memory), requested 840 KiB");
    EXPECT_IN(r, out, "rank 1, mode off\n  device 0: 1 allocations");
    EXPECT_IN(r, out, "all 2 reports, 2 devices: 21 allocations, 0 failed (0 out of memory), requested 848 KiB");
    EXPECT_IN(r, out, "live at exit 1 (8 KiB)");
    run_free(&r);

    char report2[512]; /* a program that resets the device: the summary says what that freed */
    snprintf(report2, sizeof report2, "%s/r-2.json", dir);
    r = run_env(ENV(library_path), ARGV(path_of("GS_CLI"), "run", "--mode", "pool", "--format",
                                        "json", "--report", report2, "--",
                                        path_of("GS_RUNTIME_LIKE"), "reset"));
    EXPECT_STATUS(r, 0);
    run_free(&r);
    r = run_env(NULL, ARGV(path_of("GS_CLI"), "report", report2));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "live at exit 0 (0 B); pool reserved peak 52 MiB; 1 context resets released "
                      "1 allocations\n");
    EXPECT_IN(r, out, "all 1 reports, 1 devices: 7 allocations");
    EXPECT_IN(r, out, "pool reserved peaks summed 52 MiB; 1 context resets released 1 allocations\n");
    run_free(&r);

    r = run_env(ENV(library_path), ARGV(path_of("GS_CLI"), "replay", trace, "--mode", "off", "--mode", "pool",
                                        "--mode", "managed"));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "mode off     replayed 40 events in ");
    EXPECT_IN(r, out, "mode pool    replayed 40 events in ");
    EXPECT_IN(r, out, "mode managed replayed 40 events in ");
    EXPECT_IN(r, out, "peak in use 840 KiB, peak reserved 840 KiB (the driver's allocations)");
    EXPECT_IN(r, out, "peak in use 840 KiB, peak reserved 2 MiB\n");
    run_free(&r);

    r = run_env(NULL, ARGV(path_of("GS_CLI"), "plot", trace, "-o", svg));
    EXPECT_STATUS(r, 0);
    EXPECT_IN(r, out, "40 events");
    EXPECT_IN(r, out, "peak in use 840 KiB, peak reserved 2 MiB (modelled)\n");
    char command[1024];
    snprintf(command, sizeof command, "python3 -c 'import sys, xml.etree.ElementTree as E; "
             "s = E.parse(sys.argv[1]).getroot(); n = \"{http://www.w3.org/2000/svg}\"; "
             "print(s.tag == n + \"svg\", sorted((p.get(\"id\"), len(p.get(\"points\").split()) >= 40) "
             "for p in s.iter(n + \"polyline\")))' %s", svg);
    const char *checked = command_output(command);
    if (strstr(checked, "True [('in-use', True), ('reserved', True)]") == NULL)
        print_message("svg check: %s\n", checked);
    assert_non_null(strstr(checked, "True [('in-use', True), ('reserved', True)]"));
    run_free(&r);

    r = run_env(NULL, ARGV(path_of("GS_CLI"), "bogus"));
    EXPECT_STATUS(r, 2);
    EXPECT_IN(r, err, "gpushim: error: unknown command bogus");
    run_free(&r);
    unlink(report0), unlink(report1), unlink(trace), unlink(svg);
    rmdir(dir);
    free(dir);
}

/* The README's table of variables is the options table, word for word. */
static void readme_lists_every_variable_as_the_table_does(void **state)
{
    (void)state;
    char command[4096];
    snprintf(command, sizeof command, "%s --markdown", path_of("GS_OPTIONS_TOOL"));
    char *table = strdup(command_output(command));
    FILE *f = fopen(path_of("GS_README"), "r");
    assert_non_null(f);
    static char readme[65536];
    size_t n = fread(readme, 1, sizeof readme - 1, f);
    readme[n] = '\0';
    fclose(f);
    assert_true(strlen(table) > 500);
    if (strstr(readme, table) == NULL)
        print_message("README.md lacks the current table; regenerate it with gpushim-options --markdown:\n%s", table);
    assert_non_null(strstr(readme, table));
    free(table);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(runtime_like_counts_every_allocation),
        cmocka_unit_test(the_benchmark_floor_takes_the_shims_place),
        cmocka_unit_test(without_the_shim_there_is_no_report),
        cmocka_unit_test(directly_linked_program_is_counted),
        cmocka_unit_test(error_codes_are_the_drivers),
        cmocka_unit_test(out_of_memory_is_cudas_error_and_counted),
        cmocka_unit_test(every_intercepted_entry_point_passes_through),
        cmocka_unit_test(lookups_land_in_the_shim_only_for_intercepted_names),
        cmocka_unit_test(an_idle_device_reuses_blocks_at_once),
        cmocka_unit_test(threads_are_counted_exactly),
        cmocka_unit_test(forked_child_prints_no_report),
        cmocka_unit_test(exit_from_a_thread_reports_once),
        cmocka_unit_test(exit_from_a_library_reports_once),
        cmocka_unit_test(each_device_is_counted_apart),
        cmocka_unit_test(bad_variables_stop_the_program_at_start),
        cmocka_unit_test(report_goes_to_a_file_named_by_pid),
        cmocka_unit_test(report_off_prints_nothing),
        cmocka_unit_test(unused_shim_is_invisible),
        cmocka_unit_test(rtld_next_of_other_preload_libraries_still_works),
        cmocka_unit_test(pool_mode_serves_the_same_programs),
        cmocka_unit_test(pool_grows_in_place_where_the_driver_maps),
        cmocka_unit_test(pool_out_of_memory_is_cudas_error),
        cmocka_unit_test(managed_mode_oversubscribes_the_device),
        cmocka_unit_test(managed_mode_asks_xla_for_managed_memory),
        cmocka_unit_test(pool_events_follow_the_streams_the_program_makes),
        cmocka_unit_test(a_device_reset_leaves_no_stale_memory),
        cmocka_unit_test(allocations_during_stream_capture_leave_it_valid),
        cmocka_unit_test(a_destroyed_context_leaves_no_stale_memory),
        cmocka_unit_test(pointer_attributes_describe_the_block),
        cmocka_unit_test(managed_cap_is_cudas_out_of_memory),
        cmocka_unit_test(managed_stream_ordered_free_keeps_the_block),
        cmocka_unit_test(temporaries_are_reused_in_managed_and_spill_modes),
        cmocka_unit_test(the_device_limit_holds_in_every_mode),
        cmocka_unit_test(pinned_host_memory_is_pooled_outside_off_mode),
        cmocka_unit_test(pool_spills_to_managed_memory_on_demand),
        cmocka_unit_test(exports_are_exactly_the_intercepted_symbols),
        cmocka_unit_test(shim_links_no_cuda_library),
        cmocka_unit_test(readme_lists_every_variable_as_the_table_does),
        cmocka_unit_test(json_report_per_rank_with_leaks_and_oom),
        cmocka_unit_test(trace_is_rmm_csv_with_every_event),
        cmocka_unit_test(gpushim_command_runs_reports_replays_and_plots),
        cmocka_unit_test(bad_trace_lines_are_refused),
        cmocka_unit_test(fault_injection_sweep_never_crashes),
        cmocka_unit_test(exit_while_threads_allocate_keeps_every_counted_record),
        cmocka_unit_test(a_scheduler_signal_leaves_report_and_trace),
        cmocka_unit_test(json_reports_are_escaped_and_parsed),
        cmocka_unit_test(report_and_trace_files_are_opened_safely),
        cmocka_unit_test(write_errors_are_said_once),
        cmocka_unit_test(forked_processes_keep_their_trace_records),
        cmocka_unit_test(fuzzed_variables_stop_a_program_with_one_line_or_not_at_all),
    };
    return cmocka_run_group_tests_name("preload", tests, NULL, NULL);
}

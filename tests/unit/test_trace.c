/* test_trace.c: the trace path without a driver: many threads fill many buffers, the writer
 * thread and the exit flush write them; every record reaches the file once (run under TSan,
 * ASan and valgrind by scripts/test.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gs.h"

extern uint64_t gs_trace_tight_ns; /* trace.c: how close events come in a tight run */

enum { THREADS = 8, PAIRS = 25000 }; /* 50,000 records a thread: several 8192-record buffers */

static void *record_pairs(void *arg)
{
    uint64_t base = (uint64_t)(uintptr_t)arg << 32;
    for (uint64_t i = 0; i < PAIRS; i++) {
        gs_trace_record(GS_TRACE_ALLOCATE, base + i * 256, 256, NULL, false);
        gs_trace_record(GS_TRACE_FREE, base + i * 256, 256, NULL, false);
    }
    return NULL;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    char *text = malloc(*len + 1);
    assert_int_equal(fread(text, 1, *len, f), *len);
    text[*len] = '\0';
    fclose(f);
    return text;
}

/* An empty temporary file, made the trace's path (gs_opts.trace_path holds the name). */
static const char *trace_to_new_file(void)
{
    char path[] = "/tmp/gs_test_trace_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    snprintf(gs_opts.trace_path, sizeof gs_opts.trace_path, "%s", path);
    return gs_opts.trace_path;
}

static void every_record_once_from_many_threads(void **state)
{
    (void)state;
    gs_options_defaults(&gs_opts);
    const char *path = trace_to_new_file();
    gs_clock_start();
    gs_tracing = true;

    pthread_t threads[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, record_pairs, (void *)(i + 1)), 0);
    record_pairs((void *)0); /* this thread's buffer stays current: the flush must write it */
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    gs_trace_flush();

    size_t len;
    char *text = read_all(path, &len);
    const char *header = "Thread,Time,Action,Pointer,Size,Stream\n";
    assert_memory_equal(text, header, strlen(header));
    /* Time is UTC time of day, HH:MM:SS:microseconds: within a few seconds of now. */
    unsigned hours, minutes, seconds, micros;
    assert_int_equal(
        sscanf(text + strlen(header), "%*u,%u:%u:%u:%u,", &hours, &minutes, &seconds, &micros), 4);
    long day_now = (long)(time(NULL) % 86400), day_traced = hours * 3600 + minutes * 60 + seconds;
    assert_true(micros < 1000000);
    assert_true(labs(day_now - day_traced) < 10 || labs(day_now - day_traced) > 86390);
    /* Count each thread's allocations by pointer: none missing, none twice. */
    static unsigned char seen[THREADS + 1][PAIRS];
    size_t lines = 0, allocations = 0, frees = 0;
    for (char *line = text + strlen(header), *end; *line; line = end + 1) {
        unsigned long long ptr, size;
        char action[32];
        end = strchr(line, '\n');
        assert_non_null(end);
        *end = '\0'; /* sscanf measures its whole input string */
        lines++;
        assert_int_equal(
            sscanf(line, "%*u,%*d:%*d:%*d:%*d,%31[a-z ],%llx,%llu,0", action, &ptr, &size), 3);
        assert_int_equal(size, 256);
        unsigned owner = (unsigned)(ptr >> 32), index = (unsigned)((ptr & 0xffffffffu) / 256);
        assert_true(owner <= THREADS && index < PAIRS);
        if (strcmp(action, "allocate") == 0) {
            allocations++;
            assert_int_equal(seen[owner][index]++, 0);
        } else {
            assert_string_equal(action, "free");
            frees++;
        }
    }
    assert_int_equal(lines, (THREADS + 1) * PAIRS * 2);
    assert_int_equal(allocations, (THREADS + 1) * PAIRS);
    assert_int_equal(frees, (THREADS + 1) * PAIRS);
    free(text);
    unlink(path);
}

/* Microseconds since midnight of the line's Time field. */
static long long line_micros(const char *line)
{
    unsigned hours, minutes, seconds, micros;
    assert_int_equal(sscanf(line, "%*u,%u:%u:%u:%u,", &hours, &minutes, &seconds, &micros), 4);
    return ((hours * 60ll + minutes) * 60 + seconds) * 1000000 + micros;
}

/* In a tight run a thread times events on blocks it touched last from its last clock read (even
 * across a pause: the documented cost), but an event on a block another thread touched last
 * reads the clock, so a replay puts it after that thread's event. */
static void an_event_on_another_threads_block_reads_the_clock(void **state)
{
    (void)state;
    gs_trace_forget(); /* the first test's file is written; this one starts its own */
    const char *path = trace_to_new_file();
    gs_tracing = true;
    gs_trace_tight_ns = 1000000000; /* every run counts as tight, however slow the machine */
    usleep(2000);                   /* the clock's rate is known 1 ms after start */

    /* Two clock reads start a tight run; three more events and a free after a pause take the
     * second one's time; the free of another thread's block reads the clock. */
    for (uint64_t i = 0; i < 5; i++)
        gs_trace_record(GS_TRACE_ALLOCATE, 0x10000 + i * 512, 512, NULL, true);
    usleep(20000);
    gs_trace_record(GS_TRACE_FREE, 0x10000, 512, NULL, true);
    gs_trace_record(GS_TRACE_FREE, 0x10200, 512, NULL, false);
    gs_trace_flush();
    gs_trace_tight_ns = 200;

    size_t len;
    char *text = read_all(path, &len);
    long long times[7];
    int lines = 0;
    const char *header = "Thread,Time,Action,Pointer,Size,Stream\n";
    assert_memory_equal(text, header, strlen(header)); /* an empty file gets the header */
    for (char *line = text + strlen(header); *line && lines < 7; line = strchr(line, '\n') + 1)
        times[lines++] = line_micros(line);
    assert_int_equal(lines, 7);
    for (int i = 2; i < 6; i++)
        assert_true(times[i] == times[1]);
    long long after = times[6] - times[1];
    if (after < 0)
        after += 86400000000ll; /* midnight passed */
    assert_true(after >= 20000);
    free(text);
    unlink(path);
}

/* The fields after Time, byte for byte, at the edges of the number formatting (two digits a
 * step): lengths odd and even, zero, the largest values, a stream. snprintf is the reference. */
static void numbers_are_written_exactly(void **state)
{
    (void)state;
    gs_trace_forget();
    const char *path = trace_to_new_file();
    gs_tracing = true;
    static const uint64_t values[] = {0,
                                      1,
                                      9,
                                      10,
                                      99,
                                      100,
                                      101,
                                      0xabc,
                                      0xfff,
                                      0x1000,
                                      123456789,
                                      4096,
                                      512,
                                      1 << 20,
                                      0x7f5d599ff200ull,
                                      0x8000000000000000ull,
                                      10000000000000000000ull,
                                      UINT64_MAX};
    enum { N = sizeof values / sizeof values[0] };
    for (int i = 0; i < N; i++)
        gs_trace_record(i % 2 ? GS_TRACE_ALLOCATE_FAILURE : GS_TRACE_ALLOCATE, values[i],
                        values[N - 1 - i], (CUstream)(uintptr_t)values[(i + 5) % N], false);
    gs_trace_flush();

    size_t len;
    char *text = read_all(path, &len);
    const char *header = "Thread,Time,Action,Pointer,Size,Stream\n";
    assert_memory_equal(text, header, strlen(header)); /* an empty file gets the header */
    char *line = text + strlen(header);
    for (int i = 0; i < N; i++) {
        char *end = strchr(line, '\n');
        assert_non_null(end);
        *end = '\0';
        char expected[160];
        snprintf(expected, sizeof expected, ",%s,0x%llx,%llu,%llu",
                 i % 2 ? "allocate failure" : "allocate", (unsigned long long)values[i],
                 (unsigned long long)values[N - 1 - i], (unsigned long long)values[(i + 5) % N]);
        char *fields = strchr(strchr(line, ',') + 1, ','); /* past Thread and Time */
        assert_string_equal(fields, expected);
        line = end + 1;
    }
    assert_int_equal(*line, '\0');
    free(text);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_record_once_from_many_threads),
        cmocka_unit_test(an_event_on_another_threads_block_reads_the_clock),
        cmocka_unit_test(numbers_are_written_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* gpushim: the command that goes with libgpushim.so.
 *
 *   gpushim run [--mode M] [--reuse R] [--report FILE] [--format text|json] [--trace FILE] --
 * CMD... gpushim report FILE...                 print JSON reports, and one summary of them all
 *   gpushim replay TRACE [--mode M]...     replay a trace under each mode, on the GPU or on
 *                                          whatever libcuda.so.1 the loader finds (the test driver)
 *   gpushim plot TRACE -o FILE.svg         memory in use and reserved (the pool, modelled) over
 * time
 */
#include <ctype.h>
#include "gs.h"
#include "json.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#undef cuGetProcAddress

static const char usage[] =
    "usage:\n"
    "  gpushim run [--mode off|pool|managed] [--reuse safe|immediate] [--report FILE]\n"
    "              [--format text|json] [--trace FILE] -- COMMAND [ARGS...]\n"
    "      runs COMMAND with libgpushim.so preloaded (its children too)\n"
    "  gpushim report FILE...\n"
    "      prints JSON reports (GPUSHIM_REPORT_FORMAT=json), then one summary of them all,\n"
    "      e.g. the ranks of one job: --report 'r-%r.json'\n"
    "  gpushim replay TRACE [--mode off|pool|managed]...\n"
    "      replays a GPUSHIM_TRACE (or RMM log) under each mode (default: off and pool) and "
    "prints\n"
    "      time and peak memory for each; managed runs are capped at GPUSHIM_MANAGED_LIMIT, 25%\n"
    "      of the device unless set\n"
    "  gpushim plot TRACE -o FILE.svg\n"
    "      draws memory in use and what the pool would reserve (modelled with immediate reuse)\n"
    "The variables are listed by `gpushim-options`.\n";

static int fail(const char *fmt, const char *arg)
{
    fprintf(stderr, "gpushim: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return 2;
}

/* ---- the library ------------------------------------------------------------------------ */

static const char *shim_path(void)
{
    static const char *const candidates[] = {GS_INSTALLED_SHIM, GS_BUILD_SHIM};
    for (size_t i = 0; i < 2; i++)
        if (access(candidates[i], R_OK) == 0)
            return candidates[i];
    return NULL;
}

static int set_preload(void)
{
    const char *shim = shim_path();
    if (shim == NULL)
        return fail("libgpushim.so is neither at %s nor in the build tree", GS_INSTALLED_SHIM);
    const char *old = getenv("LD_PRELOAD");
    char value[2 * GS_PATH_MAX];
    snprintf(value, sizeof value, "%s%s%s", shim, old && *old ? " " : "", old ? old : "");
    setenv("LD_PRELOAD", value, 1);
    return 0;
}

/* ---- run -------------------------------------------------------------------------------- */

static int cmd_run(int argc, char **argv)
{
    static const struct {
        const char *flag, *variable;
    } flags[] = {{"--mode", "GPUSHIM_MODE"},
                 {"--reuse", "GPUSHIM_POOL_REUSE"},
                 {"--report", "GPUSHIM_REPORT"},
                 {"--format", "GPUSHIM_REPORT_FORMAT"},
                 {"--trace", "GPUSHIM_TRACE"}};
    int i = 0;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        size_t k = 0;
        while (k < 5 && strcmp(argv[i], flags[k].flag) != 0)
            k++;
        if (k == 5 || i + 1 >= argc)
            return fail("run: unknown or incomplete option %s (see gpushim help)", argv[i]);
        setenv(flags[k].variable, argv[i + 1], 1);
    }
    if (i + 1 >= argc)
        return fail("run: no command after %s", "--");
    if (set_preload() != 0)
        return 2;
    execvp(argv[i + 1], argv + i + 1);
    return fail("run: cannot run %s", argv[i + 1]);
}

/* ---- report ----------------------------------------------------------------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = size >= 0 ? calloc(1, (size_t)size + 1) : NULL;
    if (text && fread(text, 1, (size_t)size, f) != (size_t)size) {
        free(text);
        text = NULL;
    }
    fclose(f);
    return text;
}

/* A report's field for people: a string as it is (control bytes escaped), a number, or null. */
static const char *shown(const json_t *report, const char *key, char *out, size_t len)
{
    const json_t *v = json_get(report, key);
    if (v && v->kind == JSON_STRING)
        gs_escape(v->string, out, len);
    else if (v && v->kind == JSON_NUMBER)
        snprintf(out, len, "%.0f", v->number);
    else
        snprintf(out, len, "%s", v && v->kind == JSON_BOOL ? (v->boolean ? "true" : "false") : "null");
    return out;
}

typedef struct totals {
    double allocations, failed, requested, peak_max, peak_sum, live, leaked, reserved_peak_sum,
        ooms, resets, reset_released;
    int reports, devices;
} totals_t;

static int cmd_report(int argc, char **argv)
{
    if (argc < 1)
        return fail("report: no file given%s", "");
    totals_t t = {0};
    for (int i = 0; i < argc; i++) {
        char *text = slurp(argv[i]);
        if (text == NULL) {
            fprintf(stderr, "gpushim: error: report: cannot read %s (%s)\n", argv[i], strerror(errno));
            return 2;
        }
        char err[256];
        json_t *report = json_parse(text, err, sizeof err);
        free(text);
        if (report == NULL) {
            fprintf(stderr, "gpushim: error: report: %s is not valid JSON: %s\n", argv[i], err);
            return 2;
        }
        const char *schema = json_text(report, "schema");
        const json_t *devices = json_get(report, "devices");
        if (schema == NULL || strcmp(schema, "gpushim-report/1") != 0 || devices == NULL ||
            devices->kind != JSON_ARRAY) {
            json_free(report);
            return fail("report: %s is JSON but not a gpushim report (schema gpushim-report/1, "
                        "GPUSHIM_REPORT_FORMAT=json)",
                        argv[i]);
        }
        char pid[32], rank[64], mode[32], program[128], host[256];
        printf("%s: pid %s (%s) on %s, rank %s, mode %s\n", argv[i],
               shown(report, "pid", pid, sizeof pid), shown(report, "program", program, sizeof program),
               shown(report, "host", host, sizeof host), shown(report, "rank", rank, sizeof rank),
               shown(report, "mode", mode, sizeof mode));
        t.reports++;
        for (size_t k = 0; k < devices->count; k++) {
            const json_t *d = devices->items[k];
            char peak[32], requested[32], live[32], reserved[32];
            double a = json_number(d, "allocations", 0), f = json_number(d, "failed", 0);
            double p = json_number(d, "in_use_peak", 0), r = json_number(d, "bytes_requested", 0);
            double l = json_number(d, "live_at_exit", 0), b = json_number(d, "in_use_at_exit", 0);
            double rp = json_number(json_get(d, "pool"), "reserved_peak", -1);
            double resets = json_number(d, "resets", -1); /* -1 in reports that predate it */
            double released = json_number(d, "released_by_reset", 0);
            const json_t *oom = json_get(d, "out_of_memory");
            int ooms = oom && oom->kind == JSON_ARRAY ? (int)oom->count : 0;
            printf("  device %d: %.0f allocations, %.0f failed (%d out of memory), requested %s; "
                   "peak in use %s; live at exit %.0f (%s)",
                   (int)json_number(d, "device", 0), a, f, ooms,
                   gs_format_bytes((uint64_t)r, requested), gs_format_bytes((uint64_t)p, peak), l,
                   gs_format_bytes((uint64_t)b, live));
            if (rp >= 0)
                printf("; pool reserved peak %s", gs_format_bytes((uint64_t)rp, reserved));
            if (resets > 0) {
                printf("; %.0f context resets released %.0f allocations", resets, released);
                t.resets += resets, t.reset_released += released;
            }
            printf("\n");
            t.allocations += a, t.failed += f, t.requested += r, t.peak_sum += p, t.live += l;
            t.leaked += b, t.ooms += ooms, t.devices++;
            t.reserved_peak_sum += rp > 0 ? rp : 0;
            if (p > t.peak_max)
                t.peak_max = p;
        }
        json_free(report);
    }
    char a[32], b[32], c[32], d[32];
    printf("all %d reports, %d devices: %.0f allocations, %.0f failed (%.0f out of memory), "
           "requested %s; peak in use %s on the busiest device, %s summed over devices; live at "
           "exit %.0f (%s)",
           t.reports, t.devices, t.allocations, t.failed, t.ooms,
           gs_format_bytes((uint64_t)t.requested, a), gs_format_bytes((uint64_t)t.peak_max, b),
           gs_format_bytes((uint64_t)t.peak_sum, c), t.live,
           gs_format_bytes((uint64_t)t.leaked, d));
    if (t.reserved_peak_sum > 0)
        printf("; pool reserved peaks summed %s",
               gs_format_bytes((uint64_t)t.reserved_peak_sum, a));
    if (t.resets > 0)
        printf("; %.0f context resets released %.0f allocations", t.resets, t.reset_released);
    printf("\n");
    return 0;
}

/* ---- traces ----------------------------------------------------------------------------- */

typedef struct event {
    double seconds; /* from the first event */
    uint64_t ptr, bytes;
    int action; /* GS_TRACE_* */
} event_t;

static double clock_of(const char *text)
{
    unsigned h = 0, m = 0, s = 0, us = 0;
    if (sscanf(text, "%u:%u:%u%*[:.]%u", &h, &m, &s, &us) < 3)
        return strtod(text, NULL); /* seconds since the epoch, as newer RMM writes */
    return h * 3600.0 + m * 60.0 + s + us / 1e6;
}

/* Merge sort by time, stable (qsort is not). */
static void qsort_stable(event_t *events, size_t count)
{
    event_t *tmp = malloc(count * sizeof *tmp);
    if (tmp == NULL)
        return;
    for (size_t width = 1; width < count; width *= 2) {
        for (size_t lo = 0; lo < count; lo += 2 * width) {
            size_t mid = lo + width < count ? lo + width : count;
            size_t hi = lo + 2 * width < count ? lo + 2 * width : count;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = events[j].seconds < events[i].seconds ? events[j++] : events[i++];
            while (i < mid)
                tmp[k++] = events[i++];
            while (j < hi)
                tmp[k++] = events[j++];
        }
        memcpy(events, tmp, count * sizeof *tmp);
    }
    free(tmp);
}

/* A whole field of digits in base (16 takes an optional 0x), at most max; no sign, no space. */
static bool parse_field(const char *text, int base, uint64_t max, uint64_t *out)
{
    if (base == 16 && (strncmp(text, "0x", 2) == 0 || strncmp(text, "0X", 2) == 0))
        text += 2;
    if (*text == '\0' || !(base == 16 ? isxdigit((unsigned char)*text) : isdigit((unsigned char)*text)))
        return false;
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, base);
    if (errno != 0 || *end != '\0' || value > max)
        return false;
    *out = value;
    return true;
}

/* The largest size a trace line may hold: more than any device, and far from wrapping. */
#define TRACE_SIZE_MAX (1ull << 62)

/* Reads Thread,Time,Action,Pointer,Size,Stream. Returns the number of events, or -1 (a bad
 * line is named on stderr). */
static long read_trace(const char *path, event_t **out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[512];
    if (!fgets(line, sizeof line, f) || strncmp(line, "Thread,Time,Action,Pointer,Size", 31) != 0) {
        fclose(f);
        return -1;
    }
    size_t count = 0, capacity = 1024;
    event_t *events = malloc(capacity * sizeof *events);
    double first = -1;
    size_t line_number = 1;
    while (events && fgets(line, sizeof line, f)) {
        line_number++;
        if (strncmp(line, "Thread,Time,Action,", 19) == 0)
            continue; /* two processes that started a shared file at once both wrote one */
        char *field[6] = {0};
        char *save = NULL;
        int n = 0;
        for (char *tok = strtok_r(line, ",\n", &save); tok && n < 6;
             tok = strtok_r(NULL, ",\n", &save))
            field[n++] = tok;
        if (n < 5)
            continue;
        event_t e = {0};
        if (!parse_field(field[3], 16, UINT64_MAX, &e.ptr) ||
            !parse_field(field[4], 10, TRACE_SIZE_MAX, &e.bytes)) {
            fprintf(stderr, "gpushim: error: %s, line %zu: pointer '%s' or size '%s' is not a "
                    "hexadecimal address and a byte count up to 2^62\n",
                    path, line_number, field[3], field[4]);
            free(events);
            fclose(f);
            return -1;
        }
        if (strcmp(field[2], "allocate") == 0)
            e.action = GS_TRACE_ALLOCATE;
        else if (strcmp(field[2], "free") == 0 || strcmp(field[2], "deallocate") == 0)
            e.action = GS_TRACE_FREE;
        else
            e.action = GS_TRACE_ALLOCATE_FAILURE;
        double t = clock_of(field[1]);
        if (first < 0)
            first = t;
        e.seconds = t - first < -43200 ? t - first + 86400 : t - first; /* past midnight */
        if (count == capacity) {
            event_t *grown = realloc(events, (capacity *= 2) * sizeof *events);
            if (grown == NULL) {
                free(events);
                events = NULL;
                break;
            }
            events = grown;
        }
        events[count++] = e;
    }
    fclose(f);
    /* Time order: a GPUSHIM_TRACE file holds each thread's records in batches, so lines of
     * different threads interleave out of order. Stable: a thread's own order is kept. */
    if (events) {
        qsort_stable(events, count);
        double earliest = count ? events[0].seconds : 0;
        for (size_t i = 0; i < count; i++)
            events[i].seconds -= earliest;
    }
    *out = events;
    return events ? (long)count : -1;
}

/* Old pointer -> new pointer, open addressing (replays can be large). */
typedef struct ptr_pair {
    uint64_t from, to;
} ptr_pair_t;

/* A table for count events; *mask gets its index mask. */
static ptr_pair_t *pair_table(long count, size_t *mask)
{
    size_t size = 2;
    while (size < (size_t)count * 2)
        size <<= 1;
    *mask = size - 1;
    return calloc(size, sizeof(ptr_pair_t));
}

/* The table is a multimap: events of different threads that share a microsecond can put one
 * thread's allocation of an address before another thread's free of it, so an old pointer may be
 * live twice for a moment. A taken entry keeps its key (to = 0) so later probes go past it. */
static size_t pair_home(size_t mask, uint64_t from)
{
    return (size_t)((from >> 8) * 0x9E3779B97F4A7C15ull) & mask;
}

static void pair_put(ptr_pair_t *table, size_t mask, uint64_t from, uint64_t to)
{
    size_t i = pair_home(mask, from);
    while (table[i].from != 0 && !(table[i].from == from && table[i].to == 0))
        i = (i + 1) & mask;
    table[i] = (ptr_pair_t){.from = from, .to = to};
}

/* The new pointer for an old one (0: none live), and forgets it. */
static uint64_t pair_take(ptr_pair_t *table, size_t mask, uint64_t from)
{
    for (size_t i = pair_home(mask, from); table[i].from != 0; i = (i + 1) & mask) {
        if (table[i].from == from && table[i].to != 0) {
            uint64_t to = table[i].to;
            table[i].to = 0;
            return to;
        }
    }
    return 0;
}

/* The child side of replay: runs under the shim, reaches the driver as the CUDA runtime does. */
static int replay_child(const char *path)
{
    event_t *events;
    long count = read_trace(path, &events);
    if (count < 0)
        return fail("replay: cannot read trace %s", path);
    void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (driver == NULL)
        return fail("replay: cannot load libcuda.so.1: %s", dlerror());
    CUresult (*get_proc)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
        (CUresult(*)(const char *, void **, int, cuuint64_t,
                     CUdriverProcAddressQueryResult *))dlsym(driver, "cuGetProcAddress_v2");
    CUresult (*init)(unsigned int) = NULL;
    CUresult (*device_get)(CUdevice *, int) = NULL;
    CUresult (*retain)(CUcontext *, CUdevice) = NULL;
    CUresult (*set_current)(CUcontext) = NULL;
    CUresult (*alloc)(CUdeviceptr *, size_t) = NULL;
    CUresult (*release)(CUdeviceptr) = NULL;
    if (get_proc == NULL)
        return fail("replay: libcuda.so.1 has no %s", "cuGetProcAddress_v2");
    get_proc("cuInit", (void **)&init, 13000, 0, NULL);
    get_proc("cuDeviceGet", (void **)&device_get, 13000, 0, NULL);
    get_proc("cuDevicePrimaryCtxRetain", (void **)&retain, 13000, 0, NULL);
    get_proc("cuCtxSetCurrent", (void **)&set_current, 13000, 0, NULL);
    get_proc("cuMemAlloc", (void **)&alloc, 13000, 0, NULL);
    get_proc("cuMemFree", (void **)&release, 13000, 0, NULL);
    CUdevice dev;
    CUcontext ctx;
    if (!init || !alloc || !release || init(0) || device_get(&dev, 0) || retain(&ctx, dev) ||
        set_current(ctx))
        return fail("replay: cannot start CUDA on device %s", "0");
    size_t mask;
    ptr_pair_t *table = pair_table(count, &mask);
    if (table == NULL)
        return fail("cannot hold %s events in memory", "the trace's");
    long failures = 0, replayed = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++) {
        event_t *e = &events[i];
        if (e->action == GS_TRACE_ALLOCATE) {
            CUdeviceptr p;
            if (alloc(&p, e->bytes ? e->bytes : 1) != CUDA_SUCCESS) {
                failures++;
                continue;
            }
            pair_put(table, mask, e->ptr, p);
            replayed++;
        } else if (e->action == GS_TRACE_FREE) {
            uint64_t p = pair_take(table, mask, e->ptr);
            if (p) {
                release(p);
                replayed++;
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (size_t i = 0; i <= mask; i++)
        if (table[i].to)
            release(table[i].to);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("replayed %ld events in %.3f ms, %ld allocations failed\n", replayed, ms, failures);
    return 0;
}

static int cmd_replay(int argc, char **argv, const char *self)
{
    if (argc < 1)
        return fail("replay: no trace given%s", "");
    const char *modes[8];
    int mode_count = 0;
    for (int i = 1; i < argc; i += 2) {
        if (strcmp(argv[i], "--mode") != 0 || i + 1 >= argc || mode_count == 8)
            return fail("replay: unknown or incomplete option %s", argv[i]);
        modes[mode_count++] = argv[i + 1];
    }
    if (mode_count == 0) {
        modes[mode_count++] = "off";
        modes[mode_count++] = "pool";
    }
    if (set_preload() != 0)
        return 2;
    if (getenv("GPUSHIM_MANAGED_LIMIT") == NULL)
        setenv("GPUSHIM_MANAGED_LIMIT", "25%", 1); /* never oversubscribe a GPU by accident */
    char report[] = "/tmp/gpushim-replay-XXXXXX";
    int fd = mkstemp(report);
    if (fd < 0)
        return fail("replay: cannot make a temporary file%s", "");
    close(fd);
    setenv("GPUSHIM_REPORT", report, 1);
    setenv("GPUSHIM_REPORT_FORMAT", "json", 1);
    int status = 0;
    for (int m = 0; m < mode_count; m++) {
        setenv("GPUSHIM_MODE", modes[m], 1);
        char command[2 * GS_PATH_MAX];
        snprintf(command, sizeof command, "'%s' __replay-child '%s'", self, argv[0]);
        FILE *child = popen(command, "r");
        char line[256] = "";
        if (child == NULL || fgets(line, sizeof line, child) == NULL) {
            if (child)
                pclose(child);
            fprintf(stderr, "gpushim: error: replay under mode %s failed\n", modes[m]);
            status = 1;
            continue;
        }
        int rc = pclose(child);
        line[strcspn(line, "\n")] = '\0';
        char *text = slurp(report);
        char peak[32], reserved[32], err[256];
        json_t *parsed = text ? json_parse(text, err, sizeof err) : NULL;
        const json_t *devices = json_get(parsed, "devices");
        const json_t *device = devices && devices->kind == JSON_ARRAY && devices->count ? devices->items[0] : NULL;
        double in_use = json_number(device, "in_use_peak", -1);
        /* Pool and managed mode (the pool over managed memory) reserve; off mode holds what it uses. */
        double held = strcmp(modes[m], "off") != 0 ? json_number(json_get(device, "pool"), "reserved_peak", -1) : in_use;
        json_free(parsed);
        printf("mode %-7s %s; peak in use %s, peak reserved %s%s\n", modes[m], line,
               gs_format_bytes(in_use > 0 ? (uint64_t)in_use : 0, peak),
               gs_format_bytes(held > 0 ? (uint64_t)held : 0, reserved),
               strcmp(modes[m], "off") == 0 ? " (the driver's allocations)" : "");
        free(text);
        if (rc != 0)
            status = 1;
    }
    unlink(report);
    return status;
}

/* ---- plot ------------------------------------------------------------------------------- */

/* An in-process driver with no memory behind it: the pool's decisions, modelled. */
static uint64_t model_used, model_next = 0x100000000ull;
static CUresult model_alloc(CUdeviceptr *p, size_t bytes)
{
    *p = model_next;
    model_next += (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20) + (2u << 20);
    model_used += bytes;
    return CUDA_SUCCESS;
}
static CUresult model_free(CUdeviceptr p)
{
    (void)p;
    return CUDA_SUCCESS;
}
static CUresult model_device(CUdevice *d)
{
    *d = 0;
    return CUDA_SUCCESS;
}
static CUresult model_total(size_t *bytes, CUdevice d)
{
    (void)d;
    *bytes = 1ull << 40;
    return CUDA_SUCCESS;
}
static CUresult model_sync(void)
{
    return CUDA_SUCCESS;
}

static int cmd_plot(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "-o") != 0)
        return fail("plot: usage: gpushim plot TRACE -o FILE.svg%s", "");
    event_t *events;
    long count = read_trace(argv[0], &events);
    if (count <= 0)
        return fail("plot: cannot read a trace with events from %s", argv[0]);
    static const gs_driver_t model = {.mem_alloc = model_alloc,
                                      .mem_free = model_free,
                                      .ctx_get_device = model_device,
                                      .device_total_mem = model_total,
                                      .ctx_synchronize = model_sync};
    gs_driver_override(&model);
    gs_options_defaults(&gs_opts);
    gs_opts.mode = GS_MODE_POOL;
    gs_opts.pool_reuse = GS_REUSE_IMMEDIATE;
    gs_dispatch_use(&gs_backend_pool);
    double *in_use = malloc((size_t)count * sizeof *in_use),
           *reserved = malloc((size_t)count * sizeof *reserved);
    size_t mask;
    ptr_pair_t *table = pair_table(count, &mask);
    if (table == NULL || in_use == NULL || reserved == NULL) {
        free(table), free(in_use), free(reserved);
        return fail("cannot hold %s events in memory", "the trace's");
    }
    double now = 0, peak_in_use = 0, peak_reserved = 0;
    for (long i = 0; i < count; i++) {
        event_t *e = &events[i];
        if (e->action == GS_TRACE_ALLOCATE) {
            CUdeviceptr p;
            if (gs_mem_alloc(&p, e->bytes ? e->bytes : 1) == CUDA_SUCCESS) {
                pair_put(table, mask, e->ptr, p);
                now += (double)e->bytes;
            }
        } else if (e->action == GS_TRACE_FREE) {
            uint64_t p = pair_take(table, mask, e->ptr);
            if (p) {
                gs_mem_free(p);
                now -= (double)e->bytes;
            }
        }
        in_use[i] = now;
        reserved[i] = (double)model_used;
        if (reserved[i] > peak_reserved)
            peak_reserved = reserved[i];
        if (now > peak_in_use)
            peak_in_use = now;
    }
    double top = peak_reserved > peak_in_use ? peak_reserved : peak_in_use; /* the y axis */
    if (top < 1)
        top = 1;
    double duration = events[count - 1].seconds > 0 ? events[count - 1].seconds : 1;
    FILE *f = fopen(argv[2], "w");
    if (f == NULL)
        return fail("plot: cannot write %s", argv[2]);
    const double w = 900, h = 420, left = 80, right = 20, top_margin = 30, bottom = 50;
    char label[32];
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<title>GPU memory over time: %s</title>\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            w, h, w, h, argv[0]);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left,
            h - bottom, w - right, h - bottom);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left,
            top_margin, left, h - bottom);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%s</text>\n", left - 6,
            top_margin + 4, gs_format_bytes((uint64_t)top, label));
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">0</text>\n", left - 6,
            h - bottom + 4);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.3f s</text>\n", w - right,
            h - bottom + 20, duration);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\">0 s</text>\n", left, h - bottom + 20);
    static const struct {
        const char *id, *color, *name;
    } series[] = {{"in-use", "#1f77b4", "in use (from the trace)"},
                  {"reserved", "#ff7f0e", "reserved by the pool (modelled, immediate reuse)"}};
    for (int s = 0; s < 2; s++) {
        const double *y = s == 0 ? in_use : reserved;
        fprintf(f, "<polyline id=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"",
                series[s].id, series[s].color);
        long step = count > 4000 ? count / 4000 : 1;
        for (long i = 0; i < count; i += step) {
            double x = left + (w - left - right) * events[i].seconds / duration;
            double yy = h - bottom - (h - bottom - top_margin) * y[i] / top;
            fprintf(f, "%.1f,%.1f ", x, yy);
        }
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s</text>\n", left + 10,
                top_margin - 10 + 14.0 * (s + 1), series[s].color, series[s].name);
    }
    fprintf(f, "</svg>\n");
    fclose(f);
    char a[32], b[32];
    printf("wrote %s: %ld events over %.3f s; peak in use %s, peak reserved %s (modelled)\n",
           argv[2], count, duration, gs_format_bytes((uint64_t)peak_in_use, a),
           gs_format_bytes((uint64_t)peak_reserved, b));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(argv[1], "report") == 0)
        return cmd_report(argc - 2, argv + 2);
    if (strcmp(argv[1], "replay") == 0)
        return cmd_replay(argc - 2, argv + 2, argv[0]);
    if (strcmp(argv[1], "__replay-child") == 0 && argc == 3)
        return replay_child(argv[2]);
    if (strcmp(argv[1], "plot") == 0)
        return cmd_plot(argc - 2, argv + 2);
    return fail("unknown command %s (see gpushim help)", argv[1]);
}

/* options.c: the one table of GPUSHIM_* variables. Parsing, validation, error messages, the
 * README table and the help text all come from gs_option_table below. */
#include "gs.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

gs_options_t gs_opts;

typedef struct gs_option gs_option_t;
struct gs_option {
    const char *name;
    const char *accepted; /* what the error message and the docs say is accepted */
    const char *default_text;
    const char *help;
    int (*parse)(const gs_option_t *opt, const char *value, gs_options_t *out);
    size_t offset;              /* of the field in gs_options_t */
    const char *const *choices; /* enum options: index = stored value */
};

static const char *const mode_choices[] = {"off", "pool", "managed", NULL};
static const char *const reuse_choices[] = {"safe", "immediate", NULL};
static const char *const auto_off_choices[] = {"auto", "off", NULL};
static const char *const advice_choices[] = {"none", "preferred", "accessed-by", NULL};
static const char *const on_oom_choices[] = {"fail", "managed", NULL};
static const char *const format_choices[] = {"text", "json", NULL};
static const char *const host_pool_choices[] = {"auto", "on", "off", NULL};

/* A file path (a template, see gs_expand_path); it must name a folder ('/') or have a dot, so a
 * bare word is not taken for a file name by mistake. */
static int parse_path(const gs_option_t *opt, const char *value, gs_options_t *out)
{
    if ((strchr(value, '/') == NULL && strchr(value, '.') == NULL) || strlen(value) >= GS_PATH_MAX)
        return -EINVAL;
    strcpy((char *)out + opt->offset, value);
    return 0;
}

static int parse_bool(const gs_option_t *opt, const char *value, gs_options_t *out)
{
    static const char *const yes[] = {"1", "yes", "on", "true"}, *const no[] = {"0", "no", "off",
                                                                                "false"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
            *(bool *)((char *)out + opt->offset) = strcasecmp(value, yes[i]) == 0;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_choice(const gs_option_t *opt, const char *value, gs_options_t *out)
{
    for (int i = 0; opt->choices[i]; i++) {
        if (strcasecmp(value, opt->choices[i]) == 0) {
            *(int *)((char *)out + opt->offset) = i;
            return 0;
        }
    }
    return -EINVAL;
}

/* Pool sizes: at most all of the device's memory. */
static int parse_size_option(const gs_option_t *opt, const char *value, gs_options_t *out)
{
    gs_size_spec_t spec;
    if (gs_parse_size(value, &spec) != 0 || spec.of_host || spec.percent > 100)
        return -EINVAL; /* %host: only GPUSHIM_MANAGED_LIMIT's */
    *(gs_size_spec_t *)((char *)out + opt->offset) = spec;
    return 0;
}

/* The managed cap may pass the device's memory: that is what managed memory is for. */
static int parse_limit_option(const gs_option_t *opt, const char *value, gs_options_t *out)
{
    return gs_parse_size(value, (gs_size_spec_t *)((char *)out + opt->offset));
}

/* stderr | off | a file path. A bare word is refused so that a typo ("stdrr") is not taken
 * for a file name. */
static int parse_report(const gs_option_t *opt, const char *value, gs_options_t *out)
{
    (void)opt;
    if (strcasecmp(value, "stderr") == 0) {
        out->report = GS_REPORT_STDERR;
        return 0;
    }
    if (strcasecmp(value, "off") == 0) {
        out->report = GS_REPORT_OFF;
        return 0;
    }
    if (parse_path(opt, value, out) != 0)
        return -EINVAL;
    out->report = GS_REPORT_FILE;
    return 0;
}

#define GS_FIELD(f) offsetof(gs_options_t, f)
#define SIZE_ACCEPTED "bytes (digits, an optional fraction) with K/M/G/T or KiB/MiB/GiB/TiB suffix, or N% of device memory (N at least 0.0001)"

static const gs_option_t gs_option_table[] = {
    {"GPUSHIM_MODE", "off, pool, managed", "off",
     "Backend for device allocations: off passes every call to the driver and only counts; "
     "pool sub-allocates from large chunks; managed serves CUDA managed memory.",
     parse_choice, GS_FIELD(mode), mode_choices},
    {"GPUSHIM_REPORT",
     "stderr, off, or a file path containing '/' or '.' (%p pid, %h host, %r rank)", "stderr",
     "Where the exit report goes. It is written only by processes that allocated device "
     "memory. %r is RANK, OMPI_COMM_WORLD_RANK, PMI_RANK or SLURM_PROCID, so each rank of a job "
     "writes its own.",
     parse_report, GS_FIELD(report_path), NULL},
    {"GPUSHIM_REPORT_FORMAT", "text, json", "text",
     "The report for people, or JSON (schema gpushim-report/1, described in the README) for tools "
     "and for `gpushim report`.",
     parse_choice, GS_FIELD(report_format), format_choices},
    {"GPUSHIM_TRACE", "a file path containing '/' or '.' (%p pid, %h host, %r rank)", "(none)",
     "Writes every allocation and free as CSV in RMM's logging format (Thread,Time,Action,Pointer,"
     "Size,Stream), for RMM's replay benchmark and `gpushim replay`.",
     parse_path, GS_FIELD(trace_path), NULL},
    {"GPUSHIM_POOL_INITIAL", SIZE_ACCEPTED,
     "0", "Pool mode: memory reserved at the first allocation on a device (0: grow on demand).",
     parse_size_option, GS_FIELD(pool_initial), NULL},
    {"GPUSHIM_POOL_MAX", SIZE_ACCEPTED,
     "100%",
     "Pool mode: most memory the pool reserves on one device; past it allocations fail "
     "with CUDA_ERROR_OUT_OF_MEMORY.",
     parse_size_option, GS_FIELD(pool_max), NULL},
    {"GPUSHIM_POOL_CHUNK", SIZE_ACCEPTED,
     "64M", "Pool mode: smallest amount the pool takes from the driver when it grows.",
     parse_size_option, GS_FIELD(pool_chunk), NULL},
    {"GPUSHIM_POOL_REUSE", "safe, immediate", "safe",
     "Pool mode: safe keeps freed blocks out of use until a device synchronization has passed "
     "(cudaFree's guarantee, without its wait); immediate reuses them at once (RMM and PyTorch "
     "semantics: only for programs that order their streams themselves).",
     parse_choice, GS_FIELD(pool_reuse), reuse_choices},
    {"GPUSHIM_POOL_EVENTS", "auto, off", "auto",
     "Pool mode, safe reuse: auto marks when the work before a free is done with an event on the "
     "legacy default stream (which every other blocking stream waits for) and one on each "
     "non-blocking stream the program created that has work queued (up to 16 streams), and "
     "recycles pending blocks when they complete, without a device-wide wait; off uses device "
     "synchronizations only.",
     parse_choice, GS_FIELD(pool_events), auto_off_choices},
    {"GPUSHIM_POOL_IDLE_REUSE", "auto, off", "auto",
     "Pool mode, safe reuse: auto hands a freed block out again at once when no GPU work was "
     "issued since the latest mark or synchronization, which has completed (the shim watches "
     "every driver entry point that launches kernels or graphs, copies, sets memory or writes "
     "from a stream); off makes every free wait for a mark or synchronization after it.",
     parse_choice, GS_FIELD(pool_idle_reuse), auto_off_choices},
    {"GPUSHIM_POOL_EXPANDABLE", "auto, off", "auto",
     "Pool mode: auto grows the heap of blocks of 256 KiB and more in place, mapping physical "
     "memory at the end of one reserved virtual range (CUDA's virtual memory management, where the "
     "device supports it), so it never splits into chunks that blocks cannot span; off takes "
     "separate chunks from cuMemAlloc. Blocks in the range cannot be shared by legacy CUDA IPC "
     "(cudaIpcGetMemHandle); requests over GPUSHIM_POOL_CHUNK get chunks of their own either way.",
     parse_choice, GS_FIELD(pool_expandable), auto_off_choices},
    {"GPUSHIM_POOL_PENDING_MAX", SIZE_ACCEPTED, "256M",
     "Pool mode, safe reuse: freed bytes waiting for a synchronization in the pool; past this "
     "(or past 1/16 of the pool, when it would otherwise grow) the shim synchronizes the device "
     "itself. Each thread's cache may hold up to min(32 MiB, this) more.",
     parse_size_option, GS_FIELD(pool_pending_max), NULL},
    {"GPUSHIM_POOL_RELEASE_THRESHOLD", SIZE_ACCEPTED, "100%",
     "Pool mode: when the program synchronizes the device (cudaDeviceSynchronize), wholly free "
     "chunks go back to the driver while the pool holds more than this unused, for other "
     "processes on the GPU (0: all of them, as cudaMemPoolAttrReleaseThreshold 0). The default "
     "keeps everything for reuse; the pool still gives free chunks back when the driver runs "
     "out.",
     parse_size_option, GS_FIELD(pool_release_threshold), NULL},
    {"GPUSHIM_ON_OOM", "fail, managed", "fail",
     "Pool mode: what an allocation the pool cannot serve gets: CUDA's out-of-memory error, or a "
     "block of managed memory (spilled). Spilled memory is pooled like device memory: freed "
     "blocks are reused, and the pool does not give device chunks back to make room.",
     parse_choice, GS_FIELD(on_oom), on_oom_choices},
    {"GPUSHIM_DEVICE_LIMIT", SIZE_ACCEPTED "; 0: none", "0",
     "Every mode: the most device memory this process may use per device (HAMi-core's "
     "CUDA_DEVICE_MEMORY_LIMIT). In off and pool mode allocations past it fail with "
     "CUDA_ERROR_OUT_OF_MEMORY; managed memory past it is placed in host memory (preferred "
     "location the CPU, accessed by the device) instead. cuMemGetInfo reports it as the total.",
     parse_size_option, GS_FIELD(device_limit), NULL},
    {"GPUSHIM_HOST_POOL", "auto, on, off", "auto",
     "Pinned host memory (cuMemHostAlloc, cuMemAllocHost: cudaHostAlloc, cudaMallocHost): on "
     "reuses freed blocks, under the same safe-reuse rule as device memory; auto is on in pool "
     "and managed mode and off in off mode.",
     parse_choice, GS_FIELD(host_pool), host_pool_choices},
    {"GPUSHIM_MANAGED_PREFETCH", "1, 0, yes, no, on, off, true, false", "on",
     "Managed memory: prefetch each new piece of managed memory to its device when the shim takes "
     "it from the driver, so data that fits starts on the GPU instead of faulting in page by "
     "page; reused blocks stay where they are.",
     parse_bool, GS_FIELD(managed_prefetch), NULL},
    {"GPUSHIM_MANAGED_ADVICE", "none, preferred, accessed-by", "none",
     "Managed memory: cuMemAdvise for each piece the shim takes from the driver: its device as "
     "the preferred location, or as a device that accesses it.",
     parse_choice, GS_FIELD(managed_advice), advice_choices},
    {"GPUSHIM_MANAGED_LIMIT",
     "bytes (digits, an optional fraction) with K/M/G/T or KiB/MiB/GiB/TiB suffix, N% of device "
     "memory (0.0001 to 1000), or N%host (of host memory); 0: none",
     "0",
     "Managed memory: most bytes one process may hold per device, freed blocks kept for reuse "
     "included (they are given back to make room); past it allocations fail with "
     "CUDA_ERROR_OUT_OF_MEMORY. Set it on shared GPUs: oversubscribing one can stall it for all.",
     parse_limit_option, GS_FIELD(managed_limit), NULL},
};

#define GS_OPTION_COUNT (sizeof gs_option_table / sizeof gs_option_table[0])

size_t gs_option_count(void)
{
    return GS_OPTION_COUNT;
}

const char *gs_option_name(size_t i)
{
    return i < GS_OPTION_COUNT ? gs_option_table[i].name : NULL;
}

void gs_options_defaults(gs_options_t *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < GS_OPTION_COUNT; i++) {
        const gs_option_t *opt = &gs_option_table[i];
        if (opt->default_text[0] == '(') /* "(none)": the zeroed field */
            continue;
        int rc = opt->parse(opt, opt->default_text, out);
        (void)rc; /* defaults are valid: tests/unit/test_options.c checks it */
    }
}

/* Sizes, strictly: digits with an optional fraction ("1.5"), no sign, exponent, hex float or
 * space, then a unit (none or B, K/KB/KiB, M.., G.., T..; all powers of 1024, any case) or a
 * percent sign; "%host" is parsed here and refused by the options that do not take it. The bytes
 * must be whole; a percentage at least GS_PERCENT_MIN, so that no value but 0 means 0 bytes. */
#define GS_PERCENT_MIN 0.0001
int gs_parse_size(const char *text, gs_size_spec_t *out)
{
    static const struct {
        const char *suffix;
        int shift;
    } units[] = {{"", 0},     {"B", 0},   {"K", 10},   {"KB", 10}, {"KIB", 10},
                 {"M", 20},   {"MB", 20}, {"MIB", 20}, {"G", 30},  {"GB", 30},
                 {"GIB", 30}, {"T", 40},  {"TB", 40},  {"TIB", 40}};
    if (text == NULL || !isdigit((unsigned char)text[0]))
        return -EINVAL;
    const char *end = text;
    while (isdigit((unsigned char)*end))
        end++;
    if (*end == '.') {
        end++;
        if (!isdigit((unsigned char)*end))
            return -EINVAL;
        while (isdigit((unsigned char)*end))
            end++;
    }
    if (end - text > 40)
        return -EINVAL;
    char number_text[48];
    memcpy(number_text, text, (size_t)(end - text));
    number_text[end - text] = '\0';
    double number = strtod(number_text, NULL); /* only digits and a point: no locale surprises */
    bool of_host = strcasecmp(end, "%host") == 0;
    if (strcmp(end, "%") == 0 || of_host) {
        if (number < GS_PERCENT_MIN || number > (of_host ? 100 : 1000)) /* device: oversubscribe */
            return -EINVAL;
        out->bytes = 0;
        out->percent = number;
        out->of_host = of_host;
        return 0;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) != 0)
            continue;
        double bytes = ldexp(number, units[i].shift);
        if (bytes >= 0x1p63 || bytes != floor(bytes) || (bytes == 0 && number != 0))
            return -EINVAL;
        out->bytes = (uint64_t)bytes;
        out->percent = 0;
        out->of_host = false;
        return 0;
    }
    return -EINVAL;
}

uint64_t gs_size_resolve(gs_size_spec_t spec, uint64_t device_total)
{
    if (spec.percent > 0 && spec.of_host)
        return (uint64_t)((double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE) *
                          spec.percent / 100.0);
    if (spec.percent > 0)
        return (uint64_t)((double)device_total * spec.percent / 100.0);
    return spec.bytes;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[64];
    if (lb >= 64 || la >= 64)
        return 64;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void unknown_variable(const char *name, char *err, size_t err_len)
{
    const char *closest = NULL;
    size_t best = 4; /* suggest only close matches */
    for (size_t i = 0; i < GS_OPTION_COUNT; i++) {
        size_t d = edit_distance(name, gs_option_table[i].name);
        if (d < best) {
            best = d;
            closest = gs_option_table[i].name;
        }
    }
    int n = snprintf(err, err_len, "%s is not a gpushim variable", name);
    if (closest && n > 0 && (size_t)n < err_len)
        n += snprintf(err + n, err_len - (size_t)n, " (did you mean %s?)", closest);
    if (n > 0 && (size_t)n < err_len) {
        n += snprintf(err + n, err_len - (size_t)n, "; known:");
        for (size_t i = 0; i < GS_OPTION_COUNT && n > 0 && (size_t)n < err_len; i++)
            n += snprintf(err + n, err_len - (size_t)n, "%s %s", i ? "," : "",
                          gs_option_table[i].name);
    }
}

int gs_options_parse(char *const *envp, gs_options_t *out, char *err, size_t err_len)
{
    gs_options_defaults(out);
    for (; envp && *envp; envp++) {
        const char *entry = *envp;
        if (strncmp(entry, "GPUSHIM_", 8) != 0)
            continue;
        const char *eq = strchr(entry, '=');
        size_t name_len = eq ? (size_t)(eq - entry) : strlen(entry);
        const char *value = eq ? eq + 1 : "";
        const gs_option_t *opt = NULL;
        for (size_t i = 0; i < GS_OPTION_COUNT; i++) {
            if (strlen(gs_option_table[i].name) == name_len &&
                strncmp(gs_option_table[i].name, entry, name_len) == 0)
                opt = &gs_option_table[i];
        }
        if (opt == NULL) {
            char raw[64], name[160];
            snprintf(raw, sizeof raw, "%.*s", (int)(name_len < 63 ? name_len : 63), entry);
            gs_escape(raw, name, sizeof name);
            unknown_variable(name, err, err_len);
            return -EINVAL;
        }
        if (*value == '\0') /* set but empty: the default, as if unset */
            continue;
        if (opt->parse(opt, value, out) != 0) {
            char shown[160];
            gs_escape(value, shown, sizeof shown);
            snprintf(err, err_len, "%s=%s is not valid; accepted: %s", opt->name, shown,
                     opt->accepted);
            return -EINVAL;
        }
    }
    return 0;
}

void gs_options_describe(int fd, bool markdown)
{
    static gs_buf_t buf;
    buf.len = 0;
    if (markdown) {
        gs_buf_printf(&buf, "| Variable | Accepted | Default | Meaning |\n|---|---|---|---|\n");
        for (size_t i = 0; i < GS_OPTION_COUNT; i++) {
            const gs_option_t *o = &gs_option_table[i];
            gs_buf_printf(&buf, "| `%s` | %s | `%s` | %s |\n", o->name, o->accepted,
                          o->default_text, o->help);
        }
    } else {
        for (size_t i = 0; i < GS_OPTION_COUNT; i++) {
            const gs_option_t *o = &gs_option_table[i];
            gs_buf_printf(&buf, "%s (default %s)\n    %s\n    accepted: %s\n", o->name,
                          o->default_text, o->help, o->accepted);
        }
    }
    gs_write_all(fd, buf.data, buf.len);
}

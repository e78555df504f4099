/* report.c: the exit report, rendered from counters only (no CUDA, no allocation), as text for
 * people or as JSON (schema gpushim-report/1, documented in the README). */
#include "gs.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEAKS_SHOWN 10  /* text */
#define LEAKS_LISTED 64 /* JSON */

static const char *const gs_mode_names[] = {"off", "pool", "managed"};

static void read_small_file(const char *path, char *out, size_t len)
{
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '"' || *p == '\\')
            *p = *p == '\n' ? '\0' : '_';
}

/* The largest live blocks of one device, kept sorted, largest first. */
typedef struct leak_list {
    int device;
    const gs_backend_t *backend;
    int count, capacity;
    gs_block_t blocks[LEAKS_LISTED];
} leak_list_t;

static void collect_leak(void *ctx, const gs_block_t *block)
{
    leak_list_t *list = ctx;
    if (block->device != list->device)
        return;
    gs_block_t live = *block;
    if (list->backend->live_bytes && (live.bytes = list->backend->live_bytes(block)) == 0)
        return;
    block = &live;
    int at;
    if (list->count < list->capacity)
        at = list->count++;
    else if (block->bytes > list->blocks[list->capacity - 1].bytes)
        at = list->capacity - 1;
    else
        return;
    while (at > 0 && list->blocks[at - 1].bytes < block->bytes) {
        list->blocks[at] = list->blocks[at - 1];
        at--;
    }
    list->blocks[at] = *block;
}

static void histogram_bounds(int bucket, char out[32])
{
    gs_format_bytes(bucket == 0 ? 1 : 1ull << bucket, out);
}

static void render_text_device(int device, const gs_device_stats_t *s, const leak_list_t *leaks,
                               const gs_oom_event_t *ooms, int oom_count, double ticks_per_ns,
                               gs_buf_t *out)
{
    char requested[32], peak[32], now[32], size[32];
    uint64_t live = s->allocations - s->frees;
    gs_buf_printf(out,
                  "gpushim: device %d: %llu allocations, %llu frees, %llu failed, "
                  "%llu frees of pointers not allocated through the shim\n",
                  device, (unsigned long long)s->allocations, (unsigned long long)s->frees,
                  (unsigned long long)s->failures, (unsigned long long)s->foreign_frees);
    gs_buf_printf(out,
                  "gpushim: device %d: requested %s in total; in use: peak %s, at exit %s "
                  "in %llu live allocations\n",
                  device, gs_format_bytes(s->bytes_requested, requested),
                  gs_format_bytes((uint64_t)s->peak, peak),
                  gs_format_bytes((uint64_t)s->in_use, now), (unsigned long long)live);
    double mean_ns =
        s->timed_calls ? (double)s->shim_ticks / ticks_per_ns / (double)s->timed_calls : 0;
    gs_buf_printf(out,
                  "gpushim: device %d: %llu calls reached the driver; time in the shim %.0f ns "
                  "per call (mean of %llu timed allocation and free calls)\n",
                  device, (unsigned long long)s->driver_calls, mean_ns,
                  (unsigned long long)s->timed_calls);
    if (s->allocations) {
        gs_buf_printf(out,
                      "gpushim: device %d: peak in use reached %.3f s after start; sizes:", device,
                      gs_ticks_to_seconds(s->peak_ticks, ticks_per_ns));
        for (int k = 0; k < GS_HISTOGRAM_BUCKETS; k++) {
            if (s->histogram[k] == 0)
                continue;
            histogram_bounds(k, size);
            gs_buf_printf(out, " <=%s: %llu,", size, (unsigned long long)s->histogram[k]);
        }
        out->len--; /* the last comma */
        gs_buf_printf(out, "\n");
    }
    if (leaks->count > 0) {
        gs_buf_printf(out, "gpushim: device %d: live at exit, largest first:", device);
        for (int i = 0; i < leaks->count && i < LEAKS_SHOWN; i++)
            gs_buf_printf(out, " %#llx (%s)%s", (unsigned long long)leaks->blocks[i].base,
                          gs_format_bytes(leaks->blocks[i].bytes, size),
                          i + 1 < leaks->count && i + 1 < LEAKS_SHOWN ? "," : "");
        gs_buf_printf(out, "%s\n", live > LEAKS_SHOWN ? ", ..." : "");
    }
    if (s->resets > 0)
        gs_buf_printf(out,
                      "gpushim: device %d: the context holding its memory was reset or destroyed "
                      "%llu times (cudaDeviceReset, cuCtxDestroy); that released %llu allocations "
                      "(%s) the program had not freed, counted as frees\n",
                      device, (unsigned long long)s->resets, (unsigned long long)s->reset_released,
                      gs_format_bytes(s->reset_released_bytes, size));
    if (oom_count > 0) {
        gs_buf_printf(out, "gpushim: device %d: out of memory, latest:", device);
        for (int i = 0; i < oom_count; i++)
            gs_buf_printf(out, " %s at %.3f s%s", gs_format_bytes(ooms[i].bytes, size),
                          gs_ticks_to_seconds(ooms[i].ticks, ticks_per_ns),
                          i + 1 < oom_count ? "," : "\n");
    }
}

static void render_json_device(int device, const gs_device_stats_t *s, const leak_list_t *leaks,
                               const gs_oom_event_t *ooms, int oom_count, double ticks_per_ns,
                               gs_buf_t *out)
{
    double mean_ns =
        s->timed_calls ? (double)s->shim_ticks / ticks_per_ns / (double)s->timed_calls : 0;
    gs_buf_printf(
        out,
        "    {\n      \"device\": %d,\n      \"allocations\": %llu,\n      \"frees\": %llu,\n"
        "      \"failed\": %llu,\n      \"foreign_frees\": %llu,\n"
        "      \"bytes_requested\": %llu,\n      \"in_use_peak\": %lld,\n"
        "      \"in_use_peak_at_s\": %.6f,\n      \"in_use_at_exit\": %lld,\n"
        "      \"live_at_exit\": %llu,\n      \"driver_calls\": %llu,\n"
        "      \"shim_ns_per_call\": %.1f,\n      \"timed_calls\": %llu,\n"
        "      \"resets\": %llu,\n      \"released_by_reset\": %llu,\n"
        "      \"released_by_reset_bytes\": %llu,\n      \"size_histogram\": [",
        device, (unsigned long long)s->allocations, (unsigned long long)s->frees,
        (unsigned long long)s->failures, (unsigned long long)s->foreign_frees,
        (unsigned long long)s->bytes_requested, (long long)s->peak,
        gs_ticks_to_seconds(s->peak_ticks, ticks_per_ns), (long long)s->in_use,
        (unsigned long long)(s->allocations - s->frees), (unsigned long long)s->driver_calls,
        mean_ns, (unsigned long long)s->timed_calls, (unsigned long long)s->resets,
        (unsigned long long)s->reset_released, (unsigned long long)s->reset_released_bytes);
    const char *sep = "";
    for (int k = 0; k < GS_HISTOGRAM_BUCKETS; k++) {
        if (s->histogram[k] == 0)
            continue;
        gs_buf_printf(out, "%s{\"le\": %llu, \"count\": %llu}", sep,
                      (unsigned long long)(k == 0 ? 1 : 1ull << k),
                      (unsigned long long)s->histogram[k]);
        sep = ", ";
    }
    gs_buf_printf(out, "],\n      \"leaks\": [");
    for (int i = 0; i < leaks->count; i++)
        gs_buf_printf(out, "%s{\"ptr\": \"%#llx\", \"bytes\": %llu}", i ? ", " : "",
                      (unsigned long long)leaks->blocks[i].base,
                      (unsigned long long)leaks->blocks[i].bytes);
    gs_buf_printf(out, "],\n      \"out_of_memory\": [");
    for (int i = 0; i < oom_count; i++)
        gs_buf_printf(out, "%s{\"bytes\": %llu, \"at_s\": %.6f}", i ? ", " : "",
                      (unsigned long long)ooms[i].bytes,
                      gs_ticks_to_seconds(ooms[i].ticks, ticks_per_ns));
    gs_buf_printf(out, "]");
}

/* A JSON string's contents: quote, backslash and control bytes escaped (\u00XX), the rest as it
 * is (program and host names are the system's bytes). */
static const char *json_escaped(const char *in, char *out, size_t len)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && n + 7 < len; p++) {
        if (*p == '"' || *p == '\\')
            out[n++] = '\\', out[n++] = (char)*p;
        else if (*p < 0x20 || *p == 0x7f)
            n += (size_t)snprintf(out + n, len - n, "\\u%04x", *p);
        else
            out[n++] = (char)*p;
    }
    out[n] = '\0';
    return out;
}

/* The rank as JSON: a number when it is one (the usual), else a string, never raw text. */
static const char *json_rank(const char *rank, char *out, size_t len)
{
    size_t digits = rank ? strspn(rank, "0123456789") : 0;
    if (rank == NULL)
        snprintf(out, len, "null");
    else if (digits > 0 && digits < 19 && rank[digits] == '\0' && (rank[0] != '0' || digits == 1))
        snprintf(out, len, "%s", rank);
    else {
        char escaped[256];
        snprintf(out, len, "\"%s\"", json_escaped(rank, escaped, sizeof escaped));
    }
    return out;
}

void gs_report_render(gs_buf_t *out)
{
    bool json = gs_opts.report_format == GS_FORMAT_JSON;
    char name[64], host[128] = "";
    read_small_file("/proc/self/comm", name, sizeof name);
    gethostname(host, sizeof host - 1);
    const char *rank = getenv("RANK")                   ? getenv("RANK")
                       : getenv("OMPI_COMM_WORLD_RANK") ? getenv("OMPI_COMM_WORLD_RANK")
                       : getenv("PMI_RANK")             ? getenv("PMI_RANK")
                       : getenv("SLURM_PROCID")         ? getenv("SLURM_PROCID")
                                                        : NULL;
    const gs_backend_t *backend = gs_dispatch_backend();
    char name_json[400], host_json[800], rank_json[300];
    if (json)
        gs_buf_printf(
            out,
            "{\n  \"schema\": \"gpushim-report/1\",\n  \"version\": \"%s\",\n  \"pid\": %d,\n"
            "  \"program\": \"%s\",\n  \"host\": \"%s\",\n  \"rank\": %s,\n  \"mode\": \"%s\",\n"
            "  \"devices\": [\n",
            GS_VERSION, (int)getpid(), json_escaped(name, name_json, sizeof name_json),
            json_escaped(host, host_json, sizeof host_json),
            json_rank(rank, rank_json, sizeof rank_json), gs_mode_names[gs_opts.mode]);
    else
        gs_buf_printf(out, "gpushim: report for pid %d (%s), mode %s\n", (int)getpid(), name,
                      gs_mode_names[gs_opts.mode]);
    double ticks_per_ns = gs_ticks_per_ns();
    bool first = true;
    for (int device = 0; device < GS_MAX_DEVICES; device++) {
        gs_device_stats_t s;
        gs_stats_snapshot(device, &s);
        if (s.allocations + s.failures + s.frees + s.foreign_frees == 0)
            continue;
        static leak_list_t leaks; /* static: too large for an exiting thread's stack */
        leaks = (leak_list_t){
            .device = device, .backend = backend, .capacity = json ? LEAKS_LISTED : LEAKS_SHOWN};
        if (s.allocations > s.frees)
            gs_ptrmap_each(collect_leak, &leaks);
        gs_oom_event_t ooms[GS_OOM_EVENTS];
        int oom_count = gs_stats_oom_events(device, ooms);
        if (json) {
            gs_buf_printf(out, "%s", first ? "" : ",\n");
            render_json_device(device, &s, &leaks, ooms, oom_count, ticks_per_ns, out);
            if (backend->report)
                backend->report(device, out, true);
            gs_budget_report(device, out, true);
            gs_buf_printf(out, "\n    }");
        } else {
            render_text_device(device, &s, &leaks, ooms, oom_count, ticks_per_ns, out);
            if (backend->report)
                backend->report(device, out, false);
            gs_budget_report(device, out, false);
        }
        first = false;
    }
    if (json)
        gs_buf_printf(out, "\n  ]");
    gs_host_pool_report(out, json);
    if (json)
        gs_buf_printf(out, "\n}\n");
}

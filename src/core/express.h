/* express.h: the core's part of a backend's express path (gs_backend_t.express_mem_alloc): the
 * timing sample, the counting and the trace, inline, so that the commonest calls run as one
 * function that calls nothing. The full path (dispatch.c) does the same through call_begin and
 * call_end; a call the express path declines goes there as if the express path had not run. */
#ifndef GS_EXPRESS_H
#define GS_EXPRESS_H

#include "gs.h"
#include "stats.h"

/* Calls until this thread's next timed one (dispatch.c): reading the clock twice costs about as
 * much as a pool hit, so only some calls are timed and the report gives their mean. */
extern GS_TLS uint32_t gs_until_timed;
uint64_t gs_timing_start(void); /* reads the clock and sets when the next timed call comes */

/* Whether this call is one to time. */
static inline bool gs_timing_due(void)
{
    return __builtin_expect(--gs_until_timed == 0, 0);
}

/* The start of a call: its clock reading, or 0 when it is not timed. */
static inline uint64_t gs_timing_begin(void)
{
    return gs_timing_due() ? gs_timing_start() : 0;
}

/* The express path declined the call and hands it to the full path, which times it afresh:
 * as if the express path had not run. */
static inline void gs_timing_declined(uint64_t start)
{
    gs_until_timed = start ? 1 : gs_until_timed + 1;
}

static inline void gs_timing_end(uint64_t start)
{
    if (__builtin_expect(start != 0, 0))
        gs_stats_time(0, gs_ticks() - start);
}

/* cuMemAlloc succeeded on device 0: bytes at ptr. same_thread: as gs_block_t.same_thread. The
 * trace first and the counting last, so that no value lives across the counting's rare calls
 * (no registers to save on the way in and out). */
static inline void gs_express_allocated(CUdeviceptr ptr, uint64_t bytes, bool same_thread)
{
    if (__builtin_expect(gs_tracing, 0))
        gs_trace_record(GS_TRACE_ALLOCATE, ptr, bytes, NULL, same_thread);
    gs_count_alloc(0, bytes);
}

/* cuMemFree of bytes at ptr succeeded on device 0. */
static inline void gs_express_freed(CUdeviceptr ptr, uint64_t bytes, bool same_thread)
{
    if (__builtin_expect(gs_tracing, 0))
        gs_trace_record(GS_TRACE_FREE, ptr, bytes, NULL, same_thread);
    gs_count_free(0, bytes);
}

/* The full paths (dispatch.c), for the calls the express path declines. */
CUresult gs_mem_alloc_full(CUdeviceptr *dptr, size_t bytes);
CUresult gs_mem_free_full(CUdeviceptr ptr);

#endif

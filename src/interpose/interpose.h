/* interpose.h: shared by the files that define intercepted symbols. */
#ifndef GS_INTERPOSE_H
#define GS_INTERPOSE_H

#include <cuda.h>
#include <stdbool.h>

/* Our wrapper for an exported driver symbol name ("cuMemAlloc_v2"), or NULL. */
void *gs_intercept_by_name(const char *name);
/* Our wrapper for what cuGetProcAddress(symbol, version, flags) resolves to, or NULL. */
void *gs_intercept_for_proc(const char *symbol, int cuda_version, cuuint64_t flags);

/* work.c: our wrapper for a work-issuing driver function the program looked up (its name, and
 * what the driver resolved it to; exact: the name is the function's own, not a base name that
 * cuGetProcAddress resolved to a variant), or real itself for any other name. */
void *gs_work_wrap(const char *name, void *real, bool exact);

#endif

/* harness.h: runs a program under the shim with a chosen environment and captures its output. */
#ifndef GS_HARNESS_H
#define GS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct run_result {
    int status; /* exit status, or 128 + signal */
    char *out;  /* stdout, NUL-terminated */
    char *err;  /* stderr */
} run_result_t;

/* Paths of what the build made, from the test's environment (meson passes them). */
const char *path_of(const char *variable);

/* Runs argv with a clean environment: PATH, the given NAME=VALUE entries (NULL-terminated),
 * and nothing else. */
run_result_t run_env(const char *const *env, const char *const *argv);
/* Runs argv with LD_PRELOAD=the shim, LD_LIBRARY_PATH=the fake driver, plus env. */
run_result_t run_shim(const char *const *env, const char *const *argv);
void run_free(run_result_t *r);

/* Number of times needle occurs in haystack. */
int count_of(const char *haystack, const char *needle);
/* The number after prefix in text ("device 0: " -> reads "%llu allocations"), or -1. */
long long number_after(const char *text, const char *prefix);

#endif

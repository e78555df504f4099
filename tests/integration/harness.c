#include "harness.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *path_of(const char *variable)
{
    const char *value = getenv(variable);
    if (value == NULL) {
        fprintf(stderr, "harness: %s is not set (run the tests through meson)\n", variable);
        exit(99);
    }
    return value;
}

static char *slurp(int fd)
{
    struct stat st;
    fstat(fd, &st);
    char *data = calloc(1, (size_t)st.st_size + 1);
    lseek(fd, 0, SEEK_SET);
    size_t done = 0;
    while (done < (size_t)st.st_size) {
        ssize_t n = read(fd, data + done, (size_t)st.st_size - done);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    close(fd);
    return data;
}

static int temp_fd(void)
{
    char name[] = "/tmp/gpushim-test-XXXXXX";
    int fd = mkstemp(name);
    unlink(name);
    return fd;
}

run_result_t run_env(const char *const *env, const char *const *argv)
{
    const char *clean[64];
    size_t n = 0;
    clean[n++] = "PATH=/usr/local/bin:/usr/bin:/bin";
    for (size_t i = 0; env && env[i] && n < 63; i++)
        clean[n++] = env[i];
    clean[n] = NULL;
    int out = temp_fd(), err = temp_fd();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out, STDOUT_FILENO);
        dup2(err, STDERR_FILENO);
        alarm(60); /* a hang (a dlsym loop, a deadlock) fails the test instead of stalling it */
        execve(argv[0], (char *const *)argv, (char *const *)clean);
        dprintf(STDERR_FILENO, "harness: cannot run %s\n", argv[0]);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    run_result_t r = {
        .status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
        .out = slurp(out),
        .err = slurp(err),
    };
    return r;
}

run_result_t run_shim(const char *const *env, const char *const *argv)
{
    static char preload[4096], library_path[4096];
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s", path_of("GS_SHIM"));
    snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", path_of("GS_FAKE_DIR"));
    const char *full[64];
    size_t n = 0;
    full[n++] = preload;
    full[n++] = library_path;
    for (size_t i = 0; env && env[i] && n < 63; i++)
        full[n++] = env[i];
    full[n] = NULL;
    return run_env(full, argv);
}

void run_free(run_result_t *r)
{
    free(r->out);
    free(r->err);
}

int count_of(const char *haystack, const char *needle)
{
    int count = 0;
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + 1, needle))
        count++;
    return count;
}

long long number_after(const char *text, const char *prefix)
{
    const char *p = strstr(text, prefix);
    long long value;
    if (p == NULL || sscanf(p + strlen(prefix), "%lld", &value) != 1)
        return -1;
    return value;
}

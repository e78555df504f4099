/* output.c: the files the shim writes, the report (GPUSHIM_REPORT) and the trace
 * (GPUSHIM_TRACE): checked at start, opened safely, write errors said once.
 *
 * The shim runs inside other people's programs, setuid ones included, so it never harms a file
 * it was not asked to write: a path is opened with O_NOFOLLOW (a symbolic link there is refused,
 * not followed), O_NONBLOCK (a FIFO with no reader cannot hang the program at exit) and
 * O_CLOEXEC, and only a regular file is written; it is truncated only after those checks. New
 * files get mode 0644 less the process's umask (the program's own umask decides, as for its
 * other files). In a process with raised privileges (AT_SECURE: setuid, setgid, file
 * capabilities) no GPUSHIM_* path is used at all (gs_options_secure). */
#include "gs.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <unistd.h>

void gs_escape(const char *value, char *out, size_t len)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)value; *p && n + 8 < len; p++) {
        if (*p < 0x20 || *p >= 0x7f || *p == '\\')
            n += (size_t)snprintf(out + n, len - n, "\\x%02x", *p);
        else
            out[n++] = (char)*p;
        if (n + 8 >= len && p[1]) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
    }
    out[n] = '\0';
}

int gs_output_check(const char *variable, const char *template, char *err, size_t len)
{
    char path[GS_PATH_MAX], folder[GS_PATH_MAX], shown[256];
    gs_expand_path(template, path, sizeof path);
    gs_escape(template, shown, sizeof shown);
    snprintf(folder, sizeof folder, "%s", path);
    const char *dir = dirname(folder);
    struct stat st;
    const char *why = NULL;
    size_t n = strlen(path);
    if (n == 0 || path[n - 1] == '/' || (stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
        why = "names a folder, not a file";
    else if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0)
        why = "the folder does not exist or is not writable";
    else if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
        why = "is a symbolic link (the shim does not follow links)";
    else if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
        why = "exists and is not a regular file (a FIFO, a device or a socket)";
    if (why == NULL)
        return 0;
    snprintf(err, len, "%s=%s: %s; accepted: a file path in a writable folder", variable, shown,
             why);
    return -EINVAL;
}

int gs_output_open(const char *path, bool truncate, const char *what)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
    const char *why = NULL;
    struct stat st;
    if (fd < 0) {
        why = errno == ELOOP ? "it is a symbolic link" : errno == ENXIO ? "it is a FIFO" : NULL;
    } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        why = "it is not a regular file";
    } else if (truncate && ftruncate(fd, 0) != 0) {
        why = NULL;
    } else {
        fcntl(fd, F_SETFL, O_APPEND); /* writes may block from now on, as a file's do */
        return fd;
    }
    int saved = errno;
    if (fd >= 0)
        close(fd);
    char shown[256];
    gs_escape(path, shown, sizeof shown);
    gs_log_warning("cannot write the %s to %s (%s)", what, shown, why ? why : strerror(saved));
    return -1;
}

int gs_output_write(int fd, const char *data, size_t len, const char *what, atomic_bool *warned)
{
    int rc = gs_write_all(fd, data, len);
    if (rc != 0 && !atomic_exchange(warned, true))
        gs_log_warning("writing the %s failed (%s); what follows is lost", what,
                       strerror(errno ? errno : EIO));
    return rc;
}

bool gs_secure_process(void)
{
    return getauxval(AT_SECURE) != 0;
}

bool gs_options_secure(gs_options_t *opts)
{
    bool changed = opts->report == GS_REPORT_FILE || opts->trace_path[0] != '\0';
    if (opts->report == GS_REPORT_FILE)
        opts->report = GS_REPORT_STDERR;
    opts->report_path[0] = '\0';
    opts->trace_path[0] = '\0';
    return changed;
}

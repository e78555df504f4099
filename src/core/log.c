/* log.c: every line the shim prints goes through here. Formatting happens in a stack buffer and
 * the result is written with write(2): no stdio, no allocation, no CUDA, so it is safe at exit
 * and inside the driver's callbacks. */
#include "gs.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define GS_WARNING_CAP 16

static atomic_uint gs_warnings_printed;

int gs_write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EIO;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void gs_vlog(const char *prefix, const char *fmt, va_list ap)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "gpushim: %s", prefix);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    gs_write_all(STDERR_FILENO, line, len);
}

void gs_log_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gs_vlog("error: ", fmt, ap);
    va_end(ap);
}

void gs_log_warning(const char *fmt, ...)
{
    unsigned int seen = atomic_fetch_add_explicit(&gs_warnings_printed, 1, memory_order_relaxed);
    if (seen > GS_WARNING_CAP)
        return;
    if (seen == GS_WARNING_CAP) {
        gs_write_all(STDERR_FILENO, "gpushim: warning: further warnings are not shown\n", 50);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    gs_vlog("warning: ", fmt, ap);
    va_end(ap);
}

void gs_buf_printf(gs_buf_t *b, const char *fmt, ...)
{
    if (b->len >= sizeof b->data - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data + b->len, sizeof b->data - b->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->len += (size_t)n;
    if (b->len > sizeof b->data - 1)
        b->len = sizeof b->data - 1;
}

void gs_expand_path(const char *template, char *out, size_t out_len)
{
    static const char *const rank_variables[] = {"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                                 "SLURM_PROCID"};
    size_t n = 0;
    for (const char *p = template; *p && n + 1 < out_len; p++) {
        char piece[256] = "";
        if (p[0] == '%' && p[1] == 'p') {
            snprintf(piece, sizeof piece, "%d", (int)getpid());
        } else if (p[0] == '%' && p[1] == 'h') {
            gethostname(piece, sizeof piece - 1);
        } else if (p[0] == '%' && p[1] == 'r') {
            const char *rank = NULL;
            for (size_t i = 0; i < 4 && rank == NULL; i++)
                rank = getenv(rank_variables[i]);
            snprintf(piece, sizeof piece, "%s", rank ? rank : "0");
        } else if (p[0] == '%' && p[1] == '%') {
            piece[0] = '%';
        } else {
            out[n++] = *p;
            continue;
        }
        p++;
        /* A host name or rank is one file name's part: no '/' (RANK=../x must not leave the
         * folder), no leading '.', nothing but letters, digits, '.', '_' and '-'. */
        if (p[0] == 'h' || p[0] == 'r')
            for (char *c = piece; *c; c++)
                if (!(isalnum((unsigned char)*c) || *c == '_' || *c == '-' || (*c == '.' && c != piece)))
                    *c = '_';
        n += (size_t)snprintf(out + n, out_len - n, "%s", piece);
        if (n >= out_len)
            n = out_len - 1;
    }
    out[n] = '\0';
}

const char *gs_format_bytes(uint64_t bytes, char out[32])
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int unit = 0;
    uint64_t scale = 1;
    while (unit < 5 && bytes >= scale * 1024) {
        scale *= 1024;
        unit++;
    }
    if (bytes % scale == 0)
        snprintf(out, 32, "%llu %s", (unsigned long long)(bytes / scale), units[unit]);
    else
        snprintf(out, 32, "%.1f %s", (double)bytes / (double)scale, units[unit]);
    return out;
}

/* test_output.c: how the shim opens the files it writes, and what raised privileges change. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gs.h"

static char dir[] = "/tmp/gs_test_output_XXXXXX";

static void path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* A link made after the start-up check is refused at the open, its target untouched; a FIFO
 * with no reader is refused at once (no hang); a regular file is truncated only when asked. */
static void only_regular_files_are_opened(void **state)
{
    (void)state;
    char victim[256], link_path[256], fifo[256], plain[256];
    path_in(victim, sizeof victim, "victim");
    path_in(link_path, sizeof link_path, "link");
    path_in(fifo, sizeof fifo, "fifo");
    path_in(plain, sizeof plain, "plain");
    int fd = open(victim, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_int_equal(write(fd, "precious", 8), 8);
    close(fd);
    assert_int_equal(symlink(victim, link_path), 0);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(gs_output_open(link_path, true, "report"), -1);
    assert_int_equal(gs_output_open(fifo, true, "trace"), -1);
    struct stat st;
    assert_int_equal(stat(victim, &st), 0);
    assert_int_equal(st.st_size, 8);
    fd = gs_output_open(plain, true, "report");
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "abc", 3), 3);
    close(fd);
    fd = gs_output_open(plain, false, "trace"); /* appends */
    assert_int_equal(write(fd, "de", 2), 2);
    close(fd);
    assert_int_equal(stat(plain, &st), 0);
    assert_int_equal(st.st_size, 5);
    assert_true((st.st_mode & 0777) == (0644 & ~(mode_t)umask(022)));
    fd = gs_output_open(plain, true, "report");
    close(fd);
    assert_int_equal(stat(plain, &st), 0);
    assert_int_equal(st.st_size, 0);
    char err[512];
    assert_int_equal(gs_output_check("GPUSHIM_REPORT", link_path, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "is a symbolic link"));
    assert_int_equal(gs_output_check("GPUSHIM_REPORT", dir, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "names a folder"));
    assert_int_equal(gs_output_check("GPUSHIM_REPORT", plain, err, sizeof err), 0);
    unlink(victim), unlink(link_path), unlink(fifo), unlink(plain);
}

/* With raised privileges no GPUSHIM_* path is used: the report goes to stderr, no trace. */
static void raised_privileges_use_no_path(void **state)
{
    (void)state;
    gs_options_t o;
    char err[256];
    char *env[] = {"GPUSHIM_REPORT=/etc/passwd.txt", "GPUSHIM_TRACE=/etc/shadow.csv", NULL};
    assert_int_equal(gs_options_parse(env, &o, err, sizeof err), 0);
    assert_true(gs_options_secure(&o));
    assert_int_equal(o.report, GS_REPORT_STDERR);
    assert_string_equal(o.report_path, "");
    assert_string_equal(o.trace_path, "");
    gs_options_defaults(&o);
    assert_false(gs_options_secure(&o)); /* nothing to say when no path was set */
    assert_false(gs_secure_process());  /* the test runs without raised privileges */
}

/* Host names and ranks cannot lead out of the folder or hide a file. */
static void templates_keep_ranks_and_hosts_in_the_folder(void **state)
{
    (void)state;
    static const struct {
        const char *rank, *expected;
    } cases[] = {{"3", "/out/r-3.txt"}, {"../x", "/out/r-_._x.txt"}, {"a/b", "/out/r-a_b.txt"},
                 {".hidden", "/out/r-_hidden.txt"}, {"1, \"x\"", "/out/r-1___x_.txt"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("RANK", cases[i].rank, 1);
        char out[256];
        gs_expand_path("/out/r-%r.txt", out, sizeof out);
        assert_string_equal(out, cases[i].expected);
    }
    unsetenv("RANK");
}

int main(void)
{
    if (mkdtemp(dir) == NULL)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(only_regular_files_are_opened),
        cmocka_unit_test(raised_privileges_use_no_path),
        cmocka_unit_test(templates_keep_ranks_and_hosts_in_the_folder),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return failed;
}

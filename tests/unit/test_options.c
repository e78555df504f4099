/* test_options.c: the options table, table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "gs.h"

static void defaults_come_from_the_table(void **state)
{
    (void)state;
    gs_options_t o;
    char err[256] = "";
    char *env[] = {"HOME=/root", "PATH=/bin", NULL};
    assert_int_equal(gs_options_parse(env, &o, err, sizeof err), 0);
    assert_int_equal(o.mode, GS_MODE_OFF);
    assert_int_equal(o.report, GS_REPORT_STDERR);
    assert_int_equal(o.pool_reuse, GS_REUSE_SAFE);
    assert_true(o.pool_max.percent == 100.0);
    assert_int_equal(o.pool_initial.bytes, 0);
    assert_int_equal(o.pool_chunk.bytes, 64ull << 20);
    assert_true(o.managed_prefetch);
    assert_int_equal(o.managed_limit.bytes, 0);
    assert_int_equal(o.on_oom, GS_ON_OOM_FAIL);
}

static void booleans(void **state)
{
    (void)state;
    static const struct {
        const char *entry;
        bool value;
    } cases[] = {{"GPUSHIM_MANAGED_PREFETCH=0", false}, {"GPUSHIM_MANAGED_PREFETCH=off", false},
                 {"GPUSHIM_MANAGED_PREFETCH=No", false}, {"GPUSHIM_MANAGED_PREFETCH=false", false},
                 {"GPUSHIM_MANAGED_PREFETCH=1", true},   {"GPUSHIM_MANAGED_PREFETCH=yes", true},
                 {"GPUSHIM_MANAGED_PREFETCH=ON", true},  {"GPUSHIM_MANAGED_PREFETCH=true", true}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gs_options_t o;
        char err[256];
        char *env[] = {(char *)cases[i].entry, NULL};
        assert_int_equal(gs_options_parse(env, &o, err, sizeof err), 0);
        assert_int_equal(o.managed_prefetch, cases[i].value);
    }
}

static void accepted_values(void **state)
{
    (void)state;
    static const struct {
        const char *entry;
        size_t offset;
        int value;
    } cases[] = {
        {"GPUSHIM_MODE=off", offsetof(gs_options_t, mode), GS_MODE_OFF},
        {"GPUSHIM_MODE=pool", offsetof(gs_options_t, mode), GS_MODE_POOL},
        {"GPUSHIM_MODE=MANAGED", offsetof(gs_options_t, mode), GS_MODE_MANAGED},
        {"GPUSHIM_MODE=", offsetof(gs_options_t, mode), GS_MODE_OFF}, /* empty: default */
        {"GPUSHIM_REPORT=off", offsetof(gs_options_t, report), GS_REPORT_OFF},
        {"GPUSHIM_REPORT=stderr", offsetof(gs_options_t, report), GS_REPORT_STDERR},
        {"GPUSHIM_REPORT=./r-%p.txt", offsetof(gs_options_t, report), GS_REPORT_FILE},
        {"GPUSHIM_POOL_REUSE=immediate", offsetof(gs_options_t, pool_reuse), GS_REUSE_IMMEDIATE},
        {"GPUSHIM_ON_OOM=managed", offsetof(gs_options_t, on_oom), GS_ON_OOM_MANAGED},
        {"GPUSHIM_MANAGED_ADVICE=accessed-by", offsetof(gs_options_t, managed_advice), GS_ADVICE_ACCESSED_BY},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gs_options_t o;
        char err[256] = "";
        char *env[] = {(char *)cases[i].entry, NULL};
        assert_int_equal(gs_options_parse(env, &o, err, sizeof err), 0);
        assert_int_equal(*(int *)((char *)&o + cases[i].offset), cases[i].value);
    }
}

static void sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int rc;
        uint64_t bytes;
        double percent;
    } cases[] = {
        {"0", 0, 0, 0},          {"4096", 0, 4096, 0},        {"4K", 0, 4096, 0},
        {"4KiB", 0, 4096, 0},    {"4kb", 0, 4096, 0},         {"1.5M", 0, 1572864, 0},
        {"2G", 0, 2ull << 30, 0}, {"1TiB", 0, 1ull << 40, 0},  {"512MiB", 0, 512ull << 20, 0},
        {"50%", 0, 0, 50},       {"100%", 0, 0, 100},         {"0.5%", 0, 0, 0.5},
        {"150%", 0, 0, 150},     {"50%host", 0, 0, 50},       {"101%host", -EINVAL, 0, 0},
        {"", -EINVAL, 0, 0},     {"-1", -EINVAL, 0, 0},       {"12Q", -EINVAL, 0, 0},
        {"0%", -EINVAL, 0, 0},   {"1001%", -EINVAL, 0, 0},     {"1.5", -EINVAL, 0, 0},
        {"M", -EINVAL, 0, 0},    {"99999999T", -EINVAL, 0, 0}, {"nan", -EINVAL, 0, 0},
        /* strict: no space, sign, exponent, hex or bare point; nothing but 0 means 0 bytes */
        {"512 MiB", -EINVAL, 0, 0}, {" 4K", -EINVAL, 0, 0},     {"4K ", -EINVAL, 0, 0},
        {"+1", -EINVAL, 0, 0},      {"1e3", -EINVAL, 0, 0},     {"0x10", -EINVAL, 0, 0},
        {"0x1p3", -EINVAL, 0, 0},   {".5M", -EINVAL, 0, 0},     {"5.M", -EINVAL, 0, 0},
        {"inf", -EINVAL, 0, 0},     {"1e-300%", -EINVAL, 0, 0}, {"0.00001%", -EINVAL, 0, 0},
        {"0.0001%", 0, 0, 0.0001},  {"0.0000001K", -EINVAL, 0, 0}, {"0.0K", 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gs_size_spec_t s = {0};
        int rc = gs_parse_size(cases[i].text, &s);
        if (rc != cases[i].rc)
            print_message("size case %s\n", cases[i].text);
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) {
            assert_int_equal(s.bytes, cases[i].bytes);
            assert_true(s.percent == cases[i].percent);
        }
    }
    gs_size_spec_t half = {.percent = 50};
    assert_int_equal(gs_size_resolve(half, 1000), 500);
}

static void errors_name_variable_value_and_what_is_accepted(void **state)
{
    (void)state;
    static const struct {
        const char *entry;
        const char *message;
    } cases[] = {
        {"GPUSHIM_MODE=fast", "GPUSHIM_MODE=fast is not valid; accepted: off, pool, managed"},
        {"GPUSHIM_REPORT=stdrr", "GPUSHIM_REPORT=stdrr is not valid; accepted: stderr, off, or a file path"},
        {"GPUSHIM_POOL_MAX=lots", "GPUSHIM_POOL_MAX=lots is not valid; accepted: bytes (digits, an optional fraction) with K/M/G/T"},
        {"GPUSHIM_POOL_MAX=150%", "GPUSHIM_POOL_MAX=150% is not valid"},
        {"GPUSHIM_POOL_MAX=1e-300%", "GPUSHIM_POOL_MAX=1e-300% is not valid"},
        {"GPUSHIM_MANAGED_LIMIT=1e-300%", "GPUSHIM_MANAGED_LIMIT=1e-300% is not valid"},
        {"GPUSHIM_POOL_MAX=50%host", "GPUSHIM_POOL_MAX=50%host is not valid"},
        {"GPUSHIM_MODE=po\nol\x7f\xc3\xa9", "GPUSHIM_MODE=po\\x0aol\\x7f\\xc3\\xa9 is not valid; accepted: off"},
        {"GPUSHIM_MO\tDE=pool", "GPUSHIM_MO\\x09DE is not a gpushim variable"},
        {"GPUSHIM_MANAGED_PREFETCH=maybe", "GPUSHIM_MANAGED_PREFETCH=maybe is not valid; accepted: 1, 0, yes, no"},
        {"GPUSHIM_MOD=pool", "GPUSHIM_MOD is not a gpushim variable (did you mean GPUSHIM_MODE?); known: GPUSHIM_MODE,"},
        {"GPUSHIM_XYZZY_PLUGH=1", "GPUSHIM_XYZZY_PLUGH is not a gpushim variable; known: GPUSHIM_MODE,"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gs_options_t o;
        char err[1024] = "";
        char *env[] = {"OTHER=1", (char *)cases[i].entry, NULL};
        assert_int_equal(gs_options_parse(env, &o, err, sizeof err), -EINVAL);
        if (strstr(err, cases[i].message) != err)
            print_message("got: %s\n", err);
        assert_ptr_equal(strstr(err, cases[i].message), err);
    }
}

/* Random values for every variable, 20,000 in all: each is accepted or refused with one line
 * that names the variable, holds no control byte, and fits the buffer; nothing crashes. */
static void fuzzed_values_are_accepted_or_refused_on_one_line(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "0", "1", "7", "512", "1.5", ".", "-", "+", "e", "E3", "x", "0x", "p", "%", "%host", "K",
        "KiB", "M", "MB", "G", "GiB", "T", "TiB", "B", " ", "\t", "\n", "\x1b", "\xff", "/",
        "..", "%p", "%h", "%r", "%%", "on", "off", "auto", "safe", "pool", "managed", "json",
        "stderr", "inf", "nan", "99999999999999999999", "1e-300", "0.0000001", "\"", "\\", ","};
    unsigned seed = 12345;
    int refused = 0, accepted = 0;
    for (int i = 0; i < 20000; i++) {
        char value[256] = "";
        size_t len = 0;
        int parts = 1 + (int)((seed = seed * 1103515245 + 12345) >> 16) % 5;
        for (int k = 0; k < parts; k++) {
            seed = seed * 1103515245 + 12345;
            const char *piece = (seed >> 16) % 7 == 0 ? NULL : pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
            char raw[2] = {(char)(1 + (seed >> 8) % 255), 0};
            len += (size_t)snprintf(value + len, sizeof value - len, "%s", piece ? piece : raw);
        }
        const char *name = gs_option_name((size_t)i % gs_option_count());
        char entry[512];
        snprintf(entry, sizeof entry, "%s=%s", name, value);
        char *env[] = {entry, NULL};
        gs_options_t o;
        char err[1024] = "";
        int rc = gs_options_parse(env, &o, err, sizeof err);
        assert_true(rc == 0 || rc == -EINVAL);
        if (rc == 0) {
            accepted++;
            continue;
        }
        refused++;
        assert_ptr_equal(strstr(err, name), err);
        for (const char *c = err; *c; c++)
            assert_true((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f);
        assert_true(strlen(err) < sizeof err - 1);
    }
    assert_true(accepted > 100 && refused > 10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_come_from_the_table),
        cmocka_unit_test(fuzzed_values_are_accepted_or_refused_on_one_line),
        cmocka_unit_test(accepted_values),
        cmocka_unit_test(sizes),
        cmocka_unit_test(booleans),
        cmocka_unit_test(errors_name_variable_value_and_what_is_accepted),
    };
    return cmocka_run_group_tests_name("options", tests, NULL, NULL);
}

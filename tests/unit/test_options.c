/* test_options.c: the options table, table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
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
        {"2G", 0, 2ull << 30, 0}, {"1TiB", 0, 1ull << 40, 0},  {"512 MiB", 0, 512ull << 20, 0},
        {"50%", 0, 0, 50},       {"100%", 0, 0, 100},         {"0.5%", 0, 0, 0.5},
        {"150%", 0, 0, 150},     {"50%host", 0, 0, 50},       {"101%host", -EINVAL, 0, 0},
        {"", -EINVAL, 0, 0},     {"-1", -EINVAL, 0, 0},       {"12Q", -EINVAL, 0, 0},
        {"0%", -EINVAL, 0, 0},   {"1001%", -EINVAL, 0, 0},     {"1.5", -EINVAL, 0, 0},
        {"M", -EINVAL, 0, 0},    {"99999999T", -EINVAL, 0, 0}, {"nan", -EINVAL, 0, 0},
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
        {"GPUSHIM_POOL_MAX=lots", "GPUSHIM_POOL_MAX=lots is not valid; accepted: bytes with K/M/G/T"},
        {"GPUSHIM_POOL_MAX=150%", "GPUSHIM_POOL_MAX=150% is not valid"},
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_come_from_the_table),
        cmocka_unit_test(accepted_values),
        cmocka_unit_test(sizes),
        cmocka_unit_test(booleans),
        cmocka_unit_test(errors_name_variable_value_and_what_is_accepted),
    };
    return cmocka_run_group_tests_name("options", tests, NULL, NULL);
}

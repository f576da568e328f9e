#include "th_test.h"

#include "core/buf.h"
#include "core/str.h"
#include "core/uuid.h"

TH_TEST(buf_limits)
{
    th_buf b;
    th_buf_init(&b, 8);
    TH_CHECK_INT(th_buf_append(&b, "12345", 5), TH_BUF_OK);
    TH_CHECK_INT(th_buf_append(&b, "6789", 4), TH_BUF_EFULL);
    TH_CHECK_INT(b.len, 5);
    TH_CHECK_INT(th_buf_append(&b, "678", 3), TH_BUF_OK);
    TH_CHECK_STR(th_buf_cstr(&b), "12345678");
    th_buf_consume(&b, 3);
    TH_CHECK_STR(th_buf_cstr(&b), "45678");
    th_buf_free(&b);
}

TH_TEST(buf_json_escape)
{
    th_buf b;
    th_buf_init(&b, 0);
    th_buf_append_json_str(&b, "a\"b\\c\n\x01", 7);
    TH_CHECK_STR(th_buf_cstr(&b), "a\\\"b\\\\c\\n\\u0001");
    th_buf_reset(&b);
    th_buf_appendf(&b, "%d-%s", 42, "x");
    TH_CHECK_STR(th_buf_cstr(&b), "42-x");
    th_buf_free(&b);
}

TH_TEST(str_numbers)
{
    int64_t v;
    TH_CHECK_INT(th_str_to_i64("42", 0, 100, &v), 0);
    TH_CHECK_INT(v, 42);
    TH_CHECK_INT(th_str_to_i64("101", 0, 100, &v), -1);
    TH_CHECK_INT(th_str_to_i64("4x", 0, 100, &v), -1);
    TH_CHECK_INT(th_str_to_i64("", 0, 100, &v), -1);
    TH_CHECK_INT(th_str_to_i64("99999999999999999999", INT64_MIN, INT64_MAX, &v), -1);
    double d;
    TH_CHECK_INT(th_str_to_double("1.5", 0.25, 4, &d), 0);
    TH_CHECK(d == 1.5);
    TH_CHECK_INT(th_str_to_double("nan", 0, 4, &d), -1);
    TH_CHECK_INT(th_str_to_double("5", 0.25, 4, &d), -1);
    TH_CHECK_INT(th_str_to_double("0x10", 0, 100, &d), -1);
}

TH_TEST(str_decimal)
{
    char b[24];
    TH_CHECK_INT(th_u64_dec(b, 0), 1);
    TH_CHECK_STR(b, "0");
    TH_CHECK_INT(th_u64_dec(b, 1733470000123ULL), 13);
    TH_CHECK_STR(b, "1733470000123");
    TH_CHECK_INT(th_u64_dec(b, UINT64_MAX), 20);
    TH_CHECK_STR(b, "18446744073709551615");
    TH_CHECK_INT(th_i64_dec(b, -59000), 6);
    TH_CHECK_STR(b, "-59000");
    TH_CHECK_INT(th_i64_dec(b, INT64_MIN), 20);
    TH_CHECK_STR(b, "-9223372036854775808");
    TH_CHECK_INT(th_i64_dec(b, INT64_MAX), 19);
    TH_CHECK_STR(b, "9223372036854775807");
}

TH_TEST(str_units)
{
    uint64_t v;
    TH_CHECK_INT(th_str_to_duration_ms("500ms", &v), 0);
    TH_CHECK_INT(v, 500);
    TH_CHECK_INT(th_str_to_duration_ms("10s", &v), 0);
    TH_CHECK_INT(v, 10000);
    TH_CHECK_INT(th_str_to_duration_ms("5m", &v), 0);
    TH_CHECK_INT(v, 300000);
    TH_CHECK_INT(th_str_to_duration_ms("1h", &v), 0);
    TH_CHECK_INT(v, 3600000);
    TH_CHECK_INT(th_str_to_duration_ms("10 parsecs", &v), -1);
    TH_CHECK_INT(th_str_to_size("64KiB", &v), 0);
    TH_CHECK_INT(v, 65536);
    TH_CHECK_INT(th_str_to_size("1MiB", &v), 0);
    TH_CHECK_INT(v, 1048576);
    TH_CHECK_INT(th_str_to_size("1.5KiB", &v), 0);
    TH_CHECK_INT(v, 1536);
    TH_CHECK_INT(th_str_to_size("12XB", &v), -1);
}

TH_TEST(utf8_count)
{
    TH_CHECK_INT(th_utf8_count("hello", 5), 5);
    TH_CHECK_INT(th_utf8_count("\xe4\xbd\xa0\xe5\xa5\xbd", 6), 2); /* 你好 */
    TH_CHECK_INT(th_utf8_count("\xf0\x9f\x98\x80!", 5), 2);        /* emoji + ! */
    TH_CHECK_INT(th_utf8_count("\xc0\xaf", 2), -1);                /* overlong */
    TH_CHECK_INT(th_utf8_count("\xed\xa0\x80", 3), -1);            /* surrogate */
    TH_CHECK_INT(th_utf8_count("\xe4\xbd", 2), -1);                /* truncated */
    TH_CHECK_INT(th_utf8_prefix("\xe4\xbd\xa0\xe5\xa5\xbd", 6, 1), 3);
}

TH_TEST(str_append_cut)
{
    char b[8] = "";
    size_t n = 0;
    th_str_append_cut(b, sizeof b, &n, "abc", 3);
    TH_CHECK_INT(n, 3);
    TH_CHECK_STR(b, "abc");
    th_str_append_cut(b, sizeof b, &n, "defghij", 7); /* 4 more fit, then the NUL */
    TH_CHECK_INT(n, 7);
    TH_CHECK_STR(b, "abcdefg");
    th_str_append_cut(b, sizeof b, &n, "x", 1); /* full: dropped */
    TH_CHECK_INT(n, 7);
    TH_CHECK_STR(b, "abcdefg");
    th_str_append_cut(b, 0, &n, "x", 1); /* no room at all */
    TH_CHECK_INT(n, 7);
}

TH_TEST(glob_and_uuid)
{
    TH_CHECK(th_glob_match("*", "anything"));
    TH_CHECK(th_glob_match("clone-*", "clone-bob"));
    TH_CHECK(!th_glob_match("clone-*", "alloy"));
    TH_CHECK(th_glob_match("a?c", "abc"));
    char u[TH_UUID_LEN + 1], w[TH_UUID_LEN + 1];
    th_uuid_v4(u);
    th_uuid_v4(w);
    TH_CHECK(th_uuid_valid(u));
    TH_CHECK(strcmp(u, w) != 0);
    TH_CHECK(u[14] == '4');
    TH_CHECK(!th_uuid_valid("not-a-uuid"));
}

TH_TEST(uuid_generator)
{
    th_uuid_gen g;
    th_uuid_gen_init(&g);
    char a[TH_UUID_LEN + 1], b[TH_UUID_LEN + 1];
    th_uuid_gen_next(&g, a);
    for (int i = 0; i < 1000; i++) {
        th_uuid_gen_next(&g, b);
        TH_CHECK(th_uuid_valid(b));
        TH_CHECK(strcmp(a, b) != 0);
        TH_CHECK(b[14] == '4');
        TH_CHECK(b[19] == '8' || b[19] == '9' || b[19] == 'a' || b[19] == 'b');
    }
    th_uuid_gen h;
    th_uuid_gen_init(&h);
    th_uuid_gen_next(&h, b);
    TH_CHECK(strcmp(a, b) != 0); /* two generators are seeded apart */
}

TH_TEST_MAIN()

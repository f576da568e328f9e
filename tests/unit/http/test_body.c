#include "th_test.h"

#include "core/buf.h"
#include "http/body.h"

#include <stdint.h>
#include <time.h>

/* A malloc'd copy of exactly n bytes (no NUL after them), so that AddressSanitizer catches any read
 * past len. */
static uint8_t *exact(const void *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (d != NULL && n) memcpy(d, p, n);
    return d;
}

static int parse_url(th_form *f, const char *s, char *err, size_t errlen)
{
    size_t n = strlen(s);
    uint8_t *d = exact(s, n);
    int rc = th_form_parse_urlencoded(f, (const char *)d, n, err, errlen);
    free(d);
    return rc;
}

static int parse_mp(th_form *f, const char *ct, const void *body, size_t n, char *err, size_t errlen)
{
    uint8_t *d = exact(body, n);
    int rc = th_form_parse_multipart(f, ct, d, n, err, errlen);
    free(d);
    return rc;
}

static int parse_json(th_form *f, const char *s, size_t max_depth, char *err, size_t errlen)
{
    size_t n = strlen(s);
    uint8_t *d = exact(s, n);
    int rc = th_form_parse_json(f, d, n, max_depth, err, errlen);
    free(d);
    return rc;
}

static int parse_body(th_form *f, const char *ct, const char *s, char *err, size_t errlen)
{
    size_t n = strlen(s);
    uint8_t *d = exact(s, n);
    int rc = th_body_parse(f, ct, d, n, err, errlen);
    free(d);
    return rc;
}

static const char *val(const th_form *f, const char *name)
{
    const th_field *fl = th_form_get(f, name);
    return fl ? fl->value : NULL;
}

/* ---- urlencoded -------------------------------------------------------------------------------- */

TH_TEST(url_python_requests_form)
{
    /* requests.post(url, data={"input": "Hello world!", "voice": "alloy", "response_format": "mp3"}) */
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_url(&f, "input=Hello+world%21&voice=alloy&response_format=mp3", err, sizeof err),
                 TH_BODY_OK);
    TH_CHECK_INT(f.n, 3);
    TH_CHECK_STR(val(&f, "input"), "Hello world!");
    TH_CHECK_INT(th_form_get(&f, "input")->value_len, 12);
    TH_CHECK_STR(val(&f, "voice"), "alloy");
    TH_CHECK_STR(val(&f, "response_format"), "mp3");
    TH_CHECK(th_form_get(&f, "input")->filename == NULL);
    TH_CHECK(th_form_get(&f, "input")->content_type == NULL);
    TH_CHECK(th_form_get(&f, "missing") == NULL);
    th_form_free(&f);
}

TH_TEST(url_python_requests_unicode)
{
    /* requests.post(url, data={"input": "你好", "voice": "alloy"}) sends exactly these bytes */
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_url(&f, "input=%E4%BD%A0%E5%A5%BD&voice=alloy", err, sizeof err), TH_BODY_OK);
    TH_CHECK_STR(val(&f, "input"), "\xe4\xbd\xa0\xe5\xa5\xbd");
    TH_CHECK_INT(th_form_get(&f, "input")->value_len, 6);
    /* lower-case hex works too */
    TH_CHECK_INT(parse_url(&f, "lc=%e4%bd%a0", err, sizeof err), TH_BODY_OK);
    TH_CHECK_STR(val(&f, "lc"), "\xe4\xbd\xa0");
    th_form_free(&f);
}

TH_TEST(url_empty_repeated_and_bare_keys)
{
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_url(&f, "a=&flag&a=2&&c=x%3D1%26y&sp+ace=1+%2B+1&", err, sizeof err), TH_BODY_OK);
    TH_REQUIRE(f.n == 5);
    TH_CHECK_STR(f.fields[0].name, "a");
    TH_CHECK_STR(f.fields[0].value, "");
    TH_CHECK_INT(f.fields[0].value_len, 0);
    TH_CHECK_STR(f.fields[1].name, "flag");
    TH_CHECK_STR(f.fields[1].value, "");
    TH_CHECK_STR(f.fields[2].name, "a");
    TH_CHECK_STR(f.fields[2].value, "2");
    TH_CHECK_STR(f.fields[3].value, "x=1&y");
    TH_CHECK_STR(f.fields[4].name, "sp ace");
    TH_CHECK_STR(f.fields[4].value, "1 + 1");
    TH_CHECK_STR(val(&f, "a"), ""); /* the first of repeated keys */
    th_form_free(&f);

    th_form_init(&f);
    TH_CHECK_INT(parse_url(&f, "", err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(f.n, 0);
    TH_CHECK_INT(th_form_parse_urlencoded(&f, NULL, 0, err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(parse_url(&f, "&&&", err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(f.n, 0);
    th_form_free(&f);
}

TH_TEST(url_bad_escapes)
{
    const char *bad[] = {"a=%G1", "a=%", "a=%4", "a=b&c=%1", "%zz=1", "a=%%41", "x=1&y=%4G"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_form f;
        th_form_init(&f);
        char err[128] = "";
        TH_CHECK_INT(parse_url(&f, bad[i], err, sizeof err), TH_BODY_MALFORMED);
        TH_CHECK(strncmp(err, "malformed form body: bad percent-escape", 39) == 0);
        th_form_free(&f);
    }
}

TH_TEST(url_binary_values_and_nul_names)
{
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_url(&f, "f=%00%FF%0D%0A", err, sizeof err), TH_BODY_OK);
    TH_REQUIRE(f.n == 1);
    TH_CHECK_INT(f.fields[0].value_len, 4);
    TH_CHECK(memcmp(f.fields[0].value, "\0\xff\r\n", 5) == 0); /* NUL-terminated as well */
    th_form_free(&f);

    th_form_init(&f);
    TH_CHECK_INT(parse_url(&f, "a%00b=1", err, sizeof err), TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "malformed form body: NUL byte in a field name");
    th_form_free(&f);
}

TH_TEST(url_decode_function)
{
    char out[32];
    TH_CHECK_INT(th_url_decode("a+b%20c", 7, out, true), 5);
    TH_CHECK_STR(out, "a b c");
    TH_CHECK_INT(th_url_decode("a+b%20c", 7, out, false), 5);
    TH_CHECK_STR(out, "a+b c");
    TH_CHECK_INT(th_url_decode("%41%4a%4A", 9, out, true), 3);
    TH_CHECK_STR(out, "AJJ");
    TH_CHECK_INT(th_url_decode("", 0, out, true), 0);
    TH_CHECK_STR(out, "");
    /* only len bytes are read: the escape is cut by len */
    TH_CHECK_INT(th_url_decode("ab%41", 4, out, true), -1);
    TH_CHECK_INT(th_url_decode("ab%41", 2, out, true), 2);
    TH_CHECK_INT(th_url_decode("%", 1, out, true), -1);
    TH_CHECK_INT(th_url_decode("%G1", 3, out, true), -1);
    TH_CHECK_INT(th_url_decode("%1G", 3, out, true), -1);
    TH_CHECK_INT(th_url_decode("%00", 3, out, true), 1);
    TH_CHECK_INT(out[0], 0);
}

TH_TEST(query_get)
{
    const char *q = "voice=alloy&text=a+b%21&empty&blank=&voice=second&sp%20ace=1&bad=%G1";
    char *v = th_query_get(q, "voice");
    TH_CHECK_STR(v, "alloy");
    free(v);
    v = th_query_get(q, "text");
    TH_CHECK_STR(v, "a b!");
    free(v);
    v = th_query_get(q, "empty");
    TH_CHECK_STR(v, "");
    free(v);
    v = th_query_get(q, "blank");
    TH_CHECK_STR(v, "");
    free(v);
    v = th_query_get(q, "sp ace");
    TH_CHECK_STR(v, "1");
    free(v);
    TH_CHECK(th_query_get(q, "bad") == NULL);
    TH_CHECK(th_query_get(q, "missing") == NULL);
    TH_CHECK(th_query_get(q, "voic") == NULL);
    TH_CHECK(th_query_get(q, "voicex") == NULL);
    TH_CHECK(th_query_get("n=%00x", "n") == NULL); /* would be cut at the NUL */
    TH_CHECK(th_query_get("", "a") == NULL);
    TH_CHECK(th_query_get(NULL, "a") == NULL);
    TH_CHECK(th_query_get("a=1", NULL) == NULL);
    v = th_query_get("?engine=espeak&status=online", "engine");
    TH_CHECK_STR(v, "espeak");
    free(v);
}

TH_TEST(url_field_limits)
{
    th_form f;
    th_form_init(&f);
    f.max_fields = 3;
    char err[128] = "";
    TH_CHECK_INT(parse_url(&f, "a=1&b=2&c=3", err, sizeof err), TH_BODY_OK);
    th_form_free(&f);
    TH_CHECK_INT(f.max_fields, 3); /* kept across th_form_free */
    TH_CHECK_INT(parse_url(&f, "a=1&b=2&c=3&d=4", err, sizeof err), TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "too many fields (max 3)");
    th_form_free(&f);

    /* default: 256 */
    char big[256 * 6 + 16];
    size_t n = 0;
    for (int i = 0; i < 256; i++) {
        if (i) big[n++] = '&';
        big[n++] = 'k';
        big[n++] = (char)('a' + i % 26);
        big[n++] = '=';
        big[n++] = '1';
    }
    big[n] = '\0';
    th_form_init(&f);
    TH_CHECK_INT(parse_url(&f, big, err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(f.n, 256);
    th_form_free(&f);
    memcpy(big + n, "&z=1", 5);
    TH_CHECK_INT(parse_url(&f, big, err, sizeof err), TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "too many fields (max 256)");
    th_form_free(&f);
}

/* ---- multipart --------------------------------------------------------------------------------- */

#define GO_B "2a8ae6ad8e1b4c0f9c6d1e0f7a3b5c2d9e8f7a6b5c4d3e2f1a0b9c8d7e6f"

TH_TEST(mp_go_writer)
{
    /* What Go's mime/multipart Writer produces for WriteField x3 (ttsfm's Go port): no preamble, the
     * first delimiter without a leading CRLF, "--boundary--\r\n" at the end. */
    static const char body[] = "--" GO_B "\r\n"
                               "Content-Disposition: form-data; name=\"input\"\r\n"
                               "\r\n"
                               "Hello, \xe4\xbd\xa0\xe5\xa5\xbd!\r\n"
                               "--" GO_B "\r\n"
                               "Content-Disposition: form-data; name=\"voice\"\r\n"
                               "\r\n"
                               "alloy\r\n"
                               "--" GO_B "\r\n"
                               "Content-Disposition: form-data; name=\"response_format\"\r\n"
                               "\r\n"
                               "mp3\r\n"
                               "--" GO_B "--\r\n";
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    int rc = parse_mp(&f, "multipart/form-data; boundary=" GO_B, body, sizeof body - 1, err, sizeof err);
    TH_CHECK_INT(rc, TH_BODY_OK);
    TH_REQUIRE(f.n == 3);
    TH_CHECK_STR(f.fields[0].name, "input");
    TH_CHECK_STR(f.fields[0].value, "Hello, \xe4\xbd\xa0\xe5\xa5\xbd!");
    TH_CHECK_INT(f.fields[0].value_len, 14);
    TH_CHECK(f.fields[0].filename == NULL);
    TH_CHECK(f.fields[0].content_type == NULL);
    TH_CHECK_STR(val(&f, "voice"), "alloy");
    TH_CHECK_STR(val(&f, "response_format"), "mp3");
    th_form_free(&f);

    /* the same through th_body_parse */
    th_form_init(&f);
    rc = th_body_parse(&f, "multipart/form-data; boundary=" GO_B, (const uint8_t *)body, sizeof body - 1, err,
                       sizeof err);
    TH_CHECK_INT(rc, TH_BODY_OK);
    TH_CHECK_INT(f.n, 3);
    th_form_free(&f);
}

TH_TEST(mp_go_file_part_with_nul_bytes)
{
    /* Go's CreateFormFile: Content-Disposition with filename, then Content-Type: application/octet-stream.
     * The file holds NUL bytes, CR/LF, and text that looks like (but is not) a delimiter. */
    static const uint8_t file[] = {'R', 'I', 'F',  'F',  0,   0,   0,   0,   0xff, 0xfe, '\r', '\n', '-',
                                   '-', 'x', '\r', '\n', '-', '-', 'B', 'N', 'D',  'X',  0,    '\n', '\r'};
    th_buf b;
    th_buf_init(&b, 0);
    th_buf_append_str(&b, "--BND\r\n"
                          "Content-Disposition: form-data; name=\"voice_id\"\r\n\r\n"
                          "my_voice\r\n"
                          "--BND\r\n"
                          "Content-Disposition: form-data; name=\"audio\"; filename=\"ref.wav\"\r\n"
                          "Content-Type: application/octet-stream\r\n"
                          "\r\n");
    th_buf_append(&b, file, sizeof file);
    th_buf_append_str(&b, "\r\n--BND--\r\n");
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=BND", b.data, b.len, err, sizeof err),
                 TH_BODY_OK);
    TH_REQUIRE(f.n == 2);
    const th_field *a = th_form_get(&f, "audio");
    TH_REQUIRE(a != NULL);
    TH_CHECK_STR(a->filename, "ref.wav");
    TH_CHECK_STR(a->content_type, "application/octet-stream");
    TH_CHECK_INT(a->value_len, sizeof file);
    TH_CHECK(memcmp(a->value, file, sizeof file) == 0);
    TH_CHECK_INT(a->value[a->value_len], 0);
    TH_CHECK_STR(val(&f, "voice_id"), "my_voice");
    th_form_free(&f);
    th_buf_free(&b);
}

TH_TEST(mp_browser_preamble_epilogue_quoted_boundary)
{
    static const char body[] =
        "This is the preamble. --WebKit is not a delimiter here\r\n"
        "--\"----WebKitFormBoundary7MA4YWxkTrZu0gW\" is not one either\r\n"
        "------WebKitFormBoundary7MA4YWxkTrZu0gW  \r\n" /* transport padding */
        "content-disposition: form-data; name=\"text\"\r\n"
        "Content-Type: text/plain; charset=UTF-8\r\n"
        "X-Ignored: yes\r\n"
        "\r\n"
        "line1\r\nline2\r\n"
        "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n"
        "Content-Disposition: form-data; name=\"empty\"\r\n"
        "\r\n"
        "\r\n"
        "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n"
        "Content-Disposition: form-data; name=\"a;b\"; filename=\"x \\\"q\\\".wav\"\r\n"
        "\r\n"
        "data\r\n"
        "------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n"
        "epilogue, ignored\r\n--junk";
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    int rc =
        parse_mp(&f, "Multipart/Form-Data; charset=utf-8; BOUNDARY=\"----WebKitFormBoundary7MA4YWxkTrZu0gW\"",
                 body, sizeof body - 1, err, sizeof err);
    TH_CHECK_INT(rc, TH_BODY_OK);
    TH_REQUIRE(f.n == 3);
    TH_CHECK_STR(f.fields[0].name, "text");
    TH_CHECK_STR(f.fields[0].value, "line1\r\nline2");
    TH_CHECK_STR(f.fields[0].content_type, "text/plain; charset=UTF-8");
    TH_CHECK_STR(f.fields[1].name, "empty");
    TH_CHECK_INT(f.fields[1].value_len, 0);
    TH_CHECK_STR(f.fields[1].value, "");
    TH_CHECK_STR(f.fields[2].name, "a;b");
    TH_CHECK_STR(f.fields[2].filename, "x \"q\".wav");
    th_form_free(&f);
}

TH_TEST(mp_bare_lf_and_empty_file)
{
    static const char body[] = "--b\n"
                               "Content-Disposition: form-data; name=\"x\"\n"
                               "\n"
                               "1\n"
                               "--b\n"
                               "Content-Disposition: form-data; name=\"f\"; filename=\"\"\n"
                               "Content-Type: application/octet-stream\n"
                               "\n"
                               "\n"
                               "--b--";
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data;boundary=b", body, sizeof body - 1, err, sizeof err),
                 TH_BODY_OK);
    TH_REQUIRE(f.n == 2);
    TH_CHECK_STR(f.fields[0].value, "1");
    TH_CHECK_STR(f.fields[1].filename, "");
    TH_CHECK_INT(f.fields[1].value_len, 0);
    th_form_free(&f);

    /* no parts at all is fine */
    th_form_init(&f);
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", "--b--\r\n", 7, err, sizeof err),
                 TH_BODY_OK);
    TH_CHECK_INT(f.n, 0);
    th_form_free(&f);
}

TH_TEST(mp_filename_star)
{
    static const char body[] =
        "--b\r\n"
        "Content-Disposition: form-data; name=\"u\"; filename=\"fallback.wav\"; "
        "filename*=UTF-8''%E4%BD%A0%20x.wav\r\n\r\n1\r\n"
        "--b\r\n"
        "Content-Disposition: form-data; name=\"l\"; filename*=iso-8859-1'en'caf%E9.wav\r\n\r\n2\r\n"
        "--b\r\n"
        "Content-Disposition: form-data; name=\"k\"; filename=\"plain.wav\"; "
        "filename*=koi8-r''%C1.wav\r\n\r\n3\r\n"
        "--b--\r\n";
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", body, sizeof body - 1, err, sizeof err),
                 TH_BODY_OK);
    TH_REQUIRE(f.n == 3);
    TH_CHECK_STR(f.fields[0].filename, "\xe4\xbd\xa0 x.wav");
    TH_CHECK_STR(f.fields[1].filename, "caf\xc3\xa9.wav");
    TH_CHECK_STR(f.fields[2].filename, "plain.wav"); /* unknown charset: filename* ignored */
    th_form_free(&f);

    const char *bad[] = {
        "--b\r\nContent-Disposition: form-data; name=\"u\"; filename*=UTF-8''%G0\r\n\r\n1\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"u\"; filename*=UTF-8''%00\r\n\r\n1\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"u\"; filename*=noquotes\r\n\r\n1\r\n--b--\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_form_init(&f);
        TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", bad[i], strlen(bad[i]), err, sizeof err),
                     TH_BODY_MALFORMED);
        TH_CHECK_STR(err, "malformed multipart body: bad filename* parameter");
        th_form_free(&f);
    }
}

static void mp_expect(int *th__failed, const char *ct, const char *body, const char *msg)
{
    th_form f;
    th_form_init(&f);
    char err[160] = "";
    TH_CHECK_INT(parse_mp(&f, ct, body, strlen(body), err, sizeof err), TH_BODY_MALFORMED);
    if (strcmp(err, msg) != 0) fprintf(stderr, "  body: %.60s\n", body);
    TH_CHECK_STR(err, msg);
    th_form_free(&f);
}

TH_TEST(mp_malformed)
{
    const char *ct = "multipart/form-data; boundary=b";
    const char *cd = "Content-Disposition: form-data; name=\"x\"\r\n\r\n";
    char buf[512];
    mp_expect(th__failed, ct, "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nvalue",
              "malformed multipart body: missing closing boundary");
    snprintf(buf, sizeof buf, "--b\r\n%s1\r\n--b\r\n", cd);
    mp_expect(th__failed, ct, buf, "malformed multipart body: missing closing boundary");
    snprintf(buf, sizeof buf, "--b\r\n%s1\r\n--b", cd);
    mp_expect(th__failed, ct, buf, "malformed multipart body: missing closing boundary");
    snprintf(buf, sizeof buf, "--b\r\n%s1\r\n--bx--\r\n", cd);
    mp_expect(th__failed, ct, buf, "malformed multipart body: missing closing boundary");
    mp_expect(th__failed, ct, "", "malformed multipart body: missing opening boundary");
    mp_expect(th__failed, ct, "a=1&b=2", "malformed multipart body: missing opening boundary");
    mp_expect(th__failed, ct, "--bb\r\n", "malformed multipart body: missing opening boundary");
    mp_expect(th__failed, ct, "--b\r\nContent-Disposition: form-data; filename=\"a\"\r\n\r\n1\r\n--b--\r\n",
              "malformed multipart body: part without a name");
    mp_expect(th__failed, ct, "--b\r\nContent-Type: text/plain\r\n\r\n1\r\n--b--\r\n",
              "malformed multipart body: part without a name");
    mp_expect(th__failed, ct, "--b\r\n\r\n1\r\n--b--\r\n", "malformed multipart body: part without a name");
    mp_expect(th__failed, ct, "--b\r\nContent-Disposition: form-data; name=\"x\r\n\r\n1\r\n--b--\r\n",
              "malformed multipart body: bad Content-Disposition header");
    mp_expect(th__failed, ct, "--b\r\nno colon here\r\n\r\n1\r\n--b--\r\n",
              "malformed multipart body: bad part header");
    mp_expect(th__failed, ct, "--b\r\nContent-Disposition: form-data;\r\n name=\"x\"\r\n\r\n1\r\n--b--\r\n",
              "malformed multipart body: bad part header"); /* obsolete folding */
    mp_expect(th__failed, ct, "--b\r\nX-A: \x01\r\n\r\n1\r\n--b--\r\n",
              "malformed multipart body: control character in a part header");
    mp_expect(th__failed, ct, "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n",
              "malformed multipart body: unterminated part headers");

    /* boundary parameter */
    const char *ok = "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n";
    mp_expect(th__failed, "multipart/form-data", ok, "malformed multipart body: missing boundary parameter");
    mp_expect(th__failed, NULL, ok, "malformed multipart body: missing boundary parameter");
    mp_expect(th__failed, "multipart/form-data; boundary=", ok,
              "malformed multipart body: bad boundary (1 to 70 printable characters)");
    mp_expect(th__failed, "multipart/form-data; boundary=\"\"", ok,
              "malformed multipart body: bad boundary (1 to 70 printable characters)");
    mp_expect(th__failed, "multipart/form-data; boundary=\"unterminated", ok,
              "malformed multipart body: bad Content-Type parameters");
    char bnd[72], ct71[160], ct70[160], body70[256];
    memset(bnd, 'x', 71);
    bnd[71] = '\0';
    snprintf(ct71, sizeof ct71, "multipart/form-data; boundary=%s", bnd);
    mp_expect(th__failed, ct71, ok, "malformed multipart body: bad boundary (1 to 70 printable characters)");
    bnd[70] = '\0';
    snprintf(ct70, sizeof ct70, "multipart/form-data; boundary=\"%s\"", bnd);
    snprintf(body70, sizeof body70,
             "--%s\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--%s--\r\n", bnd, bnd);
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_mp(&f, ct70, body70, strlen(body70), err, sizeof err), TH_BODY_OK);
    TH_CHECK_STR(val(&f, "x"), "1");
    th_form_free(&f);
}

TH_TEST(mp_header_size_limit)
{
    th_buf b;
    th_buf_init(&b, 0);
    th_buf_append_str(&b, "--b\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: ");
    for (int i = 0; i < 8000; i++)
        th_buf_append_byte(&b, 'p');
    th_buf_append_str(&b, "\r\n\r\n1\r\n--b--\r\n");
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", b.data, b.len, err, sizeof err), TH_BODY_OK);
    th_form_free(&f);

    th_buf_reset(&b);
    th_buf_append_str(&b, "--b\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: ");
    for (int i = 0; i < 9000; i++)
        th_buf_append_byte(&b, 'p');
    th_buf_append_str(&b, "\r\n\r\n1\r\n--b--\r\n");
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", b.data, b.len, err, sizeof err),
                 TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "malformed multipart body: part headers too large (max 8192 bytes)");
    th_form_free(&f);
    th_buf_free(&b);
}

TH_TEST(mp_field_limit)
{
    th_buf b;
    th_buf_init(&b, 0);
    for (int i = 0; i < 5; i++)
        th_buf_appendf(&b, "--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n%d\r\n", i, i);
    th_buf_append_str(&b, "--b--\r\n");
    th_form f;
    th_form_init(&f);
    f.max_fields = 5;
    char err[128] = "";
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", b.data, b.len, err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(f.n, 5);
    TH_CHECK_STR(val(&f, "f4"), "4");
    th_form_free(&f);
    f.max_fields = 4;
    TH_CHECK_INT(parse_mp(&f, "multipart/form-data; boundary=b", b.data, b.len, err, sizeof err),
                 TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "too many fields (max 4)");
    th_form_free(&f);
    th_buf_free(&b);
}

TH_TEST(mp_large_upload)
{
    /* a 20 MiB voice upload: linear time, exact bytes */
    size_t n = 20u << 20;
    th_buf b;
    th_buf_init(&b, 0);
    th_buf_append_str(
        &b, "--xyz\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"big.wav\"\r\n\r\n");
    TH_REQUIRE(th_buf_reserve(&b, n + 64) == TH_BUF_OK);
    for (size_t i = 0; i < n; i++)
        b.data[b.len + i] = (uint8_t)(i % 251 == 0 ? '\n' : (i * 7) & 0xff);
    b.len += n;
    th_buf_append_str(&b, "\r\n--xyz--\r\n");
    th_form f;
    th_form_init(&f);
    char err[128] = "";
    TH_CHECK_INT(
        th_form_parse_multipart(&f, "multipart/form-data; boundary=xyz", b.data, b.len, err, sizeof err),
        TH_BODY_OK);
    TH_REQUIRE(f.n == 1);
    TH_CHECK_INT(f.fields[0].value_len, n);
    TH_CHECK(memcmp(f.fields[0].value, b.data + b.len - 11 - n, n) == 0);
    th_form_free(&f);
    th_buf_free(&b);
}

/* ---- JSON -------------------------------------------------------------------------------------- */

TH_TEST(json_types)
{
    th_form f;
    th_form_init(&f);
    char err[160] = "";
    TH_CHECK_INT(
        parse_json(&f,
                   "{\"input\":\"\xe4\xbd\xa0\\n\\u00e9\",\"speed\":1.25,\"n\":-42,\"big\":1e300,"
                   "\"one\":2.0,\"t\":true,\"f\":false,\"z\":null,\"voice\":{\"id\" : \"a\", \"k\":[1, 2]},"
                   "\"texts\":[ \"a\" , \"b\" ]}",
                   0, err, sizeof err),
        TH_BODY_OK);
    TH_REQUIRE(f.n == 10);
    TH_CHECK_STR(f.fields[0].name, "input"); /* members keep their order */
    TH_CHECK_STR(f.fields[0].value, "\xe4\xbd\xa0\n\xc3\xa9");
    TH_CHECK_INT(f.fields[0].value_len, 6);
    TH_CHECK(!f.fields[0].is_json && !f.fields[0].is_null);
    TH_CHECK_STR(val(&f, "speed"), "1.25");
    TH_CHECK_STR(val(&f, "n"), "-42");
    TH_CHECK_STR(val(&f, "big"), "1e+300");
    TH_CHECK_STR(val(&f, "one"), "2.0");
    TH_CHECK_STR(val(&f, "t"), "true");
    TH_CHECK_STR(val(&f, "f"), "false");
    const th_field *z = th_form_get(&f, "z");
    TH_REQUIRE(z != NULL);
    TH_CHECK(z->is_null && !z->is_json);
    TH_CHECK_STR(z->value, "");
    const th_field *v = th_form_get(&f, "voice");
    TH_REQUIRE(v != NULL);
    TH_CHECK(v->is_json && !v->is_null);
    TH_CHECK_STR(v->value, "{\"id\":\"a\",\"k\":[1,2]}");
    TH_CHECK_INT(v->value_len, strlen(v->value));
    TH_CHECK_STR(val(&f, "texts"), "[\"a\",\"b\"]");
    TH_CHECK(th_form_get(&f, "texts")->is_json);
    th_form_free(&f);

    th_form_init(&f);
    TH_CHECK_INT(parse_json(&f, " {} \r\n", 0, err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(f.n, 0);
    th_form_free(&f);
}

static char *nested(size_t depth, bool close)
{
    char *s = malloc(2 * depth + 1);
    if (s == NULL) return NULL;
    for (size_t i = 0; i < depth; i++)
        s[i] = '[';
    size_t n = depth;
    if (close)
        for (size_t i = 0; i < depth; i++)
            s[n++] = ']';
    s[n] = '\0';
    return s;
}

TH_TEST(json_depth_limit)
{
    char err[160] = "";
    char *s = nested(32, true);
    TH_REQUIRE(s != NULL);
    json_t *j = th_json_parse_bounded((const uint8_t *)s, strlen(s), TH_JSON_MAX_DEPTH, err, sizeof err);
    TH_CHECK(j != NULL);
    json_decref(j);
    free(s);

    s = nested(33, true);
    TH_REQUIRE(s != NULL);
    j = th_json_parse_bounded((const uint8_t *)s, strlen(s), TH_JSON_MAX_DEPTH, err, sizeof err);
    TH_CHECK(j == NULL);
    TH_CHECK_STR(err, "invalid JSON: nested deeper than 32 levels");
    free(s);

    /* the object counts as one level: {"a": 31 arrays} is depth 32 */
    th_buf b;
    th_buf_init(&b, 0);
    th_buf_append_str(&b, "{\"a\":");
    for (int i = 0; i < 31; i++)
        th_buf_append_byte(&b, '[');
    for (int i = 0; i < 31; i++)
        th_buf_append_byte(&b, ']');
    th_buf_append_str(&b, "}");
    th_form f;
    th_form_init(&f);
    TH_CHECK_INT(parse_json(&f, th_buf_cstr(&b), 0, err, sizeof err), TH_BODY_OK);
    TH_CHECK(th_form_get(&f, "a") && th_form_get(&f, "a")->is_json);
    th_form_free(&f);
    th_buf_reset(&b);
    th_buf_append_str(&b, "{\"a\":[{\"b\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}");
    TH_CHECK_INT(parse_json(&f, th_buf_cstr(&b), 0, err, sizeof err), TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "invalid JSON: nested deeper than 32 levels");
    th_form_free(&f);
    /* a smaller explicit limit */
    TH_CHECK_INT(parse_json(&f, "{\"a\":[1]}", 1, err, sizeof err), TH_BODY_MALFORMED);
    TH_CHECK_INT(parse_json(&f, "{\"a\":[1]}", 2, err, sizeof err), TH_BODY_OK);
    th_form_free(&f);
    th_buf_free(&b);

    /* brackets inside strings (and after escaped quotes) do not count */
    th_buf_init(&b, 0);
    th_buf_append_str(&b, "{\"a\":\"\\\"");
    for (int i = 0; i < 100; i++)
        th_buf_append_str(&b, "[{");
    th_buf_append_str(&b, "\\\\\"}");
    th_form_init(&f);
    TH_CHECK_INT(parse_json(&f, th_buf_cstr(&b), 0, err, sizeof err), TH_BODY_OK);
    TH_CHECK_INT(val(&f, "a") ? strlen(val(&f, "a")) : 0, 202);
    th_form_free(&f);
    th_buf_free(&b);
}

TH_TEST(json_deep_nesting_rejected_fast)
{
    char err[160] = "";
    char *s = nested(10000, false);
    TH_REQUIRE(s != NULL);
    /* rejected by the pre-scan, before jansson would recurse 10,000 levels deep */
    json_t *j = th_json_parse_bounded((const uint8_t *)s, 10000, TH_JSON_MAX_DEPTH, err, sizeof err);
    TH_CHECK(j == NULL);
    TH_CHECK_STR(err, "invalid JSON: nested deeper than 32 levels");
    free(s);
    s = nested(10000, true);
    TH_REQUIRE(s != NULL);
    th_form f;
    th_form_init(&f);
    TH_CHECK_INT(th_body_parse(&f, "application/json", (const uint8_t *)s, 20000, err, sizeof err),
                 TH_BODY_MALFORMED);
    th_form_free(&f);
    free(s);
}

static void json_expect(int *th__failed, const char *s, size_t n, const char *msg)
{
    th_form f;
    th_form_init(&f);
    char err[200] = "";
    uint8_t *d = exact(s, n);
    TH_CHECK_INT(th_form_parse_json(&f, d, n, 0, err, sizeof err), TH_BODY_MALFORMED);
    free(d);
    if (strstr(err, msg) == NULL) fprintf(stderr, "  want \"%s\" in \"%s\"\n", msg, err);
    TH_CHECK(strstr(err, msg) != NULL);
    th_form_free(&f);
}

TH_TEST(json_rejects)
{
    json_expect(th__failed, "{\"input\":\"a\",\"input\":\"b\"}", 25, "duplicate key");
    json_expect(th__failed, "{\"a\":1} x", 9, "unexpected data after the JSON value");
    json_expect(th__failed, "{\"a\":1}{}", 9, "unexpected data after the JSON value");
    json_expect(th__failed, "{\"a\":\"x\0y\"}", 11, "invalid JSON at line 1");               /* raw NUL */
    json_expect(th__failed, "{\"a\":\"\\u0000\"}", 14, "\\u0000 is not allowed in strings"); /* escaped */
    json_expect(th__failed, "{\"a\\u0000\":1}", 13, "\\u0000 is not allowed in keys");
    json_expect(th__failed, "{\"a\":\"\xff\"}", 9, "invalid UTF-8");
    json_expect(th__failed, "{\"a\":\"\xc0\xaf\"}", 10, "invalid UTF-8"); /* overlong */
    json_expect(th__failed, "{\"a\":", 5, "unexpected end of input");
    json_expect(th__failed, "", 0, "unexpected end of input");
    json_expect(th__failed, "{\"a\":99999999999999999999}", 26, "number out of range");
    json_expect(th__failed, "{'a':1}", 7, "invalid JSON at line 1");
    json_expect(th__failed, "[1,2]", 5, "invalid JSON: the body must be an object");
    json_expect(th__failed, "\"str\"", 5, "invalid JSON: the body must be an object");
    json_expect(th__failed, "null", 4, "invalid JSON: the body must be an object");

    /* th_json_parse_bounded itself accepts any JSON value */
    char err[160];
    json_t *j = th_json_parse_bounded((const uint8_t *)"[1,2]", 5, 0, err, sizeof err);
    TH_CHECK(json_is_array(j));
    json_decref(j);
    j = th_json_parse_bounded((const uint8_t *)"42", 2, 0, err, sizeof err);
    TH_CHECK(json_is_integer(j));
    json_decref(j);
    TH_CHECK(th_json_parse_bounded((const uint8_t *)"{\"a\":1,\"a\":1}", 13, 0, err, sizeof err) == NULL);
}

TH_TEST(json_field_limit)
{
    th_form f;
    th_form_init(&f);
    f.max_fields = 2;
    char err[128] = "";
    TH_CHECK_INT(parse_json(&f, "{\"a\":1,\"b\":2}", 0, err, sizeof err), TH_BODY_OK);
    th_form_free(&f);
    TH_CHECK_INT(parse_json(&f, "{\"a\":1,\"b\":2,\"c\":3}", 0, err, sizeof err), TH_BODY_MALFORMED);
    TH_CHECK_STR(err, "too many fields (max 2)");
    th_form_free(&f);
}

/* ---- dispatch ---------------------------------------------------------------------------------- */

TH_TEST(body_dispatch)
{
    struct {
        const char *ct, *body;
        int rc;
        const char *field, *value;
    } cases[] = {
        {"application/x-www-form-urlencoded", "input=hi&voice=v", TH_BODY_OK, "input", "hi"},
        {"application/x-www-form-urlencoded; charset=UTF-8", "input=hi", TH_BODY_OK, "input", "hi"},
        {"  Application/X-WWW-Form-URLEncoded ;charset=utf-8", "input=hi", TH_BODY_OK, "input", "hi"},
        {"application/json", "{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {"APPLICATION/JSON; charset=utf-8", "{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {"application/vnd.api+json", "{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {"application/merge-patch+JSON", "{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {"multipart/form-data; boundary=zz",
         "--zz\r\nContent-Disposition: form-data; name=\"input\"\r\n\r\nhi\r\n--zz--\r\n", TH_BODY_OK,
         "input", "hi"},
        {NULL, "{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {"", " \r\n\t{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {"  ; charset=utf-8", "{\"input\":\"hi\"}", TH_BODY_OK, "input", "hi"},
        {NULL, "input=hi", TH_BODY_OK, "input", "hi"},
        {NULL, "", TH_BODY_OK, NULL, NULL},
        {"", "[1]", TH_BODY_OK, "[1]", ""}, /* not '{': read as a form */
        {"application/json", "input=hi", TH_BODY_MALFORMED, NULL, NULL},
        {"text/plain", "input=hi", TH_BODY_UNSUPPORTED, NULL, NULL},
        {"application/xml", "<a/>", TH_BODY_UNSUPPORTED, NULL, NULL},
        {"application/jsonx", "{}", TH_BODY_UNSUPPORTED, NULL, NULL},
        {"application/+json", "{}", TH_BODY_UNSUPPORTED, NULL, NULL},
        {"text/json+xml", "{}", TH_BODY_UNSUPPORTED, NULL, NULL},
        {"multipart/mixed; boundary=zz", "--zz--", TH_BODY_UNSUPPORTED, NULL, NULL},
        {"json", "{}", TH_BODY_UNSUPPORTED, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        th_form f;
        th_form_init(&f);
        char err[160] = "";
        int rc = parse_body(&f, cases[i].ct, cases[i].body, err, sizeof err);
        if (rc != cases[i].rc) fprintf(stderr, "  case %zu (%s): %s\n", i, cases[i].ct, err);
        TH_CHECK_INT(rc, cases[i].rc);
        if (cases[i].field) TH_CHECK_STR(val(&f, cases[i].field), cases[i].value);
        if (rc == TH_BODY_UNSUPPORTED)
            TH_CHECK_STR(err, "unsupported media type: use application/json, "
                              "application/x-www-form-urlencoded or multipart/form-data");
        th_form_free(&f);
    }
}

TH_TEST(null_err_buffer_and_reuse)
{
    th_form f;
    th_form_init(&f);
    TH_CHECK_INT(th_body_parse(&f, "text/plain", (const uint8_t *)"x", 1, NULL, 0), TH_BODY_UNSUPPORTED);
    TH_CHECK_INT(th_form_parse_urlencoded(&f, "a=%", 3, NULL, 0), TH_BODY_MALFORMED);
    TH_CHECK(th_json_parse_bounded((const uint8_t *)"{", 1, 0, NULL, 0) == NULL);
    char tiny[8];
    TH_CHECK_INT(th_form_parse_json(&f, (const uint8_t *)"[", 1, 0, tiny, sizeof tiny), TH_BODY_MALFORMED);
    TH_CHECK_INT(strlen(tiny), 7); /* truncated, still terminated */
    /* readers append; th_form_free empties the form and it can be used again */
    TH_CHECK_INT(th_form_parse_urlencoded(&f, "a=1", 3, NULL, 0), TH_BODY_OK);
    TH_CHECK_INT(th_form_parse_json(&f, (const uint8_t *)"{\"b\":2}", 7, 0, NULL, 0), TH_BODY_OK);
    TH_CHECK_INT(f.n, 2);
    th_form_free(&f);
    TH_CHECK_INT(f.n, 0);
    TH_CHECK(f.fields == NULL);
    th_form_free(&f);
    th_form_free(NULL);
    TH_CHECK(th_form_get(&f, "a") == NULL);
    TH_CHECK(th_form_get(NULL, "a") == NULL);
}

TH_TEST_MAIN()

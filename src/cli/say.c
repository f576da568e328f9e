/* say: reads text (argument or stdin), asks a hub for speech, writes the audio. */
#include "cli/say.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audio/format.h"
#include "core/buf.h"
#include "core/str.h"

#define SAY_MAX_TEXT (8u * 1024u * 1024u)

typedef struct say_out {
    const char *path; /* NULL or "-" = stdout */
    FILE *fp;
    long status;
    th_buf err; /* error body */
    uint64_t bytes;
    bool failed;
    bool progress;
} say_out;

static void usage(FILE *f)
{
    fprintf(f, "usage: ttshub say [TEXT|-] [-v VOICE] [-f FORMAT] [-o FILE] [--url HUB] [--speed S]\n"
               "                  [--api-key KEY] [--timeout SECONDS]\n"
               "  TEXT      the text to speak; '-' or none reads standard input\n"
               "  -v        voice (default alloy)\n"
               "  -f        mp3|opus|aac|flac|wav|pcm (default: from -o's extension, else mp3)\n"
               "  -o        output file (default: stdout when it is not a terminal, else speech.FORMAT)\n"
               "  --url     the hub (default $TTSHUB_URL or http://127.0.0.1:8080)\n"
               "  --speed   0.25..4.0 (default 1.0)\n"
               "  --api-key credentials (default $TTSHUB_API_KEY)\n");
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    say_out *o = ud;
    size_t n = size * nmemb;
    if (o->status == 0) {
        /* status is known once the first body byte arrives */
        o->status = 200;
    }
    if (o->status != 200) {
        th_buf_append(&o->err, ptr, n < 65536 ? n : 65536);
        return n;
    }
    if (o->fp == NULL) {
        if (o->path == NULL || strcmp(o->path, "-") == 0) {
            o->fp = stdout;
        } else {
            o->fp = fopen(o->path, "wb");
            if (o->fp == NULL) {
                fprintf(stderr, "ttshub say: cannot write %s: %s\n", o->path, strerror(errno));
                o->failed = true;
                return 0;
            }
        }
    }
    if (fwrite(ptr, 1, n, o->fp) != n) {
        o->failed = true;
        return 0;
    }
    o->bytes += n;
    return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    say_out *o = ud;
    size_t n = size * nitems;
    if (n > 9 && memcmp(buf, "HTTP/", 5) == 0) {
        const char *sp = memchr(buf, ' ', n);
        if (sp && (size_t)(sp - buf) + 4 <= n) {
            int64_t st;
            if (th_strn_to_i64(sp + 1, 3, 100, 599, &st) == 0 && st != 100) o->status = (long)st;
        }
    }
    return n;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    say_out *o = ud;
    (void)dltotal;
    (void)ultotal;
    (void)ulnow;
    if (o->progress && dlnow > 0) fprintf(stderr, "\rttshub say: %.1f KiB received", (double)dlnow / 1024.0);
    return 0;
}

static int read_all(FILE *f, th_buf *b)
{
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        if (th_buf_append(b, tmp, n) != TH_BUF_OK) return -1;
    return ferror(f) ? -1 : 0;
}

static const char *ext_format(const char *path)
{
    if (path == NULL) return NULL;
    const char *dot = strrchr(path, '.');
    if (dot == NULL) return NULL;
    if (th_fmt_from_name(dot + 1) != TH_FMT_NONE) return dot + 1;
    if (strcmp(dot, ".ogg") == 0) return "opus";
    if (strcmp(dot, ".raw") == 0) return "pcm";
    return NULL;
}

int th_cli_say(int argc, char **argv)
{
    const char *text_arg = NULL, *voice = "alloy", *format = NULL, *out = NULL, *speed = NULL;
    const char *url = getenv("TTSHUB_URL");
    const char *key = getenv("TTSHUB_API_KEY");
    long timeout_s = 600;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((strcmp(a, "-v") == 0 || strcmp(a, "--voice") == 0) && v) {
            voice = v;
            i++;
        } else if ((strcmp(a, "-f") == 0 || strcmp(a, "--format") == 0) && v) {
            format = v;
            i++;
        } else if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && v) {
            out = v;
            i++;
        } else if (strcmp(a, "--url") == 0 && v) {
            url = v;
            i++;
        } else if (strcmp(a, "--speed") == 0 && v) {
            speed = v;
            i++;
        } else if (strcmp(a, "--api-key") == 0 && v) {
            key = v;
            i++;
        } else if (strcmp(a, "--timeout") == 0 && v) {
            int64_t t;
            if (th_str_to_i64(v, 1, 86400, &t) != 0) {
                fprintf(stderr, "ttshub say: --timeout takes whole seconds (1..86400)\n");
                return 2;
            }
            timeout_s = (long)t;
            i++;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-' && a[1] != 0) {
            fprintf(stderr, "ttshub say: unknown or incomplete option %s\n", a);
            usage(stderr);
            return 2;
        } else if (text_arg == NULL) {
            text_arg = a;
        } else {
            fprintf(stderr, "ttshub say: give the text as one argument (quote it)\n");
            return 2;
        }
    }
    if (url == NULL || *url == 0) url = "http://127.0.0.1:8080";
    if (format == NULL) format = ext_format(out);
    if (format == NULL) format = "mp3";
    if (th_fmt_from_name(format) == TH_FMT_NONE) {
        fprintf(stderr, "ttshub say: -f must be mp3, opus, aac, flac, wav or pcm\n");
        return 2;
    }
    if (speed) {
        double d;
        if (th_str_to_double(speed, 0.25, 4.0, &d) != 0) {
            fprintf(stderr, "ttshub say: --speed must be from 0.25 to 4.0\n");
            return 2;
        }
    }
    char default_out[32];
    if (out == NULL && isatty(STDOUT_FILENO)) {
        snprintf(default_out, sizeof default_out, "speech.%s", format);
        out = default_out;
    }

    th_buf text;
    th_buf_init(&text, SAY_MAX_TEXT);
    if (text_arg == NULL || strcmp(text_arg, "-") == 0) {
        if (read_all(stdin, &text) != 0) {
            fprintf(stderr, "ttshub say: cannot read standard input (at most %u bytes)\n", SAY_MAX_TEXT);
            th_buf_free(&text);
            return 1;
        }
    } else if (th_buf_append_str(&text, text_arg) != TH_BUF_OK) {
        th_buf_free(&text);
        return 1;
    }
    if (text.len == 0) {
        fprintf(stderr, "ttshub say: no text\n");
        th_buf_free(&text);
        return 2;
    }

    int rc = 1;
    say_out o = {.path = out};
    th_buf_init(&o.err, 65536);
    o.progress = isatty(STDERR_FILENO) && text.len > 2000;
    char *endpoint = NULL;
    struct curl_slist *hdrs = NULL;
    CURL *h = NULL;
    th_buf form;
    th_buf_init(&form, 0);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) goto out;
    h = curl_easy_init();
    if (h == NULL) goto out;
    char *e_text = curl_easy_escape(h, (const char *)text.data, (int)text.len);
    char *e_voice = curl_easy_escape(h, voice, 0);
    if (e_text == NULL || e_voice == NULL) {
        curl_free(e_text);
        curl_free(e_voice);
        goto out;
    }
    th_buf_appendf(&form, "input=%s&voice=%s&response_format=%s", e_text, e_voice, format);
    if (speed) th_buf_appendf(&form, "&speed=%s", speed);
    curl_free(e_text);
    curl_free(e_voice);
    size_t ulen = strlen(url);
    th_buf ep;
    th_buf_init(&ep, 0);
    th_buf_append(&ep, url, ulen && url[ulen - 1] == '/' ? ulen - 1 : ulen);
    th_buf_append_str(&ep, "/api/generate");
    endpoint = th_buf_cstr(&ep);
    if (endpoint == NULL) goto out;
    hdrs = curl_slist_append(hdrs, "Content-Type: application/x-www-form-urlencoded");
    char auth[600];
    if (key && *key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hdrs = curl_slist_append(hdrs, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, endpoint);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, th_buf_cstr(&form));
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)form.len);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "ttshub-say/" TH_VERSION);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &o);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &o);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &o);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
    CURLcode cc = curl_easy_perform(h);
    if (o.progress) fputc('\n', stderr);
    if (o.failed) goto out;
    if (cc != CURLE_OK) {
        fprintf(stderr, "ttshub say: %s: %s\n", endpoint, curl_easy_strerror(cc));
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        const char *msg = NULL;
        json_t *j = o.err.len ? json_loadb((const char *)o.err.data, o.err.len, 0, NULL) : NULL;
        json_t *m = j ? json_object_get(json_object_get(j, "error"), "message") : NULL;
        if (m == NULL && j) m = json_object_get(j, "message");
        if (json_is_string(m)) msg = json_string_value(m);
        fprintf(stderr, "ttshub say: the hub answered %ld: %s\n", status, msg ? msg : "(no message)");
        json_decref(j);
        goto out;
    }
    if (o.fp == NULL) {
        fprintf(stderr, "ttshub say: the hub sent no audio\n");
        goto out;
    }
    if (o.fp != stdout && out)
        fprintf(stderr, "ttshub say: wrote %llu bytes of %s to %s\n", (unsigned long long)o.bytes, format,
                out);
    rc = 0;
out:
    if (o.fp && o.fp != stdout) {
        if (fclose(o.fp) != 0) rc = 1;
        if (rc != 0 && out) unlink(out);
    } else if (o.fp == stdout) {
        fflush(stdout);
    }
    curl_slist_free_all(hdrs);
    if (h) curl_easy_cleanup(h);
    curl_global_cleanup();
    free(endpoint);
    th_buf_free(&form);
    th_buf_free(&o.err);
    th_buf_free(&text);
    return rc;
}

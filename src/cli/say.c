/* say: reads text (argument or stdin), asks a hub for speech, writes the audio.
 *
 * Short text is one request in the asked format. Long text (over SAY_LONG_BYTES) is cut at sentence
 * boundaries into parts (the hub's own splitter), each part is asked for as PCM in order, and the audio
 * is encoded here into the asked format as it arrives. That way the progress bar, drawn on stderr when it
 * is a terminal, shows true numbers: parts done, seconds of audio received, and an ETA from the
 * characters done so far. */
#include "cli/say.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audio/conv.h"
#include "audio/format.h"
#include "audio/wav.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "routing/split.h"

#define SAY_MAX_TEXT (8u * 1024u * 1024u)
#define SAY_LONG_BYTES 2000u /* longer text goes in parts */
#define SAY_PART_CHARS 400u  /* code points per part */
#define SAY_BAR_WIDTH 24
#define SAY_DRAW_MS 100u /* redraw at most this often */

/* The progress of a long text, drawn on stderr when it is a terminal. */
typedef struct say_progress {
    bool on;
    size_t parts, done;               /* parts finished */
    uint64_t chars_total, chars_done; /* code points */
    uint64_t pcm_bytes;               /* PCM received (s16 mono at TH_PCM_DEFAULT_RATE) */
    uint64_t t0_ms, drawn_ms;
} say_progress;

typedef struct say_out {
    const char *path; /* NULL or "-" = stdout */
    FILE *fp;
    long status;
    th_buf err; /* error body */
    uint64_t bytes;
    bool failed;
    th_audio_conv *conv; /* parts path: PCM in, the asked format out */
    th_buf enc;          /* encoder output waiting to be written */
    uint8_t odd;         /* a PCM byte carried to the next chunk */
    bool has_odd;
    say_progress *pg;
} say_out;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ttshub say [TEXT|-] [-v VOICE] [-f FORMAT] [-o FILE] [--url HUB] [--speed S]\n"
            "                  [--api-key KEY] [--timeout SECONDS]\n"
            "  TEXT      the text to speak; '-' or none reads standard input\n"
            "  -v        voice (default alloy)\n"
            "  -f        mp3|opus|aac|flac|wav|pcm (default: from -o's extension, else mp3)\n"
            "  -o        output file (default: stdout when it is not a terminal, else speech.FORMAT)\n"
            "  --url     the hub (default $TTSHUB_URL or http://127.0.0.1:8080)\n"
            "  --speed   0.25..4.0 (default 1.0)\n"
            "  --api-key credentials (default $TTSHUB_API_KEY)\n"
            "Text over 2000 bytes is spoken in parts of up to 400 characters, cut at sentence ends; when\n"
            "standard error is a terminal a progress bar shows parts done, seconds of audio and an ETA.\n");
}

static bool open_out(say_out *o)
{
    if (o->fp) return true;
    if (o->path == NULL || strcmp(o->path, "-") == 0) {
        o->fp = stdout;
        return true;
    }
    o->fp = fopen(o->path, "wb");
    if (o->fp == NULL) {
        fprintf(stderr, "ttshub say: cannot write %s: %s\n", o->path, strerror(errno));
        o->failed = true;
        return false;
    }
    return true;
}

static bool write_out(say_out *o, const void *p, size_t n)
{
    if (n == 0) return true;
    if (!open_out(o)) return false;
    if (fwrite(p, 1, n, o->fp) != n) {
        fprintf(stderr, "ttshub say: write failed: %s\n", strerror(errno));
        o->failed = true;
        return false;
    }
    o->bytes += n;
    return true;
}

/* Parts path: PCM of one part into the encoder, whatever it produced to the output. */
static bool push_pcm(say_out *o, const char *p, size_t n)
{
    char err[256];
    o->pg->pcm_bytes += n;
    th_buf_reset(&o->enc);
    if (th_audio_conv_push(o->conv, (const uint8_t *)p, n, &o->enc, err, sizeof err) != 0) {
        fprintf(stderr, "ttshub say: encoding failed: %s\n", err);
        o->failed = true;
        return false;
    }
    return write_out(o, o->enc.data, o->enc.len);
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
        size_t room = o->err.len < 65536 ? 65536 - o->err.len : 0;
        th_buf_append(&o->err, ptr, n < room ? n : room);
        return n;
    }
    if (o->conv == NULL) return write_out(o, ptr, n) ? n : 0;
    /* whole s16 samples only: a byte left over waits for the next chunk */
    size_t off = 0;
    if (o->has_odd && n > 0) {
        char two[2] = {(char)o->odd, ptr[0]};
        if (!push_pcm(o, two, 2)) return 0;
        o->has_odd = false;
        off = 1;
    }
    size_t whole = (n - off) & ~(size_t)1;
    if (whole && !push_pcm(o, ptr + off, whole)) return 0;
    if (off + whole < n) {
        o->odd = (uint8_t)ptr[n - 1];
        o->has_odd = true;
    }
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

static void draw(say_progress *pg, bool final)
{
    uint64_t now = th_mono_ms();
    if (!pg->on || (!final && now - pg->drawn_ms < SAY_DRAW_MS)) return;
    pg->drawn_ms = now;
    char bar[SAY_BAR_WIDTH + 1];
    size_t fill = pg->parts ? pg->done * SAY_BAR_WIDTH / pg->parts : 0;
    for (size_t i = 0; i < SAY_BAR_WIDTH; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[SAY_BAR_WIDTH] = 0;
    double audio = (double)pg->pcm_bytes / (2.0 * TH_PCM_DEFAULT_RATE);
    double elapsed = (double)(now - pg->t0_ms) / 1000.0;
    char eta[32];
    if (final) {
        snprintf(eta, sizeof eta, "took %.1f s", elapsed);
    } else if (pg->chars_done == 0) {
        snprintf(eta, sizeof eta, "ETA --:--");
    } else {
        double left = elapsed * (double)(pg->chars_total - pg->chars_done) / (double)pg->chars_done;
        unsigned long s = (unsigned long)(left + 0.5);
        snprintf(eta, sizeof eta, "ETA %lu:%02lu", s / 60, s % 60);
    }
    /* \r and clear to the end of the line: the bar redraws in place */
    fprintf(stderr, "\r\033[Kttshub say [%s] %zu/%zu parts  %.1f s audio  %s", bar, pg->done, pg->parts,
            audio, eta);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    say_out *o = ud;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    if (o->pg) draw(o->pg, false);
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
    th_buf_init(&o.enc, 0); /* the converter's output of one response chunk */
    say_progress pg = {.t0_ms = th_mono_ms()};
    th_split_chunk *parts = NULL;
    size_t nparts = 0;
    char *endpoint = NULL;
    struct curl_slist *hdrs = NULL;
    CURL *h = NULL;
    th_buf form;
    th_buf_init(&form, 0); /* built from the text, itself bounded (SAY_MAX_TEXT) */
    int64_t cps = th_utf8_count((const char *)text.data, text.len);
    if (text.len > SAY_LONG_BYTES && cps > 0) {
        parts = th_split_text((const char *)text.data, text.len, SAY_PART_CHARS, &nparts);
        if (parts == NULL) goto out;
        if (nparts == 0) {
            fprintf(stderr, "ttshub say: no text\n");
            rc = 2;
            goto out;
        }
        char err[256];
        th_audio_spec in = {
            .fmt = TH_FMT_PCM, .sample_rate = TH_PCM_DEFAULT_RATE, .channels = 1, .sample = TH_SAMPLE_S16};
        th_audio_target tgt = {
            .fmt = th_fmt_from_name(format), .tempo = 1.0, .wav_data_len = TH_WAV_SIZE_UNKNOWN};
        o.conv = th_audio_conv_new(&in, &tgt, err, sizeof err);
        if (o.conv == NULL) {
            fprintf(stderr, "ttshub say: cannot encode %s: %s\n", format, err);
            goto out;
        }
        o.pg = &pg;
        pg.on = isatty(STDERR_FILENO) != 0;
        pg.parts = nparts;
        for (size_t i = 0; i < nparts; i++)
            pg.chars_total += parts[i].chars;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) goto out;
    h = curl_easy_init();
    if (h == NULL) goto out;
    size_t ulen = strlen(url);
    th_buf ep;
    th_buf_init(&ep, 0); /* the URL given on the command line */
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
    char *e_voice = curl_easy_escape(h, voice, 0);
    if (e_voice == NULL) goto out;
    size_t n_req = parts ? nparts : 1;
    draw(&pg, false);
    for (size_t i = 0; i < n_req; i++) {
        const char *ptext = parts ? (const char *)text.data + parts[i].off : (const char *)text.data;
        size_t plen = parts ? parts[i].len : text.len;
        char *e_text = curl_easy_escape(h, ptext, (int)plen);
        if (e_text == NULL) {
            curl_free(e_voice);
            goto out;
        }
        th_buf_reset(&form);
        int brc = th_buf_appendf(&form, "input=%s&voice=%s&response_format=%s", e_text, e_voice,
                                 parts ? "pcm" : format);
        if (brc == TH_BUF_OK && speed) brc = th_buf_appendf(&form, "&speed=%s", speed);
        curl_free(e_text);
        char *body = brc == TH_BUF_OK ? th_buf_cstr(&form) : NULL;
        if (body == NULL) {
            curl_free(e_voice);
            goto out;
        }
        o.status = 0;
        th_buf_reset(&o.err);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)form.len);
        CURLcode cc = curl_easy_perform(h);
        if (o.failed || cc != CURLE_OK) {
            if (pg.on) fputc('\n', stderr);
            if (!o.failed) fprintf(stderr, "ttshub say: %s: %s\n", endpoint, curl_easy_strerror(cc));
            curl_free(e_voice);
            goto out;
        }
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200) {
            if (pg.on) fputc('\n', stderr);
            const char *msg = NULL;
            json_t *j = o.err.len ? json_loadb((const char *)o.err.data, o.err.len, 0, NULL) : NULL;
            json_t *m = j ? json_object_get(json_object_get(j, "error"), "message") : NULL;
            if (m == NULL && j) m = json_object_get(j, "message");
            if (json_is_string(m)) msg = json_string_value(m);
            if (parts)
                fprintf(stderr, "ttshub say: the hub answered %ld for part %zu of %zu: %s\n", status, i + 1,
                        nparts, msg ? msg : "(no message)");
            else
                fprintf(stderr, "ttshub say: the hub answered %ld: %s\n", status, msg ? msg : "(no message)");
            json_decref(j);
            curl_free(e_voice);
            goto out;
        }
        if (parts) {
            pg.done++;
            pg.chars_done += parts[i].chars;
            draw(&pg, false);
        }
    }
    curl_free(e_voice);
    if (o.conv) {
        char err[256];
        th_buf_reset(&o.enc);
        if (th_audio_conv_finish(o.conv, &o.enc, err, sizeof err) != 0) {
            fprintf(stderr, "ttshub say: encoding failed: %s\n", err);
            goto out;
        }
        if (!write_out(&o, o.enc.data, o.enc.len)) goto out;
        draw(&pg, true);
        /* a WAV file streamed with unknown sizes gets its exact sizes when the file can be rewritten */
        struct stat st;
        if (th_fmt_from_name(format) == TH_FMT_WAV && o.fp && o.fp != stdout && fflush(o.fp) == 0 &&
            fstat(fileno(o.fp), &st) == 0 && S_ISREG(st.st_mode) && o.bytes >= 44 &&
            o.bytes - 8 <= UINT32_MAX) {
            uint32_t riff = (uint32_t)(o.bytes - 8), data = (uint32_t)(o.bytes - 44);
            uint8_t le[2][4] = {{riff, riff >> 8, riff >> 16, riff >> 24},
                                {data, data >> 8, data >> 16, data >> 24}};
            if (fseek(o.fp, 4, SEEK_SET) != 0 || fwrite(le[0], 1, 4, o.fp) != 4 ||
                fseek(o.fp, 40, SEEK_SET) != 0 || fwrite(le[1], 1, 4, o.fp) != 4) {
                fprintf(stderr, "ttshub say: cannot finish the WAV header of %s\n", out);
                goto out;
            }
        }
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
    th_audio_conv_free(o.conv);
    free(parts);
    free(endpoint);
    th_buf_free(&form);
    th_buf_free(&o.err);
    th_buf_free(&o.enc);
    th_buf_free(&text);
    return rc;
}

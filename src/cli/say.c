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

/* The command line. */
typedef struct say_args {
    const char *text, *voice, *format, *out, *speed, *url, *key;
    long timeout_s;
    char default_out[32];
} say_args;

/* One run: the text, its parts, the transfer and the output. */
typedef struct say_job {
    const say_args *a;
    th_buf text;
    say_out o;
    say_progress pg;
    th_split_chunk *parts; /* NULL: one request */
    size_t nparts;
    char *endpoint;
    struct curl_slist *hdrs;
    CURL *h;
    char *e_voice;
    th_buf form;
} say_job;

/* The options into a; -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, say_args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = NULL;
        if (strcmp(o, "-v") == 0 || strcmp(o, "--voice") == 0)
            slot = &a->voice;
        else if (strcmp(o, "-f") == 0 || strcmp(o, "--format") == 0)
            slot = &a->format;
        else if (strcmp(o, "-o") == 0 || strcmp(o, "--output") == 0)
            slot = &a->out;
        else if (strcmp(o, "--url") == 0)
            slot = &a->url;
        else if (strcmp(o, "--speed") == 0)
            slot = &a->speed;
        else if (strcmp(o, "--api-key") == 0)
            slot = &a->key;
        if (slot && v) {
            *slot = v;
            i++;
        } else if (strcmp(o, "--timeout") == 0 && v) {
            int64_t t;
            if (th_str_to_i64(v, 1, 86400, &t) != 0) {
                fprintf(stderr, "ttshub say: --timeout takes whole seconds (1..86400)\n");
                return 2;
            }
            a->timeout_s = (long)t;
            i++;
        } else if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (o[0] == '-' && o[1] != 0) {
            fprintf(stderr, "ttshub say: unknown or incomplete option %s\n", o);
            usage(stderr);
            return 2;
        } else if (a->text == NULL) {
            a->text = o;
        } else {
            fprintf(stderr, "ttshub say: give the text as one argument (quote it)\n");
            return 2;
        }
    }
    return -1;
}

/* The defaults of what was not given, and the checks of what was; -1 to go on, else the exit code. */
static int finish_args(say_args *a)
{
    if (a->url == NULL || *a->url == 0) a->url = "http://127.0.0.1:8080";
    if (a->format == NULL) a->format = ext_format(a->out);
    if (a->format == NULL) a->format = "mp3";
    if (th_fmt_from_name(a->format) == TH_FMT_NONE) {
        fprintf(stderr, "ttshub say: -f must be mp3, opus, aac, flac, wav or pcm\n");
        return 2;
    }
    if (a->speed) {
        double d;
        if (th_str_to_double(a->speed, 0.25, 4.0, &d) != 0) {
            fprintf(stderr, "ttshub say: --speed must be from 0.25 to 4.0\n");
            return 2;
        }
    }
    if (a->out == NULL && isatty(STDOUT_FILENO)) {
        snprintf(a->default_out, sizeof a->default_out, "speech.%s", a->format);
        a->out = a->default_out;
    }
    return -1;
}

/* The text from the argument or standard input; -1 to go on, else the exit code. */
static int read_text(const say_args *a, th_buf *text)
{
    if (a->text == NULL || strcmp(a->text, "-") == 0) {
        if (read_all(stdin, text) != 0) {
            fprintf(stderr, "ttshub say: cannot read standard input (at most %u bytes)\n", SAY_MAX_TEXT);
            return 1;
        }
    } else if (th_buf_append_str(text, a->text) != TH_BUF_OK) {
        return 1;
    }
    if (text->len == 0) {
        fprintf(stderr, "ttshub say: no text\n");
        return 2;
    }
    return -1;
}

/* Long text: the parts, the encoder they feed and the progress bar. -1 to go on, else the exit code. */
static int plan_parts(say_job *j)
{
    int64_t cps = th_utf8_count((const char *)j->text.data, j->text.len);
    if (j->text.len <= SAY_LONG_BYTES || cps <= 0) return -1;
    j->parts = th_split_text((const char *)j->text.data, j->text.len, SAY_PART_CHARS, &j->nparts);
    if (j->parts == NULL) return 1;
    if (j->nparts == 0) {
        fprintf(stderr, "ttshub say: no text\n");
        return 2;
    }
    char err[256];
    th_audio_spec in = {
        .fmt = TH_FMT_PCM, .sample_rate = TH_PCM_DEFAULT_RATE, .channels = 1, .sample = TH_SAMPLE_S16};
    th_audio_target tgt = {
        .fmt = th_fmt_from_name(j->a->format), .tempo = 1.0, .wav_data_len = TH_WAV_SIZE_UNKNOWN};
    j->o.conv = th_audio_conv_new(&in, &tgt, err, sizeof err);
    if (j->o.conv == NULL) {
        fprintf(stderr, "ttshub say: cannot encode %s: %s\n", j->a->format, err);
        return 1;
    }
    j->o.pg = &j->pg;
    j->pg.on = isatty(STDERR_FILENO) != 0;
    j->pg.parts = j->nparts;
    for (size_t i = 0; i < j->nparts; i++)
        j->pg.chars_total += j->parts[i].chars;
    return -1;
}

/* The curl handle for POST {url}/api/generate. 0, or -1. */
static int open_transfer(say_job *j)
{
    const say_args *a = j->a;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) return -1;
    j->h = curl_easy_init();
    if (j->h == NULL) return -1;
    CURL *h = j->h;
    size_t ulen = strlen(a->url);
    th_buf ep;
    th_buf_init(&ep, 0); /* the URL given on the command line */
    th_buf_append(&ep, a->url, ulen && a->url[ulen - 1] == '/' ? ulen - 1 : ulen);
    th_buf_append_str(&ep, "/api/generate");
    j->endpoint = th_buf_cstr(&ep);
    if (j->endpoint == NULL) return -1;
    j->hdrs = curl_slist_append(j->hdrs, "Content-Type: application/x-www-form-urlencoded");
    char auth[600];
    if (a->key && *a->key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", a->key);
        j->hdrs = curl_slist_append(j->hdrs, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, j->endpoint);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, j->hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "ttshub-say/" TH_VERSION);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &j->o);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &j->o);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &j->o);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, a->timeout_s);
    j->e_voice = curl_easy_escape(h, a->voice, 0);
    return j->e_voice ? 0 : -1;
}

/* The hub's error answer to request i, with its message when the body has one. */
static void report_status(const say_job *j, long status, size_t i)
{
    if (j->pg.on) fputc('\n', stderr);
    const char *msg = NULL;
    json_t *js = j->o.err.len ? json_loadb((const char *)j->o.err.data, j->o.err.len, 0, NULL) : NULL;
    json_t *m = js ? json_object_get(json_object_get(js, "error"), "message") : NULL;
    if (m == NULL && js) m = json_object_get(js, "message");
    if (json_is_string(m)) msg = json_string_value(m);
    if (j->parts)
        fprintf(stderr, "ttshub say: the hub answered %ld for part %zu of %zu: %s\n", status, i + 1,
                j->nparts, msg ? msg : "(no message)");
    else
        fprintf(stderr, "ttshub say: the hub answered %ld: %s\n", status, msg ? msg : "(no message)");
    json_decref(js);
}

/* Request i (the whole text, or part i as PCM), its audio to the output. 0, or -1. */
static int request_part(say_job *j, size_t i)
{
    const char *ptext = j->parts ? (const char *)j->text.data + j->parts[i].off : (const char *)j->text.data;
    size_t plen = j->parts ? j->parts[i].len : j->text.len;
    char *e_text = curl_easy_escape(j->h, ptext, (int)plen);
    if (e_text == NULL) return -1;
    th_buf_reset(&j->form);
    int brc = th_buf_appendf(&j->form, "input=%s&voice=%s&response_format=%s", e_text, j->e_voice,
                             j->parts ? "pcm" : j->a->format);
    if (brc == TH_BUF_OK && j->a->speed) brc = th_buf_appendf(&j->form, "&speed=%s", j->a->speed);
    curl_free(e_text);
    char *body = brc == TH_BUF_OK ? th_buf_cstr(&j->form) : NULL;
    if (body == NULL) return -1;
    j->o.status = 0;
    th_buf_reset(&j->o.err);
    curl_easy_setopt(j->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(j->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->form.len);
    CURLcode cc = curl_easy_perform(j->h);
    if (j->o.failed || cc != CURLE_OK) {
        if (j->pg.on) fputc('\n', stderr);
        if (!j->o.failed) fprintf(stderr, "ttshub say: %s: %s\n", j->endpoint, curl_easy_strerror(cc));
        return -1;
    }
    long status = 0;
    curl_easy_getinfo(j->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        report_status(j, status, i);
        return -1;
    }
    if (j->parts) {
        j->pg.done++;
        j->pg.chars_done += j->parts[i].chars;
        draw(&j->pg, false);
    }
    return 0;
}

/* A WAV file streamed with unknown sizes gets its exact sizes when the file can be rewritten. 0, or -1. */
static int fix_wav_sizes(say_out *o)
{
    struct stat st;
    if (o->fp == NULL || o->fp == stdout || fflush(o->fp) != 0 || fstat(fileno(o->fp), &st) != 0 ||
        !S_ISREG(st.st_mode) || o->bytes < 44 || o->bytes - 8 > UINT32_MAX)
        return 0;
    uint32_t riff = (uint32_t)(o->bytes - 8), data = (uint32_t)(o->bytes - 44);
    uint8_t le[2][4] = {{riff, riff >> 8, riff >> 16, riff >> 24}, {data, data >> 8, data >> 16, data >> 24}};
    if (fseek(o->fp, 4, SEEK_SET) != 0 || fwrite(le[0], 1, 4, o->fp) != 4 ||
        fseek(o->fp, 40, SEEK_SET) != 0 || fwrite(le[1], 1, 4, o->fp) != 4) {
        fprintf(stderr, "ttshub say: cannot finish the WAV header of %s\n", o->path);
        return -1;
    }
    return 0;
}

/* Parts path: the encoder's last bytes, the final progress line, the WAV sizes. 0, or -1. */
static int finish_parts(say_job *j)
{
    char err[256];
    th_buf_reset(&j->o.enc);
    if (th_audio_conv_finish(j->o.conv, &j->o.enc, err, sizeof err) != 0) {
        fprintf(stderr, "ttshub say: encoding failed: %s\n", err);
        return -1;
    }
    if (!write_out(&j->o, j->o.enc.data, j->o.enc.len)) return -1;
    draw(&j->pg, true);
    if (th_fmt_from_name(j->a->format) == TH_FMT_WAV) return fix_wav_sizes(&j->o);
    return 0;
}

/* Every request in order, then the end of the output. The exit code. */
static int say_run(say_job *j)
{
    int rc = plan_parts(j);
    if (rc >= 0) return rc;
    if (open_transfer(j) != 0) return 1;
    size_t n_req = j->parts ? j->nparts : 1;
    draw(&j->pg, false);
    for (size_t i = 0; i < n_req; i++)
        if (request_part(j, i) != 0) return 1;
    if (j->o.conv && finish_parts(j) != 0) return 1;
    if (j->o.fp == NULL) {
        fprintf(stderr, "ttshub say: the hub sent no audio\n");
        return 1;
    }
    if (j->o.fp != stdout && j->a->out)
        fprintf(stderr, "ttshub say: wrote %llu bytes of %s to %s\n", (unsigned long long)j->o.bytes,
                j->a->format, j->a->out);
    return 0;
}

/* Closes the output (a failed run removes its file) and frees the job. The exit code. */
static int say_close(say_job *j, int rc)
{
    say_out *o = &j->o;
    if (o->fp && o->fp != stdout) {
        if (fclose(o->fp) != 0) rc = 1;
        if (rc != 0 && j->a->out) unlink(j->a->out);
    } else if (o->fp == stdout) {
        fflush(stdout);
    }
    curl_free(j->e_voice);
    curl_slist_free_all(j->hdrs);
    if (j->h) curl_easy_cleanup(j->h);
    curl_global_cleanup();
    th_audio_conv_free(o->conv);
    free(j->parts);
    free(j->endpoint);
    th_buf_free(&j->form);
    th_buf_free(&o->err);
    th_buf_free(&o->enc);
    th_buf_free(&j->text);
    return rc;
}

int th_cli_say(int argc, char **argv)
{
    say_args a = {
        .voice = "alloy", .url = getenv("TTSHUB_URL"), .key = getenv("TTSHUB_API_KEY"), .timeout_s = 600};
    int rc = parse_options(argc, argv, &a);
    if (rc < 0) rc = finish_args(&a);
    if (rc >= 0) return rc;

    say_job j = {.a = &a, .o = {.path = a.out}, .pg = {.t0_ms = th_mono_ms()}};
    th_buf_init(&j.text, SAY_MAX_TEXT);
    rc = read_text(&a, &j.text);
    if (rc >= 0) {
        th_buf_free(&j.text);
        return rc;
    }
    th_buf_init(&j.o.err, 65536);
    th_buf_init(&j.o.enc, 0); /* the converter's output of one response chunk */
    th_buf_init(&j.form, 0);  /* built from the text, itself bounded (SAY_MAX_TEXT) */
    return say_close(&j, say_run(&j));
}

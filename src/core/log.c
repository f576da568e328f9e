#include "core/log.h"

#include "core/buf.h"
#include "core/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct th_log {
    th_log_level level;
    th_log_format fmt;
    FILE *fp;
    bool own;
    pthread_mutex_t mu;
};

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

th_log *th_log_new(th_log_level level, th_log_format fmt, const char *path)
{
    th_log *lg = calloc(1, sizeof *lg);
    if (lg == NULL) return NULL;
    lg->level = level;
    lg->fmt = fmt;
    if (path && *path) {
        lg->fp = fopen(path, "a");
        if (lg->fp == NULL) {
            int e = errno;
            free(lg);
            errno = e;
            return NULL;
        }
        lg->own = true;
        setvbuf(lg->fp, NULL, _IOLBF, 0);
    } else {
        lg->fp = stderr;
    }
    pthread_mutex_init(&lg->mu, NULL);
    return lg;
}

void th_log_free(th_log *lg)
{
    if (lg == NULL) return;
    if (lg->own) fclose(lg->fp);
    pthread_mutex_destroy(&lg->mu);
    free(lg);
}

th_log_level th_log_get_level(const th_log *lg)
{
    return lg->level;
}

void th_log_set_level(th_log *lg, th_log_level level)
{
    lg->level = level;
}

int th_log_level_parse(const char *s, th_log_level *out)
{
    for (int i = 0; i <= TH_LOG_OFF; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (th_log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = TH_LOG_WARN;
        return 0;
    }
    return -1;
}

int th_log_format_parse(const char *s, th_log_format *out)
{
    if (strcmp(s, "json") == 0)
        *out = TH_LOG_JSON;
    else if (strcmp(s, "text") == 0)
        *out = TH_LOG_TEXT;
    else
        return -1;
    return 0;
}

static void emit(th_log *lg, th_buf *b)
{
    if (th_buf_append_byte(b, '\n') != TH_BUF_OK) return;
    pthread_mutex_lock(&lg->mu);
    fwrite(b->data, 1, b->len, lg->fp);
    fflush(lg->fp);
    pthread_mutex_unlock(&lg->mu);
}

static void head(th_log *lg, th_buf *b, th_log_level level)
{
    char ts[32];
    th_rfc3339(th_wall_ms(), ts, sizeof ts);
    if (lg->fmt == TH_LOG_JSON)
        th_buf_appendf(b, "{\"ts\":\"%s\",\"level\":\"%s\"", ts, level_names[level]);
    else
        th_buf_appendf(b, "%s %-5s ", ts, level_names[level]);
}

void th_log_write(th_log *lg, th_log_level level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    th_buf b;
    th_buf_init(&b, 8192);
    head(lg, &b, level);
    if (lg->fmt == TH_LOG_JSON) {
        th_buf_append_str(&b, ",\"msg\":\"");
        th_buf_append_json_str(&b, msg, len);
        th_buf_append_str(&b, "\"}");
    } else {
        th_buf_append(&b, msg, len);
    }
    emit(lg, &b);
    th_buf_free(&b);
}

static void field_str(th_buf *b, bool json, const char *k, const char *v)
{
    if (v == NULL) return;
    if (json) {
        th_buf_appendf(b, ",\"%s\":\"", k);
        th_buf_append_json_str(b, v, strlen(v));
        th_buf_append_byte(b, '"');
    } else {
        th_buf_appendf(b, " %s=%s", k, v);
    }
}

static void field_i64(th_buf *b, bool json, const char *k, int64_t v)
{
    if (v < 0) return;
    th_buf_appendf(b, json ? ",\"%s\":%lld" : " %s=%lld", k, (long long)v);
}

static void field_ms(th_buf *b, bool json, const char *k, double v)
{
    if (v < 0) return;
    th_buf_appendf(b, json ? ",\"%s\":%.3f" : " %s=%.3f", k, v);
}

void th_log_access(th_log *lg, const th_access *a)
{
    th_log_level level = a->status >= 500 ? TH_LOG_WARN : TH_LOG_INFO;
    if (level < lg->level) return;
    bool json = lg->fmt == TH_LOG_JSON;
    th_buf b;
    th_buf_init(&b, 16384);
    head(lg, &b, level);
    if (json)
        th_buf_append_str(&b, ",\"msg\":\"access\"");
    else
        th_buf_append_str(&b, "access");
    field_str(&b, json, "generation", a->generation);
    field_str(&b, json, "method", a->method);
    field_str(&b, json, "route", a->route);
    field_i64(&b, json, "status", a->status);
    field_str(&b, json, "tenant", a->tenant);
    field_str(&b, json, "voice", a->voice);
    field_str(&b, json, "voice_id", a->voice_id);
    field_str(&b, json, "format", a->format);
    field_str(&b, json, "provider", a->provider);
    field_str(&b, json, "cache", a->cache);
    field_str(&b, json, "peer", a->peer);
    field_str(&b, json, "error", a->error);
    field_i64(&b, json, "bytes", a->bytes);
    field_i64(&b, json, "chars", a->chars);
    field_ms(&b, json, "duration_ms", a->duration_ms);
    field_ms(&b, json, "upstream_ms", a->upstream_ms);
    if (json) th_buf_append_byte(&b, '}');
    emit(lg, &b);
    th_buf_free(&b);
}

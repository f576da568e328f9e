/* log: leveled logging (JSON lines or text) and the per-request access line.
 *
 * A th_log hangs off the hub; there is no global logger. Use TH_LOG so the
 * level is checked before the arguments are evaluated. Thread-safe. */
#ifndef TH_CORE_LOG_H
#define TH_CORE_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { TH_LOG_DEBUG = 0, TH_LOG_INFO, TH_LOG_WARN, TH_LOG_ERROR, TH_LOG_OFF } th_log_level;
typedef enum { TH_LOG_JSON = 0, TH_LOG_TEXT } th_log_format;

typedef struct th_log th_log;

/** path NULL or "" = stderr. Returns NULL (and sets errno) when the file cannot be opened. */
th_log *th_log_new(th_log_level level, th_log_format fmt, const char *path);
void th_log_free(th_log *lg);
th_log_level th_log_get_level(const th_log *lg);
void th_log_set_level(th_log *lg, th_log_level level);
int th_log_level_parse(const char *s, th_log_level *out);
int th_log_format_parse(const char *s, th_log_format *out);

void th_log_write(th_log *lg, th_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define TH_LOG(lg, lvl, ...)                                                                                 \
    do {                                                                                                     \
        if ((lg) != NULL && (lvl) >= th_log_get_level(lg)) th_log_write((lg), (lvl), __VA_ARGS__);           \
    } while (0)

/** One request's access line. NULL strings and negative numbers are left out. */
typedef struct th_access {
    const char *generation;
    const char *method;
    const char *route; /* the path */
    const char *tenant;
    const char *voice;
    const char *voice_id; /* a voice-library voice spoken, made or read, or NULL */
    const char *format;
    const char *provider;
    const char *cache; /* HIT | MISS | COALESCED */
    const char *peer;
    const char *error; /* error code, when status >= 400 */
    int status;
    int64_t bytes;
    int64_t chars;
    double duration_ms;
    double upstream_ms;
} th_access;

void th_log_access(th_log *lg, const th_access *a);

#endif

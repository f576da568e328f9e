/* body: readers of request bodies into a flat list of fields.
 *
 * application/x-www-form-urlencoded, multipart/form-data and JSON objects.
 * All readers are bounded: they never read past len, never recurse past
 * max_depth, and reject malformed input with a message for the client. */
#ifndef TH_HTTP_BODY_H
#define TH_HTTP_BODY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct th_field {
    char *name;  /* NUL-terminated */
    char *value; /* NUL-terminated; may also contain NULs (file parts): use value_len */
    size_t value_len;
    char *filename;     /* multipart file parts; NULL otherwise */
    char *content_type; /* multipart part Content-Type; NULL when absent */
    bool is_json;       /* JSON: value is compact JSON text of an object/array; false for scalars */
    bool is_null;       /* JSON null */
} th_field;

typedef struct th_form {
    th_field *fields;
    size_t n, cap;
    size_t max_fields; /* 0 = 256 */
} th_form;

typedef enum {
    TH_BODY_OK = 0,
    TH_BODY_MALFORMED = -1,   /* 400 */
    TH_BODY_UNSUPPORTED = -2, /* 415: not a media type we read */
    TH_BODY_NOMEM = -3,       /* 500 */
} th_body_rc;

void th_form_init(th_form *f);
void th_form_free(th_form *f);
/** First field of that name, or NULL. */
const th_field *th_form_get(const th_form *f, const char *name);

int th_form_parse_urlencoded(th_form *f, const char *data, size_t len, char *err, size_t errlen);
/** content_type is the whole header value (boundary taken from it). */
int th_form_parse_multipart(th_form *f, const char *content_type, const uint8_t *data, size_t len, char *err,
                            size_t errlen);
/** A JSON object: each member becomes a field. Strings as they are (UTF-8), numbers and booleans as
 * their JSON text, objects/arrays as compact JSON with is_json set. */
int th_form_parse_json(th_form *f, const uint8_t *data, size_t len, size_t max_depth, char *err,
                       size_t errlen);
/** Picks the reader from the Content-Type header (NULL or empty: guessed from the first byte, '{' =
 * JSON, else form-urlencoded). Unknown media types give TH_BODY_UNSUPPORTED. */
int th_body_parse(th_form *f, const char *content_type, const uint8_t *data, size_t len, char *err,
                  size_t errlen);

/** Parses JSON with a nesting limit checked before jansson sees it. NULL on error (err says why). */
json_t *th_json_parse_bounded(const uint8_t *data, size_t len, size_t max_depth, char *err, size_t errlen);

/** Decodes %XX and '+' in place semantics: writes into out (at least len+1 bytes); returns the new
 * length, or -1 on a bad escape. */
long th_url_decode(const char *in, size_t len, char *out, bool plus_is_space);
/** Finds a parameter in a raw query string and decodes it into a malloc'd string (NULL if absent). */
char *th_query_get(const char *query, const char *name);

#define TH_JSON_MAX_DEPTH 32

#endif

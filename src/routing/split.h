/* split: cuts long text into chunks an engine accepts, at sentence boundaries.
 *
 * Sentence ends: . ! ? ; followed by space/end (after closing quotes and
 * brackets), newlines between paragraphs, and the CJK 。！？；(and full-width
 * ．！？). A sentence longer than the limit is cut at a clause mark (, ，、：:),
 * then at a space, then hard at the limit (never inside a UTF-8 sequence).
 * Sentences are packed greedily up to the limit, so chunks are as few as
 * possible. Limits count Unicode code points. */
#ifndef TH_HUB_SPLIT_H
#define TH_HUB_SPLIT_H

#include <stddef.h>

typedef struct th_split_chunk {
    size_t off, len; /* bytes in the input */
    size_t chars;    /* code points */
} th_split_chunk;

/** Splits text (valid UTF-8) into chunks of at most max_chars code points. Returns a malloc'd array
 * (count in *n), or NULL on ENOMEM. Whitespace-only chunks are dropped; leading/trailing spaces of each
 * chunk are trimmed. */
th_split_chunk *th_split_text(const char *text, size_t len, size_t max_chars, size_t *n);

#endif

/* asset: files under web/, embedded into the binary at build time. */
#ifndef TH_CORE_ASSET_H
#define TH_CORE_ASSET_H

#include <stddef.h>

typedef struct th_asset {
    const char *path; /* "/index.html" */
    const unsigned char *data;
    size_t len;
} th_asset;

extern const th_asset th_assets[]; /* read-only, ends with a NULL path */

const th_asset *th_asset_find(const char *path);
const char *th_asset_mime(const char *path);

#endif

#include "core/asset.h"

#include <string.h>

const th_asset *th_asset_find(const char *path)
{
    for (const th_asset *a = th_assets; a->path; a++)
        if (strcmp(a->path, path) == 0) return a;
    return NULL;
}

const char *th_asset_mime(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (dot == NULL) return "application/octet-stream";
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0) return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (strcmp(dot, ".svg") == 0) return "image/svg+xml";
    if (strcmp(dot, ".json") == 0) return "application/json";
    if (strcmp(dot, ".png") == 0) return "image/png";
    return "application/octet-stream";
}

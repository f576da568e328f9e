/* atomic_file: whole files written so that a crash leaves the old file or the new one, never half.
 *
 * The data go to a temporary file in the same folder (mkstemp), which is synced, then renamed over the
 * target; the folder is synced too. Blocking: call it from a worker thread, not the loop. */
#ifndef TH_CORE_ATOMIC_FILE_H
#define TH_CORE_ATOMIC_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Writes len bytes to path (mode 0644). 0, or -1 with errno set and a message in err. */
int th_atomic_write(const char *path, const void *data, size_t len, char *err, size_t errlen);
/** Reads a whole regular file of at most max bytes into *out (malloc'd, freed by the caller). 0, or -1
 * (errno: ENOENT when it does not exist, EFBIG when it is larger than max). */
int th_file_read(const char *path, size_t max, uint8_t **out, size_t *len);
/** Creates dir and its missing parents (mode 0755). 0 or -1 (errno). */
int th_mkdirs(const char *dir);

#endif

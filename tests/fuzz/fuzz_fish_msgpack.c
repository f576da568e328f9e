/* fuzz_fish_msgpack: the fish kind's msgpack body for a library voice, built from arbitrary text,
 * transcript and reference bytes, must decode (msgpack-c's unpacker) to exactly those values: one map with
 * text, format, references[{audio, text}], and no trailing bytes. (The hub only writes msgpack: it never
 * parses msgpack from outside, so arbitrary bytes are not fed to the unpacker, whose zone trusts declared
 * sizes.) */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/upstream.h"

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    return NULL;
}

static int same(const msgpack_object *o, int type, const void *p, size_t n)
{
    if (o == NULL || (int)o->type != type) return 0;
    const char *ptr = type == MSGPACK_OBJECT_BIN ? o->via.bin.ptr : o->via.str.ptr;
    size_t size = type == MSGPACK_OBJECT_BIN ? o->via.bin.size : o->via.str.size;
    return size == n && (n == 0 || memcmp(ptr, p, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msgpack_unpacked u;
    size_t off = 0;
    if (size < 2) return 0;
    /* [n1][n2] text, transcript, then the reference */
    size_t n1 = data[0] % (size - 1), rest = size - 2 - (n1 < size - 2 ? n1 : size - 2);
    if (n1 > size - 2) n1 = size - 2;
    size_t n2 = rest > 0 ? data[1] % (rest + 1) : 0;
    const uint8_t *p = data + 2;
    char *text = malloc(n1 + 1), *rt = malloc(n2 + 1);
    size_t wl = size - 2 - n1 - n2;
    uint8_t *wav = malloc(wl ? wl : 1);
    if (text == NULL || rt == NULL || wav == NULL) goto out;
    memcpy(text, p, n1);
    text[n1] = 0;
    memcpy(rt, p + n1, n2);
    rt[n2] = 0;
    if (wl) memcpy(wav, p + n1 + n2, wl);
    size_t tl = strlen(text), rl = strlen(rt); /* strings stop at a NUL, as in the hub */
    if (tl == 0) goto out;
    th_voice_ref ref = {.id = "v",
                        .name = "",
                        .sha256 = "",
                        .wav = wav,
                        .wav_len = wl,
                        .rate = 24000,
                        .text = rt,
                        .language = ""};
    th_synth_req req = {.text = text,
                        .text_len = tl,
                        .chars = tl,
                        .voice = "v",
                        .want_fmt = TH_FMT_WAV,
                        .speed = 1.0,
                        .ref = &ref};
    th_provider_conf pc;
    memset(&pc, 0, sizeof pc);
    pc.name = "fish";
    pc.type = "fish";
    pc.base_url = "http://127.0.0.1:1";
    th_upstream_http h;
    th_upstream_http_init(&h);
    h.base_url = pc.base_url;
    th_perr err;
    memset(&err, 0, sizeof err);
    if (th_kind_fish.build(&pc, &req, &h, &err) != 0) abort();
    /* the reference's bytes are not in h.body but a piece of its own: the body as the engine receives it */
    th_buf flat;
    th_buf_init(&flat, 0); /* filled from our own body only */
    if (th_upstream_body_flat(&h, &flat) != 0) abort();
    msgpack_unpacked_init(&u);
    off = 0;
    if (msgpack_unpack_next(&u, (const char *)flat.data, flat.len, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != flat.len)
        abort();
    const msgpack_object *refs = get(&u.data, "references");
    if (!same(get(&u.data, "text"), MSGPACK_OBJECT_STR, text, tl) || refs == NULL ||
        refs->type != MSGPACK_OBJECT_ARRAY || refs->via.array.size != 1 ||
        !same(get(&refs->via.array.ptr[0], "audio"), MSGPACK_OBJECT_BIN, wav, wl) ||
        !same(get(&refs->via.array.ptr[0], "text"), MSGPACK_OBJECT_STR, rt, rl))
        abort();
    msgpack_unpacked_destroy(&u);
    th_buf_free(&flat);
    th_upstream_http_free(&h);
out:
    free(text);
    free(rt);
    free(wav);
    return 0;
}

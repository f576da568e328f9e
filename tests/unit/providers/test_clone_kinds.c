/* Unit tests of library voices (th_synth_req.ref) in each clone-capable engine kind.
 *
 * First each kind's request for a th_voice_ref built here (a real WAV and its sha256): what goes inline
 * (cosyvoice multipart, fish msgpack, nodes), the upload and remote-voice steps (openvoice, elevenlabs) and
 * the shared-folder path (gpt_sovits, xtts). Then end to end through the generic upstream provider against
 * the Python fakes, which record what they received: the reference arrives with the same bytes, uploads
 * happen once per provider, an engine that forgot it gets it again, voice_forget drops it. */
#include <jansson.h>
#include <msgpack.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "audio/flac.h"
#include "audio/wav.h"
#include "core/clock.h"
#include "core/str.h"
#include "fake_proc.h"
#include "providers/upstream.h"
#include "th_test.h"

/* ---- a reference ---------------------------------------------------------------------------- */

typedef struct tref {
    th_voice_ref r;
    uint8_t *wav;
    char sha[65];
} tref;

/* A mono s16 WAV of seconds at rate (a 220 Hz tone with a ramp, so every sample matters). */
static void tref_init(tref *t, const char *id, const char *text, double seconds, int rate)
{
    size_t frames = (size_t)(seconds * rate);
    size_t len = TH_WAV_HEADER_LEN + frames * 2;
    t->wav = malloc(len);
    if (t->wav == NULL) abort();
    th_wav_header(t->wav, rate, 1, 16, (uint32_t)(frames * 2));
    for (size_t i = 0; i < frames; i++) {
        int v = (int)((i * 37u) % 20000) - 10000;
        t->wav[TH_WAV_HEADER_LEN + 2 * i] = (uint8_t)(v & 0xff);
        t->wav[TH_WAV_HEADER_LEN + 2 * i + 1] = (uint8_t)((v >> 8) & 0xff);
    }
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256(t->wav, len, d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(t->sha + 2 * i, 3, "%02x", d[i]);
    t->r = (th_voice_ref){.id = id,
                          .name = "Test voice",
                          .sha256 = t->sha,
                          .wav = t->wav,
                          .wav_len = len,
                          .rate = rate,
                          .text = text,
                          .language = "en"};
}

static void tref_free(tref *t)
{
    free(t->wav);
}

/* ---- provider config ------------------------------------------------------------------------ */

typedef struct tconf {
    th_provider_conf pc;
    th_kv opts[8];
    th_kv voices[4];
} tconf;

static void tconf_init(tconf *t, const char *type, const char *base_url)
{
    memset(t, 0, sizeof *t);
    t->pc.name = (char *)type;
    t->pc.type = (char *)type;
    t->pc.base_url = (char *)base_url;
    t->pc.timeout_ms = 10000;
    t->pc.opts = t->opts;
    t->pc.voices = t->voices;
}

static void tconf_opt(tconf *t, const char *key, const char *value)
{
    t->opts[t->pc.n_opts++] = (th_kv){(char *)key, (char *)value, false};
}

static th_synth_req mkreq(const char *text, const th_voice_ref *ref)
{
    return (th_synth_req){.text = text,
                          .text_len = strlen(text),
                          .chars = strlen(text),
                          .voice = ref != NULL ? ref->id : "alloy",
                          .want_fmt = TH_FMT_WAV,
                          .want_rate = 24000,
                          .speed = 1.0,
                          .ref = ref};
}

static int build(const th_upstream_kind *k, const tconf *t, const th_synth_req *req, th_upstream_http *h,
                 const char *prepared, int pass, th_perr *err)
{
    th_upstream_http_init(h);
    h->base_url = t->pc.base_url;
    h->prepared = prepared;
    h->pass = pass;
    memset(err, 0, sizeof *err);
    return k->build(&t->pc, req, h, err);
}

static const char *url_of(th_upstream_http *h)
{
    const char *u = th_buf_cstr(&h->url);
    return u != NULL ? u : "";
}

static bool has_header(th_upstream_http *h, const char *prefix)
{
    const char *s = th_buf_cstr(&h->headers);
    return s != NULL && strstr(s, prefix) != NULL;
}

/* The boundary of a multipart Content-Type header in h, into out. */
static bool boundary_of(th_upstream_http *h, char *out, size_t n)
{
    const char *s = th_buf_cstr(&h->headers), *b = s != NULL ? strstr(s, "boundary=") : NULL;
    if (b == NULL) return false;
    b += 9;
    size_t l = strcspn(b, "\n");
    if (l >= n) return false;
    memcpy(out, b, l);
    out[l] = 0;
    return true;
}

/* The content of the multipart part named name, or NULL. */
static const uint8_t *mp_part(const th_buf *body, const char *boundary, const char *name, size_t *len)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Content-Disposition: form-data; name=\"%s\"", name);
    const uint8_t *p = memmem(body->data, body->len, hdr, strlen(hdr));
    if (p == NULL) return NULL;
    const uint8_t *end = body->data + body->len;
    const uint8_t *s = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
    if (s == NULL) return NULL;
    s += 4;
    char delim[128];
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    const uint8_t *e = memmem(s, (size_t)(end - s), delim, strlen(delim));
    if (e == NULL) return NULL;
    *len = (size_t)(e - s);
    return s;
}

static bool tu_find(const th_buf *b, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= b->len; i++)
        if (memcmp(b->data + i, s, n) == 0) return true;
    return false;
}

static bool part_is(const th_buf *body, const char *boundary, const char *name, const void *want, size_t wl)
{
    size_t n = 0;
    const uint8_t *p = mp_part(body, boundary, name, &n);
    return p != NULL && n == wl && memcmp(p, want, wl) == 0;
}

/* ---- requests per kind ---------------------------------------------------------------------- */

TH_TEST(cosyvoice_sends_the_reference_inline_every_time)
{
    tref r;
    tref_init(&r, "v1", "what the reference says", 0.5, 24000);
    tconf t;
    tconf_init(&t, "cosyvoice", "http://h:50000"); /* mode sft: a library voice still goes zero-shot */
    th_synth_req req = mkreq("Say this.", &r.r);
    th_upstream_http h;
    th_perr err;
    char b[128];
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, NULL, 0, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_zero_shot");
    TH_REQUIRE(boundary_of(&h, b, sizeof b));
    /* the reference is not copied into the body: it goes from the library's memory */
    TH_CHECK(h.body_ref == &r.r);
    TH_CHECK(h.body.len < 1024 && r.r.wav_len > 10000);
    th_buf flat;
    th_buf_init(&flat, 0);
    TH_REQUIRE(th_upstream_body_flat(&h, &flat) == 0);
    TH_CHECK_INT(flat.len, h.body.len + r.r.wav_len);
    TH_CHECK(part_is(&flat, b, "tts_text", "Say this.", 9));
    TH_CHECK(part_is(&flat, b, "prompt_text", r.r.text, strlen(r.r.text)));
    TH_CHECK(part_is(&flat, b, "prompt_wav", r.wav, r.r.wav_len));
    th_buf_reset(&flat);
    th_upstream_http_free(&h);
    /* no transcript: cross-lingual (prompt_wav only) */
    r.r.text = "";
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, NULL, 0, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_cross_lingual");
    TH_REQUIRE(boundary_of(&h, b, sizeof b));
    size_t n;
    TH_REQUIRE(th_upstream_body_flat(&h, &flat) == 0);
    TH_CHECK(mp_part(&flat, b, "prompt_text", &n) == NULL);
    TH_CHECK(part_is(&flat, b, "prompt_wav", r.wav, r.r.wav_len));
    th_buf_free(&flat);
    th_upstream_http_free(&h);
    /* nothing to make on the engine first */
    TH_CHECK(th_kind_cosyvoice.ref_key == NULL && !th_kind_cosyvoice.ref_files);
    tref_free(&r);
}

TH_TEST(cosyvoice_sends_the_compact_form_when_there_is_one)
{
    tref r;
    tref_init(&r, "v1", "what the reference says", 0.5, 24000);
    th_buf flac;
    th_buf_init(&flac, 0);
    char e[256];
    TH_REQUIRE(th_flac_from_wav(r.wav, r.r.wav_len, TH_VOICE_REF_FLAC_RATE, &flac, e, sizeof e) == 0);
    r.r.flac16k = flac.data;
    r.r.flac16k_len = flac.len;
    tconf t;
    tconf_init(&t, "cosyvoice", "http://h:50000");
    th_synth_req req = mkreq("Say this.", &r.r);
    th_upstream_http h;
    th_perr err;
    char b[128];
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, NULL, 0, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_zero_shot");
    TH_REQUIRE(boundary_of(&h, b, sizeof b));
    /* borrowed, not copied: the piece is the compact form */
    TH_CHECK(h.body_ref == &r.r && h.body_ref_data == flac.data && h.body_ref_len == flac.len);
    TH_CHECK(h.body.len < 1024);
    th_buf flat;
    th_buf_init(&flat, 0);
    TH_REQUIRE(th_upstream_body_flat(&h, &flat) == 0);
    TH_CHECK_INT(flat.len, h.body.len + flac.len);
    TH_CHECK(part_is(&flat, b, "prompt_wav", flac.data, flac.len));
    TH_CHECK(part_is(&flat, b, "prompt_text", r.r.text, strlen(r.r.text)));
    TH_CHECK(tu_find(&flat, "filename=\"prompt.flac\"") && tu_find(&flat, "Content-Type: audio/flac"));
    th_buf_free(&flat);
    th_upstream_http_free(&h);
    th_buf_free(&flac);
    tref_free(&r);
}

/* The msgpack map value at key (a NUL-terminated key), or NULL. */
static const msgpack_object *mp_get(const msgpack_object *map, const char *key)
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

static bool mp_str_is(const msgpack_object *o, const char *s)
{
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

TH_TEST(fish_sends_references_in_msgpack)
{
    tref r;
    tref_init(&r, "v1", "reference transcript", 0.5, 24000);
    tconf t;
    tconf_init(&t, "fish", "http://h:8080");
    th_synth_req req = mkreq("Hello fish.", &r.r);
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_fish, &t, &req, &h, NULL, 0, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:8080/v1/tts");
    TH_CHECK(has_header(&h, "Content-Type: application/msgpack"));
    TH_CHECK(h.body_ref == &r.r); /* the audio is not copied into the body */
    TH_CHECK(h.body.len < 1024 && r.r.wav_len > 10000);
    th_buf flat;
    th_buf_init(&flat, 0);
    TH_REQUIRE(th_upstream_body_flat(&h, &flat) == 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    TH_REQUIRE(msgpack_unpack_next(&u, (const char *)flat.data, flat.len, &off) == MSGPACK_UNPACK_SUCCESS);
    TH_CHECK_INT(off, flat.len);
    const msgpack_object *root = &u.data;
    TH_CHECK(mp_str_is(mp_get(root, "text"), "Hello fish."));
    TH_CHECK(mp_str_is(mp_get(root, "format"), "wav"));
    TH_CHECK(mp_get(root, "reference_id") == NULL);
    const msgpack_object *refs = mp_get(root, "references");
    TH_REQUIRE(refs != NULL && refs->type == MSGPACK_OBJECT_ARRAY && refs->via.array.size == 1);
    const msgpack_object *audio = mp_get(&refs->via.array.ptr[0], "audio");
    TH_REQUIRE(audio != NULL && audio->type == MSGPACK_OBJECT_BIN);
    TH_CHECK(audio->via.bin.size == r.r.wav_len && memcmp(audio->via.bin.ptr, r.wav, r.r.wav_len) == 0);
    TH_CHECK(mp_str_is(mp_get(&refs->via.array.ptr[0], "text"), "reference transcript"));
    msgpack_unpacked_destroy(&u);
    th_buf_free(&flat);
    th_upstream_http_free(&h);
    tref_free(&r);
}

TH_TEST(openvoice_upload_steps_and_label)
{
    tref r;
    tref_init(&r, "v1", "", 0.5, 24000);
    tconf t;
    tconf_init(&t, "openvoice", "http://h:8000");
    char key[128], value[256] = "", label[64], b[128];
    th_perr err;
    memset(&err, 0, sizeof err);
    TH_CHECK_INT(th_kind_openvoice.ref_key(&t.pc, &r.r, key, sizeof key, &err), 1);
    snprintf(label, sizeof label, "ttshub-%.16s", r.sha);
    TH_CHECK_STR(key, label);
    th_upstream_http h;
    th_upstream_http_init(&h);
    TH_REQUIRE(th_kind_openvoice.ref_make(&t.pc, &r.r, 0, 0, NULL, 0, &h, value, sizeof value, &err) == 1);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://h:8000/upload_audio/");
    TH_REQUIRE(boundary_of(&h, b, sizeof b));
    TH_CHECK(part_is(&h.body, b, "audio_file_label", label, strlen(label)));
    TH_CHECK(part_is(&h.body, b, "file", r.wav, r.r.wav_len));
    th_upstream_http_free(&h);
    /* a refusal dressed as 200 */
    const char *no = "{\"error\":\"File size is over 5MB\"}";
    th_upstream_http_init(&h);
    TH_CHECK(th_kind_openvoice.ref_make(&t.pc, &r.r, 1, 200, (const uint8_t *)no, strlen(no), &h, value,
                                        sizeof value, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_STATUS);
    const char *yes = "{\"message\":\"File x uploaded successfully with label y.\"}";
    TH_CHECK(th_kind_openvoice.ref_make(&t.pc, &r.r, 1, 200, (const uint8_t *)yes, strlen(yes), &h, value,
                                        sizeof value, &err) == 0);
    TH_CHECK_STR(value, label);
    th_upstream_http_free(&h);
    /* synthesis speaks the label */
    th_synth_req req = mkreq("Hi.", &r.r);
    TH_REQUIRE(build(&th_kind_openvoice, &t, &req, &h, label, 0, &err) == 0);
    TH_CHECK(strstr(url_of(&h), label) != NULL);
    th_upstream_http_free(&h);
    const char *lost = "{\"detail\":\"No matching voice found.\"}";
    TH_CHECK(th_kind_openvoice.ref_lost(&t.pc, 400, (const uint8_t *)lost, strlen(lost)));
    TH_CHECK(!th_kind_openvoice.ref_lost(&t.pc, 500, (const uint8_t *)lost, strlen(lost)));
    tref_free(&r);
}

TH_TEST(elevenlabs_lookup_add_speak_and_drop)
{
    tref r;
    tref_init(&r, "v1", "", 0.5, 24000);
    tconf t;
    tconf_init(&t, "elevenlabs", "http://h:1");
    char key[160], value[256] = "", name[128], b[128], list[512];
    th_perr err;
    memset(&err, 0, sizeof err);
    TH_CHECK_INT(th_kind_elevenlabs.ref_key(&t.pc, &r.r, key, sizeof key, &err), 1);
    snprintf(name, sizeof name, "ttshub-v1-%.16s", r.sha);
    th_upstream_http h;
    th_upstream_http_init(&h);
    TH_REQUIRE(th_kind_elevenlabs.ref_make(&t.pc, &r.r, 0, 0, NULL, 0, &h, value, sizeof value, &err) == 1);
    TH_CHECK_STR(h.method, "GET");
    TH_CHECK_STR(url_of(&h), "http://h:1/v1/voices");
    th_upstream_http_free(&h);
    /* not in the list: voices/add */
    const char *other = "{\"voices\":[{\"voice_id\":\"x1\",\"name\":\"Rachel\"}]}";
    th_upstream_http_init(&h);
    TH_REQUIRE(th_kind_elevenlabs.ref_make(&t.pc, &r.r, 1, 200, (const uint8_t *)other, strlen(other), &h,
                                           value, sizeof value, &err) == 1);
    TH_CHECK_STR(url_of(&h), "http://h:1/v1/voices/add");
    TH_REQUIRE(boundary_of(&h, b, sizeof b));
    TH_CHECK(part_is(&h.body, b, "name", name, strlen(name)));
    TH_CHECK(part_is(&h.body, b, "files", r.wav, r.r.wav_len));
    th_upstream_http_free(&h);
    const char *added = "{\"voice_id\":\"newvoice42\",\"requires_verification\":false}";
    th_upstream_http_init(&h);
    TH_CHECK(th_kind_elevenlabs.ref_make(&t.pc, &r.r, 2, 200, (const uint8_t *)added, strlen(added), &h,
                                         value, sizeof value, &err) == 0);
    TH_CHECK_STR(value, "newvoice42");
    th_upstream_http_free(&h);
    /* in the list already (a restart, another hub): reused, not added again */
    snprintf(list, sizeof list,
             "{\"voices\":[{\"voice_id\":\"x1\",\"name\":\"Rachel\"},{\"voice_id\":\"old7\","
             "\"name\":\"%s\"}]}",
             name);
    th_upstream_http_init(&h);
    TH_CHECK(th_kind_elevenlabs.ref_make(&t.pc, &r.r, 1, 200, (const uint8_t *)list, strlen(list), &h, value,
                                         sizeof value, &err) == 0);
    TH_CHECK_STR(value, "old7");
    TH_CHECK_INT(h.body.len, 0);
    th_upstream_http_free(&h);
    /* a failed list: our account's problem */
    const char *quota = "{\"detail\":{\"status\":\"invalid_api_key\",\"message\":\"bad key\"}}";
    th_upstream_http_init(&h);
    TH_CHECK(th_kind_elevenlabs.ref_make(&t.pc, &r.r, 1, 401, (const uint8_t *)quota, strlen(quota), &h,
                                         value, sizeof value, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_STATUS);
    th_upstream_http_free(&h);
    /* synthesis by the remote id */
    th_synth_req req = mkreq("Hi.", &r.r);
    TH_REQUIRE(build(&th_kind_elevenlabs, &t, &req, &h, "newvoice42", 0, &err) == 0);
    TH_CHECK(strstr(url_of(&h), "/v1/text-to-speech/newvoice42/stream") != NULL);
    th_upstream_http_free(&h);
    /* drop: DELETE by id; unknown id: list, then DELETE what carries our name */
    th_upstream_http_init(&h);
    TH_CHECK_INT(th_kind_elevenlabs.ref_drop(&t.pc, &r.r, "newvoice42", 0, 0, NULL, 0, &h), 1);
    TH_CHECK_STR(h.method, "DELETE");
    TH_CHECK_STR(url_of(&h), "http://h:1/v1/voices/newvoice42");
    th_upstream_http_free(&h);
    th_upstream_http_init(&h);
    TH_CHECK_INT(th_kind_elevenlabs.ref_drop(&t.pc, &r.r, "newvoice42", 1, 200, NULL, 0, &h), 0);
    TH_CHECK_INT(th_kind_elevenlabs.ref_drop(&t.pc, &r.r, NULL, 0, 0, NULL, 0, &h), 1);
    TH_CHECK_STR(h.method, "GET");
    th_upstream_http_free(&h);
    th_upstream_http_init(&h);
    TH_CHECK_INT(
        th_kind_elevenlabs.ref_drop(&t.pc, &r.r, NULL, 1, 200, (const uint8_t *)list, strlen(list), &h), 1);
    TH_CHECK_STR(url_of(&h), "http://h:1/v1/voices/old7");
    th_upstream_http_free(&h);
    th_upstream_http_init(&h);
    TH_CHECK_INT(
        th_kind_elevenlabs.ref_drop(&t.pc, &r.r, NULL, 1, 200, (const uint8_t *)other, strlen(other), &h), 0);
    th_upstream_http_free(&h);
    const char *nf = "{\"detail\":{\"status\":\"voice_not_found\",\"message\":\"gone\"}}";
    TH_CHECK(th_kind_elevenlabs.ref_lost(&t.pc, 404, (const uint8_t *)nf, strlen(nf)));
    tref_free(&r);
}

TH_TEST(gpt_sovits_and_xtts_use_the_shared_file)
{
    tref r;
    tref_init(&r, "v1", "the transcript", 0.5, 24000);
    r.r.language = "zh";
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://h:9880");
    tconf_opt(&t, "ref_dir", "/hub/refs");
    tconf_opt(&t, "ref_dir_engine", "/engine/refs");
    th_synth_req req = mkreq("Hello.", &r.r);
    th_upstream_http h;
    th_perr err;
    TH_CHECK(th_kind_gpt_sovits.ref_files && !th_kind_gpt_sovits.ref_file_name_only);
    TH_REQUIRE(build(&th_kind_gpt_sovits, &t, &req, &h, "/engine/refs/v1-0123456789abcdef.wav", 0, &err) ==
               0);
    json_t *b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
    TH_CHECK_STR(json_string_value(json_object_get(b, "ref_audio_path")),
                 "/engine/refs/v1-0123456789abcdef.wav");
    TH_CHECK_STR(json_string_value(json_object_get(b, "prompt_text")), "the transcript");
    TH_CHECK_STR(json_string_value(json_object_get(b, "prompt_lang")), "zh");
    json_decref(b);
    th_upstream_http_free(&h);
    /* api v1 (api.py) falls back to its own default reference unless all three fields are set */
    tconf v1;
    tconf_init(&v1, "gpt_sovits", "http://h:9880");
    tconf_opt(&v1, "api", "v1");
    TH_REQUIRE(build(&th_kind_gpt_sovits, &v1, &req, &h, "/r/v1.wav", 0, &err) == 0);
    b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
    TH_CHECK_STR(json_string_value(json_object_get(b, "refer_wav_path")), "/r/v1.wav");
    TH_CHECK_STR(json_string_value(json_object_get(b, "prompt_text")), "the transcript");
    TH_CHECK_STR(json_string_value(json_object_get(b, "prompt_language")), "zh");
    json_decref(b);
    th_upstream_http_free(&h);
    r.r.text = "";
    TH_CHECK(build(&th_kind_gpt_sovits, &v1, &req, &h, "/r/v1.wav", 0, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    th_upstream_http_free(&h);
    r.r.text = "the transcript";
    tconf x;
    tconf_init(&x, "xtts", "http://h:8020");
    TH_CHECK(th_kind_xtts.ref_files && th_kind_xtts.ref_file_name_only);
    TH_REQUIRE(build(&th_kind_xtts, &x, &req, &h, "v1-0123456789abcdef.wav", 0, &err) == 0);
    b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
    TH_CHECK_STR(json_string_value(json_object_get(b, "speaker_wav")), "v1-0123456789abcdef.wav");
    json_decref(b);
    th_upstream_http_free(&h);
    char name[128];
    TH_CHECK(th_voice_ref_file_name(&r.r, name, sizeof name) == 0);
    char want[128];
    snprintf(want, sizeof want, "v1-%.16s.wav", r.sha);
    TH_CHECK_STR(name, want);
    r.r.id = "../x";
    TH_CHECK(th_voice_ref_file_name(&r.r, name, sizeof name) == -1); /* never a path */
    tref_free(&r);
}

TH_TEST(nodes_send_the_sha_then_the_bytes)
{
    tref r;
    tref_init(&r, "v1", "said", 0.5, 24000);
    tconf t;
    tconf_init(&t, "nodes", "http://n:9000");
    th_synth_req req = mkreq("Hello node.", &r.r);
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_nodes, &t, &req, &h, NULL, 0, &err) == 0);
    json_t *b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
    TH_REQUIRE(b != NULL);
    TH_CHECK_STR(json_string_value(json_object_get(b, "voice")), "v1");
    TH_CHECK_STR(json_string_value(json_object_get(b, "reference_sha256")), r.sha);
    TH_CHECK_STR(json_string_value(json_object_get(b, "reference_text")), "said");
    TH_CHECK_STR(json_string_value(json_object_get(b, "reference_language")), "en");
    TH_CHECK(json_object_get(b, "reference_audio") == NULL);
    json_decref(b);
    th_upstream_http_free(&h);
    TH_REQUIRE(build(&th_kind_nodes, &t, &req, &h, NULL, 1, &err) == 0);
    b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
    TH_REQUIRE(b != NULL);
    const char *b64 = json_string_value(json_object_get(b, "reference_audio"));
    TH_REQUIRE(b64 != NULL);
    size_t bl = strlen(b64);
    uint8_t *dec = malloc(bl);
    TH_REQUIRE(dec != NULL);
    int n = EVP_DecodeBlock(dec, (const uint8_t *)b64, (int)bl);
    size_t pad = bl >= 2 && b64[bl - 1] == '=' ? (b64[bl - 2] == '=' ? 2 : 1) : 0;
    TH_CHECK(n >= 0 && (size_t)n - pad == r.r.wav_len && memcmp(dec, r.wav, r.r.wav_len) == 0);
    free(dec);
    json_decref(b);
    th_upstream_http_free(&h);
    const char *miss = "{\"success\":false,\"message\":\"no\",\"code\":\"reference_missing\"}";
    TH_CHECK(th_kind_nodes.ref_lost(&t.pc, 409, (const uint8_t *)miss, strlen(miss)));
    const char *other = "{\"success\":false,\"message\":\"no\",\"code\":\"conflict\"}";
    TH_CHECK(!th_kind_nodes.ref_lost(&t.pc, 409, (const uint8_t *)other, strlen(other)));
    tref_free(&r);
}

TH_TEST(nodes_seed2_body_push_and_errors)
{
    tref r;
    tref_init(&r, "v1", "said", 0.5, 24000);
    tconf t;
    tconf_init(&t, "nodes", "http://n:9000");
    t.pc.engine = (char *)"xtts";
    tconf_opt(&t, "protocol", "seed2");
    TH_CHECK(th_kind_nodes.ref_per_target(&t.pc));
    th_synth_req req = mkreq("Hello node.", &r.r);
    req.speed = 3.0; /* seed-2 takes 0.5 to 2 */
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_nodes, &t, &req, &h, NULL, 0, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://n:9000/synthesize");
    json_t *b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
    TH_REQUIRE(b != NULL);
    TH_CHECK_INT((long long)json_object_size(b), 7); /* text, voice_id, engine, language, output_format,
                                                        speed, pitch: no reference, no ttshub fields */
    TH_CHECK_STR(json_string_value(json_object_get(b, "voice_id")), "v1");
    TH_CHECK_STR(json_string_value(json_object_get(b, "engine")), "xtts");
    TH_CHECK_STR(json_string_value(json_object_get(b, "language")), "en"); /* the reference's */
    TH_CHECK_STR(json_string_value(json_object_get(b, "output_format")), "wav");
    TH_CHECK(json_real_value(json_object_get(b, "speed")) == 2.0);
    TH_CHECK(json_real_value(json_object_get(b, "pitch")) == 1.0);
    json_decref(b);
    th_upstream_http_free(&h);
    /* the client's pitch ratio goes as it is, bounded to the worker's 0.5 to 2 */
    const double pin[] = {1.5, 3.0, 0.25}, pout[] = {1.5, 2.0, 0.5};
    for (size_t i = 0; i < 3; i++) {
        req.pitch = pin[i];
        TH_REQUIRE(build(&th_kind_nodes, &t, &req, &h, NULL, 0, &err) == 0);
        b = json_loadb((const char *)h.body.data, h.body.len, 0, NULL);
        TH_REQUIRE(b != NULL);
        TH_CHECK(json_real_value(json_object_get(b, "pitch")) == pout[i]);
        json_decref(b);
        th_upstream_http_free(&h);
    }
    req.pitch = 0;
    /* a plain voice passes as voice_id only when it cannot be a path */
    th_synth_req plain = mkreq("Hi.", NULL);
    plain.voice = "../../etc/passwd";
    TH_CHECK(build(&th_kind_nodes, &t, &plain, &h, NULL, 0, &err) == -1 && err.kind == TH_PERR_CLIENT);
    th_upstream_http_free(&h);
    plain.voice = "spk_1";
    TH_CHECK(build(&th_kind_nodes, &t, &plain, &h, NULL, 0, &err) == 0);
    th_upstream_http_free(&h);
    /* the push: multipart audio, voice_id, voice_name, reference_text to the picked node */
    char key[128];
    TH_CHECK(th_kind_nodes.ref_key(&t.pc, &r.r, key, sizeof key, &err) == 1);
    th_upstream_http_init(&h);
    h.base_url = "http://node-b:8001";
    char value[64] = "";
    TH_REQUIRE(th_kind_nodes.ref_make(&t.pc, &r.r, 0, 0, NULL, 0, &h, value, sizeof value, &err) == 1);
    TH_CHECK_STR(url_of(&h), "http://node-b:8001/extract_voice");
    char bd[80];
    TH_REQUIRE(boundary_of(&h, bd, sizeof bd));
    TH_CHECK(part_is(&h.body, bd, "audio", r.wav, r.r.wav_len));
    TH_CHECK(part_is(&h.body, bd, "voice_id", "v1", 2));
    TH_CHECK(part_is(&h.body, bd, "voice_name", "Test voice", 10));
    TH_CHECK(part_is(&h.body, bd, "reference_text", "said", 4));
    th_upstream_http_free(&h);
    const char *ok = "{\"success\":true,\"voice_id\":\"v1\"}";
    th_upstream_http_init(&h);
    TH_CHECK(th_kind_nodes.ref_make(&t.pc, &r.r, 1, 200, (const uint8_t *)ok, strlen(ok), &h, value,
                                    sizeof value, &err) == 0);
    TH_CHECK_STR(value, "v1");
    const char *nl = "{\"detail\":\"Model not loaded\"}";
    TH_CHECK(th_kind_nodes.ref_make(&t.pc, &r.r, 1, 503, (const uint8_t *)nl, strlen(nl), &h, value,
                                    sizeof value, &err) == -1);
    th_upstream_http_free(&h);
    /* errors: {"detail"} */
    const char *nf = "{\"detail\":\"Voice not found: v1\"}";
    TH_CHECK(th_kind_nodes.ref_lost(&t.pc, 500, (const uint8_t *)nf, strlen(nf)));
    TH_CHECK(!th_kind_nodes.ref_lost(&t.pc, 500, (const uint8_t *)nl, strlen(nl)));
    th_perr e;
    memset(&e, 0, sizeof e);
    th_kind_nodes.error(&t.pc, 500, "application/json", (const uint8_t *)"{\"detail\":\"CUDA oom\"}", 20, &e);
    TH_CHECK(e.kind == TH_PERR_STATUS && strstr(e.message, "CUDA oom") != NULL);
    memset(&e, 0, sizeof e);
    th_kind_nodes.error(&t.pc, 503, "application/json", (const uint8_t *)nl, strlen(nl), &e);
    TH_CHECK(e.kind == TH_PERR_STATUS); /* the node was ready as far as the hub knew: a node failure */
    memset(&e, 0, sizeof e);
    th_kind_nodes.error(&t.pc, 422, "application/json", (const uint8_t *)"{\"detail\":[]}", 13, &e);
    TH_CHECK(e.kind == TH_PERR_CLIENT);
    /* the ttshub protocol keeps its own: 503 is overload, the reference goes inline */
    tconf t2;
    tconf_init(&t2, "nodes", "http://n:9000");
    TH_CHECK(!th_kind_nodes.ref_per_target(&t2.pc));
    TH_CHECK(th_kind_nodes.ref_key(&t2.pc, &r.r, key, sizeof key, &err) == 0);
    memset(&e, 0, sizeof e);
    th_kind_nodes.error(&t2.pc, 503, "application/json", (const uint8_t *)"{}", 2, &e);
    TH_CHECK(e.kind == TH_PERR_OVERLOADED);
    tref_free(&r);
}

/* ---- end to end against the fakes ------------------------------------------------------------ */

#define E2E_WAIT_MS 20000

typedef struct col {
    int formats, dones, errors;
    th_buf audio;
    th_perr err;
} col;

static void c_format(void *ud, const th_audio_spec *spec)
{
    ((col *)ud)->formats++;
}

static int c_chunk(void *ud, const uint8_t *data, size_t len)
{
    col *c = ud;
    if (th_buf_append(&c->audio, data, len) != TH_BUF_OK) abort();
    return 0;
}

static void c_done(void *ud)
{
    ((col *)ud)->dones++;
}

static void c_error(void *ud, const th_perr *e)
{
    col *c = ud;
    c->errors++;
    c->err = *e;
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* A provider that lives across jobs (uploads are once per provider). */
typedef struct sess {
    uv_loop_t loop;
    th_provider *p;
} sess;

static bool sess_open(sess *s, const tconf *t)
{
    if (uv_loop_init(&s->loop) != 0) return false;
    char err[256] = "";
    s->p = th_upstream_ops.create(&s->loop, &t->pc, NULL, err, sizeof err);
    if (s->p == NULL) fprintf(stderr, "create: %s\n", err);
    return s->p != NULL;
}

static void sess_close(sess *s)
{
    if (s->p != NULL) th_upstream_ops.destroy(s->p);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
}

/* Runs the loop until cond(arg) or E2E_WAIT_MS. */
static bool sess_run(sess *s, bool (*cond)(void *), void *arg)
{
    uv_timer_t t;
    uv_timer_init(&s->loop, &t);
    uv_timer_start(&t, tick_cb, 10, 10);
    uint64_t end = th_mono_ms() + E2E_WAIT_MS;
    bool ok = false;
    while (th_mono_ms() < end) {
        if (cond(arg)) {
            ok = true;
            break;
        }
        uv_run(&s->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    return ok;
}

static bool col_over(void *arg)
{
    col *c = arg;
    return c->dones + c->errors > 0;
}

/* One synthesis on the session's provider: true when it ended with audio. */
static bool sess_say(sess *s, const th_synth_req *req)
{
    col c;
    memset(&c, 0, sizeof c);
    th_buf_init(&c.audio, 64u * 1024 * 1024);
    th_sink sink = {c_format, c_chunk, c_done, c_error, &c};
    th_job *j = th_upstream_ops.start(s->p, req, &sink);
    bool ended = j != NULL && sess_run(s, col_over, &c);
    if (!ended && j != NULL) th_upstream_ops.cancel(j);
    bool ok = ended && c.dones == 1 && c.errors == 0 && c.audio.len > 44;
    if (c.errors) fprintf(stderr, "  (%s: %s)\n", th_perr_kind_name(c.err.kind), c.err.message);
    th_buf_free(&c.audio);
    return ok;
}

/* GET a fake's control route as JSON (curl). */
static json_t *fake_json(fake_proc *f, const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -s %s%s", f->url, path);
    FILE *p = popen(cmd, "r");
    if (p == NULL) return NULL;
    th_buf b;
    th_buf_init(&b, 16u * 1024 * 1024);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0)
        th_buf_append(&b, chunk, n);
    pclose(p);
    json_t *j = b.len > 0 ? json_loadb((const char *)b.data, b.len, 0, NULL) : NULL;
    th_buf_free(&b);
    return j;
}

/* The references a fake received (a new reference to the array), or NULL. */
static json_t *fake_refs(fake_proc *f, json_t **uses, json_t **drops)
{
    json_t *j = fake_json(f, "/__fake/references");
    json_t *refs = json_incref(json_object_get(j, "references"));
    if (uses) *uses = json_incref(json_object_get(j, "uses"));
    if (drops) *drops = json_incref(json_object_get(j, "drops"));
    json_decref(j);
    return refs;
}

/* Did the fake get our reference: the same sample rate, frames and samples (and transcript when text)? */
static bool ref_matches(json_t *row, const tref *r, const char *text)
{
    json_t *w = json_object_get(row, "wav");
    size_t frames = (r->r.wav_len - TH_WAV_HEADER_LEN) / 2;
    uint8_t d[SHA256_DIGEST_LENGTH];
    char pcm_sha[65];
    SHA256(r->wav + TH_WAV_HEADER_LEN, r->r.wav_len - TH_WAV_HEADER_LEN, d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(pcm_sha + 2 * i, 3, "%02x", d[i]);
    bool ok = json_integer_value(json_object_get(w, "rate")) == r->r.rate &&
              json_integer_value(json_object_get(w, "channels")) == 1 &&
              (size_t)json_integer_value(json_object_get(w, "frames")) == frames &&
              json_string_value(json_object_get(w, "pcm_sha256")) != NULL &&
              strcmp(json_string_value(json_object_get(w, "pcm_sha256")), pcm_sha) == 0;
    if (text != NULL) {
        const char *got = json_string_value(json_object_get(row, "text"));
        ok = ok && got != NULL && strcmp(got, text) == 0;
    }
    return ok;
}

/* hold/drop of a reference with a counted owner (as a library voice in use has): counts both. */
static int g_holds, g_drops;

static void *count_hold(const th_voice_ref *r)
{
    g_holds++;
    return (void *)(uintptr_t)r;
}

static void count_drop(void *token)
{
    (void)token;
    g_drops++;
}

TH_TEST(e2e_cosyvoice_and_fish_inline)
{
    tref r;
    tref_init(&r, "v1", "a transcript", 1.0, 24000);
    const char *kinds[2] = {"cosyvoice", "fish"};
    for (int k = 0; k < 2; k++) {
        fake_proc f;
        TH_REQUIRE(fake_start(&f, kinds[k], "") == 0);
        tconf t;
        tconf_init(&t, kinds[k], f.url);
        sess s;
        TH_REQUIRE(sess_open(&s, &t));
        th_synth_req req = mkreq("Speak in the cloned voice.", &r.r);
        /* with an owner to hold: sent from the reference's memory, held while the transfer reads it */
        g_holds = g_drops = 0;
        r.r.hold = count_hold;
        r.r.drop = count_drop;
        TH_CHECK(sess_say(&s, &req));
        TH_CHECK_INT(g_holds, 1);
        TH_CHECK_INT(g_drops, 1);
        /* without one (a copy): copied into the body, the same bytes arrive */
        r.r.hold = NULL;
        r.r.drop = NULL;
        TH_CHECK(sess_say(&s, &req));
        TH_CHECK_INT(g_holds, 1);
        sess_close(&s);
        json_t *refs = fake_refs(&f, NULL, NULL);
        TH_CHECK_INT(json_array_size(refs), 2); /* inline: on every request */
        for (size_t i = 0; i < json_array_size(refs); i++)
            TH_CHECK(ref_matches(json_array_get(refs, i), &r, "a transcript"));
        json_decref(refs);
        fake_stop(&f);
    }
    tref_free(&r);
}

TH_TEST(e2e_openvoice_uploads_once_and_again_after_a_forget)
{
    tref r;
    tref_init(&r, "v1", "", 1.0, 24000);
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "openvoice", "") == 0);
    tconf t;
    tconf_init(&t, "openvoice", f.url);
    sess s;
    TH_REQUIRE(sess_open(&s, &t));
    th_synth_req req = mkreq("Speak in the cloned voice.", &r.r);
    TH_CHECK(sess_say(&s, &req));
    TH_CHECK(sess_say(&s, &req));
    json_t *uses = NULL, *refs = fake_refs(&f, &uses, NULL);
    TH_CHECK_INT(json_array_size(refs), 1);
    TH_CHECK(ref_matches(json_array_get(refs, 0), &r, NULL));
    char label[64];
    snprintf(label, sizeof label, "ttshub-%.16s", r.sha);
    TH_CHECK_INT(json_integer_value(json_object_get(uses, label)), 2);
    json_decref(refs);
    json_decref(uses);
    /* the engine restarts and forgets: the next request uploads again and still succeeds */
    TH_CHECK(fake_ctl_path(&f, "/__fake/forget", "{}") == 0);
    TH_CHECK(sess_say(&s, &req));
    refs = fake_refs(&f, &uses, NULL);
    TH_CHECK_INT(json_array_size(refs), 2);
    TH_CHECK_INT(json_integer_value(json_object_get(uses, label)), 3);
    json_decref(refs);
    json_decref(uses);
    sess_close(&s);
    fake_stop(&f);
    tref_free(&r);
}

static bool drops_seen(void *arg)
{
    fake_proc *f = arg;
    json_t *drops = NULL, *refs = fake_refs(f, NULL, &drops);
    bool seen = json_array_size(drops) > 0;
    json_decref(refs);
    json_decref(drops);
    return seen;
}

TH_TEST(e2e_elevenlabs_adds_once_reuses_after_restart_and_deletes)
{
    tref r;
    tref_init(&r, "v1", "", 1.0, 24000);
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "elevenlabs", "") == 0);
    tconf t;
    tconf_init(&t, "elevenlabs", f.url);
    tconf_opt(&t, "output_format", "pcm_24000");
    sess s;
    TH_REQUIRE(sess_open(&s, &t));
    th_synth_req req = mkreq("Speak in the cloned voice.", &r.r);
    TH_CHECK(sess_say(&s, &req));
    TH_CHECK(sess_say(&s, &req));
    sess_close(&s);
    json_t *refs = fake_refs(&f, NULL, NULL);
    TH_CHECK_INT(json_array_size(refs), 1);
    TH_CHECK(ref_matches(json_array_get(refs, 0), &r, NULL));
    const char *vid = json_string_value(json_object_get(json_array_get(refs, 0), "voice_id"));
    char remote[64] = "";
    if (vid != NULL) th_strlcpy(remote, vid, sizeof remote);
    json_decref(refs);
    /* a new provider (a restart) finds the voice by name instead of adding a duplicate */
    TH_REQUIRE(sess_open(&s, &t));
    TH_CHECK(sess_say(&s, &req));
    refs = fake_refs(&f, NULL, NULL);
    TH_CHECK_INT(json_array_size(refs), 1);
    json_decref(refs);
    /* voice_forget deletes the remote voice */
    th_upstream_ops.voice_forget(s.p, &r.r);
    TH_CHECK(sess_run(&s, drops_seen, &f));
    json_t *drops = NULL;
    refs = fake_refs(&f, NULL, &drops);
    TH_CHECK_STR(json_string_value(json_array_get(drops, 0)), remote);
    json_decref(refs);
    json_decref(drops);
    sess_close(&s);
    fake_stop(&f);
    tref_free(&r);
}

static bool file_gone(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) != 0;
}

TH_TEST(e2e_xtts_and_gpt_sovits_shared_folder)
{
    tref r;
    tref_init(&r, "v1", "the transcript", 1.0, 24000);
    char dir[128], extra[512], path[256];
    snprintf(dir, sizeof dir, "/tmp/th_clone_refs_%d", (int)getpid());
    snprintf(path, sizeof path, "%s/v1-%.16s.wav", dir, r.sha);
    const char *kinds[2] = {"xtts", "gpt_sovits"};
    for (int k = 0; k < 2; k++) {
        fake_proc f;
        /* gpt_sovits sees the folder under another path (ref_dir_engine); xtts as its speaker folder */
        if (k == 0)
            snprintf(extra, sizeof extra, "--option ref_dir=%s", dir);
        else
            snprintf(extra, sizeof extra, "--option ref_dir=%s --option ref_dir_engine=/engine/refs", dir);
        TH_REQUIRE(fake_start(&f, kinds[k], extra) == 0);
        tconf t;
        tconf_init(&t, kinds[k], f.url);
        tconf_opt(&t, "ref_dir", dir);
        if (k == 1) tconf_opt(&t, "ref_dir_engine", "/engine/refs");
        sess s;
        TH_REQUIRE(sess_open(&s, &t));
        TH_CHECK(s.p->caps.can_clone);
        th_synth_req req = mkreq("Speak in the cloned voice.", &r.r);
        TH_CHECK(sess_say(&s, &req));
        /* the file is the reference, byte for byte */
        FILE *fp = fopen(path, "rb");
        TH_REQUIRE(fp != NULL);
        uint8_t *got = malloc(r.r.wav_len + 1);
        TH_REQUIRE(got != NULL);
        size_t n = fread(got, 1, r.r.wav_len + 1, fp);
        fclose(fp);
        TH_CHECK(n == r.r.wav_len && memcmp(got, r.wav, n) == 0);
        free(got);
        json_t *refs = fake_refs(&f, NULL, NULL);
        TH_CHECK_INT(json_array_size(refs), 1);
        TH_CHECK(ref_matches(json_array_get(refs, 0), &r, k == 1 ? "the transcript" : NULL));
        json_decref(refs);
        /* someone removed it from the shared folder: written again, the request still succeeds */
        TH_CHECK(unlink(path) == 0);
        TH_CHECK(sess_say(&s, &req));
        TH_CHECK(!file_gone(path));
        /* voice_forget removes it */
        th_upstream_ops.voice_forget(s.p, &r.r);
        TH_CHECK(sess_run(&s, file_gone, path));
        sess_close(&s);
        fake_stop(&f);
    }
    rmdir(dir);
    /* without ref_dir the provider cannot speak library voices */
    tconf t;
    tconf_init(&t, "xtts", "http://127.0.0.1:9");
    sess s;
    TH_REQUIRE(sess_open(&s, &t));
    TH_CHECK(!s.p->caps.can_clone);
    sess_close(&s);
    tref_free(&r);
}

TH_TEST(e2e_nodes_resend_the_reference_once)
{
    tref r;
    tref_init(&r, "v1", "said", 1.0, 24000);
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "node", "") == 0);
    tconf t;
    tconf_init(&t, "nodes", f.url);
    sess s;
    TH_REQUIRE(sess_open(&s, &t));
    th_synth_req req = mkreq("Speak in the cloned voice.", &r.r);
    TH_CHECK(sess_say(&s, &req)); /* 409 reference_missing, then again with the bytes */
    TH_CHECK(sess_say(&s, &req)); /* the node holds it now */
    json_t *uses = NULL, *refs = fake_refs(&f, &uses, NULL);
    TH_CHECK_INT(json_array_size(refs), 1);
    TH_CHECK(ref_matches(json_array_get(refs, 0), &r, "said"));
    TH_CHECK_INT(json_integer_value(json_object_get(uses, r.sha)), 1);
    json_decref(refs);
    json_decref(uses);
    /* a node restarted with an empty store gets it again */
    TH_CHECK(fake_ctl_path(&f, "/__fake/forget", "{}") == 0);
    TH_CHECK(sess_say(&s, &req));
    refs = fake_refs(&f, NULL, NULL);
    TH_CHECK_INT(json_array_size(refs), 2);
    json_decref(refs);
    sess_close(&s);
    fake_stop(&f);
    tref_free(&r);
}

TH_TEST_MAIN()

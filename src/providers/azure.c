/* azure: Azure Speech text to speech, POST https://{region}.tts.speech.microsoft.com/cognitiveservices/v1
 * (ENGINES.md §7), or {base_url}/cognitiveservices/v1 when base_url is set (sovereign clouds, private
 * endpoints, fakes).
 *
 * Request headers: Ocp-Apim-Subscription-Key (when api_key_env is set), Content-Type
 * application/ssml+xml, X-Microsoft-OutputFormat (the `output_format` option,
 * riff-24khz-16bit-mono-pcm), User-Agent ttshub. Body:
 *   <speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="LANG"><voice name="VOICE">
 *   <prosody rate="+N%">TEXT</prosody></voice></speak>
 * with TEXT, VOICE and LANG XML-escaped (& < > " ') so a request cannot inject SSML. LANG is the
 * request's language, else the locale at the front of the voice name (en-US-JennyNeural -> en-US), else
 * en-US. The rate is (speed - 1) x 100 percent; the native range is [0.5, 2] (-50% .. +100%).
 * output_format: riff-*-16bit-mono-pcm -> WAV; raw-<rate>-16bit-mono-pcm -> headerless s16le at the rate in
 * its name (Azure answers audio/x-wav for both: decoding keys off what was asked); audio-*-mp3 -> MP3;
 * ogg-*-opus -> Ogg Opus; anything else (mu-law, A-law, webm) is refused as a config error (STATUS).
 * Errors come with empty bodies, so they map by status: 400 (bad SSML, unknown voice) -> CLIENT;
 * 401/403 -> STATUS (our key); 415 -> STATUS (our content type); 429 -> OVERLOADED (+Retry-After);
 * 408/504 -> TIMEOUT; 5xx and the rest -> STATUS.
 * caps.max_input_chars 5000: a request may make at most 10 minutes of audio and 64 KiB of SSML; 5000
 * characters stays well inside both. Probe: GET .../cognitiveservices/voices/list with the key. */
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define AZ_DEFAULT_LANG "en-US"

/* "24khz" -> 24000, "22050hz" -> 22050 (n bytes); 0 when not a rate. */
static int az_rate(const char *s, size_t n)
{
    int64_t v = 0;
    if (n > 3 && th_strn_ieq(s + n - 3, 3, "khz")) {
        if (th_strn_to_i64(s, n - 3, 8, 192, &v) != 0) return 0;
        return (int)v * 1000;
    }
    if (n > 2 && th_strn_ieq(s + n - 2, 2, "hz")) {
        if (th_strn_to_i64(s, n - 2, 8000, 192000, &v) != 0) return 0;
        return (int)v;
    }
    return 0;
}

static int az_format(const char *name, th_audio_spec *spec)
{
    if (name == NULL) return -1; /* a conf without its kind's defaults */
    spec->channels = 1;
    spec->sample = TH_SAMPLE_S16;
    const char *dash = strchr(name, '-');
    if (dash == NULL) return -1;
    const char *r = dash + 1, *rend = strchr(r, '-');
    if (rend == NULL) return -1;
    size_t nlen = strlen(name);
    bool riff = th_str_startswith(name, "riff-"), raw = th_str_startswith(name, "raw-");
    if ((riff || raw) && nlen > 15 && strcmp(name + nlen - 15, "-16bit-mono-pcm") == 0) {
        spec->sample_rate = az_rate(r, (size_t)(rend - r));
        if (spec->sample_rate == 0) return -1;
        spec->fmt = riff ? TH_FMT_WAV : TH_FMT_PCM;
        return 0;
    }
    if (th_str_startswith(name, "audio-") && nlen > 4 && strcmp(name + nlen - 4, "-mp3") == 0) {
        spec->fmt = TH_FMT_MP3;
        spec->sample_rate = az_rate(r, (size_t)(rend - r));
        return 0;
    }
    if (th_str_startswith(name, "ogg-") && nlen > 5 && strcmp(name + nlen - 5, "-opus") == 0) {
        spec->fmt = TH_FMT_OPUS;
        spec->sample_rate = az_rate(r, (size_t)(rend - r));
        return 0;
    }
    return -1;
}

/* The endpoint root: base_url, or the region's host. */
static int az_url(const th_provider_conf *pc, th_upstream_http *out, const char *path, th_perr *err)
{
    if (pc->base_url != NULL && pc->base_url[0] != '\0') return th_upstream_url(out, pc->base_url, path);
    const char *region = th_upstream_opt(pc, "region", NULL);
    if (region == NULL || region[0] == '\0' ||
        strspn(region, "abcdefghijklmnopqrstuvwxyz0123456789") != strlen(region)) {
        if (err) th_perr_set(err, TH_PERR_STATUS, 0, "set region (e.g. westeurope) or base_url");
        return -1;
    }
    char base[160];
    snprintf(base, sizeof base, "https://%s.tts.speech.microsoft.com", region);
    return th_upstream_url(out, base, path);
}

static int az_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    if (req->voice == NULL || req->voice[0] == '\0') {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a voice is required");
        return -1;
    }
    if (req->text == NULL || req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the text is empty");
        return -1;
    }
    const char *ofmt = th_upstream_opt(pc, "output_format", NULL);
    th_audio_spec spec;
    if (az_format(ofmt, &spec) != 0) {
        th_perr_set(err, TH_PERR_STATUS, 0,
                    "output_format %s is not supported (riff-*/raw-*-16bit-mono-pcm, "
                    "audio-*-mp3, ogg-*-opus)",
                    ofmt);
        return -1;
    }
    const char *key;
    if (th_upstream_need_secret(pc, &key, err) != 0) return -1;
    memset(err, 0, sizeof *err);
    if (az_url(pc, out, "/cognitiveservices/v1", err) != 0) {
        if (err->kind == TH_PERR_NONE) th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the URL");
        return -1;
    }
    out->method = "POST";
    int rc = 0;
    if (key != NULL) rc |= th_upstream_header(out, "Ocp-Apim-Subscription-Key", key);
    rc |= th_upstream_header(out, "Content-Type", "application/ssml+xml");
    rc |= th_upstream_header(out, "X-Microsoft-OutputFormat", ofmt);
    rc |= th_upstream_header(out, "User-Agent", "ttshub");

    const char *lang = req->language;
    size_t lang_len = lang != NULL ? strlen(lang) : 0;
    if (lang_len == 0) {
        /* en-US-JennyNeural -> en-US */
        const char *d1 = strchr(req->voice, '-'), *d2 = d1 != NULL ? strchr(d1 + 1, '-') : NULL;
        if (d2 != NULL && d2 - req->voice <= 16) {
            lang = req->voice;
            lang_len = (size_t)(d2 - req->voice);
        } else {
            lang = AZ_DEFAULT_LANG;
            lang_len = strlen(lang);
        }
    }
    double speed = req->speed > 0 ? req->speed : 1.0;
    char rate[32];
    snprintf(rate, sizeof rate, "%+.2f%%", (speed - 1.0) * 100.0);
    th_buf *b = &out->body;
    rc |= th_buf_append_str(
              b, "<speak version=\"1.0\" xmlns=\"http://www.w3.org/2001/10/synthesis\" xml:lang=\"") !=
          TH_BUF_OK;
    rc |= th_upstream_xml_escape(b, lang, lang_len);
    rc |= th_buf_append_str(b, "\"><voice name=\"") != TH_BUF_OK;
    rc |= th_upstream_xml_escape(b, req->voice, strlen(req->voice));
    rc |= th_buf_appendf(b, "\"><prosody rate=\"%s\">", rate) != TH_BUF_OK;
    rc |= th_upstream_xml_escape(b, req->text, req->text_len);
    rc |= th_buf_append_str(b, "</prosody></voice></speak>") != TH_BUF_OK;
    if (rc != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request");
        return -1;
    }
    return 0;
}

static void az_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    th_audio_spec s;
    if (az_format(th_upstream_opt(pc, "output_format", NULL), &s) != 0) return;
    if (s.fmt == TH_FMT_PCM && pc->sample_rate > 0) s.sample_rate = pc->sample_rate;
    *spec = s;
}

static void az_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    char ex[160] = "";
    th_upstream_excerpt(body, len, ex, sizeof ex);
    const char *why;
    th_perr_kind k;
    switch (status) {
    case 400:
        k = TH_PERR_CLIENT;
        why = "bad SSML or unknown voice";
        break;
    case 401:
    case 403:
        k = TH_PERR_STATUS;
        why = "the subscription key was refused";
        break;
    case 415:
        k = TH_PERR_STATUS;
        why = "unsupported content type";
        break;
    case 429:
        k = TH_PERR_OVERLOADED;
        why = "throttled";
        break;
    case 408:
    case 504:
        k = TH_PERR_TIMEOUT;
        why = "timeout";
        break;
    default:
        k = TH_PERR_STATUS;
        why = status >= 500 ? "server error" : "unexpected status";
        break;
    }
    th_perr_set(out, k, status, "HTTP %d (%s)%s%s", status, why, ex[0] ? ": " : "", ex);
}

static int az_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    out->method = "GET";
    const char *key = th_upstream_secret(pc);
    if (key != NULL && th_upstream_header(out, "Ocp-Apim-Subscription-Key", key) != 0) return -1;
    if (th_upstream_header(out, "User-Agent", "ttshub") != 0) return -1;
    return az_url(pc, out, "/cognitiveservices/voices/list", NULL);
}

const th_upstream_kind th_kind_azure = {
    .kind = "azure",
    .caps =
        {
            .formats = 1u << TH_FMT_WAV, /* the default output_format; on_format says what really comes */
            .max_input_chars = 5000,
            .streaming = true,
            .native_speed = true,
            .speed_min = 0.5,
            .speed_max = 2.0,
        },
    .build = az_build,
    .body_spec = az_body_spec,
    .body_is_error = NULL,
    .error = az_error,
    .probe = az_probe,
};

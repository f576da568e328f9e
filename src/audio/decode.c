/* decode: uploaded audio to mono s16 PCM with FFmpeg, from memory, bounded. See decode.h. */
#include "audio/decode.h"

#include "audio/memio.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavformat/avio.h>
#include <libavutil/avstring.h>
#include <libavutil/channel_layout.h>
#include <libavutil/error.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>

#define DEC_AVIO_BUF 8192
#define DEC_PROBESIZE (1 << 20)        /* bytes avformat may read to find the format and streams */
#define DEC_ANALYZE_US (5 * 1000000LL) /* and the duration it may analyse */
#define DEC_MAX_BAD_PACKETS 32         /* decode errors tolerated before the file counts as broken */
/* FFmpeg's largest single allocation, process-wide. A crafted header (a RIFF LIST chunk declaring 4 GB, say)
 * makes a demuxer allocate and zero what the header claims before it reads a byte; audio never needs
 * blocks this big, so such an allocation fails and the file is refused. */
#define DEC_MAX_ALLOC (32u << 20)

/* Demuxers of the containers a browser, a phone or a recorder makes; nothing that opens other files
 * (hls, concat, image sequences...). Matched against each demuxer's comma-separated name list. */
static const char k_formats[] = "wav,w64,mp3,ogg,flac,mov,mp4,m4a,3gp,matroska,webm,aac";
static const char k_codecs[] = "pcm_s16le,pcm_s16be,pcm_s24le,pcm_s32le,pcm_f32le,pcm_f64le,pcm_u8,"
                               "pcm_alaw,pcm_mulaw,adpcm_ima_wav,adpcm_ms,mp3,mp3float,mp2,mp2float,"
                               "vorbis,opus,libopus,flac,aac,aac_fixed,alac";

static void set_err(char *err, size_t errlen, const char *what, int averr)
{
    if (err == NULL || errlen == 0) return;
    if (averr != 0) {
        char e[AV_ERROR_MAX_STRING_SIZE] = {0};
        av_strerror(averr, e, sizeof e);
        snprintf(err, errlen, "%s (%s)", what, e);
    } else {
        snprintf(err, errlen, "%s", what);
    }
}

typedef struct dec_state {
    AVCodecContext *dec;
    SwrContext *swr;
    AVFrame *frame;
    th_buf *out;
    size_t max_samples;
    int out_rate;
    int bad;
    bool got_any;
    uint8_t *rbuf;
    int rbuf_cap;
} dec_state;

/* Resamples one frame (or flushes with NULL) and appends. 0, 1 past the limit, <0 error. */
static int emit(dec_state *d, const AVFrame *f)
{
    int in_n = f ? f->nb_samples : 0;
    int cap = swr_get_out_samples(d->swr, in_n);
    if (cap < 0) return AVERROR(EINVAL);
    if (cap == 0) return 0;
    if (cap > d->rbuf_cap) {
        av_freep(&d->rbuf);
        d->rbuf = av_malloc((size_t)cap * 2);
        if (d->rbuf == NULL) return AVERROR(ENOMEM);
        d->rbuf_cap = cap;
    }
    uint8_t *outp[1] = {d->rbuf};
    int n = swr_convert(d->swr, outp, cap, f ? (const uint8_t **)f->extended_data : NULL, in_n);
    if (n < 0) return n;
    if (n > 0 && th_buf_append(d->out, d->rbuf, (size_t)n * 2) != TH_BUF_OK) return AVERROR(ENOMEM);
    if (d->out->len / 2 > d->max_samples) return 1;
    return 0;
}

static int setup_swr(dec_state *d)
{
    AVChannelLayout in_layout;
    if (d->dec->ch_layout.nb_channels > 0 && d->dec->ch_layout.order != AV_CHANNEL_ORDER_UNSPEC) {
        if (av_channel_layout_copy(&in_layout, &d->dec->ch_layout) < 0) return AVERROR(ENOMEM);
    } else {
        av_channel_layout_default(&in_layout,
                                  d->dec->ch_layout.nb_channels > 0 ? d->dec->ch_layout.nb_channels : 1);
    }
    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    int ret = swr_alloc_set_opts2(&d->swr, &mono, AV_SAMPLE_FMT_S16, d->out_rate, &in_layout,
                                  d->dec->sample_fmt, d->dec->sample_rate, 0, NULL);
    av_channel_layout_uninit(&in_layout);
    if (ret < 0) return ret;
    return swr_init(d->swr);
}

/* Sends one packet (NULL flushes) and drains frames. 0, 1 past the limit, <0 fatal. */
static int decode_packet(dec_state *d, const AVPacket *pkt)
{
    int ret = avcodec_send_packet(d->dec, pkt);
    if (ret < 0 && ret != AVERROR(EAGAIN) && ret != AVERROR_EOF) {
        if (pkt == NULL || ++d->bad > DEC_MAX_BAD_PACKETS) return ret;
        return 0; /* one corrupt packet: skip it */
    }
    for (;;) {
        ret = avcodec_receive_frame(d->dec, d->frame);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret < 0) {
            if (++d->bad > DEC_MAX_BAD_PACKETS) return ret;
            return 0;
        }
        if (d->frame->sample_rate <= 0 || d->frame->ch_layout.nb_channels <= 0) {
            av_frame_unref(d->frame);
            continue;
        }
        if (d->swr == NULL) {
            if (d->dec->sample_rate <= 0) d->dec->sample_rate = d->frame->sample_rate;
            ret = setup_swr(d);
            if (ret < 0) {
                av_frame_unref(d->frame);
                return ret;
            }
        }
        d->got_any = true;
        int e = emit(d, d->frame);
        av_frame_unref(d->frame);
        if (e != 0) return e;
    }
}

/* The container: a demuxer over the bytes, held to the formats and codecs accepted, opened and probed.
 * *fcp is set as soon as there is a context to free (NULL again if opening failed). */
static th_dec_rc dec_open_input(AVFormatContext **fcp, AVIOContext *io, char *err, size_t errlen)
{
    AVFormatContext *fc = avformat_alloc_context();
    if (fc == NULL) return TH_DEC_NOMEM;
    *fcp = fc;
    fc->pb = io;
    fc->flags |= AVFMT_FLAG_CUSTOM_IO;
    fc->probesize = DEC_PROBESIZE;
    fc->max_analyze_duration = DEC_ANALYZE_US;
    fc->format_whitelist = av_strdup(k_formats);
    fc->codec_whitelist = av_strdup(k_codecs);
    fc->protocol_whitelist = av_strdup("none"); /* nothing named inside the file is ever opened */
    if (fc->format_whitelist == NULL || fc->codec_whitelist == NULL || fc->protocol_whitelist == NULL)
        return TH_DEC_NOMEM;
    int ret = avformat_open_input(fcp, NULL, NULL, NULL); /* frees the context on failure */
    if (ret < 0) {
        set_err(err, errlen, "not a recognised audio file", ret);
        return TH_DEC_NOT_AUDIO;
    }
    ret = avformat_find_stream_info(*fcp, NULL);
    if (ret < 0) {
        set_err(err, errlen, "cannot read the audio file", ret);
        return TH_DEC_BROKEN;
    }
    return TH_DEC_OK;
}

/* The best audio stream (*si) and its decoder, which must be one of ours, opened into d->dec. */
static th_dec_rc dec_open_codec(AVFormatContext *fc, dec_state *d, int *si, char *err, size_t errlen)
{
    const AVCodec *codec = NULL;
    *si = av_find_best_stream(fc, AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
    if (*si < 0 || codec == NULL) {
        set_err(err, errlen,
                *si == AVERROR_DECODER_NOT_FOUND ? "the audio codec is not supported"
                                                 : "the file has no audio stream",
                0);
        return TH_DEC_NOT_AUDIO;
    }
    if (!av_match_list(codec->name, k_codecs, ',')) {
        set_err(err, errlen, "the audio codec is not supported", 0);
        return TH_DEC_NOT_AUDIO;
    }
    for (unsigned i = 0; i < fc->nb_streams; i++)
        if ((int)i != *si) fc->streams[i]->discard = AVDISCARD_ALL;
    d->dec = avcodec_alloc_context3(codec);
    if (d->dec == NULL) return TH_DEC_NOMEM;
    int ret = avcodec_parameters_to_context(d->dec, fc->streams[*si]->codecpar);
    if (ret >= 0) {
        d->dec->thread_count = 1;
        ret = avcodec_open2(d->dec, codec, NULL);
    }
    if (ret < 0) {
        set_err(err, errlen, "cannot open the audio decoder", ret);
        return TH_DEC_BROKEN;
    }
    return TH_DEC_OK;
}

/* Reads and decodes stream si to its end, then drains the decoder and the resampler. 1 when past the
 * limit, 0 at the end, or a negative FFmpeg error (err set unless out of memory). */
static int dec_run(AVFormatContext *fc, AVPacket *pkt, dec_state *d, int si, char *err, size_t errlen)
{
    for (;;) {
        int ret = av_read_frame(fc, pkt);
        if (ret == AVERROR_EOF) break;
        if (ret < 0) {
            if (d->got_any) break; /* truncated at the end: keep what was decoded */
            set_err(err, errlen, "cannot read the audio file", ret);
            return ret;
        }
        int drc = pkt->stream_index == si ? decode_packet(d, pkt) : 0;
        av_packet_unref(pkt);
        if (drc == 1) return 1;
        if (drc < 0) {
            if (drc != AVERROR(ENOMEM)) set_err(err, errlen, "the audio cannot be decoded", drc);
            return drc;
        }
    }
    int drc = decode_packet(d, NULL);
    if (drc == 0 && d->swr) drc = emit(d, NULL);
    if (drc < 0) set_err(err, errlen, "the audio cannot be decoded", drc);
    return drc;
}

static pthread_once_t max_alloc_once = PTHREAD_ONCE_INIT;

static void set_max_alloc(void)
{
    av_max_alloc(DEC_MAX_ALLOC);
}

th_dec_rc th_audio_decode(const uint8_t *data, size_t len, const th_dec_opts *opts, th_buf *out, char *err,
                          size_t errlen)
{
    pthread_once(&max_alloc_once, set_max_alloc);
    th_dec_rc rc;
    th_memio m;
    AVFormatContext *fc = NULL;
    dec_state d = {.out = out, .out_rate = opts->out_rate > 0 ? opts->out_rate : 24000};
    double maxs = opts->max_seconds > 0 ? opts->max_seconds : 60;
    d.max_samples = (size_t)(maxs * d.out_rate);
    if (len == 0) {
        set_err(err, errlen, "the file is empty", 0);
        return TH_DEC_NOT_AUDIO;
    }
    AVIOContext *io = th_memio_open(&m, data, len, DEC_AVIO_BUF);
    if (io == NULL) return TH_DEC_NOMEM;
    AVPacket *pkt = av_packet_alloc();
    d.frame = av_frame_alloc();
    int si = -1;
    if (pkt == NULL || d.frame == NULL) {
        rc = TH_DEC_NOMEM;
    } else if ((rc = dec_open_input(&fc, io, err, errlen)) == TH_DEC_OK &&
               (rc = dec_open_codec(fc, &d, &si, err, errlen)) == TH_DEC_OK) {
        int r = dec_run(fc, pkt, &d, si, err, errlen);
        if (r == 1) {
            set_err(err, errlen, "the audio is longer than the limit", 0);
            rc = TH_DEC_TOO_LONG;
        } else if (r < 0) {
            rc = r == AVERROR(ENOMEM) ? TH_DEC_NOMEM : TH_DEC_BROKEN;
        } else if (!d.got_any || out->len == 0) {
            set_err(err, errlen, "the file holds no decodable audio", 0);
            rc = TH_DEC_BROKEN;
        }
    }
    av_freep(&d.rbuf);
    swr_free(&d.swr);
    avcodec_free_context(&d.dec);
    av_frame_free(&d.frame);
    av_packet_free(&pkt);
    avformat_close_input(&fc);
    if (fc) avformat_free_context(fc);
    th_memio_close(&io);
    return rc;
}

static double to_db(double v)
{
    if (v <= 1e-6) return -120.0;
    double db = 20.0 * log10(v);
    return db < -120.0 ? -120.0 : db;
}

void th_audio_level(const int16_t *pcm, size_t samples, int rate, double active_dbfs, th_dec_level *out)
{
    double peak = 0, sum = 0;
    size_t win = rate > 0 ? (size_t)rate / 50 : 480;
    if (win == 0) win = 1;
    size_t active = 0;
    double wsum = 0;
    size_t wn = 0;
    double thr = pow(10.0, active_dbfs / 20.0);
    for (size_t i = 0; i < samples; i++) {
        double v = pcm[i] / 32768.0;
        double a = fabs(v);
        if (a > peak) peak = a;
        sum += v * v;
        wsum += v * v;
        if (++wn == win) {
            if (sqrt(wsum / (double)wn) > thr) active += wn;
            wsum = 0;
            wn = 0;
        }
    }
    if (wn > 0 && sqrt(wsum / (double)wn) > thr) active += wn;
    out->peak_dbfs = to_db(peak);
    out->rms_dbfs = samples ? to_db(sqrt(sum / (double)samples)) : -120.0;
    out->active_seconds = rate > 0 ? (double)active / rate : 0;
}

/* flac: whole-buffer FLAC encoding (libavcodec's flac encoder, no muxer) and the compact form of a voice
 * reference. See flac.h.
 *
 * FFmpeg's flac muxer would add 8 KiB of padding and a vorbis comment, and on a non-seekable output it
 * cannot write the sample count and MD5 back into STREAMINFO (decoders that size their read from it, as
 * libsndfile does, then see an empty stream). Encoding straight from the codec and writing the final
 * STREAMINFO ourselves gives a minimal, complete file. */
#include "audio/flac.h"

#include <stdio.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavutil/channel_layout.h>
#include <libavutil/error.h>

#include "audio/conv.h"
#include "audio/format.h"

#define FLAC_STREAMINFO_LEN 34
#define FLAC_LEVEL 8 /* the strongest subset level: the reference is encoded once and sent many times */

static int fl_fail(char *err, size_t errlen, const char *what, int averr)
{
    char e[96] = "";
    if (averr < 0) av_strerror(averr, e, sizeof e);
    snprintf(err, errlen, "flac: %s%s%s", what, e[0] ? ": " : "", e);
    return -1;
}

/* Moves every packet the encoder has ready into frames; keeps the newest STREAMINFO it hands out. */
static int fl_drain(AVCodecContext *enc, AVPacket *pkt, th_buf *frames, uint8_t info[FLAC_STREAMINFO_LEN],
                    char *err, size_t errlen)
{
    for (;;) {
        int ret = avcodec_receive_packet(enc, pkt);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret < 0) return fl_fail(err, errlen, "encoding", ret);
        size_t sl = 0;
        const uint8_t *sd = av_packet_get_side_data(pkt, AV_PKT_DATA_NEW_EXTRADATA, &sl);
        if (sd != NULL && sl == FLAC_STREAMINFO_LEN) memcpy(info, sd, FLAC_STREAMINFO_LEN);
        int r = pkt->size > 0 ? th_buf_append(frames, pkt->data, (size_t)pkt->size) : TH_BUF_OK;
        av_packet_unref(pkt);
        if (r != TH_BUF_OK) return fl_fail(err, errlen, "out of memory", 0);
    }
}

/* An encoder for mono s16 at rate, and its first STREAMINFO in info. NULL on failure (err set). */
static AVCodecContext *fl_open(int rate, uint8_t info[FLAC_STREAMINFO_LEN], char *err, size_t errlen)
{
    int ret;
    const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_FLAC);
    if (codec == NULL) {
        fl_fail(err, errlen, "encoder not available", 0);
        return NULL;
    }
    AVCodecContext *enc = avcodec_alloc_context3(codec);
    if (enc == NULL) {
        fl_fail(err, errlen, "out of memory", 0);
        return NULL;
    }
    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    if ((ret = av_channel_layout_copy(&enc->ch_layout, &mono)) < 0) {
        fl_fail(err, errlen, "channel layout", ret);
        goto fail;
    }
    enc->sample_fmt = AV_SAMPLE_FMT_S16;
    enc->sample_rate = rate;
    enc->time_base = (AVRational){1, rate};
    enc->compression_level = FLAC_LEVEL;
    if ((ret = avcodec_open2(enc, codec, NULL)) < 0) {
        fl_fail(err, errlen, "opening the encoder", ret);
        goto fail;
    }
    if (enc->extradata == NULL || enc->extradata_size < FLAC_STREAMINFO_LEN) {
        fl_fail(err, errlen, "no STREAMINFO", 0);
        goto fail;
    }
    memcpy(info, enc->extradata, FLAC_STREAMINFO_LEN);
    return enc;
fail:
    avcodec_free_context(&enc);
    return NULL;
}

/* Encodes every sample, then flushes; the frames go to frames. */
static int fl_feed(AVCodecContext *enc, AVFrame *fr, AVPacket *pkt, const int16_t *pcm, size_t samples,
                   th_buf *frames, uint8_t info[FLAC_STREAMINFO_LEN], char *err, size_t errlen)
{
    int ret;
    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    const size_t fsz = enc->frame_size > 0 ? (size_t)enc->frame_size : 4096;
    for (size_t at = 0; at < samples; at += fsz) {
        size_t n = samples - at < fsz ? samples - at : fsz;
        fr->format = AV_SAMPLE_FMT_S16;
        fr->sample_rate = enc->sample_rate;
        fr->nb_samples = (int)n;
        fr->pts = (int64_t)at;
        if ((ret = av_channel_layout_copy(&fr->ch_layout, &mono)) < 0 ||
            (ret = av_frame_get_buffer(fr, 0)) < 0)
            return fl_fail(err, errlen, "encoder frame", ret);
        memcpy(fr->data[0], pcm + at, n * sizeof *pcm);
        ret = avcodec_send_frame(enc, fr);
        av_frame_unref(fr);
        if (ret < 0) return fl_fail(err, errlen, "encoding", ret);
        if (fl_drain(enc, pkt, frames, info, err, errlen) != 0) return -1;
    }
    if ((ret = avcodec_send_frame(enc, NULL)) < 0) return fl_fail(err, errlen, "flushing", ret);
    if (fl_drain(enc, pkt, frames, info, err, errlen) != 0) return -1;
    /* the final STREAMINFO (with the MD5) is in the last packet's side data or the context's extradata */
    if (enc->extradata != NULL && enc->extradata_size >= FLAC_STREAMINFO_LEN)
        memcpy(info, enc->extradata, FLAC_STREAMINFO_LEN);
    return 0;
}

/* The file: "fLaC", the STREAMINFO block (with the total sample count), the frames. */
static int fl_write(th_buf *out, uint8_t info[FLAC_STREAMINFO_LEN], uint64_t total, const th_buf *frames,
                    char *err, size_t errlen)
{
    /* total samples: 36 bits from bit 108 of STREAMINFO (after block sizes, frame sizes, rate, channels, bps)
     */
    info[13] = (uint8_t)((info[13] & 0xF0) | ((total >> 32) & 0x0F));
    info[14] = (uint8_t)(total >> 24);
    info[15] = (uint8_t)(total >> 16);
    info[16] = (uint8_t)(total >> 8);
    info[17] = (uint8_t)total;
    const uint8_t head[8] = {
        'f', 'L', 'a', 'C', 0x80 /* last metadata block, STREAMINFO */, 0, 0, FLAC_STREAMINFO_LEN};
    if (th_buf_reserve(out, sizeof head + FLAC_STREAMINFO_LEN + frames->len) != TH_BUF_OK ||
        th_buf_append(out, head, sizeof head) != TH_BUF_OK ||
        th_buf_append(out, info, FLAC_STREAMINFO_LEN) != TH_BUF_OK ||
        th_buf_append(out, frames->data, frames->len) != TH_BUF_OK)
        return fl_fail(err, errlen, "out of memory", 0);
    return 0;
}

int th_flac_encode_s16(const int16_t *pcm, size_t samples, int rate, th_buf *out, char *err, size_t errlen)
{
    int rc = -1;
    uint8_t info[FLAC_STREAMINFO_LEN];
    th_buf frames;
    th_buf_init(&frames, 0); /* our own encoder output: bounded by the samples given */
    AVCodecContext *enc = NULL;
    AVFrame *fr = av_frame_alloc();
    AVPacket *pkt = av_packet_alloc();
    if (rate < 8000 || rate > 192000 || samples > ((uint64_t)1 << 36) - 1)
        fl_fail(err, errlen, "unsupported input", 0);
    else if (fr == NULL || pkt == NULL)
        fl_fail(err, errlen, "out of memory", 0);
    else if ((enc = fl_open(rate, info, err, errlen)) != NULL &&
             fl_feed(enc, fr, pkt, pcm, samples, &frames, info, err, errlen) == 0 &&
             fl_write(out, info, samples, &frames, err, errlen) == 0)
        rc = 0;
    avcodec_free_context(&enc);
    av_frame_free(&fr);
    av_packet_free(&pkt);
    th_buf_free(&frames);
    return rc;
}

int th_flac_from_wav(const uint8_t *data, size_t len, int rate, th_buf *out, char *err, size_t errlen)
{
    th_buf pcm;
    th_buf_init(&pcm, 0); /* the converter output of a WAV the caller holds whole */
    th_audio_spec in = {.fmt = TH_FMT_WAV};
    th_audio_target t = {.fmt = TH_FMT_PCM, .sample_rate = rate, .tempo = 1.0};
    int rc = th_audio_convert(&in, data, len, &t, &pcm, err, errlen);
    if (rc == 0)
        rc = th_flac_encode_s16((const int16_t *)(const void *)pcm.data, pcm.len / 2, rate, out, err, errlen);
    th_buf_free(&pcm);
    return rc;
}

/* conv: incremental audio conversion with the FFmpeg 5.1 libraries, in memory only.
 *
 * Pipeline:  input stage -> swresample (downmix to mono, target rate, encoder sample format)
 *            -> atempo chain (only when tempo != 1) -> AVAudioFifo (fixed encoder frames)
 *            -> encoder -> muxer writing into an in-memory, non-seekable AVIOContext.
 * wav and pcm output skip the encoder: s16le mono samples behind our canonical 44-byte header.
 *
 * Input stages:
 *  - PCM (headerless, spec from the caller) and WAV (th_wav_reader) go straight to swresample.
 *  - MP3, AAC (ADTS) and FLAC go through an AVCodecParserContext and a decoder, so they are
 *    decoded as the bytes come.
 *  - Ogg (Opus, Vorbis) needs a demuxer. It is buffered (bounded by out->max_buffered) and decoded
 *    with the Ogg demuxer forced (the sniffed format; no probing through every demuxer FFmpeg has),
 *    at finish through avformat with a custom AVIOContext reading from that memory. Engines that
 *    send Ogg therefore get no streaming from us; none of the engines we know stream Ogg.
 * The first bytes are always sniffed; what the caller declared is the fallback (declared PCM is
 * only overridden by the strong signatures RIFF, fLaC, OggS and ID3). */
#include "audio/conv.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavfilter/avfilter.h>
#include <libavfilter/buffersink.h>
#include <libavfilter/buffersrc.h>
#include <libavformat/avformat.h>
#include <libavformat/avio.h>
#include <libavutil/audio_fifo.h>
#include <libavutil/channel_layout.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libavutil/samplefmt.h>
#include <libswresample/swresample.h>

#include "audio/wav.h"
#include "audio/memio.h"

#define CONV_SNIFF_MAX 8192u    /* bytes held while the format is unknown */
#define CONV_PARSE_CHUNK 65536u /* input copied into a padded buffer per parser call */
#define CONV_AVIO_BUF 4096
#define CONV_MAX_BAD_PACKETS 64
#define CONV_MP3_QUALITY 7 /* lame_set_quality: 0 best/slowest .. 9 worst/fastest */

enum { ST_SNIFF, ST_RUN, ST_DONE, ST_ERROR };
enum { IN_PCM, IN_WAV, IN_PARSED, IN_DEMUX, IN_COPY };

struct th_audio_conv {
    th_audio_spec decl; /* what the caller said */
    th_audio_target out;
    int state;
    th_fmt in_fmt; /* resolved input format */
    int in_kind;
    bool passthrough;
    bool raw_copy; /* s16 mono at the output rate into wav/pcm: no swresample */
    th_buf sniff;
    th_buf *cur; /* output buffer of the current push/finish (the avio write callback appends here) */
    char *err;
    size_t errlen;
    uint64_t samples_out;
    uint64_t in_bytes;

    /* PCM input */
    th_wav_reader *wav;
    th_audio_spec pcm; /* spec of the PCM going into swresample */
    int pcm_block;
    uint8_t carry[256];
    size_t carry_len;

    /* parser/decoder input */
    AVCodecParserContext *parser;
    AVCodecContext *dec;
    AVPacket *dpkt;
    AVFrame *dframe;
    uint8_t *pbuf; /* padded staging buffer for the parser */
    size_t skip;   /* ID3v2 tag bytes still to drop */
    int bad_packets;
    bool decoded_any;
    th_buf demux; /* IN_DEMUX: whole input */

    /* swresample */
    SwrContext *swr;
    AVChannelLayout swr_in_layout;
    enum AVSampleFormat swr_in_fmt;
    int swr_in_rate;
    uint8_t *rbuf;
    int rbuf_cap; /* samples */

    /* output side */
    bool out_ready;
    bool raw_out;             /* wav or pcm */
    enum AVSampleFormat ofmt; /* mono samples after swresample */
    int orate;
    AVFilterGraph *graph;
    AVFilterContext *fsrc, *fsink;
    AVFrame *tframe, *fframe;
    int64_t tpts;
    AVFormatContext *oc;
    AVIOContext *avio;
    AVStream *st;
    AVCodecContext *enc;
    AVAudioFifo *fifo;
    AVFrame *eframe;
    AVPacket *epkt;
    int frame_size;
    bool small_last;
    int64_t epts;
    bool header_written;
};

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void set_log_level(void)
{
    av_log_set_level(AV_LOG_ERROR); /* FFmpeg's own process-wide setting */
}

static int failf(th_audio_conv *c, const char *what, int averr)
{
    c->state = ST_ERROR;
    if (c->err == NULL || c->errlen == 0) return -1;
    if (averr != 0) {
        char e[AV_ERROR_MAX_STRING_SIZE] = {0};
        av_strerror(averr, e, sizeof e);
        snprintf(c->err, c->errlen, "audio: %s: %s", what, e);
    } else {
        snprintf(c->err, c->errlen, "audio: %s", what);
    }
    return -1;
}

static int out_append(th_audio_conv *c, const void *p, size_t n)
{
    if (c->cur == NULL) return failf(c, "no output buffer", 0);
    int rc = th_buf_append(c->cur, p, n);
    if (rc == TH_BUF_EFULL) return failf(c, "output buffer full", 0);
    if (rc != TH_BUF_OK) return failf(c, "out of memory", 0);
    return 0;
}

static int avio_write_cb(void *opaque, uint8_t *buf, int size)
{
    th_audio_conv *c = opaque;
    if (c->cur == NULL || size < 0 || th_buf_append(c->cur, buf, (size_t)size) != TH_BUF_OK)
        return AVERROR(ENOMEM);
    return size;
}

static enum AVSampleFormat th_to_av_fmt(th_sample s)
{
    switch (s) {
    case TH_SAMPLE_S16:
        return AV_SAMPLE_FMT_S16;
    case TH_SAMPLE_S32:
        return AV_SAMPLE_FMT_S32;
    case TH_SAMPLE_F32:
        return AV_SAMPLE_FMT_FLT;
    case TH_SAMPLE_F64:
        return AV_SAMPLE_FMT_DBL;
    case TH_SAMPLE_U8:
        return AV_SAMPLE_FMT_U8;
    }
    return AV_SAMPLE_FMT_NONE;
}

/* ---- output side ---------------------------------------------------------------------------- */

static const char *enc_name(th_fmt f)
{
    switch (f) {
    case TH_FMT_MP3:
        return "libmp3lame";
    case TH_FMT_OPUS:
        return "libopus";
    case TH_FMT_AAC:
        return "aac";
    case TH_FMT_FLAC:
        return "flac";
    default:
        return NULL;
    }
}

/* Encoders by output format, looked up once per process: avcodec_find_encoder_by_name walks every
 * codec with strcmp, which cost ~3 us on each pass-through request. Written only inside the once. */
static pthread_once_t enc_once = PTHREAD_ONCE_INIT;
static const AVCodec *enc_table[TH_FMT_COUNT];

static void enc_table_init(void)
{
    for (int f = 0; f < TH_FMT_COUNT; f++)
        enc_table[f] = enc_name((th_fmt)f) ? avcodec_find_encoder_by_name(enc_name((th_fmt)f)) : NULL;
}

static const AVCodec *find_encoder(th_fmt f)
{
    pthread_once(&enc_once, enc_table_init);
    return (int)f >= 0 && f < TH_FMT_COUNT ? enc_table[f] : NULL;
}

static const char *mux_name(th_fmt f)
{
    switch (f) {
    case TH_FMT_MP3:
        return "mp3";
    case TH_FMT_OPUS:
        return "ogg";
    case TH_FMT_AAC:
        return "adts";
    case TH_FMT_FLAC:
        return "flac";
    default:
        return NULL;
    }
}

static enum AVSampleFormat enc_sample_fmt(th_fmt f)
{
    switch (f) {
    case TH_FMT_MP3:
        return AV_SAMPLE_FMT_S16P;
    case TH_FMT_AAC:
        return AV_SAMPLE_FMT_FLTP; /* the native aac encoder takes only fltp */
    default:
        return AV_SAMPLE_FMT_S16;
    }
}

static int default_bitrate(th_fmt f)
{
    switch (f) {
    case TH_FMT_MP3:
        return 64000;
    case TH_FMT_OPUS:
        return 32000;
    case TH_FMT_AAC:
        return 64000;
    default:
        return 0;
    }
}

static int setup_tempo(th_audio_conv *c)
{
    char args[256];
    int ret;
    c->graph = avfilter_graph_alloc();
    if (c->graph == NULL) return failf(c, "avfilter_graph_alloc", AVERROR(ENOMEM));
    snprintf(args, sizeof args, "time_base=1/%d:sample_rate=%d:sample_fmt=%s:channel_layout=mono", c->orate,
             c->orate, av_get_sample_fmt_name(c->ofmt));
    ret = avfilter_graph_create_filter(&c->fsrc, avfilter_get_by_name("abuffer"), "in", args, NULL, c->graph);
    if (ret < 0) return failf(c, "abuffer", ret);
    c->fsink = avfilter_graph_alloc_filter(c->graph, avfilter_get_by_name("abuffersink"), "out");
    if (c->fsink == NULL) return failf(c, "abuffersink", AVERROR(ENOMEM));
    enum AVSampleFormat fmts[] = {c->ofmt, AV_SAMPLE_FMT_NONE};
    int rates[] = {c->orate, -1};
    ret = av_opt_set_int_list(c->fsink, "sample_fmts", fmts, AV_SAMPLE_FMT_NONE, AV_OPT_SEARCH_CHILDREN);
    if (ret >= 0) ret = av_opt_set_int_list(c->fsink, "sample_rates", rates, -1, AV_OPT_SEARCH_CHILDREN);
    if (ret >= 0) ret = av_opt_set(c->fsink, "ch_layouts", "mono", AV_OPT_SEARCH_CHILDREN);
    if (ret >= 0) ret = avfilter_init_str(c->fsink, NULL);
    if (ret < 0) return failf(c, "abuffersink options", ret);
    /* FFmpeg 5.1 atempo takes 0.5..100; keep each instance within 0.5..2.0 for quality. */
    AVFilterContext *prev = c->fsrc;
    double t = c->out.tempo;
    for (int i = 0; i < 16; i++) {
        double step = t;
        if (t < 0.5)
            step = 0.5;
        else if (t > 2.0)
            step = 2.0;
        char name[32];
        AVFilterContext *f = NULL;
        snprintf(name, sizeof name, "atempo%d", i);
        snprintf(args, sizeof args, "tempo=%.9f", step);
        ret = avfilter_graph_create_filter(&f, avfilter_get_by_name("atempo"), name, args, NULL, c->graph);
        if (ret < 0) return failf(c, "atempo", ret);
        ret = avfilter_link(prev, 0, f, 0);
        if (ret < 0) return failf(c, "avfilter_link", ret);
        prev = f;
        t /= step;
        if (fabs(t - 1.0) < 1e-9) break;
    }
    ret = avfilter_link(prev, 0, c->fsink, 0);
    if (ret < 0) return failf(c, "avfilter_link", ret);
    ret = avfilter_graph_config(c->graph, NULL);
    if (ret < 0) return failf(c, "avfilter_graph_config", ret);
    c->tframe = av_frame_alloc();
    c->fframe = av_frame_alloc();
    if (c->tframe == NULL || c->fframe == NULL) return failf(c, "av_frame_alloc", AVERROR(ENOMEM));
    return 0;
}

static int setup_encoder(th_audio_conv *c)
{
    int ret;
    AVDictionary *opts = NULL;
    const AVCodec *codec = find_encoder(c->out.fmt);
    if (codec == NULL) return failf(c, "encoder not available", 0);
    ret = avformat_alloc_output_context2(&c->oc, NULL, mux_name(c->out.fmt), NULL);
    if (ret < 0 || c->oc == NULL) return failf(c, "muxer not available", ret);
    uint8_t *iobuf = av_malloc(CONV_AVIO_BUF);
    if (iobuf == NULL) return failf(c, "av_malloc", AVERROR(ENOMEM));
    c->avio = avio_alloc_context(iobuf, CONV_AVIO_BUF, 1, c, NULL, avio_write_cb, NULL);
    if (c->avio == NULL) {
        av_free(iobuf);
        return failf(c, "avio_alloc_context", AVERROR(ENOMEM));
    }
    c->avio->seekable = 0;
    c->oc->pb = c->avio;
    c->oc->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_FLUSH_PACKETS;
    c->oc->flush_packets = 1;

    c->enc = avcodec_alloc_context3(codec);
    if (c->enc == NULL) return failf(c, "avcodec_alloc_context3", AVERROR(ENOMEM));
    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    ret = av_channel_layout_copy(&c->enc->ch_layout, &mono);
    if (ret < 0) return failf(c, "channel layout", ret);
    c->enc->sample_fmt = c->ofmt;
    c->enc->sample_rate = c->orate;
    c->enc->time_base = (AVRational){1, c->orate};
    if (c->out.bitrate > 0) c->enc->bit_rate = c->out.bitrate;
    /* LAME's algorithm quality (-q): its default, 3, runs at ~145x realtime on speech here; 7 (the
     * same as lame -f) at ~300x, which BENCH.md P7 asks for. At 64 kbit/s mono speech the difference
     * is small. */
    if (c->out.fmt == TH_FMT_MP3) c->enc->compression_level = CONV_MP3_QUALITY;
    if (c->oc->oformat->flags & AVFMT_GLOBALHEADER) c->enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    ret = avcodec_open2(c->enc, codec, NULL);
    if (ret < 0) return failf(c, "opening the encoder", ret);
    c->frame_size = c->enc->frame_size > 0 ? c->enc->frame_size : 1024;
    c->small_last = (codec->capabilities & AV_CODEC_CAP_VARIABLE_FRAME_SIZE) ||
                    (codec->capabilities & AV_CODEC_CAP_SMALL_LAST_FRAME);

    c->st = avformat_new_stream(c->oc, NULL);
    if (c->st == NULL) return failf(c, "avformat_new_stream", AVERROR(ENOMEM));
    ret = avcodec_parameters_from_context(c->st->codecpar, c->enc);
    if (ret < 0) return failf(c, "codec parameters", ret);
    c->st->time_base = c->enc->time_base;

    c->fifo = av_audio_fifo_alloc(c->ofmt, 1, c->frame_size * 4);
    c->eframe = av_frame_alloc();
    c->epkt = av_packet_alloc();
    if (c->fifo == NULL || c->eframe == NULL || c->epkt == NULL) return failf(c, "alloc", AVERROR(ENOMEM));
    c->eframe->format = c->ofmt;
    c->eframe->sample_rate = c->orate;
    c->eframe->nb_samples = c->frame_size;
    ret = av_channel_layout_copy(&c->eframe->ch_layout, &mono);
    if (ret >= 0) ret = av_frame_get_buffer(c->eframe, 0);
    if (ret < 0) return failf(c, "encoder frame", ret);

    if (c->out.fmt == TH_FMT_MP3) {
        /* No ID3v2 tag and no Xing/Info frame: they break streaming and concatenation. */
        ret = av_dict_set(&opts, "id3v2_version", "0", 0);
        if (ret >= 0) ret = av_dict_set(&opts, "write_xing", "0", 0);
    } else if (c->out.fmt == TH_FMT_OPUS) {
        ret = av_dict_set(&opts, "page_duration", "200000", 0); /* pages of 200 ms: low latency */
    } else {
        ret = 0;
    }
    if (ret < 0) {
        av_dict_free(&opts);
        return failf(c, "muxer options", ret);
    }
    ret = avformat_write_header(c->oc, &opts);
    av_dict_free(&opts);
    if (ret < 0) return failf(c, "writing the container header", ret);
    c->header_written = true;
    avio_flush(c->avio);
    if (c->avio->error < 0) return failf(c, "writing output", c->avio->error);
    return 0;
}

/* Called once the input format is known (and the output is not a plain copy). */
static int setup_output(th_audio_conv *c)
{
    c->out_ready = true;
    c->orate = c->out.sample_rate;
    c->raw_out = c->out.fmt == TH_FMT_WAV || c->out.fmt == TH_FMT_PCM;
    c->ofmt = c->raw_out ? AV_SAMPLE_FMT_S16 : enc_sample_fmt(c->out.fmt);
    if (c->out.fmt == TH_FMT_WAV) {
        uint8_t h[TH_WAV_HEADER_LEN];
        th_wav_header(h, c->orate, 1, 16, c->out.wav_data_len);
        if (out_append(c, h, sizeof h) != 0) return -1;
    }
    if (c->out.tempo != 1.0 && setup_tempo(c) != 0) return -1;
    if (!c->raw_out && setup_encoder(c) != 0) return -1;
    return 0;
}

static int drain_packets(th_audio_conv *c)
{
    for (;;) {
        int ret = avcodec_receive_packet(c->enc, c->epkt);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret < 0) return failf(c, "encoding", ret);
        av_packet_rescale_ts(c->epkt, c->enc->time_base, c->st->time_base);
        c->epkt->stream_index = c->st->index;
        ret = av_write_frame(c->oc, c->epkt);
        av_packet_unref(c->epkt);
        if (ret < 0) return failf(c, "muxing", ret);
    }
}

/* Encodes nb samples from the fifo (nb < frame_size only for the last frame). */
static int encode_frame(th_audio_conv *c, int nb)
{
    int ret = av_frame_make_writable(c->eframe);
    if (ret < 0) return failf(c, "encoder frame", ret);
    int n = nb;
    if (nb < c->frame_size && !c->small_last) {
        av_samples_set_silence(c->eframe->data, nb, c->frame_size - nb, 1, c->ofmt);
        n = c->frame_size;
    }
    c->eframe->nb_samples = n;
    if (av_audio_fifo_read(c->fifo, (void **)c->eframe->data, nb) != nb) return failf(c, "fifo read", 0);
    c->eframe->pts = c->epts;
    c->epts += n;
    c->samples_out += (uint64_t)nb;
    ret = avcodec_send_frame(c->enc, c->eframe);
    if (ret < 0) return failf(c, "encoding", ret);
    return drain_packets(c);
}

/* Mono samples in c->ofmt at c->orate, after tempo. */
static int to_encoder(th_audio_conv *c, uint8_t *data, int nb)
{
    if (nb <= 0) return 0;
    if (c->raw_out) {
        c->samples_out += (uint64_t)nb;
        return out_append(c, data, (size_t)nb * 2);
    }
    if (av_audio_fifo_write(c->fifo, (void **)&data, nb) != nb)
        return failf(c, "fifo write", AVERROR(ENOMEM));
    while (av_audio_fifo_size(c->fifo) >= c->frame_size)
        if (encode_frame(c, c->frame_size) != 0) return -1;
    return 0;
}

static int drain_filter(th_audio_conv *c)
{
    for (;;) {
        int ret = av_buffersink_get_frame(c->fsink, c->fframe);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret < 0) return failf(c, "atempo", ret);
        ret = to_encoder(c, c->fframe->data[0], c->fframe->nb_samples);
        av_frame_unref(c->fframe);
        if (ret != 0) return -1;
    }
}

/* Mono samples in c->ofmt at c->orate, before tempo. */
static int after_resample(th_audio_conv *c, uint8_t *data, int nb)
{
    if (nb <= 0) return 0;
    if (c->graph == NULL) return to_encoder(c, data, nb);
    /* Reset each time: the source's compatibility code writes the deprecated layout fields back
     * into the frame it was given, which the next call would then reject. */
    c->tframe->data[0] = NULL;
    av_frame_unref(c->tframe);
    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    int ret = av_channel_layout_copy(&c->tframe->ch_layout, &mono);
    if (ret < 0) return failf(c, "channel layout", ret);
    c->tframe->format = c->ofmt;
    c->tframe->sample_rate = c->orate;
    c->tframe->data[0] = data;
    c->tframe->extended_data = c->tframe->data;
    c->tframe->nb_samples = nb;
    c->tframe->pts = c->tpts;
    c->tpts += nb;
    /* Not reference counted, so the source copies the samples. */
    ret = av_buffersrc_write_frame(c->fsrc, c->tframe);
    c->tframe->data[0] = NULL;
    if (ret < 0) return failf(c, "atempo input", ret);
    return drain_filter(c);
}

static int ensure_rbuf(th_audio_conv *c, int samples)
{
    if (samples <= c->rbuf_cap) return 0;
    int cap = c->rbuf_cap ? c->rbuf_cap : 4096;
    while (cap < samples) {
        if (cap > INT32_MAX / 2) return failf(c, "resample buffer too large", 0);
        cap *= 2;
    }
    uint8_t *p = realloc(c->rbuf, (size_t)cap * (size_t)av_get_bytes_per_sample(c->ofmt));
    if (p == NULL) return failf(c, "out of memory", 0);
    c->rbuf = p;
    c->rbuf_cap = cap;
    return 0;
}

/* Drains what swresample still holds (end of input or before a format change). */
static int flush_swr(th_audio_conv *c)
{
    if (c->swr == NULL) return 0;
    for (;;) {
        int want = swr_get_out_samples(c->swr, 0);
        if (want <= 0) want = 1024;
        if (ensure_rbuf(c, want) != 0) return -1;
        int n = swr_convert(c->swr, &c->rbuf, c->rbuf_cap, NULL, 0);
        if (n < 0) return failf(c, "resampling", n);
        if (n == 0) return 0;
        if (after_resample(c, c->rbuf, n) != 0) return -1;
    }
}

/* Any interleaved or planar input -> mono, output rate, output sample format. */
static int resample(th_audio_conv *c, const uint8_t **in, int nb, enum AVSampleFormat fmt,
                    const AVChannelLayout *layout_in, int rate)
{
    int ret;
    AVChannelLayout layout = {0};
    if (nb <= 0) return 0;
    if (layout_in->order == AV_CHANNEL_ORDER_UNSPEC || !av_channel_layout_check(layout_in))
        av_channel_layout_default(&layout, layout_in->nb_channels);
    else if ((ret = av_channel_layout_copy(&layout, layout_in)) < 0)
        return failf(c, "channel layout", ret);
    if (c->swr != NULL && (c->swr_in_fmt != fmt || c->swr_in_rate != rate ||
                           av_channel_layout_compare(&c->swr_in_layout, &layout) != 0)) {
        if (flush_swr(c) != 0) goto fail;
        swr_free(&c->swr);
        av_channel_layout_uninit(&c->swr_in_layout);
    }
    if (c->swr == NULL) {
        AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
        ret = swr_alloc_set_opts2(&c->swr, &mono, c->ofmt, c->orate, &layout, fmt, rate, 0, NULL);
        if (ret >= 0) ret = swr_init(c->swr);
        if (ret < 0) {
            failf(c, "setting up the resampler", ret);
            goto fail;
        }
        c->swr_in_fmt = fmt;
        c->swr_in_rate = rate;
        av_channel_layout_uninit(&c->swr_in_layout);
        c->swr_in_layout = layout;
        layout = (AVChannelLayout){0};
    }
    av_channel_layout_uninit(&layout);
    int want = swr_get_out_samples(c->swr, nb);
    if (want < 0) return failf(c, "resampling", want);
    if (ensure_rbuf(c, want + 16) != 0) return -1;
    int n = swr_convert(c->swr, &c->rbuf, c->rbuf_cap, in, nb);
    if (n < 0) return failf(c, "resampling", n);
    return after_resample(c, c->rbuf, n);
fail:
    av_channel_layout_uninit(&layout);
    return -1;
}

/* ---- input stages ---------------------------------------------------------------------------- */

/* Interleaved PCM of c->pcm. Keeps a partial frame for the next call. */
static int feed_pcm(th_audio_conv *c, const uint8_t *d, size_t n)
{
    size_t block = (size_t)c->pcm_block;
    if (c->raw_copy) {
        /* s16 mono at the output rate: bytes go out as they are (whole samples). */
        size_t total = c->carry_len + n, whole = total / 2 * 2;
        if (whole > 0) {
            if (c->carry_len && out_append(c, c->carry, c->carry_len) != 0) return -1;
            if (out_append(c, d, whole - c->carry_len) != 0) return -1;
            c->samples_out += whole / 2;
            d += whole - c->carry_len;
            n -= whole - c->carry_len;
            c->carry_len = 0;
        }
        memcpy(c->carry + c->carry_len, d, n);
        c->carry_len += n;
        return 0;
    }
    AVChannelLayout layout = {0};
    av_channel_layout_default(&layout, c->pcm.channels);
    enum AVSampleFormat fmt = th_to_av_fmt(c->pcm.sample);
    if (c->carry_len > 0) {
        size_t take = block - c->carry_len;
        if (take > n) take = n;
        memcpy(c->carry + c->carry_len, d, take);
        c->carry_len += take;
        d += take;
        n -= take;
        if (c->carry_len < block) return 0;
        const uint8_t *p = c->carry;
        c->carry_len = 0;
        if (resample(c, &p, 1, fmt, &layout, c->pcm.sample_rate) != 0) return -1;
    }
    while (n >= block) {
        size_t frames = n / block;
        if (frames > (1u << 20)) frames = 1u << 20;
        const uint8_t *p = d;
        if (resample(c, &p, (int)frames, fmt, &layout, c->pcm.sample_rate) != 0) return -1;
        d += frames * block;
        n -= frames * block;
    }
    memcpy(c->carry, d, n);
    c->carry_len = n;
    return 0;
}

static void set_pcm_spec(th_audio_conv *c, const th_audio_spec *s)
{
    c->pcm = *s;
    c->pcm_block = th_sample_bytes(s->sample) * s->channels;
    c->raw_copy = c->raw_out && c->out.tempo == 1.0 && s->sample == TH_SAMPLE_S16 && s->channels == 1 &&
                  s->sample_rate == c->orate;
}

static int feed_wav(th_audio_conv *c, const uint8_t *d, size_t n)
{
    const uint8_t *pcm;
    size_t pcm_len;
    char e[128] = {0};
    int rc = th_wav_reader_push(c->wav, d, n, &pcm, &pcm_len, e, sizeof e);
    if (rc == TH_WAV_ERROR) return failf(c, e, 0);
    if (rc == TH_WAV_NEED_MORE) return 0;
    if (c->pcm_block == 0) {
        set_pcm_spec(c, th_wav_reader_spec(c->wav));
        if (c->out.fmt == TH_FMT_WAV && c->raw_copy) c->passthrough = true;
    }
    return pcm_len ? feed_pcm(c, pcm, pcm_len) : 0;
}

static int on_decoded_frame(th_audio_conv *c, AVFrame *f)
{
    c->decoded_any = true;
    if (f->nb_samples <= 0 || f->sample_rate <= 0 || f->ch_layout.nb_channels <= 0) return 0;
    return resample(c, (const uint8_t **)f->extended_data, f->nb_samples, f->format, &f->ch_layout,
                    f->sample_rate);
}

static int decode_packet(th_audio_conv *c, AVPacket *pkt)
{
    int ret = avcodec_send_packet(c->dec, pkt);
    if (ret == AVERROR_INVALIDDATA) {
        /* One broken frame is skipped; a stream of them is an error. */
        if (++c->bad_packets > CONV_MAX_BAD_PACKETS && !c->decoded_any) return failf(c, "decoding", ret);
        return 0;
    }
    if (ret < 0 && ret != AVERROR_EOF) return failf(c, "decoding", ret);
    for (;;) {
        ret = avcodec_receive_frame(c->dec, c->dframe);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret == AVERROR_INVALIDDATA) {
            if (++c->bad_packets > CONV_MAX_BAD_PACKETS && !c->decoded_any) return failf(c, "decoding", ret);
            continue;
        }
        if (ret < 0) return failf(c, "decoding", ret);
        ret = on_decoded_frame(c, c->dframe);
        av_frame_unref(c->dframe);
        if (ret != 0) return -1;
    }
}

static int setup_decoder(th_audio_conv *c, enum AVCodecID id)
{
    const AVCodec *codec = avcodec_find_decoder(id);
    if (codec == NULL) return failf(c, "decoder not available", 0);
    c->dec = avcodec_alloc_context3(codec);
    c->dframe = av_frame_alloc();
    c->dpkt = av_packet_alloc();
    if (c->dec == NULL || c->dframe == NULL || c->dpkt == NULL) return failf(c, "alloc", AVERROR(ENOMEM));
    return 0;
}

static int open_decoder(th_audio_conv *c)
{
    int ret = avcodec_open2(c->dec, c->dec->codec, NULL);
    if (ret < 0) return failf(c, "opening the decoder", ret);
    return 0;
}

static int feed_parsed(th_audio_conv *c, const uint8_t *d, size_t n, bool flush)
{
    if (c->skip > 0) {
        size_t k = c->skip < n ? c->skip : n;
        c->skip -= k;
        d += k;
        n -= k;
    }
    while (n > 0 || flush) {
        size_t chunk = n < CONV_PARSE_CHUNK ? n : CONV_PARSE_CHUNK;
        if (chunk > 0) memcpy(c->pbuf, d, chunk); /* parsers and decoders may read past the end */
        memset(c->pbuf + chunk, 0, AV_INPUT_BUFFER_PADDING_SIZE);
        uint8_t *pd = NULL;
        int ps = 0;
        int used = av_parser_parse2(c->parser, c->dec, &pd, &ps, chunk ? c->pbuf : NULL, (int)chunk,
                                    AV_NOPTS_VALUE, AV_NOPTS_VALUE, 0);
        if (used < 0) return failf(c, "parsing", used);
        d += used;
        n -= (size_t)used;
        if (used == 0 && ps == 0 && chunk > 0) return failf(c, "parser made no progress", 0);
        if (ps > 0) {
            c->dpkt->data = pd;
            c->dpkt->size = ps;
            int rc = decode_packet(c, c->dpkt);
            c->dpkt->data = NULL;
            c->dpkt->size = 0;
            if (rc != 0) return -1;
        } else if (chunk == 0) {
            break; /* flushed */
        }
    }
    return 0;
}

/* Ogg (or anything else that needs a demuxer): decode the buffered input through avformat. */
static int run_demux(th_audio_conv *c)
{
    int rc = -1, ret;
    th_memio m;
    AVFormatContext *fc = NULL;
    AVIOContext *io = NULL;
    AVPacket *pkt = NULL;
    const AVCodec *codec = NULL;
    io = th_memio_open(&m, c->demux.data, c->demux.len, CONV_AVIO_BUF);
    if (io == NULL) {
        failf(c, "avio_alloc_context", AVERROR(ENOMEM));
        goto out;
    }
    fc = avformat_alloc_context();
    pkt = av_packet_alloc();
    if (fc == NULL || pkt == NULL) {
        failf(c, "alloc", AVERROR(ENOMEM));
        goto out;
    }
    fc->pb = io;
    fc->flags |= AVFMT_FLAG_CUSTOM_IO;
    /* the sniffed container only: probing would hand hostile bytes to every demuxer FFmpeg has */
    const AVInputFormat *ifmt =
        c->in_fmt == TH_FMT_OGG || c->in_fmt == TH_FMT_OPUS ? av_find_input_format("ogg") : NULL;
    if (ifmt == NULL) {
        failf(c, "no demuxer for this input", 0);
        goto out;
    }
    ret = avformat_open_input(&fc, NULL, ifmt, NULL); /* frees fc on failure */
    if (ret < 0) {
        failf(c, "reading the container", ret);
        goto out;
    }
    ret = avformat_find_stream_info(fc, NULL);
    if (ret < 0) {
        failf(c, "reading the container", ret);
        goto out;
    }
    int si = av_find_best_stream(fc, AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
    if (si < 0 || codec == NULL) {
        failf(c, "no audio stream", si < 0 ? si : 0);
        goto out;
    }
    c->dec = avcodec_alloc_context3(codec);
    c->dframe = av_frame_alloc();
    if (c->dec == NULL || c->dframe == NULL) {
        failf(c, "alloc", AVERROR(ENOMEM));
        goto out;
    }
    ret = avcodec_parameters_to_context(c->dec, fc->streams[si]->codecpar);
    if (ret < 0) {
        failf(c, "codec parameters", ret);
        goto out;
    }
    if (open_decoder(c) != 0) goto out;
    for (;;) {
        ret = av_read_frame(fc, pkt);
        if (ret == AVERROR_EOF) break;
        if (ret < 0) {
            if (c->decoded_any) break; /* a truncated stream: keep what was decoded */
            failf(c, "reading the container", ret);
            goto out;
        }
        int drc = pkt->stream_index == si ? decode_packet(c, pkt) : 0;
        av_packet_unref(pkt);
        if (drc != 0) goto out;
    }
    if (decode_packet(c, NULL) != 0) goto out;
    rc = 0;
out:
    av_packet_free(&pkt);
    avformat_close_input(&fc);
    th_memio_close(&io);
    return rc;
}

/* ---- format resolution ----------------------------------------------------------------------- */

static bool looks_like_text(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    if (i >= n || (p[i] != '{' && p[i] != '<' && p[i] != '[')) return false;
    size_t lim = n < 32 ? n : 32;
    if (lim < 8) return false;
    for (size_t k = 0; k < lim; k++)
        if (p[k] != '\t' && p[k] != '\r' && p[k] != '\n' && (p[k] < 0x20 || p[k] > 0x7E)) return false;
    return true;
}

/* Decides the input format from c->sniff (final: no more bytes are coming). 1 = decided, 0 = wait. */
static int resolve(th_audio_conv *c, bool final)
{
    const uint8_t *p = c->sniff.data;
    size_t n = c->sniff.len;
    bool more = false;
    th_fmt f = th_fmt_sniff_ex(p, n, true, &more);
    if (f == TH_FMT_NONE && !final && more && n < CONV_SNIFF_MAX) return 0;
    if (f == TH_FMT_NONE && final) f = th_fmt_sniff_ex(p, n, false, NULL);
    if (c->decl.fmt == TH_FMT_PCM && f != TH_FMT_WAV && f != TH_FMT_FLAC && f != TH_FMT_OGG &&
        f != TH_FMT_OPUS && !(f == TH_FMT_MP3 && n >= 3 && memcmp(p, "ID3", 3) == 0))
        f = TH_FMT_PCM; /* weak frame syncs do not override a declared PCM stream */
    if (f == TH_FMT_NONE && c->decl.fmt != TH_FMT_NONE && c->decl.fmt != TH_FMT_PCM &&
        c->decl.fmt != TH_FMT_WAV && n > 0) {
        /* Said to be a compressed format, yet it does not start like one: refuse rather than decode
         * noise out of whatever frame syncs turn up in it. */
        char msg[96];
        snprintf(msg, sizeof msg, "input does not look like %s",
                 c->decl.fmt == TH_FMT_OGG ? "ogg" : th_fmt_name(c->decl.fmt));
        return failf(c, msg, 0);
    }
    if (f == TH_FMT_NONE) f = c->decl.fmt != TH_FMT_NONE ? c->decl.fmt : TH_FMT_PCM;
    if (f == TH_FMT_MP3 && n >= 3 && memcmp(p, "ID3", 3) == 0) {
        if (n < 10 && !final) return 0;
        if (n >= 10) {
            c->skip = 10 + (((size_t)(p[6] & 0x7F) << 21) | ((size_t)(p[7] & 0x7F) << 14) |
                            ((size_t)(p[8] & 0x7F) << 7) | (size_t)(p[9] & 0x7F));
            if (p[5] & 0x10) c->skip += 10; /* footer */
        }
    }
    if (f == TH_FMT_PCM && c->decl.fmt == TH_FMT_NONE && looks_like_text(p, n))
        return failf(c, "input looks like text, not audio", 0);
    c->in_fmt = f;
    return 1;
}

static int start_input(th_audio_conv *c)
{
    th_fmt f = c->in_fmt;
    bool compressed_same = f == c->out.fmt && f != TH_FMT_PCM && f != TH_FMT_WAV && c->out.tempo == 1.0;
    if (compressed_same) {
        c->passthrough = true;
        c->in_kind = IN_COPY;
        return 0;
    }
    if (setup_output(c) != 0) return -1;
    switch (f) {
    case TH_FMT_PCM: {
        /* Headerless: the caller's rate/channels/sample (whatever fmt it declared), else s16 mono 24 kHz. */
        th_audio_spec s = c->decl;
        if (s.sample_rate <= 0) s.sample_rate = TH_PCM_DEFAULT_RATE;
        if (s.channels <= 0) s.channels = 1;
        if (th_sample_bytes(s.sample) == 0) s.sample = TH_SAMPLE_S16;
        if (s.sample_rate < 1000 || s.sample_rate > 768000 || s.channels > 32)
            return failf(c, "unsupported PCM spec", 0);
        s.fmt = TH_FMT_PCM;
        c->in_kind = IN_PCM;
        set_pcm_spec(c, &s);
        if (c->out.fmt == TH_FMT_PCM && c->raw_copy) c->passthrough = true;
        return 0;
    }
    case TH_FMT_WAV:
        c->in_kind = IN_WAV;
        c->wav = th_wav_reader_new(0);
        if (c->wav == NULL) return failf(c, "out of memory", 0);
        return 0;
    case TH_FMT_MP3:
    case TH_FMT_AAC:
    case TH_FMT_FLAC: {
        enum AVCodecID id = f == TH_FMT_MP3   ? AV_CODEC_ID_MP3
                            : f == TH_FMT_AAC ? AV_CODEC_ID_AAC
                                              : AV_CODEC_ID_FLAC;
        c->in_kind = IN_PARSED;
        if (setup_decoder(c, id) != 0 || open_decoder(c) != 0) return -1;
        c->parser = av_parser_init(id);
        c->pbuf = malloc(CONV_PARSE_CHUNK + AV_INPUT_BUFFER_PADDING_SIZE);
        if (c->parser == NULL || c->pbuf == NULL) return failf(c, "parser", AVERROR(ENOMEM));
        return 0;
    }
    default:
        c->in_kind = IN_DEMUX;
        th_buf_init(&c->demux, c->out.max_buffered ? c->out.max_buffered : TH_AUDIO_MAX_BUFFERED);
        return 0;
    }
}

static int feed(th_audio_conv *c, const uint8_t *d, size_t n)
{
    if (n == 0) return 0;
    c->in_bytes += n;
    switch (c->in_kind) {
    case IN_COPY:
        return out_append(c, d, n);
    case IN_PCM:
        return feed_pcm(c, d, n);
    case IN_WAV:
        return feed_wav(c, d, n);
    case IN_PARSED:
        return feed_parsed(c, d, n, false);
    default: {
        int rc = th_buf_append(&c->demux, d, n);
        if (rc == TH_BUF_EFULL) return failf(c, "container input past the buffered-audio cap", 0);
        if (rc != TH_BUF_OK) return failf(c, "out of memory", 0);
        return 0;
    }
    }
}

/* ---- public API -------------------------------------------------------------------------------- */

static bool rate_supported(const AVCodec *codec, int rate)
{
    if (codec->supported_samplerates == NULL) return true;
    for (const int *r = codec->supported_samplerates; *r != 0; r++)
        if (*r == rate) return true;
    return false;
}

th_audio_conv *th_audio_conv_new(const th_audio_spec *in, const th_audio_target *out, char *err,
                                 size_t errlen)
{
    pthread_once(&log_once, set_log_level);
    th_audio_conv *c = calloc(1, sizeof *c);
    if (c == NULL) {
        if (err && errlen) snprintf(err, errlen, "audio: out of memory");
        return NULL;
    }
    c->err = err;
    c->errlen = errlen;
    c->decl = in ? *in : (th_audio_spec){0};
    c->out = *out;
    th_buf_init(&c->sniff, CONV_SNIFF_MAX + CONV_PARSE_CHUNK);
    c->swr_in_fmt = AV_SAMPLE_FMT_NONE;
    if (c->out.sample_rate == 0) c->out.sample_rate = TH_PCM_DEFAULT_RATE;
    if (c->out.tempo == 0.0) c->out.tempo = 1.0;
    if (c->out.bitrate == 0) c->out.bitrate = default_bitrate(c->out.fmt);
    if (th_fmt_name(c->out.fmt) == NULL) {
        failf(c, "unsupported output format", 0);
        goto fail;
    }
    if (!(c->out.tempo >= 0.25 - 1e-9 && c->out.tempo <= 4.0 + 1e-9)) {
        failf(c, "tempo must be within 0.25..4.0", 0);
        goto fail;
    }
    if (c->out.sample_rate < 8000 || c->out.sample_rate > 192000) {
        failf(c, "unsupported output sample rate", 0);
        goto fail;
    }
    if (c->out.bitrate < 0 || c->out.bitrate > 1024000) {
        failf(c, "unsupported bitrate", 0);
        goto fail;
    }
    if (enc_name(c->out.fmt) != NULL) {
        const AVCodec *codec = find_encoder(c->out.fmt);
        if (codec == NULL) {
            failf(c, "encoder not available", 0);
            goto fail;
        }
        if (!rate_supported(codec, c->out.sample_rate)) {
            failf(c,
                  c->out.fmt == TH_FMT_OPUS ? "opus needs 8, 12, 16, 24 or 48 kHz"
                                            : "sample rate not supported by the encoder",
                  0);
            goto fail;
        }
    }
    c->state = ST_SNIFF;
    c->err = NULL;
    c->errlen = 0;
    return c;
fail:
    th_audio_conv_free(c);
    return NULL;
}

static void begin(th_audio_conv *c, th_buf *out, char *err, size_t errlen)
{
    c->cur = out;
    c->err = err;
    c->errlen = errlen;
}

static int end(th_audio_conv *c, int rc)
{
    c->cur = NULL;
    c->err = NULL;
    c->errlen = 0;
    return rc;
}

int th_audio_conv_push(th_audio_conv *c, const uint8_t *data, size_t len, th_buf *out, char *err,
                       size_t errlen)
{
    begin(c, out, err, errlen);
    if (c->state == ST_ERROR) return end(c, failf(c, "converter is in error", 0));
    if (c->state == ST_DONE) return end(c, failf(c, "push after finish", 0));
    if (c->state == ST_SNIFF && c->sniff.len == 0 && len > 0) {
        /* Most streams are decided by their first push: sniff the caller's bytes in place, so nothing
         * is copied or held back (the view is put back before anything else can see it). */
        th_buf saved = c->sniff;
        c->sniff.data = (uint8_t *)(uintptr_t)data;
        c->sniff.len = len;
        int rc = resolve(c, false);
        c->sniff = saved;
        if (rc < 0) return end(c, -1);
        if (rc == 1) {
            c->state = ST_RUN;
            if (start_input(c) != 0) return end(c, -1);
            return end(c, feed(c, data, len));
        }
    }
    if (c->state == ST_SNIFF) {
        int rc = th_buf_append(&c->sniff, data, len);
        if (rc != TH_BUF_OK) {
            /* Too much at once to hold: decide on what fits. */
            size_t room = CONV_SNIFF_MAX > c->sniff.len ? CONV_SNIFF_MAX - c->sniff.len : 0;
            if (th_buf_append(&c->sniff, data, room < len ? room : len) != TH_BUF_OK)
                return end(c, failf(c, "out of memory", 0));
            size_t took = room < len ? room : len;
            data += took;
            len -= took;
        } else {
            data += len;
            len = 0;
        }
        rc = resolve(c, false);
        if (rc < 0) return end(c, -1);
        if (rc == 0 && len == 0) return end(c, 0);
        if (rc == 0 && resolve(c, true) < 0) return end(c, -1);
        c->state = ST_RUN;
        if (start_input(c) != 0) return end(c, -1);
        rc = feed(c, c->sniff.data, c->sniff.len);
        th_buf_free(&c->sniff);
        if (rc != 0) return end(c, -1);
    }
    return end(c, feed(c, data, len));
}

static int finish_encoder(th_audio_conv *c)
{
    int ret;
    int left = av_audio_fifo_size(c->fifo);
    if (left > 0 && encode_frame(c, left) != 0) return -1;
    ret = avcodec_send_frame(c->enc, NULL);
    if (ret < 0 && ret != AVERROR_EOF) return failf(c, "encoder flush", ret);
    if (drain_packets(c) != 0) return -1;
    ret = av_write_trailer(c->oc);
    if (ret < 0) return failf(c, "writing the container trailer", ret);
    avio_flush(c->avio);
    if (c->avio->error < 0) return failf(c, "writing output", c->avio->error);
    return 0;
}

int th_audio_conv_finish(th_audio_conv *c, th_buf *out, char *err, size_t errlen)
{
    begin(c, out, err, errlen);
    if (c->state == ST_ERROR) return end(c, failf(c, "converter is in error", 0));
    if (c->state == ST_DONE) return end(c, 0);
    if (c->state == ST_SNIFF) {
        if (resolve(c, true) < 0) return end(c, -1);
        c->state = ST_RUN;
        if (start_input(c) != 0) return end(c, -1);
        int rc = feed(c, c->sniff.data, c->sniff.len);
        th_buf_free(&c->sniff);
        if (rc != 0) return end(c, -1);
    }
    if (c->in_kind == IN_COPY) {
        c->state = ST_DONE;
        return end(c, 0);
    }
    switch (c->in_kind) {
    case IN_WAV:
        if (c->in_bytes > 0 && th_wav_reader_spec(c->wav) == NULL)
            return end(c, failf(c, "wav: truncated header", 0));
        break;
    case IN_PARSED:
        if (feed_parsed(c, NULL, 0, true) != 0 || decode_packet(c, NULL) != 0) return end(c, -1);
        break;
    case IN_DEMUX:
        if (c->demux.len > 0 && run_demux(c) != 0) return end(c, -1);
        th_buf_free(&c->demux);
        break;
    default:
        break;
    }
    if ((c->in_kind == IN_PARSED || c->in_kind == IN_DEMUX) && c->in_bytes > 0 && !c->decoded_any)
        return end(c, failf(c, "no audio could be decoded from the input", 0));
    if (flush_swr(c) != 0) return end(c, -1);
    if (c->graph != NULL) {
        int ret = av_buffersrc_add_frame(c->fsrc, NULL);
        if (ret < 0) return end(c, failf(c, "atempo flush", ret));
        if (drain_filter(c) != 0) return end(c, -1);
    }
    if (c->enc != NULL && finish_encoder(c) != 0) return end(c, -1);
    c->state = ST_DONE;
    return end(c, 0);
}

int th_audio_conv_pass(th_audio_conv *c, const uint8_t *data, size_t len, char *err, size_t errlen)
{
    if (c->state == ST_RUN && c->in_kind == IN_COPY) {
        c->in_bytes += len;
        return 1;
    }
    if (c->state != ST_SNIFF || c->sniff.len != 0 || len == 0 || !th_audio_conv_light(c)) return 0;
    /* Sniff the caller's bytes in place, as th_audio_conv_push does. */
    begin(c, NULL, err, errlen);
    th_buf saved = c->sniff;
    c->sniff.data = (uint8_t *)(uintptr_t)data;
    c->sniff.len = len;
    int rc = resolve(c, false);
    c->sniff = saved;
    if (rc < 0) return end(c, -1);
    if (rc == 0) return end(c, 0);
    bool same =
        c->in_fmt == c->out.fmt && c->in_fmt != TH_FMT_PCM && c->in_fmt != TH_FMT_WAV && c->out.tempo == 1.0;
    if (!same) return end(c, 0); /* still sniffing: th_audio_conv_push decides again on these bytes */
    c->state = ST_RUN;
    if (start_input(c) != 0) return end(c, -1);
    c->in_bytes += len;
    return end(c, 1);
}

bool th_audio_conv_light(const th_audio_conv *c)
{
    if (c->passthrough) return true;
    if (c->state != ST_SNIFF || c->out.tempo != 1.0) return false;
    /* undecided, but declared as the very format asked for: sniffing will almost surely confirm it and
     * the bytes will be copied, so there is nothing worth a thread hop */
    th_fmt d = c->decl.fmt;
    return d == c->out.fmt && d != TH_FMT_NONE && d != TH_FMT_PCM && d != TH_FMT_WAV;
}

bool th_audio_conv_passthrough(const th_audio_conv *c)
{
    return c->passthrough;
}

uint64_t th_audio_conv_samples_out(const th_audio_conv *c)
{
    return c->samples_out;
}

void th_audio_conv_free(th_audio_conv *c)
{
    if (c == NULL) return;
    th_buf_free(&c->sniff);
    th_buf_free(&c->demux);
    th_wav_reader_free(c->wav);
    av_parser_close(c->parser);
    avcodec_free_context(&c->dec);
    av_packet_free(&c->dpkt);
    av_frame_free(&c->dframe);
    free(c->pbuf);
    swr_free(&c->swr);
    av_channel_layout_uninit(&c->swr_in_layout);
    free(c->rbuf);
    avfilter_graph_free(&c->graph);
    if (c->tframe != NULL) c->tframe->data[0] = NULL;
    av_frame_free(&c->tframe);
    av_frame_free(&c->fframe);
    avcodec_free_context(&c->enc);
    av_audio_fifo_free(c->fifo);
    av_frame_free(&c->eframe);
    av_packet_free(&c->epkt);
    if (c->oc != NULL) avformat_free_context(c->oc);
    if (c->avio != NULL) {
        av_freep(&c->avio->buffer);
        avio_context_free(&c->avio);
    }
    free(c);
}

int th_audio_convert(const th_audio_spec *in, const uint8_t *data, size_t len, const th_audio_target *out,
                     th_buf *result, char *err, size_t errlen)
{
    int rc = -1;
    th_audio_conv *c = th_audio_conv_new(in, out, err, errlen);
    if (c == NULL) goto out;
    if (th_audio_conv_push(c, data, len, result, err, errlen) != 0) goto out;
    if (th_audio_conv_finish(c, result, err, errlen) != 0) goto out;
    rc = 0;
out:
    th_audio_conv_free(c);
    return rc;
}

/*
 * emoedge_frame.c - reference encoder of the EmoEdge serial frame protocol (see emoedge_frame.h).
 *
 * The frame is COBS-encoded on the fly while the CRC is computed, straight into the caller's
 * buffer: no second buffer, no malloc. The CRC uses a 16-entry table (64 bytes of flash).
 */
#include "emoedge_frame.h"

#include <string.h>

static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

static uint32_t crc_update(uint32_t crc, uint8_t byte) {
    crc ^= byte;
    crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    return crc;
}

uint32_t emoedge_crc32(const uint8_t *data, size_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < len; i++) crc = crc_update(crc, data[i]);
    return crc ^ 0xFFFFFFFFu;
}

/* COBS writer: the code byte of the open block is patched when the block closes. A block that
 * closes because it reached 254 data bytes (code 0xFF) opens the next block only when another byte
 * comes, so the output matches the reference COBS (no trailing 0x01 after a full block). */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;
    size_t code_pos;
    uint8_t code;
    uint8_t open;
    uint8_t ok;
    uint32_t crc;
} writer_t;

static void w_begin(writer_t *w, uint8_t *out, size_t cap) {
    w->out = out;
    w->cap = cap;
    w->ok = cap >= 3u;
    if (w->ok) out[0] = 0x00u; /* leading delimiter: line noise before the frame cannot merge into it */
    w->code_pos = 1;
    w->pos = 2;
    w->code = 1;
    w->open = 1;
    w->crc = 0xFFFFFFFFu;
}

static void w_cobs(writer_t *w, uint8_t b) {
    if (!w->ok) return;
    if (!w->open) {
        if (w->pos >= w->cap) { w->ok = 0; return; }
        w->code_pos = w->pos++;
        w->code = 1;
        w->open = 1;
    }
    if (b == 0) {
        if (w->pos >= w->cap) { w->ok = 0; return; }
        w->out[w->code_pos] = w->code;
        w->code_pos = w->pos++;
        w->code = 1;
    } else {
        if (w->pos >= w->cap) { w->ok = 0; return; }
        w->out[w->pos++] = b;
        if (++w->code == 0xFFu) {
            w->out[w->code_pos] = 0xFFu;
            w->open = 0;
        }
    }
}

static void w_byte(writer_t *w, uint8_t b) {
    w->crc = crc_update(w->crc, b);
    w_cobs(w, b);
}

static void w_u16(writer_t *w, uint16_t v) {
    w_byte(w, (uint8_t)(v & 0xFFu));
    w_byte(w, (uint8_t)(v >> 8));
}

static void w_u32(writer_t *w, uint32_t v) {
    w_byte(w, (uint8_t)(v & 0xFFu));
    w_byte(w, (uint8_t)((v >> 8) & 0xFFu));
    w_byte(w, (uint8_t)((v >> 16) & 0xFFu));
    w_byte(w, (uint8_t)(v >> 24));
}

static void w_f32(writer_t *w, float f) {
    uint32_t v;
    memcpy(&v, &f, sizeof v); /* IEEE 754 on every target this runs on */
    w_u32(w, v);
}

static void w_bytes(writer_t *w, const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) w_byte(w, p[i]);
}

static void w_header(writer_t *w, emoedge_encoder_t *enc, uint8_t type, uint32_t t_us, uint16_t payload_len) {
    w_byte(w, EMOEDGE_MAGIC);
    w_byte(w, EMOEDGE_VERSION);
    w_byte(w, type);
    w_byte(w, enc->sensor);
    w_byte(w, enc->flags);
    w_byte(w, 0);
    w_u16(w, enc->seq);
    w_u32(w, t_us);
    w_u16(w, payload_len);
}

static size_t w_finish(writer_t *w, emoedge_encoder_t *enc) {
    uint32_t crc = w->crc ^ 0xFFFFFFFFu;
    w_cobs(w, (uint8_t)(crc & 0xFFu));
    w_cobs(w, (uint8_t)((crc >> 8) & 0xFFu));
    w_cobs(w, (uint8_t)((crc >> 16) & 0xFFu));
    w_cobs(w, (uint8_t)(crc >> 24));
    if (!w->ok) return 0;
    if (w->open) w->out[w->code_pos] = w->code;
    if (w->pos >= w->cap) return 0;
    w->out[w->pos++] = 0x00u; /* trailing delimiter */
    enc->seq = (uint16_t)(enc->seq + 1u);
    enc->flags = 0;
    return w->pos;
}

void emoedge_encoder_init(emoedge_encoder_t *enc, uint8_t sensor) {
    enc->seq = 0;
    enc->sensor = sensor;
    enc->flags = EMOEDGE_FLAG_FIRST;
}

void emoedge_mark_overflow(emoedge_encoder_t *enc) { enc->flags |= EMOEDGE_FLAG_OVERFLOW; }

size_t emoedge_encode_frame(emoedge_encoder_t *enc, uint8_t type, uint32_t t_us, const uint8_t *payload,
                            size_t payload_len, uint8_t *out, size_t out_cap) {
    writer_t w;
    if (payload_len > EMOEDGE_MAX_PAYLOAD) return 0;
    w_begin(&w, out, out_cap);
    w_header(&w, enc, type, t_us, (uint16_t)payload_len);
    w_bytes(&w, payload, payload_len);
    return w_finish(&w, enc);
}

static size_t format_size(uint8_t format) {
    switch (format) {
        case EMOEDGE_FMT_INT16: return 2u;
        case EMOEDGE_FMT_INT24: return 3u;
        case EMOEDGE_FMT_FLOAT32: return 4u;
        default: return 0u;
    }
}

size_t emoedge_encode_eeg(emoedge_encoder_t *enc, uint32_t t_us, uint8_t format, const void *samples,
                          uint8_t channels, uint16_t n_samples, float sample_rate, float scale_uv,
                          uint8_t *out, size_t out_cap) {
    writer_t w;
    size_t size = format_size(format);
    size_t count = (size_t)channels * n_samples;
    size_t payload_len = 12u + count * size;
    size_t i;
    if (size == 0u || channels == 0u || payload_len > EMOEDGE_MAX_PAYLOAD) return 0;
    w_begin(&w, out, out_cap);
    w_header(&w, enc, EMOEDGE_EEG, t_us, (uint16_t)payload_len);
    w_byte(&w, format);
    w_byte(&w, channels);
    w_u16(&w, n_samples);
    w_f32(&w, sample_rate);
    w_f32(&w, scale_uv);
    for (i = 0; i < count && w.ok; i++) {
        if (format == EMOEDGE_FMT_INT16) {
            w_u16(&w, (uint16_t)((const int16_t *)samples)[i]);
        } else if (format == EMOEDGE_FMT_INT24) {
            int32_t v = ((const int32_t *)samples)[i];
            uint32_t u;
            if (v > 8388607) v = 8388607;
            if (v < -8388608) v = -8388608;
            u = (uint32_t)v;
            w_byte(&w, (uint8_t)(u & 0xFFu));
            w_byte(&w, (uint8_t)((u >> 8) & 0xFFu));
            w_byte(&w, (uint8_t)((u >> 16) & 0xFFu));
        } else {
            w_f32(&w, ((const float *)samples)[i]);
        }
    }
    return w_finish(&w, enc);
}

size_t emoedge_encode_audio(emoedge_encoder_t *enc, uint32_t t_us, const int16_t *pcm, uint16_t n_samples,
                            uint32_t sample_rate, uint8_t *out, size_t out_cap) {
    writer_t w;
    size_t payload_len = 4u + 2u * (size_t)n_samples;
    uint16_t i;
    if (payload_len > EMOEDGE_MAX_PAYLOAD) return 0;
    w_begin(&w, out, out_cap);
    w_header(&w, enc, EMOEDGE_AUDIO, t_us, (uint16_t)payload_len);
    w_u32(&w, sample_rate);
    for (i = 0; i < n_samples && w.ok; i++) w_u16(&w, (uint16_t)pcm[i]);
    return w_finish(&w, enc);
}

size_t emoedge_encode_info(emoedge_encoder_t *enc, uint32_t t_us, uint8_t format, uint8_t channels,
                           float sample_rate, float scale_uv, const char *name, const char *channel_names,
                           uint8_t *out, size_t out_cap) {
    writer_t w;
    size_t name_len = name ? strlen(name) : 0u;
    size_t names_len = channel_names ? strlen(channel_names) : 0u;
    size_t payload_len;
    if (name_len > 255u) name_len = 255u;
    payload_len = 13u + name_len + names_len;
    if (payload_len > EMOEDGE_MAX_PAYLOAD) return 0;
    w_begin(&w, out, out_cap);
    w_header(&w, enc, EMOEDGE_INFO, t_us, (uint16_t)payload_len);
    w_byte(&w, format);
    w_byte(&w, channels);
    w_u16(&w, 0);
    w_f32(&w, sample_rate);
    w_f32(&w, scale_uv);
    w_byte(&w, (uint8_t)name_len);
    w_bytes(&w, (const uint8_t *)name, name_len);
    w_bytes(&w, (const uint8_t *)channel_names, names_len);
    return w_finish(&w, enc);
}

size_t emoedge_encode_heartbeat(emoedge_encoder_t *enc, uint32_t t_us, uint32_t board_dropped, uint8_t *out,
                                size_t out_cap) {
    writer_t w;
    w_begin(&w, out, out_cap);
    w_header(&w, enc, EMOEDGE_HEARTBEAT, t_us, 4u);
    w_u32(&w, board_dropped);
    return w_finish(&w, enc);
}

size_t emoedge_encode_log(emoedge_encoder_t *enc, uint32_t t_us, uint8_t level, const char *text, uint8_t *out,
                          size_t out_cap) {
    writer_t w;
    size_t len = text ? strlen(text) : 0u;
    if (len > EMOEDGE_MAX_PAYLOAD - 1u) len = EMOEDGE_MAX_PAYLOAD - 1u;
    w_begin(&w, out, out_cap);
    w_header(&w, enc, EMOEDGE_LOG, t_us, (uint16_t)(len + 1u));
    w_byte(&w, level);
    w_bytes(&w, (const uint8_t *)text, len);
    return w_finish(&w, enc);
}

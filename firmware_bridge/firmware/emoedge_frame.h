/*
 * emoedge_frame.h - reference encoder of the EmoEdge serial frame protocol, version 1.0.
 *
 * C99, no malloc, no stdio: a board fills a caller-owned buffer with one complete wire frame
 * (0x00, COBS-encoded header | payload | CRC-32, 0x00) and writes it to its UART/USB.
 * The spec is firmware_bridge/PROTOCOL.md; the Python decoder is held to this file by the test
 * vectors that test_vectors.c writes.
 */
#ifndef EMOEDGE_FRAME_H
#define EMOEDGE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EMOEDGE_MAGIC 0xEEu
#define EMOEDGE_VERSION_MAJOR 1u
#define EMOEDGE_VERSION_MINOR 0u
#define EMOEDGE_VERSION ((EMOEDGE_VERSION_MAJOR << 4) | EMOEDGE_VERSION_MINOR)

/* frame types */
#define EMOEDGE_INFO 0x01u
#define EMOEDGE_EEG 0x02u
#define EMOEDGE_AUDIO 0x03u
#define EMOEDGE_HEARTBEAT 0x04u
#define EMOEDGE_LOG 0x05u

/* sensor kinds */
#define EMOEDGE_SENSOR_NONE 0u
#define EMOEDGE_SENSOR_EEG 1u
#define EMOEDGE_SENSOR_AUDIO 2u
#define EMOEDGE_SENSOR_IMU 3u
#define EMOEDGE_SENSOR_OTHER 255u

/* header flags */
#define EMOEDGE_FLAG_FIRST 0x01u    /* set by the encoder on its first frame */
#define EMOEDGE_FLAG_OVERFLOW 0x02u /* the board dropped samples before this frame */

/* EEG sample formats */
#define EMOEDGE_FMT_INT16 1u
#define EMOEDGE_FMT_INT24 2u /* passed in as int32_t, sent as 3 bytes little-endian */
#define EMOEDGE_FMT_FLOAT32 3u

#define EMOEDGE_HEADER_SIZE 14u
#define EMOEDGE_CRC_SIZE 4u
#define EMOEDGE_MAX_PAYLOAD 4096u
/* bytes needed in the output buffer for a payload of n bytes (COBS overhead and both delimiters) */
#define EMOEDGE_ENCODED_SIZE(n) \
    ((EMOEDGE_HEADER_SIZE + (n) + EMOEDGE_CRC_SIZE) + (EMOEDGE_HEADER_SIZE + (n) + EMOEDGE_CRC_SIZE) / 254u + 3u)

typedef struct {
    uint16_t seq;  /* sequence number of the next frame (wraps at 65536) */
    uint8_t sensor; /* EMOEDGE_SENSOR_* */
    uint8_t flags;  /* flags of the next frame; FIRST after init */
} emoedge_encoder_t;

void emoedge_encoder_init(emoedge_encoder_t *enc, uint8_t sensor);

/* Flag the next frame: samples were dropped before it (the board's buffer overflowed). */
void emoedge_mark_overflow(emoedge_encoder_t *enc);

/* Each encoder returns the number of bytes written to out (both delimiters included), or 0 if out_cap is
 * too small or the payload would exceed EMOEDGE_MAX_PAYLOAD (the sequence number is then unchanged). */

/* Any frame from a ready payload. */
size_t emoedge_encode_frame(emoedge_encoder_t *enc, uint8_t type, uint32_t t_us, const uint8_t *payload,
                            size_t payload_len, uint8_t *out, size_t out_cap);

/* EEG block. samples: n_samples x channels values, sample-major (ch0 ch1 ... chN, ch0 ...), of type
 * int16_t (INT16), int32_t (INT24) or float (FLOAT32). microvolts = value x scale_uv. */
size_t emoedge_encode_eeg(emoedge_encoder_t *enc, uint32_t t_us, uint8_t format, const void *samples,
                          uint8_t channels, uint16_t n_samples, float sample_rate, float scale_uv,
                          uint8_t *out, size_t out_cap);

/* Audio block: PCM16 mono. */
size_t emoedge_encode_audio(emoedge_encoder_t *enc, uint32_t t_us, const int16_t *pcm, uint16_t n_samples,
                            uint32_t sample_rate, uint8_t *out, size_t out_cap);

/* Device info: name, and channel names joined by commas ("Fp1,AF3,...") or NULL. */
size_t emoedge_encode_info(emoedge_encoder_t *enc, uint32_t t_us, uint8_t format, uint8_t channels,
                           float sample_rate, float scale_uv, const char *name, const char *channel_names,
                           uint8_t *out, size_t out_cap);

size_t emoedge_encode_heartbeat(emoedge_encoder_t *enc, uint32_t t_us, uint32_t board_dropped, uint8_t *out,
                                size_t out_cap);

/* level: 0 debug, 1 info, 2 warning, 3 error */
size_t emoedge_encode_log(emoedge_encoder_t *enc, uint32_t t_us, uint8_t level, const char *text, uint8_t *out,
                          size_t out_cap);

/* CRC-32/ISO-HDLC (zlib's crc32), exposed for tests. */
uint32_t emoedge_crc32(const uint8_t *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* EMOEDGE_FRAME_H */

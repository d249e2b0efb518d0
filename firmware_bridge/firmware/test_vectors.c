/*
 * test_vectors.c - host program that runs the reference encoder on fixed inputs and prints, as JSON,
 * each input beside the exact bytes it produced. The Python tests decode every vector and re-encode
 * every input, so both sides are held to one format. Build and run:
 *     gcc -std=c99 -Wall -Wextra -Werror -pedantic -O2 emoedge_frame.c test_vectors.c -o test_vectors
 *     ./test_vectors > test_vectors.json
 */
#include <stdio.h>
#include <string.h>

#include "emoedge_frame.h"

static uint8_t buf[EMOEDGE_ENCODED_SIZE(EMOEDGE_MAX_PAYLOAD)];
static int first_vector = 1;

static void begin(const char *name, const char *type, const emoedge_encoder_t *enc, uint32_t t_us) {
    printf("%s\n    {\"name\": \"%s\", \"type\": \"%s\", \"sensor\": %u, \"seq\": %u, \"flags\": %u, \"t_us\": %lu",
           first_vector ? "" : ",", name, type, (unsigned)enc->sensor, (unsigned)enc->seq, (unsigned)enc->flags,
           (unsigned long)t_us);
    first_vector = 0;
}

static void end(size_t n) {
    size_t i;
    printf(", \"hex\": \"");
    for (i = 0; i < n; i++) printf("%02x", buf[i]);
    printf("\"}");
}

static void json_string(const char *key, const char *s) {
    printf(", \"%s\": \"", key);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

static void eeg_i16(emoedge_encoder_t *enc, const char *name, uint32_t t_us, const int16_t *v, uint8_t ch,
                    uint16_t n, float rate, float scale) {
    size_t i, len;
    begin(name, "eeg", enc, t_us);
    printf(", \"format\": 1, \"channels\": %u, \"samples\": %u, \"sample_rate\": %.9g, \"scale\": %.9g, \"values\": [",
           (unsigned)ch, (unsigned)n, (double)rate, (double)scale);
    for (i = 0; i < (size_t)ch * n; i++) printf("%s%d", i ? ", " : "", (int)v[i]);
    printf("]");
    len = emoedge_encode_eeg(enc, t_us, EMOEDGE_FMT_INT16, v, ch, n, rate, scale, buf, sizeof buf);
    end(len);
}

static void eeg_i24(emoedge_encoder_t *enc, const char *name, uint32_t t_us, const int32_t *v, uint8_t ch,
                    uint16_t n, float rate, float scale) {
    size_t i, len;
    begin(name, "eeg", enc, t_us);
    printf(", \"format\": 2, \"channels\": %u, \"samples\": %u, \"sample_rate\": %.9g, \"scale\": %.9g, \"values\": [",
           (unsigned)ch, (unsigned)n, (double)rate, (double)scale);
    for (i = 0; i < (size_t)ch * n; i++) printf("%s%ld", i ? ", " : "", (long)v[i]);
    printf("]");
    len = emoedge_encode_eeg(enc, t_us, EMOEDGE_FMT_INT24, v, ch, n, rate, scale, buf, sizeof buf);
    end(len);
}

static void eeg_f32(emoedge_encoder_t *enc, const char *name, uint32_t t_us, const float *v, uint8_t ch,
                    uint16_t n, float rate) {
    size_t i, len;
    begin(name, "eeg", enc, t_us);
    printf(", \"format\": 3, \"channels\": %u, \"samples\": %u, \"sample_rate\": %.9g, \"scale\": 1, \"values\": [",
           (unsigned)ch, (unsigned)n, (double)rate);
    for (i = 0; i < (size_t)ch * n; i++) printf("%s%.9g", i ? ", " : "", (double)v[i]);
    printf("]");
    len = emoedge_encode_eeg(enc, t_us, EMOEDGE_FMT_FLOAT32, v, ch, n, rate, 1.0f, buf, sizeof buf);
    end(len);
}

static void audio(emoedge_encoder_t *enc, const char *name, uint32_t t_us, const int16_t *pcm, uint16_t n,
                  uint32_t rate) {
    size_t i, len;
    begin(name, "audio", enc, t_us);
    printf(", \"sample_rate\": %lu, \"values\": [", (unsigned long)rate);
    for (i = 0; i < n; i++) printf("%s%d", i ? ", " : "", (int)pcm[i]);
    printf("]");
    len = emoedge_encode_audio(enc, t_us, pcm, n, rate, buf, sizeof buf);
    end(len);
}

static void info(emoedge_encoder_t *enc, const char *vname, uint32_t t_us, uint8_t format, uint8_t ch, float rate,
                 float scale, const char *name, const char *names) {
    size_t len;
    begin(vname, "info", enc, t_us);
    printf(", \"format\": %u, \"channels\": %u, \"sample_rate\": %.9g, \"scale\": %.9g", (unsigned)format,
           (unsigned)ch, (double)rate, (double)scale);
    json_string("device", name);
    json_string("channel_names", names);
    len = emoedge_encode_info(enc, t_us, format, ch, rate, scale, name, names, buf, sizeof buf);
    end(len);
}

static void heartbeat(emoedge_encoder_t *enc, const char *name, uint32_t t_us, uint32_t dropped) {
    size_t len;
    begin(name, "heartbeat", enc, t_us);
    printf(", \"board_dropped\": %lu", (unsigned long)dropped);
    len = emoedge_encode_heartbeat(enc, t_us, dropped, buf, sizeof buf);
    end(len);
}

static void logtext(emoedge_encoder_t *enc, const char *name, uint32_t t_us, uint8_t level, const char *text) {
    size_t len;
    begin(name, "log", enc, t_us);
    printf(", \"level\": %u", (unsigned)level);
    json_string("text", text);
    len = emoedge_encode_log(enc, t_us, level, text, buf, sizeof buf);
    end(len);
}

int main(void) {
    static const char deap[] =
        "Fp1,AF3,F3,F7,FC5,FC1,C3,T7,CP5,CP1,P3,P7,PO3,O1,Oz,Pz,Fp2,AF4,Fz,F4,F8,FC6,FC2,Cz,C4,T8,CP6,CP2,P4,P8,PO4,O2";
    static const int16_t i16[] = {0, 1, -1, 32767, -32768, 256, 255, -256, 1000, -1000, 0, 0};
    static const int32_t i24[] = {0, 1, -1, 8388607, -8388608, 9000000, -9000000, 65536, 123456, -123456};
    static const float f32[] = {0.0f, -1.5f, 3.14159274f, 1e-7f, -250.25f, 1e6f};
    static const int16_t pcm[] = {0, 100, -100, 32767, -32768, 1, -1, 0};
    static int16_t zeros[32 * 4];
    static int32_t ramp[32 * 8];
    static char text[400];
    emoedge_encoder_t enc;
    uint8_t tiny[8];
    size_t i;

    printf("{\"crc32_check\": \"%08lx\", \"version\": %u, \"vectors\": [", (unsigned long)emoedge_crc32((const uint8_t *)"123456789", 9),
           (unsigned)EMOEDGE_VERSION);

    emoedge_encoder_init(&enc, EMOEDGE_SENSOR_EEG);
    heartbeat(&enc, "first heartbeat", 0u, 0u);
    info(&enc, "info 32 channels DEAP", 1000u, EMOEDGE_FMT_INT24, 32, 128.0f, 0.0223517418f, "emoedge-sim", deap);
    eeg_i16(&enc, "eeg int16 4x3", 2000u, i16, 4, 3, 128.0f, 0.5f);
    eeg_i24(&enc, "eeg int24 2x5 with clipping", 3000u, i24, 2, 5, 250.0f, 0.0223517418f);
    eeg_f32(&enc, "eeg float32 3x2", 4000u, f32, 3, 2, 512.0f);
    eeg_i16(&enc, "eeg int16 all zeros", 5000u, zeros, 32, 4, 128.0f, 0.1f);
    for (i = 0; i < sizeof ramp / sizeof ramp[0]; i++) ramp[i] = (int32_t)(i * 32771u) - 4000000;
    eeg_i24(&enc, "eeg int24 32x8", 6000u, ramp, 32, 8, 128.0f, 0.0223517418f);
    heartbeat(&enc, "heartbeat with drops", 7000u, 70000u);
    logtext(&enc, "log", 8000u, 2, "battery low: 3.41 V");
    emoedge_mark_overflow(&enc);
    heartbeat(&enc, "overflow flag", 9000u, 70001u);
    /* runs of nonzero bytes around the 254-byte COBS block boundary */
    for (i = 240; i < 262; i++) {
        char vname[32];
        memset(text, 'A' + (int)(i % 26u), i);
        text[i] = '\0';
        sprintf(vname, "log %u bytes", (unsigned)i);
        logtext(&enc, vname, 10000u + (uint32_t)i, 1, text);
    }
    enc.seq = 65535u;
    heartbeat(&enc, "sequence 65535", 0xFFFFFFF0u, 1u);
    heartbeat(&enc, "sequence wraps, clock wraps", 0x00000010u, 1u);

    emoedge_encoder_init(&enc, EMOEDGE_SENSOR_AUDIO);
    audio(&enc, "audio 8 samples", 123456789u, pcm, 8, 16000u);
    for (i = 0; i < 32 * 4; i++) zeros[i] = (int16_t)((int)i * 517 - 30000);
    audio(&enc, "audio 128 samples", 123466789u, zeros, 128, 16000u);

    printf("\n], \"rejects\": {\"buffer_too_small\": %lu, \"payload_too_large\": %lu, \"bad_format\": %lu, \"seq_after_rejects\": %u}}\n",
           (unsigned long)emoedge_encode_heartbeat(&enc, 0u, 0u, tiny, sizeof tiny),
           (unsigned long)emoedge_encode_audio(&enc, 0u, zeros, 2100u, 16000u, buf, sizeof buf),
           (unsigned long)emoedge_encode_eeg(&enc, 0u, 9u, ramp, 1, 1, 1.0f, 1.0f, buf, sizeof buf),
           (unsigned)enc.seq);
    return 0;
}

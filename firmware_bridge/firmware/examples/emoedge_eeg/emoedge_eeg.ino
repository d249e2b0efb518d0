// emoedge_eeg.ino - streams an 8-channel EEG front end to EmoEdge over USB serial.
//
// Copy emoedge_frame.h and emoedge_frame.c next to this sketch (Arduino builds every .c file of the
// sketch folder). Replace read_adc() with your ADC driver (ADS1299, ADS1298, ...). Check the stream
// on the host with:   emoedge listen /dev/ttyACM0
#include <Arduino.h>

extern "C" {
#include "emoedge_frame.h"
}

#define CHANNELS 8
#define RATE_HZ 250
#define BLOCK 10                      // samples per frame: 25 frames a second
#define SCALE_UV 0.0223517418f        // ADS1299 at gain 24: 4.5 V / 24 / 2^23 per count

static emoedge_encoder_t enc;
static int32_t block[BLOCK * CHANNELS];  // sample-major: ch0..ch7 of sample 0, then of sample 1, ...
static uint8_t frame[EMOEDGE_ENCODED_SIZE(12 + BLOCK * CHANNELS * 3)];
static uint16_t filled = 0;
static uint32_t block_start_us = 0;
static uint32_t next_sample_us = 0;
static uint32_t last_info_ms = 0;
static uint32_t dropped = 0;

static int32_t read_adc(uint8_t channel) {
  // placeholder: a 10 Hz sine of about 20 uV, so the stream looks alive without a front end
  float t = micros() * 1e-6f;
  return (int32_t)(20.0f / SCALE_UV * sinf(6.2831853f * (10.0f * t + channel * 0.1f)));
}

static void send(size_t n) {
  if (n == 0) return;
  if ((size_t)Serial.availableForWrite() < n && Serial.availableForWrite() > 0) {
    // the host is not keeping up: drop this block, and say so in the next frame
    dropped += BLOCK;
    emoedge_mark_overflow(&enc);
    return;
  }
  Serial.write(frame, n);
}

static void send_info(void) {
  size_t n = emoedge_encode_info(&enc, micros(), EMOEDGE_FMT_INT24, CHANNELS, RATE_HZ, SCALE_UV, "emoedge-eeg-8",
                                 "Fp1,Fp2,F3,F4,C3,C4,O1,O2", frame, sizeof frame);
  Serial.write(frame, n);
}

void setup() {
  Serial.begin(921600);
  emoedge_encoder_init(&enc, EMOEDGE_SENSOR_EEG);
  send_info();
  next_sample_us = micros();
}

void loop() {
  uint32_t now = micros();
  if ((int32_t)(now - next_sample_us) >= 0) {
    next_sample_us += 1000000UL / RATE_HZ;
    if (filled == 0) block_start_us = now;  // the frame's timestamp is its first sample's
    for (uint8_t c = 0; c < CHANNELS; c++) block[filled * CHANNELS + c] = read_adc(c);
    if (++filled == BLOCK) {
      send(emoedge_encode_eeg(&enc, block_start_us, EMOEDGE_FMT_INT24, block, CHANNELS, BLOCK, RATE_HZ, SCALE_UV,
                              frame, sizeof frame));
      filled = 0;
    }
  }
  if (millis() - last_info_ms >= 2000) {  // info for hosts that attach late, heartbeat with drop count
    last_info_ms = millis();
    send_info();
    send(emoedge_encode_heartbeat(&enc, micros(), dropped, frame, sizeof frame));
  }
}

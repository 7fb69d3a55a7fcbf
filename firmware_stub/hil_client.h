/*
 * hil_client.h - C99 reference client of the eis-hil binary protocol, version 1.
 *
 * One header, one source file, no heap, no global mutable state, no dependency beyond the C99 library
 * (<stdint.h>, <stddef.h>, <string.h>). Normative text: protocol/SPEC.md; golden vectors:
 * tests/vectors/vectors.json (the tests in firmware_stub/tests decode and re-encode every one of them).
 *
 * Conventions that hold for every function below:
 *   - Ownership: every buffer and struct is owned by the caller. The library keeps no pointer to caller
 *     memory after a call returns, and allocates nothing.
 *   - Re-entrancy: all state lives in the objects passed in. Functions are re-entrant and thread-safe
 *     across distinct objects; one hil_decoder_t must not be used by two threads at once.
 *   - Cost: given as worst case in the comment of each function. "CRC(n)" is one CRC over n bytes with
 *     the 16-entry nibble tables used here: two table look-ups per byte, 96 bytes of const tables.
 *   - Wire format: little-endian. Floats are IEEE-754 binary32; the host must use binary32 for `float`
 *     (every common MCU and hosted platform does), with any byte order.
 */
#ifndef HIL_CLIENT_H
#define HIL_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- configuration ------------------------------------------------------------------------------- */

/* Largest payload this receiver accepts (bytes). A frame announcing more is reported as HIL_EV_OVERSIZED
 * from its header alone and nothing of its payload is buffered. The protocol maximum, and the default, is
 * 4096; a smaller value shrinks hil_decoder_t and hil_event_t (see the array limits below). With 512
 * (HIL_HELLO_PAYLOAD_MAX) or more the client connects to every conforming server, whose SERVER_HELLO is at
 * most that long; it must then subscribe only to frames that fit (README.md, "Small frame buffers"). */
#ifndef HIL_MAX_PAYLOAD
#define HIL_MAX_PAYLOAD 4096
#endif
#if HIL_MAX_PAYLOAD < 128 || HIL_MAX_PAYLOAD > 4096
#error "HIL_MAX_PAYLOAD must be in 128..4096 (a ServerHello needs 103 bytes; the protocol maximum is 4096)"
#endif

/* ---- wire constants ------------------------------------------------------------------------------ */

#define HIL_PROTOCOL_VERSION 1
#define HIL_PROTOCOL_MINOR 0
#define HIL_SYNC0 0xE1u
#define HIL_SYNC1 0x5Au
#define HIL_HEADER_SIZE 14
#define HIL_CRC_SIZE 4
#define HIL_OVERHEAD (HIL_HEADER_SIZE + HIL_CRC_SIZE)
#define HIL_PROTOCOL_MAX_PAYLOAD 4096 /* the encoder's limit: what any conforming receiver accepts */
#define HIL_MAX_FRAME (HIL_HEADER_SIZE + HIL_MAX_PAYLOAD + HIL_CRC_SIZE)
#define HIL_MAX_STRING 255
#define HIL_HELLO_PAYLOAD_MAX 512 /* a server's SERVER_HELLO payload is at most this (SPEC.md section 4) */
#define HIL_AUTH_CHALLENGE_SIZE 16
#define HIL_AUTH_RESPONSE_SIZE 32
#define HIL_HASH_SIZE 32
#define HIL_ALL_CELLS 0xFFFFu /* CONTROL cell index meaning "every cell" */

/* Largest element counts a payload of HIL_MAX_PAYLOAD bytes can carry: (max - fixed part) / element.
 * The decoder rejects a count that does not fit the received payload, so these arrays never overflow. */
#define HIL_MAX_SERVER_FREQS ((HIL_MAX_PAYLOAD - 103) / 4)    /* 998 at 4096 */
#define HIL_MAX_SUBSCRIBE_CELLS ((HIL_MAX_PAYLOAD - 10) / 2)  /* 2043 */
#define HIL_MAX_STATE_RECORDS ((HIL_MAX_PAYLOAD - 24) / 24)   /* 169 */
#define HIL_MAX_SPECTRUM_POINTS ((HIL_MAX_PAYLOAD - 44) / 12) /* 337 */
#define HIL_MAX_FAULT_CELLS ((HIL_MAX_PAYLOAD - 20) / 2)      /* 2038 */

typedef enum {
    HIL_MSG_SERVER_HELLO = 0x01,
    HIL_MSG_CLIENT_HELLO = 0x02,
    HIL_MSG_SUBSCRIBE = 0x03,
    HIL_MSG_HEARTBEAT = 0x04,
    HIL_MSG_BYE = 0x05,
    HIL_MSG_ERROR = 0x06,
    HIL_MSG_CELL_STATES = 0x10,
    HIL_MSG_EIS_SPECTRUM = 0x11,
    HIL_MSG_EIS_POINT = 0x12,
    HIL_MSG_FAULT_EVENT = 0x13,
    HIL_MSG_CONTROL = 0x20,
    HIL_MSG_ACK = 0x21,
    HIL_MSG_NAK = 0x22
} hil_msg_type_t;

/* Header flags. Receivers ignore unknown bits. */
#define HIL_FRAME_REPLAY 0x0001u   /* payload replayed from a recording */
#define HIL_FRAME_MEASURED 0x0002u /* payload is measured data, not model output */

/* Per-cell status bits (CELL_STATES records, EIS frames). */
#define HIL_CELL_FAULT_ACTIVE 0x0001u
#define HIL_CELL_MEASUREMENT_FAULT 0x0002u
#define HIL_CELL_VOLTAGE_LOW_LIMIT 0x0004u
#define HIL_CELL_VOLTAGE_HIGH_LIMIT 0x0008u
#define HIL_CELL_CURRENT_LIMIT 0x0010u
#define HIL_CELL_TEMPERATURE_LIMIT 0x0020u
#define HIL_CELL_EXTRAPOLATED 0x0040u

/* SUBSCRIBE msg_mask bits. */
#define HIL_SUB_CELL_STATES 0x01u
#define HIL_SUB_EIS_SPECTRUM 0x02u
#define HIL_SUB_EIS_POINT 0x04u
#define HIL_SUB_FAULT_EVENT 0x08u
#define HIL_SUB_HEARTBEAT 0x10u
#define HIL_SUB_ALL 0x1Fu

enum { HIL_EIS_SCENARIO_DEFAULT = 0, HIL_EIS_INSTANT = 1, HIL_EIS_SWEEP = 2 };
enum { HIL_SIM_IDLE = 0, HIL_SIM_RUNNING = 1, HIL_SIM_PAUSED = 2, HIL_SIM_STOPPED = 3, HIL_SIM_FINISHED = 4 };
enum { HIL_FAULT_START = 1, HIL_FAULT_END = 2 };

/* CONTROL command codes; the meaning of cell, aux and value per command is in SPEC.md. */
enum {
    HIL_CMD_START = 1,
    HIL_CMD_PAUSE = 2,
    HIL_CMD_RESUME = 3,
    HIL_CMD_STOP = 4,
    HIL_CMD_SEEK = 5,
    HIL_CMD_SET_LOAD_CURRENT = 6,
    HIL_CMD_SET_AMBIENT_TEMPERATURE = 7,
    HIL_CMD_INJECT_FAULT = 8,
    HIL_CMD_CLEAR_FAULT = 9,
    HIL_CMD_REQUEST_SPECTRUM = 10,
    HIL_CMD_SET_SPEED = 11
};

/* Codes carried by ERROR, NAK and BYE (an open set: show unknown ones as numbers). */
enum {
    HIL_ERR_NONE = 0,
    HIL_ERR_BAD_CRC = 1,
    HIL_ERR_OVERSIZED = 2,
    HIL_ERR_UNKNOWN_MESSAGE_TYPE = 3,
    HIL_ERR_UNSUPPORTED_VERSION = 4,
    HIL_ERR_MALFORMED_PAYLOAD = 5,
    HIL_ERR_GARBAGE = 6,
    HIL_ERR_TRUNCATED = 7,
    HIL_ERR_BAD_HEADER_CRC = 8,
    HIL_ERR_AUTH_REQUIRED = 16,
    HIL_ERR_AUTH_FAILED = 17,
    HIL_ERR_NOT_ALLOWED_IN_STATE = 18,
    HIL_ERR_OUT_OF_RANGE = 19,
    HIL_ERR_UNKNOWN_COMMAND = 20,
    HIL_ERR_UNKNOWN_CELL = 21,
    HIL_ERR_RATE_LIMITED = 22,
    HIL_ERR_SLOW_CONSUMER = 23,
    HIL_ERR_HEARTBEAT_TIMEOUT = 24,
    HIL_ERR_TOO_MANY_CLIENTS = 25,
    HIL_ERR_SHUTDOWN = 26,
    HIL_ERR_INTERNAL = 27
};

/* ---- decoded messages ------------------------------------------------------------------------------
 * Field names and units as in the Python message classes. Element counts are the wire count fields;
 * only the first `count` elements of an array are written. Reserved wire bytes are not represented. */

/* A UTF-8 string (validated strictly, as Python does). `s` is NUL-terminated for convenience, but the
 * string may itself contain U+0000: `len` is authoritative. */
typedef struct {
    uint8_t len;
    char s[HIL_MAX_STRING + 1];
} hil_str_t;

typedef struct {
    uint8_t proto_max_major;
    uint8_t proto_min_major;
    uint8_t proto_minor;
    uint8_t auth_required;
    uint64_t seed;
    uint16_t cell_count;
    uint16_t n_freq;
    uint32_t step_period_us;
    uint8_t auth_challenge[HIL_AUTH_CHALLENGE_SIZE];
    uint8_t model_hash[HIL_HASH_SIZE];
    uint8_t scenario_hash[HIL_HASH_SIZE];
    hil_str_t server_version;
    hil_str_t model_id;
    hil_str_t scenario_id;
    float freq_hz[HIL_MAX_SERVER_FREQS];
} hil_server_hello_t;

typedef struct {
    uint8_t proto_min_major;
    uint8_t proto_max_major;
    uint8_t auth_response[HIL_AUTH_RESPONSE_SIZE];
    hil_str_t client_name;
} hil_client_hello_t;

typedef struct {
    uint32_t msg_mask;
    uint16_t state_divider;
    uint8_t eis_mode;
    uint16_t n_cells; /* 0: every cell */
    uint16_t cells[HIL_MAX_SUBSCRIBE_CELLS];
} hil_subscribe_t;

typedef struct {
    uint64_t t_sim_us;
    uint64_t t_wall_us;
    uint64_t frames_sent;
    uint64_t frames_dropped;
    uint32_t rx_bad_frames;
    uint32_t lateness_p50_us;
    uint32_t lateness_p99_us;
    uint32_t lateness_max_us;
    uint16_t queue_depth;
    uint8_t sim_state;
} hil_heartbeat_t;

typedef struct {
    uint16_t reason;
    hil_str_t message;
} hil_bye_t;

typedef struct {
    uint16_t code;
    uint32_t ref_seq;
    hil_str_t message;
} hil_error_t;

typedef struct {
    uint16_t cell;
    uint16_t flags;
    int32_t voltage_uV;
    int32_t current_uA;
    int32_t temperature_mdegC;
    uint32_t soc_ppm;
    uint32_t soh_ppm;
} hil_cell_state_t;

typedef struct {
    uint64_t t_sim_us;
    uint64_t t_wall_us;
    uint32_t step;
    uint16_t n_cells;
    hil_cell_state_t records[HIL_MAX_STATE_RECORDS];
} hil_cell_states_t;

typedef struct {
    uint64_t t_sim_us;
    uint32_t spectrum_id;
    uint32_t sweep_duration_ms;
    uint16_t cell;
    uint16_t n_points;
    uint16_t cell_flags;
    uint32_t soc_ppm;
    uint32_t soh_ppm;
    int32_t temperature_mdegC;
    int32_t current_uA;
    float kk_residual;
    float freq_hz[HIL_MAX_SPECTRUM_POINTS];
    float z_re_ohm[HIL_MAX_SPECTRUM_POINTS];
    float z_im_ohm[HIL_MAX_SPECTRUM_POINTS];
} hil_eis_spectrum_t;

typedef struct {
    uint64_t t_sim_us;
    uint32_t spectrum_id;
    uint16_t cell;
    uint16_t point_index;
    uint16_t n_points;
    uint16_t cell_flags;
    float freq_hz;
    float z_re_ohm;
    float z_im_ohm;
} hil_eis_point_t;

typedef struct {
    uint64_t t_sim_us;
    uint32_t fault_id;
    uint32_t severity_ppm;
    uint8_t kind; /* an open set: accept kinds you do not know */
    uint8_t phase;
    uint16_t n_cells;
    uint16_t cells[HIL_MAX_FAULT_CELLS];
} hil_fault_event_t;

typedef struct {
    uint8_t command;
    uint8_t fault_kind;
    uint16_t cell;
    uint32_t aux;
    int64_t value;
} hil_control_t;

typedef struct {
    uint32_t ack_seq;
    uint8_t command;
    int64_t result;
} hil_ack_t;

typedef struct {
    uint32_t ack_seq;
    uint8_t command;
    uint16_t code;
    hil_str_t message;
} hil_nak_t;

typedef union {
    hil_server_hello_t server_hello;
    hil_client_hello_t client_hello;
    hil_subscribe_t subscribe;
    hil_heartbeat_t heartbeat;
    hil_bye_t bye;
    hil_error_t error;
    hil_cell_states_t cell_states;
    hil_eis_spectrum_t eis_spectrum;
    hil_eis_point_t eis_point;
    hil_fault_event_t fault_event;
    hil_control_t control;
    hil_ack_t ack;
    hil_nak_t nak;
} hil_msg_t;

/* ---- decoder --------------------------------------------------------------------------------------- */

/* What one call of hil_decoder_feed / hil_decoder_finish reports. Error kinds have the value of the
 * wire ErrorCode that reports them (HIL_ERR_*), so a server-side user can echo them in an ERROR frame. */
typedef enum {
    HIL_EV_NEED_MORE = 0, /* no event: feed consumed all its input / finish has reported everything */
    HIL_EV_BAD_CRC = 1,   /* header intact, frame CRC wrong; its bytes are rescanned for a frame inside */
    HIL_EV_OVERSIZED = 2, /* header intact, payload_len > HIL_MAX_PAYLOAD; only the header is dropped */
    HIL_EV_UNKNOWN_MESSAGE_TYPE = 3,
    HIL_EV_UNSUPPORTED_VERSION = 4,
    HIL_EV_MALFORMED_PAYLOAD = 5, /* payload shorter than its layout, count past the end, bad UTF-8 */
    HIL_EV_GARBAGE = 6,           /* one run of discarded bytes outside any reported frame */
    HIL_EV_TRUNCATED = 7,         /* finish only: the stream ended inside a frame */
    HIL_EV_FRAME = 8              /* a valid frame; `msg` holds its decoded payload */
} hil_event_kind_t;

#define HIL_EV_KIND_COUNT 9

typedef struct {
    hil_event_kind_t kind;
    uint32_t nbytes;     /* stream bytes this event accounts for (whole frame, rejected span, skipped run) */
    uint8_t has_header;  /* 1: version..payload_len come from an intact header (all kinds but GARBAGE,
                            TRUNCATED); 0: they are zero */
    uint8_t version;
    uint8_t msg_type;
    uint16_t flags;
    uint16_t payload_len;
    uint32_t seq;
    hil_msg_t msg; /* valid only when kind == HIL_EV_FRAME; member chosen by msg_type */
} hil_event_t;

/* Counters, wrapping modulo 2^32. Same meaning as the Python DecoderStats. */
typedef struct {
    uint32_t bytes_received;                    /* bytes consumed by hil_decoder_feed */
    uint32_t frames;                            /* HIL_EV_FRAME events */
    uint32_t errors;                            /* all error events */
    uint32_t errors_by_kind[HIL_EV_KIND_COUNT]; /* indexed by hil_event_kind_t */
    uint32_t bytes_garbage;                     /* bytes reported in GARBAGE events (and pending) */
} hil_stats_t;

/* The receiver state. Opaque apart from `stats`: read it, reset it, do not touch the rest. */
typedef struct {
    size_t head;          /* buf[head .. head+len) holds the candidate frame (starts at a sync byte) */
    size_t len;
    size_t covered;       /* leading buffered bytes that belong to an already reported frame */
    uint32_t garbage;     /* discarded bytes not yet reported in a GARBAGE event */
    hil_stats_t stats;
    uint8_t buf[HIL_MAX_FRAME];
} hil_decoder_t;

/* Prepare `dec` for a new stream and zero its counters. Cost: O(1) (the buffer is not cleared). */
void hil_decoder_init(hil_decoder_t *dec);

/* Push `len` bytes of the stream (`data` may be NULL when len is 0) and get at most one event.
 *
 * Returns HIL_EV_NEED_MORE once every input byte has been consumed with nothing to report (then
 * *consumed == len). Any other value is an event, written to *out, with *consumed (<= len) input bytes
 * taken so far: call again with the remaining input until HIL_EV_NEED_MORE. Every call either returns an
 * event or consumes all its input, so this loop always terminates:
 *
 *     while (hil_decoder_feed(&dec, p, n, &used, &ev) != HIL_EV_NEED_MORE) { p += used; n -= used; use(&ev); }
 *
 * The events depend only on the byte stream, never on how it was split into calls. `out->msg` is
 * meaningful only for HIL_EV_FRAME (a MALFORMED_PAYLOAD may leave it half written); `*out` must not
 * overlap `dec` or `data`.
 * Input is copied only from the first sync byte of a candidate frame on, and never past its announced
 * end, so at most one frame (HIL_MAX_FRAME bytes) is ever held.
 * Cost per call: O(len) to skip noise, plus at most O(HIL_MAX_FRAME) for one frame: a CRC(n) and a
 * decode of the payload, one buffer compaction (memmove, < HIL_MAX_FRAME bytes), and after a BAD_CRC a
 * rescan of the buffered frame (at most HIL_MAX_FRAME/2 header checks of CRC(12) each). */
hil_event_kind_t hil_decoder_feed(hil_decoder_t *dec, const uint8_t *data, size_t len, size_t *consumed,
                                  hil_event_t *out);

/* End of stream: report what the buffered bytes still hold (TRUNCATED for a frame cut off, frames found
 * inside it, a final GARBAGE run), one event per call; returns HIL_EV_NEED_MORE when nothing is left, and
 * from then on `dec` is ready for a new stream (counters kept). Call it until HIL_EV_NEED_MORE before
 * feeding a new stream. Cost per call: as hil_decoder_feed with len 0. */
hil_event_kind_t hil_decoder_finish(hil_decoder_t *dec, hil_event_t *out);

/* Constant names for logs: "FRAME", "BAD_CRC", ... / "CELL_STATES", ... ("?" if unknown). Static
 * strings; O(1). */
const char *hil_event_kind_name(hil_event_kind_t kind);
const char *hil_msg_type_name(unsigned msg_type);

/* ---- encoder ----------------------------------------------------------------------------------------
 * Each function writes one complete frame (header version HIL_PROTOCOL_VERSION, flags 0, sequence number
 * `seq` from the caller's counter) to out[0 .. cap) and returns its length, or 0 if it does not fit in
 * `cap`, if the payload would exceed HIL_PROTOCOL_MAX_PAYLOAD, or if a string is longer than 255 bytes or
 * not valid UTF-8. Nothing is written past out[cap - 1]. The caller increments `seq` after a successful
 * call (it wraps at 2^32). Strings are (pointer, byte length), not NUL-terminated; the pointer may be
 * NULL when the length is 0. Cost: O(frame length): one CRC over the frame. */
size_t hil_encode_client_hello(uint8_t *out, size_t cap, uint32_t seq, uint8_t proto_min_major,
                               uint8_t proto_max_major, const uint8_t auth_response[HIL_AUTH_RESPONSE_SIZE],
                               const char *client_name, size_t name_len);
/* auth_response may be NULL: 32 zero bytes are sent (server without authentication). */

size_t hil_encode_subscribe(uint8_t *out, size_t cap, uint32_t seq, uint32_t msg_mask, uint16_t state_divider,
                            uint8_t eis_mode, const uint16_t *cells, size_t n_cells);
size_t hil_encode_control(uint8_t *out, size_t cap, uint32_t seq, const hil_control_t *control);
size_t hil_encode_heartbeat(uint8_t *out, size_t cap, uint32_t seq, const hil_heartbeat_t *hb);
size_t hil_encode_bye(uint8_t *out, size_t cap, uint32_t seq, uint16_t reason, const char *message,
                      size_t message_len);
size_t hil_encode_error(uint8_t *out, size_t cap, uint32_t seq, uint16_t code, uint32_t ref_seq,
                        const char *message, size_t message_len);
size_t hil_encode_ack(uint8_t *out, size_t cap, uint32_t seq, const hil_ack_t *ack);
size_t hil_encode_nak(uint8_t *out, size_t cap, uint32_t seq, uint32_t ack_seq, uint8_t command, uint16_t code,
                      const char *message, size_t message_len);

/* ---- checksums and authentication -------------------------------------------------------------------- */

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0; check "123456789" = 0x29B1)
 * and CRC-32C (Castagnoli, reflected poly 0x82F63B78, init and xorout 0xFFFFFFFF; check 0xE3069283).
 * Nibble tables: two look-ups per byte, 32 + 64 bytes of const data. Cost: O(len). */
uint16_t hil_crc16_ccitt_false(const uint8_t *data, size_t len);
uint32_t hil_crc32c(const uint8_t *data, size_t len);

/* SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) of one message. Stack: under 600 bytes on Cortex-M4
 * (gcc -Os -fstack-usage: HMAC state 272 + compression 152 + key hashing 128). Key material is left on
 * the stack afterwards; wipe it there if your threat model needs that.
 * Cost: O(len) (one compression per 64 bytes, plus 4 for HMAC, plus O(key_len) for keys over 64 bytes). */
void hil_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
void hil_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len, uint8_t out[32]);

/* The ClientHello auth_response: HMAC-SHA256(key = secret,
 * msg = "EIS-HIL-AUTH-V1" || challenge (16 bytes, from the ServerHello) || client_name (UTF-8 bytes)).
 * The secret never leaves the device. Cost: as hil_hmac_sha256 over 31 + name_len bytes. */
void hil_auth_response(const uint8_t *secret, size_t secret_len, const uint8_t challenge[HIL_AUTH_CHALLENGE_SIZE],
                       const char *client_name, size_t name_len, uint8_t out[HIL_AUTH_RESPONSE_SIZE]);

#ifdef __cplusplus
}
#endif

#endif /* HIL_CLIENT_H */

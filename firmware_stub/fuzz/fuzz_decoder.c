/* libFuzzer harness for the hil_client decoder.
 * Invariants: no crash and no out-of-bounds access (ASan, UBSan); no stall: every feed call returns an
 * event or consumes its whole input, and a stream of n bytes yields at most 2n + 1 events; the same
 * events, whatever the split: the input is decoded whole and in chunks chosen by its first byte, and the
 * two event sequences (kind, nbytes, header fields, and the re-encoding of client frames) must match. */
#include "hil_client.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t hash;
    size_t events;
} digest_t;

static hil_decoder_t dec;
static hil_event_t ev;
static uint8_t frame[HIL_MAX_FRAME];

static void mix(digest_t *d, uint64_t v)
{
    d->hash = (d->hash ^ v) * 0x100000001B3u;
}

static void record(digest_t *d, hil_event_kind_t kind, size_t limit)
{
    if (++d->events > limit)
        abort(); /* more events than bytes can account for: a stall */
    mix(d, (uint64_t)kind);
    mix(d, ev.nbytes);
    mix(d, ev.has_header);
    mix(d, ((uint64_t)ev.seq << 24) ^ ((uint64_t)ev.msg_type << 16) ^ ev.flags);
    if (kind == HIL_EV_FRAME) {
        /* Digest the decoded content through the encoder, which writes only decoded fields. */
        size_t n = 0;
        const hil_msg_t *m = &ev.msg;
        switch (ev.msg_type) {
        case HIL_MSG_CONTROL: n = hil_encode_control(frame, sizeof frame, ev.seq, &m->control); break;
        case HIL_MSG_HEARTBEAT: n = hil_encode_heartbeat(frame, sizeof frame, ev.seq, &m->heartbeat); break;
        case HIL_MSG_ACK: n = hil_encode_ack(frame, sizeof frame, ev.seq, &m->ack); break;
        case HIL_MSG_BYE:
            n = hil_encode_bye(frame, sizeof frame, ev.seq, m->bye.reason, m->bye.message.s, m->bye.message.len);
            break;
        case HIL_MSG_SUBSCRIBE:
            n = hil_encode_subscribe(frame, sizeof frame, ev.seq, m->subscribe.msg_mask, m->subscribe.state_divider,
                                     m->subscribe.eis_mode, m->subscribe.cells, m->subscribe.n_cells);
            break;
        default: break;
        }
        mix(d, hil_crc32c(frame, n));
    }
}

/* max_chunk 0: the whole input in one call; else chunks of 1 .. max_chunk bytes drawn from seed. */
static digest_t run(const uint8_t *data, size_t size, uint32_t seed, uint32_t max_chunk)
{
    digest_t d = {0xCBF29CE484222325u, 0};
    size_t off = 0, used, limit = 2 * size + 1;
    hil_event_kind_t kind;
    hil_decoder_init(&dec);
    while (off < size) {
        size_t n = size - off;
        if (max_chunk) {
            seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
            if (1 + seed % max_chunk < n)
                n = 1 + seed % max_chunk;
        }
        while ((kind = hil_decoder_feed(&dec, data + off, n, &used, &ev)) != HIL_EV_NEED_MORE) {
            if (used > n)
                abort();
            off += used, n -= used;
            record(&d, kind, limit);
        }
        if (used != n)
            abort(); /* NEED_MORE without taking the whole input */
        off += n;
        if (dec.len > sizeof dec.buf || dec.head + dec.len > sizeof dec.buf || dec.covered > dec.len)
            abort();
    }
    while ((kind = hil_decoder_finish(&dec, &ev)) != HIL_EV_NEED_MORE)
        record(&d, kind, limit);
    if (dec.len != 0 || dec.garbage != 0)
        abort();
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    digest_t whole, chunked, bytewise;
    whole = run(data, size, 0, 0);
    chunked = run(data, size, size ? 1u + data[0] : 1u, 97);
    if (whole.hash != chunked.hash || whole.events != chunked.events)
        abort();
    if (size <= 4096) {
        bytewise = run(data, size, 1, 1);
        if (whole.hash != bytewise.hash || whole.events != bytewise.events)
            abort();
    }
    return 0;
}

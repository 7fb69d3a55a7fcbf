/* Tests of hil_client against the golden vectors (tests/vectors/vectors.json, via the generated
 * build/vectors.h) plus CRC, SHA-256 and HMAC known answers. Prints "N passed, N failed"; exit status 1 on
 * any failure. */
#include "hil_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    hil_event_kind_t kind;
    uint32_t nbytes; /* errors only: frames are checked against their own payload_len */
    int has_header;
    uint32_t seq;
    uint8_t msg_type;
    uint16_t flags;
    uint8_t version;
    void (*check)(const hil_event_t *ev); /* frames: compares every decoded field */
} expect_t;

typedef struct {
    const char *name;
    int valid;
    const uint8_t *bytes;
    size_t len;
    const expect_t *expect;
    size_t n_expect;
} vector_t;

/* ---- a minimal harness: a case passes if none of its checks failed -------------------------------- */

static int case_failed;
static char case_name[160];
static unsigned n_passed, n_failed;

static void fail(const char *fmt, ...)
{
    va_list ap;
    if (!case_failed)
        printf("FAIL %s\n", case_name);
    case_failed = 1;
    printf("    ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

#define CHECK(cond) \
    do { \
        if (!(cond)) \
            fail("%s (line %d)", #cond, __LINE__); \
    } while (0)

static void begin(const char *name, const char *mode)
{
    snprintf(case_name, sizeof case_name, "%s [%s]", name, mode);
    case_failed = 0;
}

static void end(void)
{
    if (case_failed)
        n_failed++;
    else
        n_passed++;
}

static void check_u(const char *what, uint64_t got, uint64_t want)
{
    if (got != want)
        fail("%s: got %llu, want %llu", what, (unsigned long long)got, (unsigned long long)want);
}

static void check_i(const char *what, int64_t got, int64_t want)
{
    if (got != want)
        fail("%s: got %lld, want %lld", what, (long long)got, (long long)want);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void check_f32(const char *what, float got, uint32_t want_bits)
{
    if (f32_bits(got) != want_bits)
        fail("%s: got float bits 0x%08lx, want 0x%08lx", what, (unsigned long)f32_bits(got), (unsigned long)want_bits);
}

static void check_f32s(const char *what, const float *got, const uint32_t *want, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        check_f32(what, got[i], want[i]);
}

static void check_u16s(const char *what, const uint16_t *got, const uint16_t *want, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        check_u(what, got[i], want[i]);
}

static void check_mem(const char *what, const uint8_t *got, size_t got_len, const char *want, size_t n)
{
    if (got_len != n || memcmp(got, want, n) != 0)
        fail("%s: bytes differ (%lu vs %lu bytes)", what, (unsigned long)got_len, (unsigned long)n);
}

static void check_str(const char *what, const hil_str_t *got, const char *want, size_t n)
{
    if (got->len != n || memcmp(got->s, want, n) != 0 || got->s[got->len] != '\0')
        fail("%s: string differs (%u vs %lu bytes)", what, (unsigned)got->len, (unsigned long)n);
}

#include "vectors.h"

/* ---- feeding a stream ------------------------------------------------------------------------------ */

/* Deterministic chunk sizes: xorshift32, mostly short chunks with the occasional long one. */
static uint32_t rng_next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static hil_decoder_t dec;
static hil_event_t ev;

typedef struct {
    const expect_t *expect;
    size_t n_expect, seen;
    uint32_t garbage;
    uint32_t by_kind[HIL_EV_KIND_COUNT];
} tally_t;

static void on_event(tally_t *t, hil_event_kind_t kind)
{
    const expect_t *x;
    check_u("event kind matches return value", ev.kind, kind);
    t->by_kind[kind]++;
    if (kind == HIL_EV_GARBAGE)
        t->garbage += ev.nbytes;
    if (t->seen >= t->n_expect) {
        fail("unexpected extra event %s", hil_event_kind_name(kind));
        t->seen++;
        return;
    }
    x = &t->expect[t->seen++];
    check_u(hil_event_kind_name(x->kind), kind, x->kind);
    if (kind != x->kind)
        return;
    check_u("has_header", ev.has_header, (uint64_t)x->has_header);
    if (x->has_header) {
        check_u("seq", ev.seq, x->seq);
        check_u("msg_type", ev.msg_type, x->msg_type);
    }
    if (kind == HIL_EV_FRAME) {
        check_u("flags", ev.flags, x->flags);
        check_u("version", ev.version, x->version);
        check_u("frame nbytes", ev.nbytes, HIL_OVERHEAD + (uint64_t)ev.payload_len);
        x->check(&ev);
    } else {
        check_u("nbytes", ev.nbytes, x->nbytes);
    }
}

/* chunk: 0 = whole, 1 = byte by byte, otherwise the seed of random chunk sizes. */
static void run_stream(const uint8_t *data, size_t len, uint32_t chunk, const expect_t *expect, size_t n_expect)
{
    tally_t t;
    size_t off = 0, used, k;
    hil_event_kind_t kind;
    uint32_t rng = chunk;
    memset(&t, 0, sizeof t);
    t.expect = expect;
    t.n_expect = n_expect;
    hil_decoder_init(&dec);
    while (off < len) {
        size_t n = len - off;
        if (chunk == 1)
            n = 1;
        else if (chunk > 1) {
            uint32_t r = rng_next(&rng);
            size_t want = (r & 7u) == 0 ? 1 + r % 2000u : 1 + r % 40u;
            if (want < n)
                n = want;
        }
        k = 0;
        while ((kind = hil_decoder_feed(&dec, data + off + k, n - k, &used, &ev)) != HIL_EV_NEED_MORE) {
            CHECK(used <= n - k);
            k += used;
            on_event(&t, kind);
        }
        CHECK(used == n - k); /* NEED_MORE means the whole input was taken */
        off += n;
    }
    while ((kind = hil_decoder_finish(&dec, &ev)) != HIL_EV_NEED_MORE)
        on_event(&t, kind);
    check_u("number of events", t.seen, n_expect);
    check_u("stats.bytes_received", dec.stats.bytes_received, len);
    check_u("stats.frames", dec.stats.frames, t.by_kind[HIL_EV_FRAME]);
    check_u("stats.bytes_garbage", dec.stats.bytes_garbage, t.garbage);
    for (k = 1; k < HIL_EV_FRAME; k++)
        check_u("stats.errors_by_kind", dec.stats.errors_by_kind[k], t.by_kind[k]);
    /* After finish the decoder is empty and ready for another stream. */
    check_u("finish again", hil_decoder_finish(&dec, &ev), HIL_EV_NEED_MORE);
    check_u("buffered after finish", dec.len, 0);
}

static void test_vectors(void)
{
    static const uint32_t seeds[] = {0x12345u, 0xC0FFEEu, 0xBADF00Du, 0x5EED5u, 42u};
    size_t i, s;
    char mode[32];
    for (i = 0; i < N_VECTORS; i++) {
        const vector_t *v = &VECTORS[i];
        begin(v->name, "whole");
        run_stream(v->bytes, v->len, 0, v->expect, v->n_expect);
        end();
        begin(v->name, "byte by byte");
        run_stream(v->bytes, v->len, 1, v->expect, v->n_expect);
        end();
        for (s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
            snprintf(mode, sizeof mode, "chunks seed %lu", (unsigned long)seeds[s]);
            begin(v->name, mode);
            run_stream(v->bytes, v->len, seeds[s], v->expect, v->n_expect);
            end();
        }
    }
}

/* Every valid vector back to back: one stream, every frame in order, no error. */
static void test_concatenated(void)
{
    static uint8_t stream[16384];
    static expect_t expect[64];
    size_t i, len = 0, n = 0;
    uint32_t modes[3] = {0, 1, 7};
    for (i = 0; i < N_VECTORS; i++) {
        const vector_t *v = &VECTORS[i];
        if (!v->valid)
            continue;
        if (len + v->len > sizeof stream || n + v->n_expect > 64) {
            begin("concatenated", "setup");
            fail("stream buffer too small");
            end();
            return;
        }
        memcpy(stream + len, v->bytes, v->len);
        memcpy(expect + n, v->expect, v->n_expect * sizeof *expect);
        len += v->len;
        n += v->n_expect;
    }
    for (i = 0; i < 3; i++) {
        begin("all valid vectors concatenated", i == 0 ? "whole" : i == 1 ? "byte by byte" : "chunks");
        run_stream(stream, len, modes[i], expect, n);
        end();
    }
}

/* ---- encoder --------------------------------------------------------------------------------------- */

static size_t reencode(const hil_event_t *e, uint8_t *out, size_t cap)
{
    const hil_msg_t *m = &e->msg;
    switch (e->msg_type) {
    case HIL_MSG_CLIENT_HELLO:
        return hil_encode_client_hello(out, cap, e->seq, m->client_hello.proto_min_major,
                                       m->client_hello.proto_max_major, m->client_hello.auth_response,
                                       m->client_hello.client_name.s, m->client_hello.client_name.len);
    case HIL_MSG_SUBSCRIBE:
        return hil_encode_subscribe(out, cap, e->seq, m->subscribe.msg_mask, m->subscribe.state_divider,
                                    m->subscribe.eis_mode, m->subscribe.cells, m->subscribe.n_cells);
    case HIL_MSG_CONTROL:
        return hil_encode_control(out, cap, e->seq, &m->control);
    case HIL_MSG_HEARTBEAT:
        return hil_encode_heartbeat(out, cap, e->seq, &m->heartbeat);
    case HIL_MSG_BYE:
        return hil_encode_bye(out, cap, e->seq, m->bye.reason, m->bye.message.s, m->bye.message.len);
    case HIL_MSG_ERROR:
        return hil_encode_error(out, cap, e->seq, m->error.code, m->error.ref_seq, m->error.message.s,
                                m->error.message.len);
    case HIL_MSG_ACK:
        return hil_encode_ack(out, cap, e->seq, &m->ack);
    case HIL_MSG_NAK:
        return hil_encode_nak(out, cap, e->seq, m->nak.ack_seq, m->nak.command, m->nak.code, m->nak.message.s,
                              m->nak.message.len);
    default:
        return (size_t)-1; /* not a message this library sends */
    }
}

/* Decode each valid vector, encode the result again: byte for byte the vector. Every shorter buffer is
 * refused without a write past its end. */
static void test_encoder_roundtrip(void)
{
    static uint8_t out[HIL_MAX_FRAME + 64];
    size_t i, used, n, cap, j;
    for (i = 0; i < N_VECTORS; i++) {
        const vector_t *v = &VECTORS[i];
        if (!v->valid)
            continue;
        hil_decoder_init(&dec);
        if (hil_decoder_feed(&dec, v->bytes, v->len, &used, &ev) != HIL_EV_FRAME)
            continue; /* reported by test_vectors */
        memset(out, 0xA5, sizeof out);
        n = reencode(&ev, out, sizeof out);
        if (n == (size_t)-1)
            continue;
        begin(v->name, "encode round trip");
        check_u("encoded length", n, v->len);
        check_mem("encoded bytes", out, n, (const char *)v->bytes, v->len);
        for (cap = 0; cap < v->len; cap++) {
            memset(out, 0xA5, sizeof out);
            check_u("length with a short buffer", reencode(&ev, out, cap), 0);
            for (j = cap; j < sizeof out; j++)
                if (out[j] != 0xA5) {
                    fail("short buffer: wrote byte %lu with cap %lu", (unsigned long)j, (unsigned long)cap);
                    break;
                }
        }
        end();
    }
}

static void test_encoder_limits(void)
{
    static uint16_t cells[2100];
    static uint8_t out[HIL_OVERHEAD + HIL_PROTOCOL_MAX_PAYLOAD + 64]; /* the encoder's limit, not the decoder's */
    char name[256];
    size_t n;
    memset(name, 'a', sizeof name);
    begin("encoder", "limits");
    check_u("255-byte string", hil_encode_bye(out, sizeof out, 1, 0, name, 255) != 0, 1);
    check_u("256-byte string", hil_encode_bye(out, sizeof out, 1, 0, name, 256), 0);
    check_u("invalid UTF-8", hil_encode_bye(out, sizeof out, 1, 0, "\xc3\x28", 2), 0);
    check_u("surrogate", hil_encode_bye(out, sizeof out, 1, 0, "\xed\xa0\x80", 3), 0);
    check_u("overlong", hil_encode_bye(out, sizeof out, 1, 0, "\xc0\xaf", 2), 0);
    check_u("4-byte UTF-8", hil_encode_bye(out, sizeof out, 1, 0, "\xf0\x9f\x94\x8b", 4) != 0, 1);
    check_u("NULL empty string", hil_encode_bye(out, sizeof out, 1, 0, NULL, 0), HIL_OVERHEAD + 3);
    check_u("client hello without auth", hil_encode_client_hello(out, sizeof out, 0, 1, 1, NULL, "x", 1),
            HIL_OVERHEAD + 38);
    check_u("subscribe over the payload maximum",
            hil_encode_subscribe(out, sizeof out, 1, HIL_SUB_ALL, 1, 0, cells, 2044), 0);
    n = hil_encode_subscribe(out, sizeof out, 1, HIL_SUB_ALL, 1, 0, cells, 2043);
    check_u("subscribe at the payload maximum", n, HIL_OVERHEAD + HIL_PROTOCOL_MAX_PAYLOAD);
    end();

    /* A frame of exactly HIL_MAX_PAYLOAD decodes; with one more cell (in a build below the protocol
     * maximum) it is OVERSIZED, reported from its 14-byte header. */
    begin("decoder", "payload of exactly HIL_MAX_PAYLOAD");
    {
        size_t used;
        cells[HIL_MAX_SUBSCRIBE_CELLS - 1] = 95;
        n = hil_encode_subscribe(out, sizeof out, 1, HIL_SUB_ALL, 1, 0, cells, HIL_MAX_SUBSCRIBE_CELLS);
        check_u("frame size", n, HIL_MAX_FRAME);
        hil_decoder_init(&dec);
        check_u("kind", hil_decoder_feed(&dec, out, n, &used, &ev), HIL_EV_FRAME);
        check_u("n_cells", ev.msg.subscribe.n_cells, HIL_MAX_SUBSCRIBE_CELLS);
        check_u("last cell", ev.msg.subscribe.cells[HIL_MAX_SUBSCRIBE_CELLS - 1], 95);
        check_u("finish", hil_decoder_finish(&dec, &ev), HIL_EV_NEED_MORE);
#if HIL_MAX_PAYLOAD < HIL_PROTOCOL_MAX_PAYLOAD
        n = hil_encode_subscribe(out, sizeof out, 1, HIL_SUB_ALL, 1, 0, cells, HIL_MAX_SUBSCRIBE_CELLS + 1);
        hil_decoder_init(&dec);
        check_u("one cell more", hil_decoder_feed(&dec, out, n, &used, &ev), HIL_EV_OVERSIZED);
        check_u("oversized nbytes", ev.nbytes, HIL_HEADER_SIZE);
#endif
    }
    end();
}

/* A frame around `payload` (header, both CRCs), as a server would send it. Returns its length. */
static size_t frame(uint8_t *out, uint8_t msg_type, const uint8_t *payload, size_t len, uint32_t seq)
{
    uint16_t hcrc;
    uint32_t fcrc;
    out[0] = HIL_SYNC0;
    out[1] = HIL_SYNC1;
    out[2] = HIL_PROTOCOL_VERSION;
    out[3] = msg_type;
    out[4] = out[5] = 0;
    out[6] = (uint8_t)(len & 0xFFu);
    out[7] = (uint8_t)(len >> 8);
    out[8] = (uint8_t)(seq & 0xFFu);
    out[9] = (uint8_t)((seq >> 8) & 0xFFu);
    out[10] = (uint8_t)((seq >> 16) & 0xFFu);
    out[11] = (uint8_t)(seq >> 24);
    hcrc = hil_crc16_ccitt_false(out, 12);
    out[12] = (uint8_t)(hcrc & 0xFFu);
    out[13] = (uint8_t)(hcrc >> 8);
    memcpy(out + HIL_HEADER_SIZE, payload, len);
    fcrc = hil_crc32c(out, HIL_HEADER_SIZE + len);
    out[HIL_HEADER_SIZE + len] = (uint8_t)(fcrc & 0xFFu);
    out[HIL_HEADER_SIZE + len + 1] = (uint8_t)((fcrc >> 8) & 0xFFu);
    out[HIL_HEADER_SIZE + len + 2] = (uint8_t)((fcrc >> 16) & 0xFFu);
    out[HIL_HEADER_SIZE + len + 3] = (uint8_t)(fcrc >> 24);
    return HIL_OVERHEAD + len;
}

/* SPEC.md section 4: a server's SERVER_HELLO payload is at most HIL_HELLO_PAYLOAD_MAX (512) bytes, its grid
 * possibly empty. The longest such hello (no grid, names of 255 and 154 bytes) decodes in every build of
 * at least 512 bytes; one byte more is what a non-conforming server would send: OVERSIZED below 513. */
static void test_hello_bound(void)
{
    static uint8_t payload[HIL_HELLO_PAYLOAD_MAX + 1], out[HIL_OVERHEAD + HIL_HELLO_PAYLOAD_MAX + 1];
    size_t n, used, extra;
    for (extra = 0; extra <= 1; extra++) {
        begin("server_hello", extra ? "one byte over the bound" : "at the bound, grid empty");
        memset(payload, 0, sizeof payload);
        payload[0] = payload[1] = 1; /* proto_max_major, proto_min_major */
        payload[12] = 8;             /* cell_count */
        payload[100] = 0;            /* server_version: empty */
        payload[101] = 255;          /* model_id */
        memset(payload + 102, 'm', 255);
        payload[357] = (uint8_t)(154 + extra); /* scenario_id */
        memset(payload + 358, 's', 154 + extra);
        n = frame(out, HIL_MSG_SERVER_HELLO, payload, HIL_HELLO_PAYLOAD_MAX + extra, 0);
        hil_decoder_init(&dec);
        if (HIL_MAX_PAYLOAD >= HIL_HELLO_PAYLOAD_MAX + extra) {
            check_u("kind", hil_decoder_feed(&dec, out, n, &used, &ev), HIL_EV_FRAME);
            check_u("n_freq", ev.msg.server_hello.n_freq, 0);
            check_u("cell_count", ev.msg.server_hello.cell_count, 8);
            check_u("model_id", ev.msg.server_hello.model_id.len, 255);
            check_u("scenario_id", ev.msg.server_hello.scenario_id.len, 154 + extra);
        } else {
            check_u("kind", hil_decoder_feed(&dec, out, n, &used, &ev), HIL_EV_OVERSIZED);
            check_u("msg_type", ev.msg_type, HIL_MSG_SERVER_HELLO);
        }
        end();
    }
}

/* ---- checksums and authentication ------------------------------------------------------------------- */

static void test_crc(void)
{
    const uint8_t *check = (const uint8_t *)"123456789";
    begin("crc16_ccitt_false", "check value");
    check_u("crc16(\"123456789\")", hil_crc16_ccitt_false(check, 9), 0x29B1u);
    check_u("crc16(\"\")", hil_crc16_ccitt_false(check, 0), 0xFFFFu);
    end();
    begin("crc32c", "check value");
    check_u("crc32c(\"123456789\")", hil_crc32c(check, 9), 0xE3069283u);
    check_u("crc32c(\"\")", hil_crc32c(check, 0), 0);
    end();
}

static void check_hex(const char *what, const uint8_t *got, const char *hex)
{
    char buf[65];
    size_t i;
    for (i = 0; i < 32; i++)
        snprintf(buf + 2 * i, 3, "%02x", got[i]);
    if (strcmp(buf, hex) != 0) {
        fail("%s: got %s, want %s", what, buf, hex);
    }
}

static void test_sha256(void)
{
    static const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    static uint8_t key131[131], million[1000];
    uint8_t out[32];
    uint8_t key20[20];
    begin("sha256", "FIPS 180-2 vectors");
    hil_sha256((const uint8_t *)"abc", 3, out);
    check_hex("sha256(abc)", out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hil_sha256((const uint8_t *)two_blocks, strlen(two_blocks), out);
    check_hex("sha256(448 bits)", out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    hil_sha256(NULL, 0, out);
    check_hex("sha256()", out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    memset(million, 'a', sizeof million);
    hil_sha256(million, 64, out); /* exactly one block: the padding needs a second one */
    check_hex("sha256(a*64)", out, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
    end();

    begin("hmac_sha256", "RFC 4231 cases 1 and 6");
    memset(key20, 0x0b, sizeof key20);
    hil_hmac_sha256(key20, sizeof key20, (const uint8_t *)"Hi There", 8, out);
    check_hex("case 1", out, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    memset(key131, 0xaa, sizeof key131);
    hil_hmac_sha256(key131, sizeof key131,
                    (const uint8_t *)"Test Using Larger Than Block-Size Key - Hash Key First", 54, out);
    check_hex("case 6", out, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    end();

    begin("auth_response", "client_hello vector");
    {
        uint8_t challenge[16];
        size_t i;
        for (i = 0; i < 16; i++)
            challenge[i] = (uint8_t)i;
        hil_auth_response((const uint8_t *)"bench-secret", 12, challenge, "bms-ecu-1", 9, out);
        check_mem("auth_response", out, 32, (const char *)CLIENT_HELLO_AUTH_RESPONSE, 32);
    }
    end();
}

static void test_api_edges(void)
{
    size_t used = 99;
    begin("decoder", "empty feed");
    hil_decoder_init(&dec);
    check_u("feed(NULL, 0)", hil_decoder_feed(&dec, NULL, 0, &used, &ev), HIL_EV_NEED_MORE);
    check_u("consumed", used, 0);
    check_u("finish", hil_decoder_finish(&dec, &ev), HIL_EV_NEED_MORE);
    end();
    begin("names", "kinds and types");
    CHECK(strcmp(hil_event_kind_name(HIL_EV_BAD_CRC), "BAD_CRC") == 0);
    CHECK(strcmp(hil_event_kind_name(HIL_EV_FRAME), "FRAME") == 0);
    CHECK(strcmp(hil_msg_type_name(HIL_MSG_EIS_SPECTRUM), "EIS_SPECTRUM") == 0);
    CHECK(strcmp(hil_msg_type_name(0x7F), "?") == 0);
    end();
}

int main(void)
{
    begin("vectors.json", "header");
    check_u("protocol_version", VECTORS_PROTOCOL_VERSION, HIL_PROTOCOL_VERSION);
    check_u("max_payload_size", VECTORS_MAX_PAYLOAD, HIL_PROTOCOL_MAX_PAYLOAD);
    end();
    test_crc();
    test_sha256();
    test_api_edges();
    test_vectors();
    test_concatenated();
    test_encoder_roundtrip();
    test_encoder_limits();
    test_hello_bound();
    begin("vectors.json", "vectors that fit HIL_MAX_PAYLOAD");
    {
        size_t i, bounded = 0;
        for (i = 0; i < N_VECTORS; i++)
            bounded += strcmp(VECTORS[i].name, "server_hello_bounded") == 0;
        check_u("server_hello_bounded runs", bounded, HIL_MAX_PAYLOAD >= HIL_HELLO_PAYLOAD_MAX);
        if (HIL_MAX_PAYLOAD == HIL_PROTOCOL_MAX_PAYLOAD)
            check_u("every vector runs", N_VECTORS, N_VECTORS_GENERATED);
        printf("%lu of %u vectors fit HIL_MAX_PAYLOAD %d\n", (unsigned long)N_VECTORS, N_VECTORS_GENERATED,
               HIL_MAX_PAYLOAD);
    }
    end();
    printf("sizeof(hil_decoder_t) = %lu, sizeof(hil_event_t) = %lu (HIL_MAX_PAYLOAD %d)\n",
           (unsigned long)sizeof(hil_decoder_t), (unsigned long)sizeof(hil_event_t), HIL_MAX_PAYLOAD);
    printf("%u passed, %u failed\n", n_passed, n_failed);
    return n_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

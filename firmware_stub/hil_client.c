/* hil_client.c - see hil_client.h for the contract of every function. */
#include "hil_client.h"

#include <string.h>

/* ---- CRCs ----------------------------------------------------------------------------------------- */

/* Nibble tables: 96 bytes of flash instead of 1.5 KB for byte tables, about half their speed; a
 * CRC-32C over a maximal frame is still only ~8 k table look-ups. */
static const uint16_t crc16_nibble[16] = {0x0000u, 0x1021u, 0x2042u, 0x3063u, 0x4084u, 0x50A5u,
                                          0x60C6u, 0x70E7u, 0x8108u, 0x9129u, 0xA14Au, 0xB16Bu,
                                          0xC18Cu, 0xD1ADu, 0xE1CEu, 0xF1EFu};
static const uint32_t crc32c_nibble[16] = {0x00000000u, 0x105EC76Fu, 0x20BD8EDEu, 0x30E349B1u,
                                           0x417B1DBCu, 0x5125DAD3u, 0x61C69362u, 0x7198540Du,
                                           0x82F63B78u, 0x92A8FC17u, 0xA24BB5A6u, 0xB21572C9u,
                                           0xC38D26C4u, 0xD3D3E1ABu, 0xE330A81Au, 0xF36E6F75u};

uint16_t hil_crc16_ccitt_false(const uint8_t *data, size_t len)
{
    uint16_t crc = 0xFFFFu;
    size_t i;
    for (i = 0; i < len; i++) {
        crc = (uint16_t)((crc << 4) ^ crc16_nibble[(crc >> 12) ^ (data[i] >> 4)]);
        crc = (uint16_t)((crc << 4) ^ crc16_nibble[(crc >> 12) ^ (data[i] & 0x0Fu)]);
    }
    return crc;
}

uint32_t hil_crc32c(const uint8_t *data, size_t len)
{
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc32c_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc32c_nibble[crc & 0x0Fu];
    }
    return crc ^ 0xFFFFFFFFu;
}

/* ---- little-endian access: byte by byte, so alignment and host byte order do not matter ------------ */

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32); }

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* Two's complement without the implementation-defined unsigned-to-signed conversion. */
static int32_t to_i32(uint32_t u)
{
    return u <= 0x7FFFFFFFu ? (int32_t)u : (int32_t)(u - 0x80000000u) - INT32_MAX - 1;
}

static int64_t to_i64(uint64_t u)
{
    return u <= 0x7FFFFFFFFFFFFFFFu ? (int64_t)u : (int64_t)(u - 0x8000000000000000u) - INT64_MAX - 1;
}

static float to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Strict UTF-8, as Python's decoder: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k, j;
        uint32_t cp, min;
        if (c < 0x80u) {
            i++;
            continue;
        }
        if (c >= 0xC2u && c <= 0xDFu) {
            k = 1, cp = c & 0x1Fu, min = 0x80u;
        } else if ((c & 0xF0u) == 0xE0u) {
            k = 2, cp = c & 0x0Fu, min = 0x800u;
        } else if (c >= 0xF0u && c <= 0xF4u) {
            k = 3, cp = c & 0x07u, min = 0x10000u;
        } else {
            return 0;
        }
        if (k >= n - i)
            return 0;
        for (j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0u) != 0x80u)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFFu || (cp >= 0xD800u && cp <= 0xDFFFu))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* ---- payload decoding ------------------------------------------------------------------------------ */

/* A read cursor with a sticky failure flag: fields are read unconditionally and checked once at the end,
 * which keeps each message's decoder a plain list of its fields. A failed read yields zeros. */
typedef struct {
    const uint8_t *p;
    size_t n, off;
    int bad;
} rd_t;

static const uint8_t *take(rd_t *r, size_t k)
{
    const uint8_t *q;
    if (r->bad || k > r->n - r->off) {
        r->bad = 1;
        return NULL;
    }
    q = r->p + r->off;
    r->off += k;
    return q;
}

static uint8_t rd8(rd_t *r)
{
    const uint8_t *q = take(r, 1);
    return q ? q[0] : 0;
}

static uint16_t rd16(rd_t *r)
{
    const uint8_t *q = take(r, 2);
    return q ? get16(q) : 0;
}

static uint32_t rd32(rd_t *r)
{
    const uint8_t *q = take(r, 4);
    return q ? get32(q) : 0;
}

static uint64_t rd64(rd_t *r)
{
    const uint8_t *q = take(r, 8);
    return q ? get64(q) : 0;
}

static void rd_bytes(rd_t *r, uint8_t *dst, size_t k)
{
    const uint8_t *q = take(r, k);
    if (q)
        memcpy(dst, q, k);
}

static void rd_str(rd_t *r, hil_str_t *s)
{
    uint8_t n = rd8(r);
    const uint8_t *q = take(r, n);
    if (!q || !utf8_valid(q, n)) {
        r->bad = 1;
        return;
    }
    memcpy(s->s, q, n);
    s->s[n] = '\0';
    s->len = n;
}

/* `arrays` float arrays of `count` elements each, stored one after the other (EIS_SPECTRUM has three).
 * The whole block is bounds-checked before anything is written; `cap` is the destination capacity. */
static void rd_f32s(rd_t *r, float *const *dst, size_t arrays, size_t count, size_t cap)
{
    const uint8_t *q;
    size_t a, i;
    if (count > cap) {
        r->bad = 1;
        return;
    }
    q = take(r, arrays * count * 4u);
    if (!q)
        return;
    for (a = 0; a < arrays; a++)
        for (i = 0; i < count; i++, q += 4)
            dst[a][i] = to_f32(get32(q));
}

static void rd_u16s(rd_t *r, uint16_t *dst, size_t count, size_t cap)
{
    const uint8_t *q;
    size_t i;
    if (count > cap) {
        r->bad = 1;
        return;
    }
    q = take(r, count * 2u);
    if (!q)
        return;
    for (i = 0; i < count; i++)
        dst[i] = get16(q + 2 * i);
}

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Decode one payload into *m. Returns HIL_EV_FRAME, HIL_EV_UNKNOWN_MESSAGE_TYPE or
 * HIL_EV_MALFORMED_PAYLOAD. Bytes after the known layout are ignored (a newer minor version's fields). */
static hil_event_kind_t decode_payload(uint8_t type, const uint8_t *p, size_t n, hil_msg_t *m)
{
    rd_t r;
    r.p = p, r.n = n, r.off = 0, r.bad = 0;
    switch (type) {
    case HIL_MSG_SERVER_HELLO: {
        hil_server_hello_t *h = &m->server_hello;
        float *arrays[1];
        h->proto_max_major = rd8(&r);
        h->proto_min_major = rd8(&r);
        h->proto_minor = rd8(&r);
        h->auth_required = rd8(&r);
        h->seed = rd64(&r);
        h->cell_count = rd16(&r);
        h->n_freq = rd16(&r);
        h->step_period_us = rd32(&r);
        rd_bytes(&r, h->auth_challenge, sizeof h->auth_challenge);
        rd_bytes(&r, h->model_hash, sizeof h->model_hash);
        rd_bytes(&r, h->scenario_hash, sizeof h->scenario_hash);
        rd_str(&r, &h->server_version);
        rd_str(&r, &h->model_id);
        rd_str(&r, &h->scenario_id);
        arrays[0] = h->freq_hz;
        rd_f32s(&r, arrays, 1, h->n_freq, COUNT_OF(h->freq_hz));
        break;
    }
    case HIL_MSG_CLIENT_HELLO: {
        hil_client_hello_t *h = &m->client_hello;
        h->proto_min_major = rd8(&r);
        h->proto_max_major = rd8(&r);
        (void)take(&r, 2);
        rd_bytes(&r, h->auth_response, sizeof h->auth_response);
        rd_str(&r, &h->client_name);
        break;
    }
    case HIL_MSG_SUBSCRIBE: {
        hil_subscribe_t *s = &m->subscribe;
        s->msg_mask = rd32(&r);
        s->state_divider = rd16(&r);
        s->eis_mode = rd8(&r);
        (void)take(&r, 1);
        s->n_cells = rd16(&r);
        rd_u16s(&r, s->cells, s->n_cells, COUNT_OF(s->cells));
        break;
    }
    case HIL_MSG_HEARTBEAT: {
        hil_heartbeat_t *h = &m->heartbeat;
        h->t_sim_us = rd64(&r);
        h->t_wall_us = rd64(&r);
        h->frames_sent = rd64(&r);
        h->frames_dropped = rd64(&r);
        h->rx_bad_frames = rd32(&r);
        h->lateness_p50_us = rd32(&r);
        h->lateness_p99_us = rd32(&r);
        h->lateness_max_us = rd32(&r);
        h->queue_depth = rd16(&r);
        h->sim_state = rd8(&r);
        (void)take(&r, 1);
        break;
    }
    case HIL_MSG_BYE:
        m->bye.reason = rd16(&r);
        rd_str(&r, &m->bye.message);
        break;
    case HIL_MSG_ERROR:
        m->error.code = rd16(&r);
        (void)take(&r, 2);
        m->error.ref_seq = rd32(&r);
        rd_str(&r, &m->error.message);
        break;
    case HIL_MSG_CELL_STATES: {
        hil_cell_states_t *c = &m->cell_states;
        const uint8_t *q;
        size_t i;
        c->t_sim_us = rd64(&r);
        c->t_wall_us = rd64(&r);
        c->step = rd32(&r);
        c->n_cells = rd16(&r);
        (void)take(&r, 2);
        if (c->n_cells > COUNT_OF(c->records))
            r.bad = 1;
        q = take(&r, (size_t)c->n_cells * 24u);
        for (i = 0; q && i < c->n_cells; i++, q += 24) {
            hil_cell_state_t *s = &c->records[i];
            s->cell = get16(q);
            s->flags = get16(q + 2);
            s->voltage_uV = to_i32(get32(q + 4));
            s->current_uA = to_i32(get32(q + 8));
            s->temperature_mdegC = to_i32(get32(q + 12));
            s->soc_ppm = get32(q + 16);
            s->soh_ppm = get32(q + 20);
        }
        break;
    }
    case HIL_MSG_EIS_SPECTRUM: {
        hil_eis_spectrum_t *s = &m->eis_spectrum;
        float *arrays[3];
        s->t_sim_us = rd64(&r);
        s->spectrum_id = rd32(&r);
        s->sweep_duration_ms = rd32(&r);
        s->cell = rd16(&r);
        s->n_points = rd16(&r);
        s->cell_flags = rd16(&r);
        (void)take(&r, 2);
        s->soc_ppm = rd32(&r);
        s->soh_ppm = rd32(&r);
        s->temperature_mdegC = to_i32(rd32(&r));
        s->current_uA = to_i32(rd32(&r));
        s->kk_residual = to_f32(rd32(&r));
        arrays[0] = s->freq_hz, arrays[1] = s->z_re_ohm, arrays[2] = s->z_im_ohm;
        rd_f32s(&r, arrays, 3, s->n_points, COUNT_OF(s->freq_hz));
        break;
    }
    case HIL_MSG_EIS_POINT: {
        hil_eis_point_t *e = &m->eis_point;
        e->t_sim_us = rd64(&r);
        e->spectrum_id = rd32(&r);
        e->cell = rd16(&r);
        e->point_index = rd16(&r);
        e->n_points = rd16(&r);
        e->cell_flags = rd16(&r);
        e->freq_hz = to_f32(rd32(&r));
        e->z_re_ohm = to_f32(rd32(&r));
        e->z_im_ohm = to_f32(rd32(&r));
        break;
    }
    case HIL_MSG_FAULT_EVENT: {
        hil_fault_event_t *f = &m->fault_event;
        f->t_sim_us = rd64(&r);
        f->fault_id = rd32(&r);
        f->severity_ppm = rd32(&r);
        f->kind = rd8(&r);
        f->phase = rd8(&r);
        f->n_cells = rd16(&r);
        rd_u16s(&r, f->cells, f->n_cells, COUNT_OF(f->cells));
        break;
    }
    case HIL_MSG_CONTROL:
        m->control.command = rd8(&r);
        m->control.fault_kind = rd8(&r);
        m->control.cell = rd16(&r);
        m->control.aux = rd32(&r);
        m->control.value = to_i64(rd64(&r));
        break;
    case HIL_MSG_ACK:
        m->ack.ack_seq = rd32(&r);
        m->ack.command = rd8(&r);
        (void)take(&r, 3);
        m->ack.result = to_i64(rd64(&r));
        break;
    case HIL_MSG_NAK:
        m->nak.ack_seq = rd32(&r);
        m->nak.command = rd8(&r);
        (void)take(&r, 1);
        m->nak.code = rd16(&r);
        rd_str(&r, &m->nak.message);
        break;
    default:
        return HIL_EV_UNKNOWN_MESSAGE_TYPE;
    }
    return r.bad ? HIL_EV_MALFORMED_PAYLOAD : HIL_EV_FRAME;
}

/* ---- stream decoder ---------------------------------------------------------------------------------
 * The receiver algorithm of SPEC.md section 5, step for step as protocol/_decoder.py (which buffers
 * everything it is fed). Here input is taken lazily: only the bytes the next decision needs, so the
 * buffer is always a prefix of the Python buffer and every decision sees the same bytes. */

/* A GARBAGE run is reported early, before its count could overflow the u32 nbytes (after ~4 GiB). */
#define GARBAGE_LIMIT (UINT32_MAX - (uint32_t)HIL_MAX_FRAME)

void hil_decoder_init(hil_decoder_t *dec)
{
    dec->head = 0;
    dec->len = 0;
    dec->covered = 0;
    dec->garbage = 0;
    memset(&dec->stats, 0, sizeof dec->stats);
}

static void add_garbage(hil_decoder_t *d, size_t n)
{
    d->garbage += (uint32_t)n;
    d->stats.bytes_garbage += (uint32_t)n;
}

/* Drop n buffered bytes from the front; those not covered by a reported frame are garbage. */
static void drop(hil_decoder_t *d, size_t n)
{
    size_t cov = n < d->covered ? n : d->covered;
    d->covered -= cov;
    add_garbage(d, n - cov);
    d->head += n;
    d->len -= n;
    if (d->len == 0)
        d->head = 0;
}

static void cover(hil_decoder_t *d, size_t n)
{
    if (n > d->covered)
        d->covered = n;
}

static hil_event_kind_t report(hil_decoder_t *d, hil_event_t *ev, hil_event_kind_t kind, size_t nbytes,
                               const uint8_t *header)
{
    ev->kind = kind;
    ev->nbytes = (uint32_t)nbytes;
    ev->has_header = header != NULL;
    ev->version = header ? header[2] : 0;
    ev->msg_type = header ? header[3] : 0;
    ev->flags = header ? get16(header + 4) : 0;
    ev->payload_len = header ? get16(header + 6) : 0;
    ev->seq = header ? get32(header + 8) : 0;
    if (kind == HIL_EV_FRAME) {
        d->stats.frames++;
    } else {
        d->stats.errors++;
        d->stats.errors_by_kind[kind]++;
    }
    return kind;
}

/* Every frame or error is preceded by the garbage run before it. Callers check this before changing any
 * state, so the next call repeats the same decision and reports the frame or error itself. */
static hil_event_kind_t report_garbage(hil_decoder_t *d, hil_event_t *ev)
{
    uint32_t n = d->garbage;
    d->garbage = 0;
    return report(d, ev, HIL_EV_GARBAGE, n, NULL);
}

/* The buffer does not start with a sync word: drop up to the first one, or all but a trailing 0xE1 whose
 * partner may still come. */
static void resync(hil_decoder_t *d)
{
    const uint8_t *b = d->buf + d->head;
    size_t i = 0;
    while (i < d->len && !(b[i] == HIL_SYNC0 && (i + 1 == d->len || b[i + 1] == HIL_SYNC1)))
        i++;
    drop(d, i);
}

/* A whole candidate frame of `total` bytes is buffered and its header is sound. */
static hil_event_kind_t complete(hil_decoder_t *d, hil_event_t *ev, size_t total)
{
    const uint8_t *b = d->buf + d->head;
    size_t body = total - HIL_CRC_SIZE;
    hil_event_kind_t kind;
    cover(d, total);
    if (hil_crc32c(b, body) != get32(b + body)) {
        report(d, ev, HIL_EV_BAD_CRC, total, b);
        drop(d, 1); /* rescan the rest: a valid frame may start inside the rejected one */
        return HIL_EV_BAD_CRC;
    }
    if (b[2] != HIL_PROTOCOL_VERSION)
        kind = HIL_EV_UNSUPPORTED_VERSION;
    else
        kind = decode_payload(b[3], b + HIL_HEADER_SIZE, body - HIL_HEADER_SIZE, &ev->msg);
    report(d, ev, kind, total, b);
    drop(d, total);
    return kind;
}

static hil_event_kind_t step(hil_decoder_t *d, const uint8_t *in, size_t in_len, size_t *used, int eof,
                             hil_event_t *ev)
{
    *used = 0;
    for (;;) {
        const uint8_t *b = d->buf + d->head;
        size_t need, take_n;
        if (d->garbage >= GARBAGE_LIMIT)
            return report_garbage(d, ev);
        if (d->len == 0) {
            /* Nothing buffered: skip noise straight from the input; buffer only from a first sync byte. */
            size_t avail = in_len - *used, room = GARBAGE_LIMIT - d->garbage, k = 0;
            if (avail > room)
                avail = room;
            while (k < avail && in[*used + k] != HIL_SYNC0) /* indexing: `in` may be NULL when empty */
                k++;
            add_garbage(d, k);
            *used += k;
            if (k == avail) {
                if (*used < in_len)
                    continue; /* GARBAGE_LIMIT reached */
                if (eof && d->garbage)
                    return report_garbage(d, ev);
                return HIL_EV_NEED_MORE;
            }
            d->buf[0] = HIL_SYNC0;
            d->head = 0;
            d->len = 1;
            *used += 1;
            continue;
        }
        if (b[0] != HIL_SYNC0 || (d->len >= 2 && b[1] != HIL_SYNC1)) {
            resync(d);
            continue;
        }
        if (d->len < 2) {
            need = 2;
        } else if (d->len < HIL_HEADER_SIZE) {
            need = HIL_HEADER_SIZE;
        } else {
            size_t plen = get16(b + 6);
            if (hil_crc16_ccitt_false(b, 12) != get16(b + 12)) {
                drop(d, 1); /* a false sync: noise, or a header hit by corruption */
                continue;
            }
            if (plen > HIL_MAX_PAYLOAD) {
                if (d->garbage)
                    return report_garbage(d, ev);
                report(d, ev, HIL_EV_OVERSIZED, HIL_HEADER_SIZE, b);
                cover(d, HIL_HEADER_SIZE);
                drop(d, HIL_HEADER_SIZE);
                return HIL_EV_OVERSIZED;
            }
            need = HIL_HEADER_SIZE + plen + HIL_CRC_SIZE;
            if (d->len >= need) {
                if (d->garbage)
                    return report_garbage(d, ev);
                return complete(d, ev, need);
            }
        }
        take_n = in_len - *used;
        if (take_n > need - d->len)
            take_n = need - d->len;
        if (take_n) {
            if (d->head + need > sizeof d->buf) {
                memmove(d->buf, b, d->len);
                d->head = 0;
            }
            memcpy(d->buf + d->head + d->len, in + *used, take_n);
            d->len += take_n;
            *used += take_n;
            continue;
        }
        if (!eof)
            return HIL_EV_NEED_MORE;
        if (need == 2) {
            drop(d, 1); /* a lone first sync byte at the end */
            continue;
        }
        /* End of stream inside a candidate frame: report it once (unless it lies inside a frame already
         * reported), then rescan after its first byte so that a complete frame inside it is still found. */
        if (d->covered == 0) {
            if (d->garbage)
                return report_garbage(d, ev);
            report(d, ev, HIL_EV_TRUNCATED, d->len, NULL);
            cover(d, d->len);
            drop(d, 1);
            return HIL_EV_TRUNCATED;
        }
        drop(d, 1);
    }
}

hil_event_kind_t hil_decoder_feed(hil_decoder_t *dec, const uint8_t *data, size_t len, size_t *consumed,
                                  hil_event_t *out)
{
    hil_event_kind_t kind = step(dec, data, len, consumed, 0, out);
    dec->stats.bytes_received += (uint32_t)*consumed;
    return kind;
}

hil_event_kind_t hil_decoder_finish(hil_decoder_t *dec, hil_event_t *out)
{
    size_t used;
    return step(dec, NULL, 0, &used, 1, out);
}

const char *hil_event_kind_name(hil_event_kind_t kind)
{
    static const char *const names[HIL_EV_KIND_COUNT] = {
        "NEED_MORE", "BAD_CRC", "OVERSIZED", "UNKNOWN_MESSAGE_TYPE", "UNSUPPORTED_VERSION",
        "MALFORMED_PAYLOAD", "GARBAGE", "TRUNCATED", "FRAME"};
    return (unsigned)kind < HIL_EV_KIND_COUNT ? names[kind] : "?";
}

const char *hil_msg_type_name(unsigned msg_type)
{
    switch (msg_type) {
    case HIL_MSG_SERVER_HELLO: return "SERVER_HELLO";
    case HIL_MSG_CLIENT_HELLO: return "CLIENT_HELLO";
    case HIL_MSG_SUBSCRIBE: return "SUBSCRIBE";
    case HIL_MSG_HEARTBEAT: return "HEARTBEAT";
    case HIL_MSG_BYE: return "BYE";
    case HIL_MSG_ERROR: return "ERROR";
    case HIL_MSG_CELL_STATES: return "CELL_STATES";
    case HIL_MSG_EIS_SPECTRUM: return "EIS_SPECTRUM";
    case HIL_MSG_EIS_POINT: return "EIS_POINT";
    case HIL_MSG_FAULT_EVENT: return "FAULT_EVENT";
    case HIL_MSG_CONTROL: return "CONTROL";
    case HIL_MSG_ACK: return "ACK";
    case HIL_MSG_NAK: return "NAK";
    default: return "?";
    }
}

/* ---- encoder ----------------------------------------------------------------------------------------- */

/* A write cursor with a sticky failure flag, like rd_t: the payload is written in place after a
 * reserved header, and nothing is written past cap. */
typedef struct {
    uint8_t *p;
    size_t cap, off;
    int bad;
} wr_t;

static uint8_t *put(wr_t *w, size_t k)
{
    uint8_t *q;
    if (w->bad || k > w->cap - w->off) {
        w->bad = 1;
        return NULL;
    }
    q = w->p + w->off;
    w->off += k;
    return q;
}

static void wr8(wr_t *w, uint8_t v)
{
    uint8_t *q = put(w, 1);
    if (q)
        q[0] = v;
}

static void wr16(wr_t *w, uint16_t v)
{
    uint8_t *q = put(w, 2);
    if (q)
        put16(q, v);
}

static void wr32(wr_t *w, uint32_t v)
{
    uint8_t *q = put(w, 4);
    if (q)
        put32(q, v);
}

static void wr64(wr_t *w, uint64_t v)
{
    uint8_t *q = put(w, 8);
    if (q)
        put64(q, v);
}

static void wr_zero(wr_t *w, size_t k)
{
    uint8_t *q = put(w, k);
    if (q)
        memset(q, 0, k);
}

static void wr_bytes(wr_t *w, const void *src, size_t k)
{
    uint8_t *q = put(w, k);
    if (q && k)
        memcpy(q, src, k);
}

static void wr_str(wr_t *w, const char *s, size_t n)
{
    if (n > HIL_MAX_STRING || (n && !utf8_valid((const uint8_t *)s, n))) {
        w->bad = 1;
        return;
    }
    wr8(w, (uint8_t)n);
    wr_bytes(w, s, n);
}

/* Signed to unsigned is defined by C as modulo 2^64: the two's complement bit pattern on any host. */
static uint64_t from_i64(int64_t v) { return (uint64_t)v; }

static wr_t frame_begin(uint8_t *out, size_t cap)
{
    wr_t w;
    w.p = out, w.cap = cap, w.off = 0, w.bad = 0;
    (void)put(&w, HIL_HEADER_SIZE);
    return w;
}

static size_t frame_end(wr_t *w, uint8_t msg_type, uint32_t seq)
{
    size_t plen = w->off - HIL_HEADER_SIZE;
    uint8_t *crc;
    if (w->bad || plen > HIL_PROTOCOL_MAX_PAYLOAD)
        return 0;
    crc = put(w, HIL_CRC_SIZE);
    if (!crc)
        return 0;
    w->p[0] = HIL_SYNC0;
    w->p[1] = HIL_SYNC1;
    w->p[2] = HIL_PROTOCOL_VERSION;
    w->p[3] = msg_type;
    put16(w->p + 4, 0);
    put16(w->p + 6, (uint16_t)plen);
    put32(w->p + 8, seq);
    put16(w->p + 12, hil_crc16_ccitt_false(w->p, 12));
    put32(crc, hil_crc32c(w->p, HIL_HEADER_SIZE + plen));
    return w->off;
}

size_t hil_encode_client_hello(uint8_t *out, size_t cap, uint32_t seq, uint8_t proto_min_major,
                               uint8_t proto_max_major, const uint8_t auth_response[HIL_AUTH_RESPONSE_SIZE],
                               const char *client_name, size_t name_len)
{
    wr_t w = frame_begin(out, cap);
    wr8(&w, proto_min_major);
    wr8(&w, proto_max_major);
    wr_zero(&w, 2);
    if (auth_response)
        wr_bytes(&w, auth_response, HIL_AUTH_RESPONSE_SIZE);
    else
        wr_zero(&w, HIL_AUTH_RESPONSE_SIZE);
    wr_str(&w, client_name, name_len);
    return frame_end(&w, HIL_MSG_CLIENT_HELLO, seq);
}

size_t hil_encode_subscribe(uint8_t *out, size_t cap, uint32_t seq, uint32_t msg_mask, uint16_t state_divider,
                            uint8_t eis_mode, const uint16_t *cells, size_t n_cells)
{
    wr_t w = frame_begin(out, cap);
    size_t i;
    if (n_cells > (HIL_PROTOCOL_MAX_PAYLOAD - 10) / 2)
        return 0;
    wr32(&w, msg_mask);
    wr16(&w, state_divider);
    wr8(&w, eis_mode);
    wr_zero(&w, 1);
    wr16(&w, (uint16_t)n_cells);
    for (i = 0; i < n_cells && !w.bad; i++)
        wr16(&w, cells[i]);
    return frame_end(&w, HIL_MSG_SUBSCRIBE, seq);
}

size_t hil_encode_control(uint8_t *out, size_t cap, uint32_t seq, const hil_control_t *control)
{
    wr_t w = frame_begin(out, cap);
    wr8(&w, control->command);
    wr8(&w, control->fault_kind);
    wr16(&w, control->cell);
    wr32(&w, control->aux);
    wr64(&w, from_i64(control->value));
    return frame_end(&w, HIL_MSG_CONTROL, seq);
}

size_t hil_encode_heartbeat(uint8_t *out, size_t cap, uint32_t seq, const hil_heartbeat_t *hb)
{
    wr_t w = frame_begin(out, cap);
    wr64(&w, hb->t_sim_us);
    wr64(&w, hb->t_wall_us);
    wr64(&w, hb->frames_sent);
    wr64(&w, hb->frames_dropped);
    wr32(&w, hb->rx_bad_frames);
    wr32(&w, hb->lateness_p50_us);
    wr32(&w, hb->lateness_p99_us);
    wr32(&w, hb->lateness_max_us);
    wr16(&w, hb->queue_depth);
    wr8(&w, hb->sim_state);
    wr_zero(&w, 1);
    return frame_end(&w, HIL_MSG_HEARTBEAT, seq);
}

size_t hil_encode_bye(uint8_t *out, size_t cap, uint32_t seq, uint16_t reason, const char *message,
                      size_t message_len)
{
    wr_t w = frame_begin(out, cap);
    wr16(&w, reason);
    wr_str(&w, message, message_len);
    return frame_end(&w, HIL_MSG_BYE, seq);
}

size_t hil_encode_error(uint8_t *out, size_t cap, uint32_t seq, uint16_t code, uint32_t ref_seq,
                        const char *message, size_t message_len)
{
    wr_t w = frame_begin(out, cap);
    wr16(&w, code);
    wr_zero(&w, 2);
    wr32(&w, ref_seq);
    wr_str(&w, message, message_len);
    return frame_end(&w, HIL_MSG_ERROR, seq);
}

size_t hil_encode_ack(uint8_t *out, size_t cap, uint32_t seq, const hil_ack_t *ack)
{
    wr_t w = frame_begin(out, cap);
    wr32(&w, ack->ack_seq);
    wr8(&w, ack->command);
    wr_zero(&w, 3);
    wr64(&w, from_i64(ack->result));
    return frame_end(&w, HIL_MSG_ACK, seq);
}

size_t hil_encode_nak(uint8_t *out, size_t cap, uint32_t seq, uint32_t ack_seq, uint8_t command, uint16_t code,
                      const char *message, size_t message_len)
{
    wr_t w = frame_begin(out, cap);
    wr32(&w, ack_seq);
    wr8(&w, command);
    wr_zero(&w, 1);
    wr16(&w, code);
    wr_str(&w, message, message_len);
    return frame_end(&w, HIL_MSG_NAK, seq);
}

/* ---- SHA-256, HMAC-SHA256, authentication ------------------------------------------------------------- */

typedef struct {
    uint32_t h[8];
    uint64_t total; /* bytes hashed */
    uint8_t block[64];
    size_t fill;
} sha256_t;

static const uint32_t sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

static uint32_t ror(uint32_t x, unsigned n) { return (x >> n) | (x << (32u - n)); }

static uint32_t get32be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void put32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The message schedule is kept as a 16-word ring (w[i & 15]) rather than 64 words: 192 bytes less stack. */
static void sha256_compress(sha256_t *s, const uint8_t *blk)
{
    uint32_t w[16], a, b, c, d, e, f, g, h, t1, t2, wi;
    unsigned i;
    a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (i = 0; i < 64; i++) {
        if (i < 16) {
            wi = w[i] = get32be(blk + 4 * i);
        } else {
            uint32_t w15 = w[(i + 1) & 15], w2 = w[(i + 14) & 15];
            uint32_t s0 = ror(w15, 7) ^ ror(w15, 18) ^ (w15 >> 3);
            uint32_t s1 = ror(w2, 17) ^ ror(w2, 19) ^ (w2 >> 10);
            wi = w[i & 15] = w[i & 15] + s0 + w[(i + 9) & 15] + s1;
        }
        t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + wi;
        t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1;
        d = c, c = b, b = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
    s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha256_init(sha256_t *s)
{
    static const uint32_t iv[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(s->h, iv, sizeof iv);
    s->total = 0;
    s->fill = 0;
}

static void sha256_update(sha256_t *s, const uint8_t *data, size_t len)
{
    s->total += len;
    while (len) {
        size_t k = 64 - s->fill;
        if (k > len)
            k = len;
        memcpy(s->block + s->fill, data, k);
        s->fill += k, data += k, len -= k;
        if (s->fill == 64) {
            sha256_compress(s, s->block);
            s->fill = 0;
        }
    }
}

static void sha256_final(sha256_t *s, uint8_t out[32])
{
    uint64_t bits = s->total * 8u;
    unsigned i;
    s->block[s->fill++] = 0x80u;
    if (s->fill > 56) {
        memset(s->block + s->fill, 0, 64 - s->fill);
        sha256_compress(s, s->block);
        s->fill = 0;
    }
    memset(s->block + s->fill, 0, 56 - s->fill);
    put32be(s->block + 56, (uint32_t)(bits >> 32));
    put32be(s->block + 60, (uint32_t)bits);
    sha256_compress(s, s->block);
    for (i = 0; i < 8; i++)
        put32be(out + 4 * i, s->h[i]);
}

void hil_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    sha256_t s;
    sha256_init(&s);
    sha256_update(&s, data, len);
    sha256_final(&s, out);
}

/* HMAC over the concatenation of up to three message parts, so that the auth message is never copied. */
static void hmac3(const uint8_t *key, size_t key_len, const uint8_t *const part[3], const size_t part_len[3],
                  uint8_t out[32])
{
    uint8_t k[64], pad[64];
    sha256_t s;
    unsigned i;
    memset(k, 0, sizeof k);
    if (key_len > 64)
        hil_sha256(key, key_len, k);
    else if (key_len)
        memcpy(k, key, key_len);
    for (i = 0; i < 64; i++)
        pad[i] = (uint8_t)(k[i] ^ 0x36u);
    sha256_init(&s);
    sha256_update(&s, pad, 64);
    for (i = 0; i < 3; i++)
        if (part_len[i])
            sha256_update(&s, part[i], part_len[i]);
    sha256_final(&s, out);
    for (i = 0; i < 64; i++)
        pad[i] = (uint8_t)(k[i] ^ 0x5cu);
    sha256_init(&s);
    sha256_update(&s, pad, 64);
    sha256_update(&s, out, 32);
    sha256_final(&s, out);
}

void hil_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len, uint8_t out[32])
{
    const uint8_t *part[3];
    size_t part_len[3];
    part[0] = msg, part[1] = NULL, part[2] = NULL;
    part_len[0] = msg_len, part_len[1] = 0, part_len[2] = 0;
    hmac3(key, key_len, part, part_len, out);
}

void hil_auth_response(const uint8_t *secret, size_t secret_len, const uint8_t challenge[HIL_AUTH_CHALLENGE_SIZE],
                       const char *client_name, size_t name_len, uint8_t out[HIL_AUTH_RESPONSE_SIZE])
{
    static const uint8_t context[15] = {'E', 'I', 'S', '-', 'H', 'I', 'L', '-', 'A', 'U', 'T', 'H', '-', 'V', '1'};
    const uint8_t *part[3];
    size_t part_len[3];
    part[0] = context, part[1] = challenge, part[2] = (const uint8_t *)client_name;
    part_len[0] = sizeof context, part_len[1] = HIL_AUTH_CHALLENGE_SIZE, part_len[2] = name_len;
    hmac3(secret, secret_len, part, part_len, out);
}

/* hil_session.h - the client session shared by the TCP and serial examples (included by each, one
 * translation unit per program, so everything here is static). POSIX; the transport is a file descriptor
 * already connected or opened by the example.
 *
 * Session (SPEC.md section 6): wait for SERVER_HELLO, answer CLIENT_HELLO (with the MAC when the server
 * asks for authentication), SUBSCRIBE once the hello is acknowledged, print every cell-state and spectrum
 * frame on one line, send a HEARTBEAT every second, stop on BYE or end of stream.
 *
 * Options (after the two positional arguments): --secret S, --name N, --cells 0,3,7 (subscribe to these
 * cells only; default all), --points (EIS_POINT in sweep mode instead of whole EIS_SPECTRUMs). A build with
 * a small HIL_MAX_PAYLOAD (512) needs both: a CELL_STATES of more than 20 cells or a spectrum of more than
 * 39 points would not fit its buffer and be reported OVERSIZED (SPEC.md section 4, SERVER_HELLO). */
#ifndef HIL_SESSION_H
#define HIL_SESSION_H

#include "hil_client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    const char *secret; /* NULL: no shared secret */
    const char *name;
    uint32_t tx_seq;    /* our next frame's seq: the first frame of a connection is 0 */
    uint32_t tx_frames;
    uint32_t hello_seq;
    int hello_sent, subscribed;
    int points;                  /* --points: EIS_POINT (sweep) instead of EIS_SPECTRUM */
    uint16_t cells[64];          /* --cells: the cells to subscribe to; none = all */
    uint16_t n_cells;
    uint64_t last_t_sim_us; /* echoed in our heartbeats */
    hil_decoder_t dec;
    hil_event_t ev;
    uint8_t tx[HIL_OVERHEAD + 512]; /* every frame this client sends fits */
} session_t;

static uint64_t now_us(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int send_all(session_t *s, size_t n)
{
    size_t off = 0;
    if (n == 0) {
        fprintf(stderr, "encoder refused a frame\n");
        return -1;
    }
    while (off < n) {
        ssize_t w = write(s->fd, s->tx + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            perror("write");
            return -1;
        }
        off += (size_t)w;
    }
    s->tx_seq++;
    s->tx_frames++;
    return 0;
}

static int send_heartbeat(session_t *s)
{
    hil_heartbeat_t hb;
    memset(&hb, 0, sizeof hb);
    hb.t_sim_us = s->last_t_sim_us;
    hb.t_wall_us = now_us(CLOCK_REALTIME);
    hb.frames_sent = s->tx_frames + 1u;
    hb.rx_bad_frames = s->dec.stats.errors;
    return send_all(s, hil_encode_heartbeat(s->tx, sizeof s->tx, s->tx_seq, &hb));
}

static int on_server_hello(session_t *s, const hil_server_hello_t *h)
{
    uint8_t mac[HIL_AUTH_RESPONSE_SIZE];
    const uint8_t *auth = NULL;
    printf("SERVER_HELLO versions %u..%u.%u cells %u step %lu us server %s model %s scenario %s auth %u\n",
           h->proto_min_major, h->proto_max_major, h->proto_minor, h->cell_count,
           (unsigned long)h->step_period_us, h->server_version.s, h->model_id.s, h->scenario_id.s,
           h->auth_required);
    if (h->proto_min_major > HIL_PROTOCOL_VERSION || h->proto_max_major < HIL_PROTOCOL_VERSION) {
        fprintf(stderr, "server does not speak protocol version %d\n", HIL_PROTOCOL_VERSION);
        return -1;
    }
    if (h->auth_required) {
        if (!s->secret) {
            fprintf(stderr, "server requires authentication: pass --secret\n");
            return -1;
        }
        hil_auth_response((const uint8_t *)s->secret, strlen(s->secret), h->auth_challenge, s->name,
                          strlen(s->name), mac);
        auth = mac;
    }
    s->hello_seq = s->tx_seq;
    s->hello_sent = 1;
    return send_all(s, hil_encode_client_hello(s->tx, sizeof s->tx, s->tx_seq, HIL_PROTOCOL_VERSION,
                                               HIL_PROTOCOL_VERSION, auth, s->name, strlen(s->name)));
}

/* Returns 1 to stop (BYE), -1 on a fatal problem, 0 to go on. */
static int on_frame(session_t *s)
{
    const hil_event_t *e = &s->ev;
    const hil_msg_t *m = &e->msg;
    unsigned i;
    switch (e->msg_type) {
    case HIL_MSG_SERVER_HELLO:
        return on_server_hello(s, &m->server_hello);
    case HIL_MSG_ACK:
        printf("ACK seq %lu command %u result %lld\n", (unsigned long)m->ack.ack_seq, m->ack.command,
               (long long)m->ack.result);
        if (s->hello_sent && !s->subscribed && m->ack.ack_seq == s->hello_seq) {
            s->subscribed = 1;
            return send_all(s, hil_encode_subscribe(
                                   s->tx, sizeof s->tx, s->tx_seq,
                                   HIL_SUB_CELL_STATES | (s->points ? HIL_SUB_EIS_POINT : HIL_SUB_EIS_SPECTRUM) |
                                       HIL_SUB_FAULT_EVENT | HIL_SUB_HEARTBEAT,
                                   1, (uint8_t)(s->points ? HIL_EIS_SWEEP : HIL_EIS_SCENARIO_DEFAULT),
                                   s->n_cells ? s->cells : NULL, s->n_cells));
        }
        return 0;
    case HIL_MSG_CELL_STATES: {
        const hil_cell_states_t *c = &m->cell_states;
        s->last_t_sim_us = c->t_sim_us;
        printf("CELL_STATES seq %lu t_sim_us %llu step %lu n %u", (unsigned long)e->seq,
               (unsigned long long)c->t_sim_us, (unsigned long)c->step, c->n_cells);
        for (i = 0; i < c->n_cells; i++)
            printf(" | cell %u %ld uV %ld uA %ld mdegC soc %lu soh %lu flags 0x%x", c->records[i].cell,
                   (long)c->records[i].voltage_uV, (long)c->records[i].current_uA,
                   (long)c->records[i].temperature_mdegC, (unsigned long)c->records[i].soc_ppm,
                   (unsigned long)c->records[i].soh_ppm, c->records[i].flags);
        printf("\n");
        return 0;
    }
    case HIL_MSG_EIS_SPECTRUM: {
        const hil_eis_spectrum_t *p = &m->eis_spectrum;
        s->last_t_sim_us = p->t_sim_us;
        printf("EIS_SPECTRUM seq %lu t_sim_us %llu cell %u id %lu n %u kk %.6g", (unsigned long)e->seq,
               (unsigned long long)p->t_sim_us, p->cell, (unsigned long)p->spectrum_id, p->n_points,
               (double)p->kk_residual);
        for (i = 0; i < p->n_points; i++)
            printf(" | %.9g Hz %.9g %+.9g ohm", (double)p->freq_hz[i], (double)p->z_re_ohm[i],
                   (double)p->z_im_ohm[i]);
        printf("\n");
        return 0;
    }
    case HIL_MSG_EIS_POINT: {
        const hil_eis_point_t *p = &m->eis_point;
        s->last_t_sim_us = p->t_sim_us;
        printf("EIS_POINT seq %lu t_sim_us %llu cell %u id %lu point %u of %u | %.9g Hz %.9g %+.9g ohm\n",
               (unsigned long)e->seq, (unsigned long long)p->t_sim_us, p->cell, (unsigned long)p->spectrum_id,
               p->point_index, p->n_points, (double)p->freq_hz, (double)p->z_re_ohm, (double)p->z_im_ohm);
        return 0;
    }
    case HIL_MSG_FAULT_EVENT:
        printf("FAULT_EVENT id %lu kind 0x%02x phase %u cells %u\n", (unsigned long)m->fault_event.fault_id,
               m->fault_event.kind, m->fault_event.phase, m->fault_event.n_cells);
        return 0;
    case HIL_MSG_HEARTBEAT:
        printf("HEARTBEAT t_sim_us %llu sent %llu dropped %llu state %u\n",
               (unsigned long long)m->heartbeat.t_sim_us, (unsigned long long)m->heartbeat.frames_sent,
               (unsigned long long)m->heartbeat.frames_dropped, m->heartbeat.sim_state);
        return 0;
    case HIL_MSG_NAK:
        printf("NAK seq %lu code %u %s\n", (unsigned long)m->nak.ack_seq, m->nak.code, m->nak.message.s);
        return 0;
    case HIL_MSG_ERROR:
        printf("ERROR code %u ref_seq %lu %s\n", m->error.code, (unsigned long)m->error.ref_seq,
               m->error.message.s);
        return 0;
    case HIL_MSG_BYE:
        printf("BYE reason %u %s\n", m->bye.reason, m->bye.message.s);
        return 1;
    default:
        printf("%s seq %lu\n", hil_msg_type_name(e->msg_type), (unsigned long)e->seq);
        return 0;
    }
}

static int on_event(session_t *s, hil_event_kind_t kind)
{
    if (kind == HIL_EV_FRAME)
        return on_frame(s);
    if (kind == HIL_EV_OVERSIZED && s->ev.msg_type == HIL_MSG_SERVER_HELLO && !s->hello_sent) {
        /* SPEC.md section 4: a conforming server's hello fits 512 bytes; this one cannot be read */
        fprintf(stderr, "SERVER_HELLO of %u bytes exceeds HIL_MAX_PAYLOAD %d: cannot connect\n",
                (unsigned)s->ev.payload_len, HIL_MAX_PAYLOAD);
        return -1;
    }
    /* A bad frame never ends the session (SPEC.md section 5): count it (the decoder does) and log it. */
    printf("decoder: %s, %lu bytes\n", hil_event_kind_name(kind), (unsigned long)s->ev.nbytes);
    return 0;
}

/* "0,3,7" into s->cells. Returns 0, or -1 for anything but up to 64 numbers 0..65534 separated by commas. */
static int parse_cells(session_t *s, const char *text)
{
    unsigned long v = 0;
    int digits = 0;
    s->n_cells = 0;
    for (;; text++) {
        if (*text >= '0' && *text <= '9' && v <= 65534u) {
            v = v * 10u + (unsigned long)(*text - '0');
            digits++;
        } else if ((*text == ',' || *text == '\0') && digits && v <= 65534u &&
                   s->n_cells < sizeof s->cells / sizeof s->cells[0]) {
            s->cells[s->n_cells++] = (uint16_t)v;
            if (*text == '\0')
                return 0;
            v = 0;
            digits = 0;
        } else {
            return -1;
        }
    }
}

/* Options after the two positional arguments: [--secret S] [--name N] [--cells LIST] [--points]. Returns 0,
 * or -1 on anything else. */
static int session_options(session_t *s, int argc, char **argv)
{
    int i;
    for (i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--points") == 0)
            s->points = 1;
        else if (i + 1 == argc)
            return -1;
        else if (strcmp(argv[i], "--secret") == 0)
            s->secret = argv[++i];
        else if (strcmp(argv[i], "--name") == 0)
            s->name = argv[++i];
        else if (strcmp(argv[i], "--cells") == 0) {
            if (parse_cells(s, argv[++i]) < 0)
                return -1;
        } else
            return -1;
    }
    return 0;
}

/* Run the session until BYE (returns 0), end of stream (0) or an error (1). */
static int session_run(session_t *s)
{
    static uint8_t rx[4096];
    uint64_t next_hb = 0;
    hil_decoder_init(&s->dec);
    for (;;) {
        struct pollfd pfd;
        uint64_t now = now_us(CLOCK_MONOTONIC);
        ssize_t n;
        int r;
        if (s->hello_sent && now >= next_hb) {
            if (next_hb && send_heartbeat(s) < 0)
                return 1;
            next_hb = now + 1000000u;
        }
        pfd.fd = s->fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        r = poll(&pfd, 1, s->hello_sent ? (int)((next_hb - now) / 1000u) + 1 : 1000);
        if (r < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        if (r <= 0)
            continue;
        n = read(s->fd, rx, sizeof rx);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            hil_event_kind_t kind;
            if (n < 0)
                perror("read");
            while ((kind = hil_decoder_finish(&s->dec, &s->ev)) != HIL_EV_NEED_MORE)
                (void)on_event(s, kind);
            printf("end of stream\n");
            return n < 0;
        }
        {
            const uint8_t *p = rx;
            size_t len = (size_t)n, used;
            hil_event_kind_t kind;
            while ((kind = hil_decoder_feed(&s->dec, p, len, &used, &s->ev)) != HIL_EV_NEED_MORE) {
                p += used;
                len -= used;
                r = on_event(s, kind);
                if (r)
                    return r < 0;
            }
        }
        fflush(stdout);
    }
}

#endif /* HIL_SESSION_H */

/* Test helper for diff_python.py: reads streams from stdin as records (u32 LE length, u32 LE chunk seed,
 * bytes), decodes each with hil_client fed in chunks (seed 0: whole), and prints one line per event
 * ("KIND nbytes seq msg_type", "-" for an absent header) and "END" after each stream. */
#include "hil_client.h"

#include <stdio.h>
#include <stdlib.h>

static hil_decoder_t dec;
static hil_event_t ev;
static uint8_t data[1u << 20];

static void print_event(hil_event_kind_t kind)
{
    if (ev.has_header)
        printf("%s %lu %lu %u\n", hil_event_kind_name(kind), (unsigned long)ev.nbytes, (unsigned long)ev.seq,
               (unsigned)ev.msg_type);
    else
        printf("%s %lu - -\n", hil_event_kind_name(kind), (unsigned long)ev.nbytes);
}

static int read_u32(uint32_t *v)
{
    uint8_t b[4];
    if (fread(b, 1, 4, stdin) != 4)
        return 0;
    *v = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
    return 1;
}

int main(void)
{
    uint32_t len, seed;
    while (read_u32(&len) && read_u32(&seed)) {
        size_t off = 0, used;
        hil_event_kind_t kind;
        if (len > sizeof data || fread(data, 1, len, stdin) != len)
            return 2;
        hil_decoder_init(&dec);
        while (off < len) {
            size_t n = len - off;
            if (seed) {
                seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
                if (1 + seed % 64u < n)
                    n = 1 + seed % 64u;
            }
            while ((kind = hil_decoder_feed(&dec, data + off, n, &used, &ev)) != HIL_EV_NEED_MORE) {
                off += used, n -= used;
                print_event(kind);
            }
            off += n;
        }
        while ((kind = hil_decoder_finish(&dec, &ev)) != HIL_EV_NEED_MORE)
            print_event(kind);
        printf("END\n");
    }
    return 0;
}

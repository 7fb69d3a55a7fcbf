/* hil_tcp_client host port [--secret S] [--name N] [--cells LIST] [--points]
 * Connects to an eis-hil server over TCP, subscribes and prints cell states and spectra, one line each.
 * Exit status 0 on BYE or end of stream, 1 on error. */
#define _POSIX_C_SOURCE 200809L

#include "hil_session.h"

#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>

static int connect_tcp(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    int fd = -1, err;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    err = getaddrinfo(host, port, &hints, &res);
    if (err) {
        fprintf(stderr, "%s:%s: %s\n", host, port, gai_strerror(err));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "%s:%s: cannot connect\n", host, port);
    return fd;
}

int main(int argc, char **argv)
{
    static session_t s;
    int rc;
    if (argc < 3) {
        fprintf(stderr, "usage: %s host port [--secret S] [--name N] [--cells LIST] [--points]\n", argv[0]);
        return 1;
    }
    s.name = "hil_tcp_client";
    if (session_options(&s, argc, argv) < 0) {
        fprintf(stderr, "usage: %s host port [--secret S] [--name N] [--cells LIST] [--points]\n", argv[0]);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error return from write, not a signal */
    s.fd = connect_tcp(argv[1], argv[2]);
    if (s.fd < 0)
        return 1;
    rc = session_run(&s);
    close(s.fd);
    return rc;
}

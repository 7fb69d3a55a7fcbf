/* hil_serial_client device baud [--secret S] [--name N] [--cells LIST] [--points]
 * The same session as hil_tcp_client over a serial line (e.g. /dev/ttyUSB0 115200), in raw 8N1 mode
 * without flow control. If the bridge sends no SERVER_HELLO, the frames it streams are printed anyway. */
#define _POSIX_C_SOURCE 200809L

#include "hil_session.h"

#include <fcntl.h>
#include <stdlib.h>
#include <termios.h>

static int baud_constant(long baud, speed_t *out)
{
    static const struct {
        long baud;
        speed_t constant;
    } table[] = {{9600, B9600}, {19200, B19200}, {38400, B38400}
#ifdef B57600
                 , {57600, B57600}
#endif
#ifdef B115200
                 , {115200, B115200}
#endif
#ifdef B230400
                 , {230400, B230400}
#endif
#ifdef B460800
                 , {460800, B460800}
#endif
#ifdef B921600
                 , {921600, B921600}
#endif
    };
    size_t i;
    for (i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].baud == baud) {
            *out = table[i].constant;
            return 0;
        }
    return -1;
}

/* Raw mode by hand: cfmakeraw() is not POSIX. */
static int open_serial(const char *dev, speed_t speed)
{
    struct termios t;
    int fd = open(dev, O_RDWR | O_NOCTTY);
    if (fd < 0) {
        perror(dev);
        return -1;
    }
    if (tcgetattr(fd, &t) < 0) {
        perror("tcgetattr");
        close(fd);
        return -1;
    }
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF);
    t.c_oflag &= ~(tcflag_t)OPOST;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB | CSTOPB);
    t.c_cflag |= CS8 | CREAD | CLOCAL;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (cfsetispeed(&t, speed) < 0 || cfsetospeed(&t, speed) < 0 || tcsetattr(fd, TCSANOW, &t) < 0) {
        perror("termios");
        close(fd);
        return -1;
    }
    tcflush(fd, TCIOFLUSH);
    return fd;
}

int main(int argc, char **argv)
{
    static session_t s;
    speed_t speed;
    int rc;
    if (argc < 3 || baud_constant(strtol(argv[2], NULL, 10), &speed) < 0) {
        fprintf(stderr, "usage: %s device baud [--secret S] [--name N] [--cells LIST] [--points] (baud: 9600 .. 921600)\n",
                argv[0]);
        return 1;
    }
    s.name = "hil_serial_client";
    if (session_options(&s, argc, argv) < 0) {
        fprintf(stderr, "usage: %s device baud [--secret S] [--name N] [--cells LIST] [--points]\n", argv[0]);
        return 1;
    }
    s.fd = open_serial(argv[1], speed);
    if (s.fd < 0)
        return 1;
    rc = session_run(&s);
    close(s.fd);
    return rc;
}

/* listener: listening sockets. SO_REUSEPORT lets several sockets share the
 * port: one per worker index, each inherited by whichever worker serves
 * that index (see master.c). */
#include "quotecache/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int bind_socket(const hostport *hp, bool do_listen, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[8];
    snprintf(port, sizeof(port), "%d", hp->port);
    int rc = getaddrinfo(hp->host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", hp->host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || (do_listen && listen(fd, 1024) < 0) ||
        fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", hp->host, hp->port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int listener_open(const hostport *hp, char *err, size_t errlen)
{
    return bind_socket(hp, true, err, errlen);
}

int listener_probe(const hostport *hp, char *err, size_t errlen)
{
    int fd = bind_socket(hp, false, err, errlen);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

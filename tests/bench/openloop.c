/*
 * quotecache-openloop: a constant-rate (open-loop) HTTP/1.1 load client for
 * scripts/bench.
 *
 * Request k is due at start + k / rate, whatever happened to the ones
 * before it; its latency runs from that due time to the last byte of its
 * answer, so time spent waiting for a free connection counts (no
 * coordinated omission: a server that stalls is charged for every request
 * it held up). Each of --conns keep-alive connections carries one request
 * at a time, as wrk's do. One thread, libevent; a request due while every
 * connection is busy waits (and is charged for it); one due while a
 * connection is idle goes out at the next 100 µs tick or at once when an
 * answer frees a connection.
 *
 * usage: quotecache-openloop --port P --path PATH --rate R --duration S
 *                            [--conns C]
 * Prints one line: OPENLOOP {"asked":R,"sent":N,"ok":N,"errors":N,
 *   "achieved":X,"p50_us":N,"p99_us":N,"p999_us":N,"max_us":N}
 * "achieved" is answers per second of the duration.
 */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define MAX_CONNS 1024
#define DRAIN_S 2.0

typedef struct client client;

typedef struct conn {
    client *cl;
    struct bufferevent *bev;
    bool busy;
    double due;     /* due time of the request in flight */
    long body_left; /* -1 while the headers are still coming */
    int status;
} conn;

struct client {
    struct event_base *base;
    struct sockaddr_in addr;
    char req[1024];
    size_t req_len;
    double rate, duration, start;
    long next; /* index of the next request to send */
    long ok, errors;
    uint32_t *lat; /* µs, one per answer */
    size_t nlat, cap;
    conn conns[MAX_CONNS];
    int nconns;
    struct event *tick;
    bool stopping;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void conn_open(conn *c);

static void record(client *cl, double due)
{
    if (cl->nlat == cl->cap) {
        cl->cap = cl->cap ? cl->cap * 2 : 65536;
        cl->lat = realloc(cl->lat, cl->cap * sizeof(*cl->lat));
        if (cl->lat == NULL) {
            perror("realloc");
            exit(2);
        }
    }
    double us = (now_s() - due) * 1e6;
    cl->lat[cl->nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

/* Sends the oldest due request on c, if one is due and we are not done. */
static void conn_send_due(conn *c)
{
    client *cl = c->cl;
    if (c->busy || c->bev == NULL || cl->stopping || cl->start == 0)
        return; /* (start is 0 while the connections open) */
    double due = cl->start + (double)cl->next / cl->rate;
    if (due > now_s() || due >= cl->start + cl->duration)
        return;
    cl->next++;
    c->busy = true;
    c->due = due;
    c->body_left = -1;
    bufferevent_write(c->bev, cl->req, cl->req_len);
}

static void send_all_due(client *cl)
{
    for (int i = 0; i < cl->nconns; i++)
        conn_send_due(&cl->conns[i]);
}

static int parse_head(conn *c, struct evbuffer *in)
{
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0)
        return 0; /* not all here yet */
    size_t hlen = (size_t)end.pos + 4;
    char *head = malloc(hlen + 1);
    if (head == NULL)
        return -1;
    evbuffer_remove(in, head, hlen);
    head[hlen] = '\0';
    c->status = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &c->status) != 1) {
        free(head);
        return -1;
    }
    long len = 0;
    for (char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0)
            len = strtol(line + 17, NULL, 10);
    }
    free(head);
    c->body_left = len;
    return 1;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    client *cl = c->cl;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (c->busy) {
        if (c->body_left < 0) {
            int r = parse_head(c, in);
            if (r < 0) {
                cl->errors++;
                c->busy = false;
                bufferevent_free(c->bev);
                c->bev = NULL;
                conn_open(c);
                return;
            }
            if (r == 0)
                return;
        }
        size_t have = evbuffer_get_length(in);
        size_t take = have < (size_t)c->body_left ? have : (size_t)c->body_left;
        evbuffer_drain(in, take);
        c->body_left -= (long)take;
        if (c->body_left > 0)
            return;
        record(cl, c->due);
        if (c->status == 200)
            cl->ok++;
        else
            cl->errors++;
        c->busy = false;
        conn_send_due(c);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_send_due(c);
        return;
    }
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
        if (c->busy)
            c->cl->errors++;
        c->busy = false;
        bufferevent_free(c->bev);
        c->bev = NULL;
        if (!c->cl->stopping)
            conn_open(c); /* the server closed it: a new one */
    }
}

static void conn_open(conn *c)
{
    client *cl = c->cl;
    c->bev = bufferevent_socket_new(cl->base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&cl->addr, sizeof(cl->addr)) < 0) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        cl->errors++;
    }
}

static bool all_idle(const client *cl)
{
    for (int i = 0; i < cl->nconns; i++) {
        if (cl->conns[i].busy)
            return false;
    }
    return true;
}

/* Every 100 µs: send what has come due; stop after the duration once the
 * answers are in (or DRAIN_S later). */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    client *cl = arg;
    double t = now_s();
    if (t >= cl->start + cl->duration) {
        cl->stopping = true;
        if (all_idle(cl) || t >= cl->start + cl->duration + DRAIN_S) {
            event_base_loopexit(cl->base, NULL);
            return;
        }
    }
    send_all_due(cl);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank, as scripts/bench's pct(). */
static uint32_t pct(const client *cl, double p)
{
    if (cl->nlat == 0)
        return 0;
    double k = p / 100.0 * (double)cl->nlat + 0.5;
    long i = (long)(k + 0.5) - 1;
    if (i < 0)
        i = 0;
    if ((size_t)i >= cl->nlat)
        i = (long)cl->nlat - 1;
    return cl->lat[i];
}

int main(int argc, char **argv)
{
    static client cl;
    int port = 0;
    const char *path = "/";
    cl.nconns = 32;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--path") == 0)
            path = argv[i + 1];
        else if (strcmp(argv[i], "--rate") == 0)
            cl.rate = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--duration") == 0)
            cl.duration = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--conns") == 0)
            cl.nconns = atoi(argv[i + 1]);
    }
    if (port <= 0 || cl.rate <= 0 || cl.duration <= 0 || cl.nconns < 1 || cl.nconns > MAX_CONNS ||
        strlen(path) > 900) {
        fprintf(stderr,
                "usage: quotecache-openloop --port P --path PATH --rate R "
                "--duration S [--conns C<=%d]\n",
                MAX_CONNS);
        return 2;
    }
    cl.req_len = (size_t)snprintf(cl.req, sizeof(cl.req),
                                  "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", path, port);
    cl.addr.sin_family = AF_INET;
    cl.addr.sin_port = htons((unsigned short)port);
    cl.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* A precise (timerfd) clock: the 100 µs tick would otherwise round up
     * to epoll's milliseconds, and a request sent late is charged for it. */
    struct event_config *cfg = event_config_new();
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    cl.base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    for (int i = 0; i < cl.nconns; i++) {
        cl.conns[i].cl = &cl;
        conn_open(&cl.conns[i]);
    }
    /* Let the connections open before the clock starts. */
    struct timeval settle = {0, 200 * 1000};
    event_base_loopexit(cl.base, &settle);
    event_base_dispatch(cl.base);
    cl.start = now_s();
    cl.tick = event_new(cl.base, -1, EV_PERSIST, on_tick, &cl);
    struct timeval tv = {0, 100};
    event_add(cl.tick, &tv);
    event_base_dispatch(cl.base);

    long late = cl.next - (long)(cl.ok + cl.errors); /* sent, never answered */
    qsort(cl.lat, cl.nlat, sizeof(*cl.lat), cmp_u32);
    printf("OPENLOOP {\"asked\":%.1f,\"sent\":%ld,\"ok\":%ld,\"errors\":%ld,\"achieved\":%.1f,"
           "\"p50_us\":%u,\"p99_us\":%u,\"p999_us\":%u,\"max_us\":%u}\n",
           cl.rate, cl.next, cl.ok, cl.errors + (late > 0 ? late : 0), (double)cl.ok / cl.duration,
           pct(&cl, 50), pct(&cl, 99), pct(&cl, 99.9), cl.nlat ? cl.lat[cl.nlat - 1] : 0);
    for (int i = 0; i < cl.nconns; i++) {
        if (cl.conns[i].bev)
            bufferevent_free(cl.conns[i].bev);
    }
    event_free(cl.tick);
    event_base_free(cl.base);
    free(cl.lat);
    return 0;
}

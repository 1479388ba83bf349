/*
 * quotecache-static-ref: the static reference of shared/BENCHMARKING.md.
 *
 * A single-threaded libevent evhttp server that answers every GET with one
 * fixed body (read from a file at start) and the same header shape as a
 * quotecache cache hit: Content-Type: application/json, X-Cache, ETag and
 * Cache-Control. No parsing, no lookups, no allocation beyond what evhttp
 * does itself: it measures what evhttp on this machine can do, so the
 * proxy's numbers can be read as a ratio to it.
 *
 * usage: quotecache-static-ref --listen HOST:PORT --body FILE [--etag TAG]
 *        [--cache-control VALUE]   (default no-cache, as a quote hit says;
 *        scripts/bench gives a cacheable one to the upstream of a `local`
 *        route, which never stores a no-cache answer)
 * Other methods get 405. SIGTERM / SIGINT exit 0.
 */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>

static char *body;
static size_t body_len;
static char etag[128] = "\"static-reference\"";
static const char *cache_control = "no-cache";

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        evhttp_send_error(req, 405, NULL);
        return;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "X-Cache", "HIT");
    evhttp_add_header(h, "ETag", etag);
    evhttp_add_header(h, "Cache-Control", cache_control);
    evhttp_add_header(h, "Content-Type", "application/json");
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, body, body_len);
    evhttp_send_reply(req, 200, NULL, buf);
    evbuffer_free(buf);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static int read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    size_t cap = 4096;
    body = malloc(cap);
    size_t n;
    while (body != NULL && (n = fread(body + body_len, 1, cap - body_len, f)) > 0) {
        body_len += n;
        if (body_len == cap) {
            cap *= 2;
            char *nb = realloc(body, cap);
            if (nb == NULL) {
                free(body);
                body = NULL;
            }
            body = nb;
        }
    }
    int bad = ferror(f) || body == NULL;
    fclose(f);
    return bad ? -1 : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: quotecache-static-ref --listen HOST:PORT --body FILE [--etag TAG] "
                    "[--cache-control VALUE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:8099", *body_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen = argv[++i];
        else if (strcmp(argv[i], "--body") == 0 && i + 1 < argc)
            body_path = argv[++i];
        else if (strcmp(argv[i], "--etag") == 0 && i + 1 < argc)
            snprintf(etag, sizeof(etag), "\"%s\"", argv[++i]);
        else if (strcmp(argv[i], "--cache-control") == 0 && i + 1 < argc)
            cache_control = argv[++i];
        else
            usage();
    }
    if (body_path == NULL)
        usage();
    if (read_file(body_path) != 0) {
        fprintf(stderr, "static-ref: cannot read %s\n", body_path);
        return 1;
    }
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || (size_t)(colon - listen) >= sizeof(host))
        usage();
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        usage();

    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_gencb(http, on_request, NULL);
    if (evhttp_bind_socket(http, host, (ev_uint16_t)port) != 0) {
        fprintf(stderr, "static-ref: cannot listen on %s\n", listen);
        return 1;
    }
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    event_base_dispatch(base);
    event_free(sigterm);
    event_free(sigint);
    evhttp_free(http);
    event_base_free(base);
    free(body);
    return 0;
}

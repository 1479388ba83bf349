/* Unit tests for routes: the JSON file, path patterns, methods, identity. */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>
#include <sys/queue.h>

#include "check.h"
#include "quotecache/hdrlist.h"
#include "quotecache/routes.h"

static routes *parse(const char *json, char *err)
{
    return routes_parse(json, strlen(json), err, 256);
}

static void test_patterns(void)
{
    CHECK(routes_path_matches("/catalog/{id}", "/catalog/42"));
    CHECK(!routes_path_matches("/catalog/{id}", "/catalog/"));
    CHECK(!routes_path_matches("/catalog/{id}", "/catalog/42/x"));
    CHECK(!routes_path_matches("/catalog/{id}", "/catalog"));
    CHECK(routes_path_matches("/a/{x}/b/{y}", "/a/1/b/2"));
    CHECK(!routes_path_matches("/a/{x}/b/{y}", "/a/1/c/2"));
    CHECK(routes_path_matches("/static/*", "/static/"));
    CHECK(routes_path_matches("/static/*", "/static/css/a.css"));
    CHECK(!routes_path_matches("/static/*", "/static"));
    CHECK(!routes_path_matches("/static/*", "/staticx/a"));
    CHECK(routes_path_matches("/exact", "/exact"));
    CHECK(!routes_path_matches("/exact", "/exact/"));
    CHECK(routes_path_matches("/*", "/anything/at/all"));
}

static void test_parse_and_match(void)
{
    char err[256] = "";
    routes *rt = parse("{\"routes\": ["
                       "{\"name\": \"cart\", \"methods\": [\"GET\", \"HEAD\"], \"path\": "
                       "\"/cart/{id}\", \"policy\": \"local\", \"ttl\": 30, \"identity\": "
                       "\"cookie:session\"},"
                       "{\"name\": \"me\", \"path\": \"/me\", \"policy\": \"local\", "
                       "\"identity\": \"header:Authorization\"},"
                       "{\"name\": \"all-cart\", \"path\": \"/cart/*\", \"policy\": \"bypass\"}]}",
                       err);
    CHECK(rt != NULL);
    if (rt == NULL)
        return;
    const route *r = routes_match(rt, EVHTTP_REQ_GET, "/cart/7");
    CHECK(r && strcmp(r->name, "cart") == 0 && r->policy == ROUTE_LOCAL && r->ttl_s == 30);
    CHECK(r && r->ident_kind == IDENT_COOKIE && strcmp(r->ident, "session") == 0);
    r = routes_match(rt, EVHTTP_REQ_POST, "/cart/7"); /* not a method of "cart" */
    CHECK(r && strcmp(r->name, "all-cart") == 0 && r->policy == ROUTE_BYPASS);
    r = routes_match(rt, EVHTTP_REQ_DELETE, "/me");
    CHECK(r && strcmp(r->name, "me") == 0 && r->ttl_s == 60 && r->ident_kind == IDENT_HEADER);
    CHECK(routes_match(rt, EVHTTP_REQ_GET, "/elsewhere") == NULL);
    CHECK(routes_match(NULL, EVHTTP_REQ_GET, "/cart/7") == NULL);

    struct evkeyvalq h;
    TAILQ_INIT(&h);
    char id[128];
    r = routes_match(rt, EVHTTP_REQ_GET, "/cart/7");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    evhttp_add_header(&h, "Cookie", "theme=dark; session=abc123; x=1");
    CHECK(routes_identity(r, &h, id, sizeof(id)) == 6 && strcmp(id, "abc123") == 0);
    evhttp_add_header(&h, "Cookie", "session=other");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0); /* two: nobody's */
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Cookie", "xsession=abc; session=");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    /* Named twice in one field (a tossed cookie beside the user's): the
     * application may read either, so nobody's. */
    evhttp_add_header(&h, "Cookie", "session=tossed; theme=dark; session=abc123");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Cookie", "session=abc123; session=");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Cookie", "session=; session=abc123");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    /* Across Cookie fields as within one (the application may see them
     * joined): a second, even empty, is nobody's. */
    evhttp_add_header(&h, "Cookie", "session=");
    evhttp_add_header(&h, "Cookie", "session=abc123");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    /* A tab before a cookie is whitespace to the application too. */
    evhttp_add_header(&h, "Cookie", "theme=dark;\tsession=evil; session=abc123");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    r = routes_match(rt, EVHTTP_REQ_GET, "/me");
    evhttp_add_header(&h, "authorization", "Bearer u1");
    CHECK(routes_identity(r, &h, id, sizeof(id)) > 0 && strcmp(id, "Bearer u1") == 0);
    /* An empty or too long field beside it: the application may read
     * that one. */
    evhttp_add_header(&h, "Authorization", "");
    CHECK(routes_identity(r, &h, id, sizeof(id)) < 0);
    hdrlist_clear(&h);
    evhttp_add_header(&h, "Authorization", "Bearer u1");
    evhttp_add_header(&h, "Authorization", "Bearer a-token-too-long-for-the-buffer");
    CHECK(routes_identity(r, &h, id, 16) < 0);
    hdrlist_clear(&h);
    routes_free(rt);
}

static void test_bad_files(void)
{
    const char *bad[] = {
        "[]",
        "{\"routes\": {}}",
        "{\"routes\": [{\"name\": \"a b\", \"path\": \"/x\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"x\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x/*/y\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x{id}\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x?q\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"cached\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"shared\", "
        "\"stale\": -1}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"shared\", "
        "\"query\": {\"c\": {\"case\": \"title\"}}}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"local\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"local\", "
        "\"identity\": \"ip:x\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"bypass\", \"ttl\": 0}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"bypass\", "
        "\"methods\": [\"FETCH\"]}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/x\", \"policy\": \"bypass\", "
        "\"methods\": []}]}",
        /* A {param} name holding '/' or '{' (found by the routes fuzz
         * target), one of 64 bytes, a ninth {param}. */
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/{a/{b}\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/{a{b}\", \"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/{"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\", "
        "\"policy\": \"bypass\"}]}",
        "{\"routes\": [{\"name\": \"a\", \"path\": \"/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}\", "
        "\"policy\": \"bypass\"}]}",
        "not json",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        routes *rt = parse(bad[i], err);
        CHECK(rt == NULL && err[0] != '\0');
        routes_free(rt);
    }
    char err[256] = "";
    routes *rt = parse("{\"routes\": [{\"name\": \"a\", \"path\": "
                       "\"/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{"
                       "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh}\", "
                       "\"policy\": \"shared\"}]}",
                       err);
    CHECK(rt != NULL); /* eight, the last named by 63 bytes */
    routes_free(rt);
}

/* Every spelling of /admin an upstream may normalize to it is ours. */
static void test_admin_spellings(void)
{
    static const char *const admin[] = {
        "/admin", "/admin/", "/admin/invalidate", "//admin/invalidate", "/ADMIN/x", "/Admin",
        "/admin%2Finvalidate", "/%61dmin/x", "/%2561dmin/x", "/x/../admin/x", "/./admin",
        "/admin;jsessionid=1", "\\admin\\x", "/%2e%2e/admin", "/a/b/../../admin", "/../admin",
        "/../internal", "/a/../../internal", "/%2e%2e/internal",
        /* %00 cut the judged spelling
         * short: this was /x, passed on */
        "/x%00/../admin", "/x%2500/../admin", "/x%00/../../etc", "/a%00",
        /* a decoded '?' or '#' ends the path to an upstream that parses the
         * target again after decoding (Apache's mod_rewrite %3F confusion,
         * nginx's proxy_pass of $uri): /admin%3Fx was /admin? and passed on */
        "/admin%3Fx=1", "/admin%3f", "/admin%23x", "/x/..%3F/admin", "/..%2523/internal",
        /* a format suffix (Rails, Spring MVC) or trailing dots and spaces
         * (IIS) an upstream strips: these reached its /admin */
        "/admin.json", "/ADMIN.xml/x", "/admin.", "/admin%2e", "/admin%252e", "/admin%20",
        "/admin%09", "/admin%0a", "/admin..;/x", "/admin%20/invalidate"};
    for (size_t i = 0; i < sizeof(admin) / sizeof(admin[0]); i++) {
        if (!routes_not_forwarded(admin[i]))
            fprintf(stderr, "not admin: %s\n", admin[i]);
        CHECK(routes_not_forwarded(admin[i]));
    }
    CHECK(!routes_not_forwarded("/"));
    /* Three decodings are judged; an escape left after them is refused. */
    CHECK(!routes_not_forwarded("/x%252541"));
    CHECK(routes_not_forwarded("/x%25252541"));
    CHECK(!routes_not_forwarded("/administrator"));
    CHECK(!routes_not_forwarded("/admins.json"));
    CHECK(!routes_not_forwarded("/admin-panel"));
    CHECK(!routes_not_forwarded("/x/admin.json"));
    CHECK(!routes_not_forwarded("/x/admin"));
    CHECK(!routes_not_forwarded("/cart/admin/1"));
    CHECK(!routes_not_forwarded("/me/profile"));
    CHECK(!routes_not_forwarded("/a/../b"));
    char longp[5000];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    CHECK(routes_not_forwarded(longp));
}

int main(void)
{
    test_admin_spellings();
    test_patterns();
    test_parse_and_match();
    test_bad_files();
    return CHECK_DONE();
}

/* Unit tests for proxy's local cache keys: the identity is always in the
 * key (hashed, never in clear), query order does not matter, repeated
 * parameters keep their order, the route name separates routes. */
#include <string.h>

#include "check.h"
#include "quotecache/proxy.h"

static void key(const char *route_name, const char *target, const char *id, char *buf)
{
    route r;
    memset(&r, 0, sizeof(r));
    snprintf(r.name, sizeof(r.name), "%s", route_name);
    proxy_local_key(&r, target, id, NULL, buf, 512);
}

int main(void)
{
    char a[512], b[512];
    key("cart", "/cart/1?b=2&a=1", "Bearer A", a);
    key("cart", "/cart/1?a=1&b=2", "Bearer A", b);
    CHECK(strcmp(a, b) == 0);
    CHECK(strncmp(a, "GET /cart/1?a=1&b=2\ncart\n", 25) == 0);
    CHECK(strstr(a, "Bearer") == NULL); /* the identity only as a digest */
    key("cart", "/cart/1?a=1&b=2", "Bearer B", b);
    CHECK(strcmp(a, b) != 0);
    key("cart", "/cart/1?a=1&b=2", "", b);
    CHECK(strcmp(a, b) != 0);
    key("other", "/cart/1?a=1&b=2", "Bearer A", b);
    CHECK(strcmp(a, b) != 0);
    key("cart", "/cart/1?x=2&x=1", "i", a);
    key("cart", "/cart/1?x=1&x=2", "i", b);
    CHECK(strcmp(a, b) != 0); /* repeated names: their order is kept */
    CHECK(strncmp(a, "GET /cart/1?x=2&x=1\n", 20) == 0);
    key("cart", "/cart/1?", "i", a);
    key("cart", "/cart/1", "i", b);
    CHECK(strcmp(a, b) == 0);
    key("cart", "/cart/1?&&a=1&", "i", a);
    CHECK(strncmp(a, "GET /cart/1?a=1\n", 16) == 0);
    /* A target too long for the key: refused, never cut. A cut key ended
     * before the identity's digest, so every identity shared one copy. */
    char target[700], c[512];
    memset(target, 'q', sizeof(target) - 1);
    memcpy(target, "/cart/1?a=", 10);
    target[sizeof(target) - 1] = '\0';
    route r;
    memset(&r, 0, sizeof(r));
    snprintf(r.name, sizeof(r.name), "cart");
    int ra = proxy_local_key(&r, target, "Bearer A", NULL, a, sizeof(a));
    int rc = proxy_local_key(&r, target, "Bearer C", NULL, c, sizeof(c));
    CHECK(ra < 0 && rc < 0);
    CHECK(proxy_local_key(&r, "/cart/1", "Bearer A", NULL, a, sizeof(a)) == 0);
    /* The digest is SHA-256 in lowercase hex (hashlib's, for "Bearer A"). */
    CHECK(strcmp(a, "GET /cart/1\ncart\n"
                    "98114cdd5c702d7a5efbd07968971454850b9801daae87ee5600cad5d7f1c179") == 0);
    /* The Host is in the digest: two sites behind one proxy, same path and
     * user, are two copies; no Host is not an empty one. */
    CHECK(proxy_local_key(&r, "/cart/1", "Bearer A", "shop.example", b, sizeof(b)) == 0);
    CHECK(proxy_local_key(&r, "/cart/1", "Bearer A", "admin.example", c, sizeof(c)) == 0);
    CHECK(strcmp(a, b) != 0 && strcmp(b, c) != 0 && strncmp(b, "GET /cart/1\ncart\n", 17) == 0);
    CHECK(proxy_local_key(&r, "/cart/1", "Bearer A", "", c, sizeof(c)) == 0 && strcmp(a, c) != 0);
    CHECK(proxy_local_key(&r, "/cart/1", "Bearer A", "Shop.EXAMPLE", c, sizeof(c)) == 0 &&
          strcmp(b, c) == 0);
    return CHECK_DONE();
}

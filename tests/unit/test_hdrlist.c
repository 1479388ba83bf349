/* Unit tests for hdrlist: fields of one allocation beside libevent's own
 * in one list, found by evhttp_find_header, removed and cleared without a
 * leak or a wrong free (the ASan build runs this too). */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <sys/queue.h>

#include "check.h"
#include "quotecache/hdrlist.h"

static int count(const struct evkeyvalq *h)
{
    int n = 0;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        n++;
    return n;
}

static void test_add_and_find(void)
{
    struct evkeyvalq h;
    TAILQ_INIT(&h);
    CHECK(hdrlist_add(&h, "Content-Type", "application/json") == 0);
    CHECK(hdrlist_add(&h, "X-Empty", "") == 0);
    hdrlist_add_n(&h, "Via: junk", 3, "1.1 a, more", 5);
    CHECK(count(&h) == 3);
    CHECK(strcmp(evhttp_find_header(&h, "content-type"), "application/json") == 0);
    CHECK(strcmp(evhttp_find_header(&h, "X-Empty"), "") == 0);
    CHECK(strcmp(evhttp_find_header(&h, "VIA"), "1.1 a") == 0);
    CHECK(strcmp(h.tqh_first->key, "Content-Type") == 0); /* in order */
    hdrlist_clear(&h);
    CHECK(h.tqh_first == NULL);
}

static void test_cr_or_lf_refused(void)
{
    struct evkeyvalq h;
    TAILQ_INIT(&h);
    CHECK(hdrlist_add(&h, "X-A", "a\r\nSet-Cookie: x=1") == -1);
    CHECK(hdrlist_add(&h, "X-A", "a\n") == -1);
    CHECK(hdrlist_add(&h, "X-A\r", "a") == -1);
    CHECK(hdrlist_add(&h, "X\nB", "a") == -1);
    CHECK(count(&h) == 0);
    CHECK(hdrlist_add(&h, "X-A", "a\tb c") == 0);
    hdrlist_clear(&h);
}

static void test_mixed_with_libevent_fields(void)
{
    struct evkeyvalq h;
    TAILQ_INIT(&h);
    CHECK(evhttp_add_header(&h, "X-Theirs", "1") == 0);
    CHECK(hdrlist_add(&h, "X-Ours", "2") == 0);
    CHECK(evhttp_add_header(&h, "X-Theirs", "3") == 0);
    CHECK(hdrlist_add(&h, "X-Ours", "4") == 0);
    struct evkeyvalq q; /* evhttp_parse_query_str starts its list anew */
    CHECK(evhttp_parse_query_str("a=1&b=2", &q) == 0);
    TAILQ_CONCAT(&h, &q, next);
    CHECK(count(&h) == 6);
    /* The first of a name, without case, either kind. */
    CHECK(hdrlist_remove(&h, "x-theirs") == 0);
    CHECK(strcmp(evhttp_find_header(&h, "X-Theirs"), "3") == 0);
    CHECK(hdrlist_remove(&h, "X-OURS") == 0);
    CHECK(strcmp(evhttp_find_header(&h, "X-Ours"), "4") == 0);
    CHECK(hdrlist_remove(&h, "X-Missing") == -1);
    CHECK(count(&h) == 4);
    hdrlist_clear(&h);
    CHECK(count(&h) == 0);
    hdrlist_clear(&h); /* an empty list */
}

static void test_copy(void)
{
    struct evkeyvalq from, to;
    TAILQ_INIT(&from);
    TAILQ_INIT(&to);
    CHECK(evhttp_add_header(&from, "X-Theirs", "1") == 0);
    CHECK(hdrlist_add(&from, "X-Ours", "2") == 0);
    CHECK(hdrlist_add(&to, "X-Before", "0") == 0);
    hdrlist_copy(&to, &from);
    CHECK(count(&to) == 3 && count(&from) == 2);
    CHECK(strcmp(to.tqh_first->key, "X-Before") == 0);
    CHECK(strcmp(evhttp_find_header(&to, "X-Theirs"), "1") == 0);
    CHECK(evhttp_find_header(&to, "X-Ours") != evhttp_find_header(&from, "X-Ours")); /* copies */
    hdrlist_clear(&from);
    CHECK(strcmp(evhttp_find_header(&to, "X-Ours"), "2") == 0);
    hdrlist_clear(&to);
}

int main(void)
{
    test_copy();
    test_add_and_find();
    test_cr_or_lf_refused();
    test_mixed_with_libevent_fields();
    return CHECK_DONE();
}

/* fresh: owns the rules deciding whether a cached copy may be served (as
 * fresh, as STALE, or not at all) and whether a no-cache request may take
 * a given load's answer. Pure; see fresh.h. */
#include "quotecache/fresh.h"

static int64_t ttl_of(const fresh_policy *p, const envelope *e)
{
    return e->status == 200 ? p->ttl_ms : p->neg_ttl_ms;
}

int64_t fresh_until_ms(const fresh_policy *p, const envelope *e)
{
    int64_t ttl = ttl_of(p, e);
    if (p->trust_ms > 0 && p->trust_ms < ttl)
        ttl = p->trust_ms;
    return e->stored_at_ms + ttl;
}

int64_t fresh_horizon_ms(const fresh_policy *p, const envelope *e)
{
    int64_t until = e->stored_at_ms + ttl_of(p, e);
    return e->status == 200 ? until + p->stale_ms : until;
}

bool fresh_stale_while_revalidate(const fresh_policy *p)
{
    return p->trust_ms <= 0;
}

static bool gens_match(const envelope *e, fresh_gens g)
{
    return e->gen_global == g.global && e->gen_product == g.product;
}

bool fresh_is_current(const fresh_policy *p, const envelope *e, fresh_gens now_gens, int64_t now_ms)
{
    return gens_match(e, now_gens) && now_ms < fresh_until_ms(p, e);
}

bool fresh_may_serve_stale(const fresh_policy *p, const envelope *e, fresh_gens now_gens,
                           uint64_t read_local, uint64_t now_local, int64_t now_ms)
{
    return e->status == 200 && gens_match(e, now_gens) && read_local == now_local &&
           now_ms < fresh_horizon_ms(p, e);
}

bool fresh_needs_later_load(int64_t arrived, int64_t load_began)
{
    return arrived != 0 && load_began != 0 && arrived >= load_began;
}

int64_t fresh_load_began_ms(const envelope *e)
{
    return e->stored_at_ms - e->load_ms;
}

/* key: cache keys, built from every input that changes a quote. Pure code.
 *
 * Layout, with the product id readable and in a Redis hash tag so all keys of
 * one product share a cluster slot:
 *   entry          qc:<version>:{<pid>}:<32 hex of SHA-256(canonical form)>
 *   entry lock     <entry>:lock
 *   product gen    qc:<version>:{<pid>}:gen
 *   global gen     qc:<version>:gen
 *   scope gens     scope.h (currency, tier, region promotions, ...)
 *   announcements  qc:<version>:loaded          (pub/sub channel)
 *   dimensions     qc:<version>:{dims}          (Redis Cluster only: a hash whose
 *                  fields are the counters without a hash tag, global gen and
 *                  currency, tier, region promotions, under their names above)
 * The digest covers the version, the canonical request and the sorted ids of
 * the promotions active for (product, region) at the time of the request. */
#ifndef QUOTECACHE_KEY_H
#define QUOTECACHE_KEY_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/request.h"

#define KEY_VERSION_MAX 32
#define KEY_MAX 128
#define KEY_MAX_PROMOS 256 /* promotion ids one key can name */

/* promo_ids must be sorted ascending (the caller's job: the catalog keeps
 * them sorted). Returns 0, or -1 if version is longer than KEY_VERSION_MAX
 * or out is too small. out must hold KEY_MAX bytes. */
int key_entry(char out[KEY_MAX], const char *version, const quote_req *r, const int64_t *promo_ids,
              size_t npromo);
void key_lock(char out[KEY_MAX], const char *entry_key);
void key_product_gen(char out[KEY_MAX], const char *version, int64_t product_id);
void key_global_gen(char out[KEY_MAX], const char *version);
void key_channel(char out[KEY_MAX], const char *version);
void key_dims(char out[KEY_MAX], const char *version);

/* Extracts the product id from an entry key (the hash tag). Returns it, or
 * -1 when the key is not one of ours. */
int64_t key_product_of(const char *entry_key);

#endif

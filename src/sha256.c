/* sha256: one fetched digest and one context for the process. */
#include "quotecache/sha256.h"

#include <openssl/evp.h>
#include <string.h>

#include "quotecache/hex.h"

int sha256(const void *buf, size_t len, unsigned char out[SHA256_LEN])
{
    static EVP_MD *md;
    static EVP_MD_CTX *ctx;
    unsigned int n = 0;
    if ((md != NULL || (md = EVP_MD_fetch(NULL, "SHA256", NULL)) != NULL) &&
        (ctx != NULL || (ctx = EVP_MD_CTX_new()) != NULL) &&
        EVP_DigestInit_ex(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, buf, len) == 1 &&
        EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == SHA256_LEN)
        return 0;
    memset(out, 0, SHA256_LEN);
    return -1;
}

int sha256_hex(const void *buf, size_t len, size_t nbytes, char *out)
{
    unsigned char d[SHA256_LEN];
    int rc = sha256(buf, len, d);
    hex_bytes(d, nbytes < SHA256_LEN ? nbytes : SHA256_LEN, out);
    return rc;
}

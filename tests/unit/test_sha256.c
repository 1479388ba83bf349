/* Unit tests for sha256: FIPS 180-2's vectors, the hex prefix, reuse. */
#include <string.h>

#include "check.h"
#include "quotecache/sha256.h"

int main(void)
{
    char hex[2 * SHA256_LEN + 1];
    for (int i = 0; i < 2; i++) { /* the second time on the reused context */
        CHECK(sha256_hex("abc", 3, SHA256_LEN, hex) == 0);
        CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    }
    CHECK(sha256_hex("", 0, 4, hex) == 0 && strcmp(hex, "e3b0c442") == 0);
    unsigned char d[SHA256_LEN];
    CHECK(sha256("abc", 3, d) == 0 && d[0] == 0xba && d[31] == 0xad);
    return CHECK_DONE();
}

/* Unit tests for rcluster's pure part: CRC16 and key slots (the values
 * `redis-cli cluster keyslot` gives, Redis 7.0), hash-tag rules, the
 * CLUSTER SLOTS reply (fed as RESP through hiredis' reader) and the
 * MOVED / ASK errors. */
#include <hiredis/hiredis.h>
#include <string.h>

#include "check.h"
#include "quotecache/rcluster.h"

static int slot(const char *k)
{
    return rcluster_keyslot(k, strlen(k));
}

static void test_crc16(void)
{
    CHECK(rcluster_crc16("123456789", 9) == 0x31c3); /* the spec's check value */
    CHECK(rcluster_crc16("", 0) == 0);
}

static void test_keyslot_known_values(void)
{
    CHECK(slot("foo") == 12182);
    CHECK(slot("bar") == 5061);
    CHECK(slot("123456789") == 12739);
    CHECK(slot("qc:v1:gen") == 8762);
    CHECK(slot("qc:v1:{42}:gen") == 8000);
    CHECK(slot("qc:v1:{dims}") == 9563);
}

static void test_hash_tags(void)
{
    CHECK(slot("{user1000}.following") == 3443);
    CHECK(slot("{user1000}.followers") == 3443);
    CHECK(slot("foo{bar}{zap}") == slot("bar")); /* the first tag only */
    CHECK(slot("foo{}{bar}") == 8363);           /* empty tag: the whole key */
    CHECK(slot("foo{{bar}}zap") == 4015);        /* tag is "{bar" */
    CHECK(slot("{}") == 15257);
    CHECK(slot("a{b") == 13340); /* no closing brace: the whole key */
    CHECK(slot("qc:v1:{42}:0123abcd") == slot("qc:v1:{42}:gen"));
    CHECK(slot("qc:v1:{42}:0123abcd:lock") == slot("qc:v1:{42}:gen"));
}

static redisReply *parse_resp(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;
    CHECK(redisReaderFeed(rd, resp, strlen(resp)) == REDIS_OK);
    CHECK(redisReaderGetReply(rd, &reply) == REDIS_OK);
    redisReaderFree(rd);
    CHECK(reply != NULL);
    return reply;
}

static void test_parse_slots(void)
{
    /* Two ranges; the second master sends no id and an empty host. */
    redisReply *r = parse_resp("*2\r\n"
                               "*4\r\n:0\r\n:5460\r\n"
                               "*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$4\r\nabcd\r\n"
                               "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$4\r\nefgh\r\n"
                               "*3\r\n:5461\r\n:16383\r\n"
                               "*2\r\n$0\r\n\r\n:7001\r\n");
    rcluster_range rg[4];
    CHECK(rcluster_parse_slots(r, rg, 4) == 2);
    CHECK(rg[0].lo == 0 && rg[0].hi == 5460 && rg[0].port == 7000);
    CHECK(strcmp(rg[0].host, "127.0.0.1") == 0 && strcmp(rg[0].id, "abcd") == 0);
    CHECK(rg[1].lo == 5461 && rg[1].hi == 16383 && rg[1].port == 7001);
    CHECK(rg[1].host[0] == '\0' && rg[1].id[0] == '\0');
    CHECK(rcluster_parse_slots(r, rg, 1) == -1); /* more ranges than room */
    freeReplyObject(r);

    r = parse_resp("*1\r\n*3\r\n:10\r\n:5\r\n*2\r\n$1\r\nh\r\n:1\r\n"); /* hi < lo */
    CHECK(rcluster_parse_slots(r, rg, 4) == -1);
    freeReplyObject(r);
    r = parse_resp("*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n"); /* past the end */
    CHECK(rcluster_parse_slots(r, rg, 4) == -1);
    freeReplyObject(r);
    r = parse_resp("-ERR This instance has cluster support disabled\r\n");
    CHECK(rcluster_parse_slots(r, rg, 4) == -1);
    freeReplyObject(r);
    r = parse_resp("*0\r\n"); /* no slots assigned yet */
    CHECK(rcluster_parse_slots(r, rg, 4) == 0);
    freeReplyObject(r);
}

static void test_parse_redirect(void)
{
    rcluster_redirect rd;
    const char *m = "MOVED 3999 127.0.0.1:6381";
    CHECK(rcluster_parse_redirect(m, strlen(m), &rd) == 0);
    CHECK(!rd.ask && rd.slot == 3999 && rd.port == 6381 && strcmp(rd.host, "127.0.0.1") == 0);
    const char *a = "ASK 12182 10.0.0.2:7002";
    CHECK(rcluster_parse_redirect(a, strlen(a), &rd) == 0);
    CHECK(rd.ask && rd.slot == 12182 && rd.port == 7002 && strcmp(rd.host, "10.0.0.2") == 0);
    const char *v6 = "MOVED 1 ::1:7000";
    CHECK(rcluster_parse_redirect(v6, strlen(v6), &rd) == 0);
    CHECK(strcmp(rd.host, "::1") == 0 && rd.port == 7000);
    const char *bad[] = {"ERR unknown command", "MOVED x 1.2.3.4:5",
                         "MOVED 16384 h:1",     "ASK 1 h:0",
                         "MOVED 1 :7000",       "MOVED 1 host",
                         "MOVED 1 h:70000",     "CLUSTERDOWN Hash slot not served"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(rcluster_parse_redirect(bad[i], strlen(bad[i]), &rd) == -1);
}

static void test_parse_run_id(void)
{
    static const char info[] = "# Server\r\nredis_version:7.0.15\r\nrun_id:"
                               "4f3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b\r\ntcp_port:7000\r\n";
    char id[RCLUSTER_ID_MAX + 1];
    CHECK(rcluster_parse_run_id(info, sizeof(info) - 1, id) == 0);
    CHECK(strcmp(id, "4f3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b") == 0);
    /* Not a field named ..._run_id, nor one cut short. */
    static const char other[] =
        "# Server\r\nmaster_run_id:4f3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b\r\n";
    CHECK(rcluster_parse_run_id(other, sizeof(other) - 1, id) == -1);
    CHECK(rcluster_parse_run_id(info, 40, id) == -1);
    CHECK(rcluster_parse_run_id("", 0, id) == -1);
}

int main(void)
{
    test_crc16();
    test_keyslot_known_values();
    test_hash_tags();
    test_parse_slots();
    test_parse_redirect();
    test_parse_run_id();
    return CHECK_DONE();
}

/*
 * floor: the least work a UDP DNS responder can do, as the benchmark's floor.
 *
 * It answers from a precompiled table of complete responses (the answers a
 * reference peer gave to every distinct query of the mix, dumped by
 * bench/peers.py), so it does what a real server must do per packet and no
 * more: recvmmsg a batch, check the header, walk the question's labels
 * while lowercasing them into a key, hash (key, qtype), copy the stored
 * response, patch the ID and the RD/CD bits from the query, sendmmsg the
 * batch. The question section is sent as stored (the mix is lowercase, so
 * it matches the query byte for byte); no EDNS, no TCP, no truncation.
 * A miss gets REFUSED echoing the question.
 *
 * Usage: floor PORT ANSWERS_FILE
 * ANSWERS_FILE: records of u16 keylen, key (lowercased qname wire), u16
 * qtype, u16 resplen, response (all big-endian).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define SLOT 4096

struct entry {
    uint32_t hash;      /* 0 = empty */
    uint16_t keylen;
    uint16_t qtype;
    uint16_t resplen;
    const uint8_t *key;
    const uint8_t *resp;
};

static struct entry *table;
static uint32_t mask;

static uint32_t fnv1a(const uint8_t *p, size_t n, uint16_t qtype)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    h = (h ^ (qtype >> 8)) * 16777619u;
    h = (h ^ (qtype & 0xff)) * 16777619u;
    return h | 1;
}

static const struct entry *lookup(const uint8_t *key, uint16_t keylen, uint16_t qtype)
{
    uint32_t h = fnv1a(key, keylen, qtype);
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        const struct entry *e = &table[i];
        if (e->hash == 0)
            return NULL;
        if (e->hash == h && e->qtype == qtype && e->keylen == keylen &&
            memcmp(e->key, key, keylen) == 0)
            return e;
    }
}

static uint8_t *load(const char *path, size_t *n_entries)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(size);
    if (!buf || fread(buf, 1, size, f) != (size_t)size) {
        fprintf(stderr, "floor: cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    size_t count = 0;
    for (long off = 0; off + 2 <= size;) {
        uint16_t kl = buf[off] << 8 | buf[off + 1];
        uint16_t rl = buf[off + 2 + kl + 2] << 8 | buf[off + 2 + kl + 3];
        off += 2 + kl + 4 + rl;
        count++;
    }
    uint32_t cap = 1024;
    while (cap < count * 2)
        cap <<= 1;
    table = calloc(cap, sizeof *table);
    mask = cap - 1;
    for (long off = 0; off + 2 <= size;) {
        struct entry e;
        e.keylen = buf[off] << 8 | buf[off + 1];
        e.key = buf + off + 2;
        e.qtype = buf[off + 2 + e.keylen] << 8 | buf[off + 2 + e.keylen + 1];
        e.resplen = buf[off + 2 + e.keylen + 2] << 8 | buf[off + 2 + e.keylen + 3];
        e.resp = buf + off + 2 + e.keylen + 4;
        e.hash = fnv1a(e.key, e.keylen, e.qtype);
        off += 2 + e.keylen + 4 + e.resplen;
        uint32_t i = e.hash & mask;
        while (table[i].hash)
            i = (i + 1) & mask;
        table[i] = e;
    }
    *n_entries = count;
    return buf;
}

/* Answer one packet into out; returns the length to send, 0 to drop. */
static size_t answer(const uint8_t *q, size_t qlen, uint8_t *out)
{
    uint8_t key[256];
    if (qlen < 12 || (q[2] & 0x80) || q[4] != 0 || q[5] != 1)
        return 0;
    size_t off = 12, kl = 0;
    for (;;) {
        if (off >= qlen)
            return 0;
        uint8_t l = q[off];
        if (l & 0xC0 || kl + l + 1 > 255 || off + 1 + l > qlen)
            return 0;
        key[kl++] = l;
        off++;
        for (uint8_t i = 0; i < l; i++) {
            uint8_t c = q[off + i];
            key[kl++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        }
        off += l;
        if (l == 0)
            break;
    }
    if (off + 4 > qlen)
        return 0;
    uint16_t qtype = q[off] << 8 | q[off + 1];
    const struct entry *e = lookup(key, (uint16_t)kl, qtype);
    if (e) {
        memcpy(out, e->resp, e->resplen);
        out[0] = q[0];
        out[1] = q[1];
        out[2] = (out[2] & ~0x01) | (q[2] & 0x01);  /* RD */
        out[3] = (out[3] & ~0x10) | (q[3] & 0x10);  /* CD */
        return e->resplen;
    }
    size_t n = off + 4; /* REFUSED, question echoed */
    memcpy(out, q, n);
    out[2] = 0x80 | (q[2] & 0x79);
    out[3] = 0x80 | 5;
    memset(out + 6, 0, 6);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: floor PORT ANSWERS_FILE\n");
        return 2;
    }
    size_t n;
    load(argv[2], &n);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rcv = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("bind");
        return 1;
    }
    fprintf(stderr, "floor: %zu answers, listening on 127.0.0.1:%s\n", n, argv[1]);

    static uint8_t inbuf[BATCH][SLOT], outbuf[BATCH][SLOT];
    static struct sockaddr_in peers[BATCH];
    static struct iovec iin[BATCH], iout[BATCH];
    static struct mmsghdr min[BATCH], mout[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iin[i].iov_base = inbuf[i];
        iin[i].iov_len = SLOT;
        min[i].msg_hdr.msg_iov = &iin[i];
        min[i].msg_hdr.msg_iovlen = 1;
        min[i].msg_hdr.msg_name = &peers[i];
        iout[i].iov_base = outbuf[i];
        mout[i].msg_hdr.msg_iov = &iout[i];
        mout[i].msg_hdr.msg_iovlen = 1;
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++)
            min[i].msg_hdr.msg_namelen = sizeof peers[i];
        int got = recvmmsg(fd, min, BATCH, MSG_WAITFORONE, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            perror("recvmmsg");
            return 1;
        }
        int k = 0;
        for (int i = 0; i < got; i++) {
            size_t len = answer(inbuf[i], min[i].msg_len, outbuf[k]);
            if (!len)
                continue;
            iout[k].iov_base = outbuf[k];
            iout[k].iov_len = len;
            mout[k].msg_hdr.msg_name = &peers[i];
            mout[k].msg_hdr.msg_namelen = min[i].msg_hdr.msg_namelen;
            k++;
        }
        for (int sent = 0; sent < k;) {
            int r = sendmmsg(fd, mout + sent, k - sent, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                break; /* a full socket buffer drops the rest, like any UDP server */
            }
            sent += r;
        }
    }
}

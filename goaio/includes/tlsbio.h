/* The socket BIO of a TLS connection (core/tls.pxi) and the error capture.
 *
 * OpenSSL reads and writes the encrypted stream through this BIO: recv/send on
 * the connection's socket, called only inside SSL_* calls, which the core
 * makes under the connection's lock (c.lock), so the BIO shares the
 * connection's edge-triggered readiness cache (readable/writable) and never
 * makes a system call the poller has said would block. Everything read is fed
 * to a record-framing tracker (5-byte header + length), so an EOF can be told
 * apart: at a record boundary (the peer just closed) or inside a record (the
 * stream was cut). No GIL, no allocation. */
#ifndef GOAIO_TLSBIO_H
#define GOAIO_TLSBIO_H

#include "compat.h"
#include "openssl.h"
#include <errno.h>
#include <sys/types.h>
#include <sys/socket.h>

typedef struct {
    int fd;
    char *readable;        /* the connection's readiness cache (c.lock held) */
    char *writable;
    char *hup;
    int eof;               /* recv() returned 0 */
    int rerr;              /* errno of a failed recv() */
    int werr;              /* errno of a failed send() */
    int in_read;           /* inside the core's SSL_read: an EOF is not told to
                              OpenSSL (it would take it as a fatal error, which
                              also ends writing, and send an alert); the read
                              says "retry" and the core ends reading itself
                              (core/tls.pxi, tls_recv_locked) */
    int hdr_have;          /* bytes of the current record header seen (0..4) */
    unsigned char hdr[5];
    size_t body_left;      /* bytes of the current record body still to come */
} goaio_tlsio_t;

static inline int goaio_tlsio_at_boundary(const goaio_tlsio_t *t) {
    return t->hdr_have == 0 && t->body_left == 0;
}

static void goaio_frame_feed(goaio_tlsio_t *t, const unsigned char *p, size_t n) {
    while (n > 0) {
        if (t->body_left > 0) {
            size_t k = n < t->body_left ? n : t->body_left;
            t->body_left -= k;
            p += k;
            n -= k;
            continue;
        }
        t->hdr[t->hdr_have++] = *p++;
        n--;
        if (t->hdr_have == 5) {
            t->body_left = ((size_t)t->hdr[3] << 8) | t->hdr[4];
            t->hdr_have = 0;
        }
    }
}

static int goaio_bio_read(BIO *b, char *buf, int len) {
    goaio_tlsio_t *t = (goaio_tlsio_t *)goaio_ossl.BIO_get_data(b);
    ssize_t n;
    goaio_ossl.BIO_clear_flags(b, GOAIO_BIO_FLAGS_RWS | GOAIO_BIO_FLAGS_SHOULD_RETRY);
    if (t == NULL || len <= 0)
        return 0;
    if (t->eof) {
        if (t->in_read)
            goaio_ossl.BIO_set_flags(b, GOAIO_BIO_FLAGS_READ | GOAIO_BIO_FLAGS_SHOULD_RETRY);
        return t->in_read ? -1 : 0;
    }
    if (t->rerr)
        return -1;
    if (!*t->readable) {
        goaio_ossl.BIO_set_flags(b, GOAIO_BIO_FLAGS_READ | GOAIO_BIO_FLAGS_SHOULD_RETRY);
        return -1;
    }
    for (;;) {
        n = recv(t->fd, buf, (size_t)len, 0);
        if (n > 0) {
            /* a short read drained the socket (after a hang-up: read on to EOF) */
            if (n < len && !*t->hup)
                *t->readable = 0;
            goaio_frame_feed(t, (const unsigned char *)buf, (size_t)n);
            return (int)n;
        }
        if (n == 0) {
            t->eof = 1;
            if (t->in_read) {       /* (see in_read) */
                goaio_ossl.BIO_set_flags(b, GOAIO_BIO_FLAGS_READ | GOAIO_BIO_FLAGS_SHOULD_RETRY);
                return -1;
            }
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (goaio_would_block(errno)) {
            *t->readable = 0;
            goaio_ossl.BIO_set_flags(b, GOAIO_BIO_FLAGS_READ | GOAIO_BIO_FLAGS_SHOULD_RETRY);
            return -1;
        }
        t->rerr = errno;
        return -1;
    }
}

static int goaio_bio_write(BIO *b, const char *buf, int len) {
    goaio_tlsio_t *t = (goaio_tlsio_t *)goaio_ossl.BIO_get_data(b);
    ssize_t n;
    goaio_ossl.BIO_clear_flags(b, GOAIO_BIO_FLAGS_RWS | GOAIO_BIO_FLAGS_SHOULD_RETRY);
    if (t == NULL)
        return -1;
    if (t->werr)
        return -1;
    if (len <= 0)
        return 0;
    if (!*t->writable) {
        goaio_ossl.BIO_set_flags(b, GOAIO_BIO_FLAGS_WRITE | GOAIO_BIO_FLAGS_SHOULD_RETRY);
        return -1;
    }
    for (;;) {
        n = send(t->fd, buf, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            if (n < len)
                *t->writable = 0;  /* the socket buffer is full */
            return (int)n;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || goaio_would_block(errno)) {
            *t->writable = 0;
            goaio_ossl.BIO_set_flags(b, GOAIO_BIO_FLAGS_WRITE | GOAIO_BIO_FLAGS_SHOULD_RETRY);
            return -1;
        }
        t->werr = errno;
        return -1;
    }
}

static long goaio_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    goaio_tlsio_t *t = (goaio_tlsio_t *)goaio_ossl.BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case GOAIO_BIO_CTRL_FLUSH:
        return 1;          /* nothing is buffered here */
    case GOAIO_BIO_CTRL_EOF:
        return t != NULL && t->eof;
    default:
        return 0;
    }
}

static BIO_METHOD *goaio_bio_method = NULL;

/* A new socket BIO over t (NULL: out of memory). The method is made once,
 * under the GIL (core/tls.pxi calls this with it held). */
static BIO *goaio_bio_new(goaio_tlsio_t *t) {
    BIO *b;
    if (goaio_bio_method == NULL) {
        int idx = goaio_ossl.BIO_get_new_index();
        BIO_METHOD *m;
        if (idx < 0)
            return NULL;
        m = goaio_ossl.BIO_meth_new(idx | GOAIO_BIO_TYPE_SOURCE_SINK, "goaio socket");
        if (m == NULL)
            return NULL;
        goaio_ossl.BIO_meth_set_write(m, goaio_bio_write);
        goaio_ossl.BIO_meth_set_read(m, goaio_bio_read);
        goaio_ossl.BIO_meth_set_ctrl(m, goaio_bio_ctrl);
        goaio_bio_method = m;
    }
    b = goaio_ossl.BIO_new(goaio_bio_method);
    if (b == NULL)
        return NULL;
    goaio_ossl.BIO_set_data(b, t);
    goaio_ossl.BIO_set_init(b, 1);
    return b;
}

/* Why a TLS step failed, captured in the thread where it failed (OpenSSL's
 * error queue is per thread); the exception is built from it later, with the
 * GIL (goaio._tls.ssl_error_from). */
enum {
    GOAIO_TLSE_SSL = 1,         /* an OpenSSL error: lib, reason, strings (+ verify) */
    GOAIO_TLSE_EOF = 2,         /* the stream ended inside a record: SSLEOFError */
    GOAIO_TLSE_ERRNO = 3,       /* the socket failed: sys_errno */
    GOAIO_TLSE_TIMEOUT = 4,     /* the handshake took longer than ssl_handshake_timeout */
    GOAIO_TLSE_CLOSED = 5       /* the peer closed before the handshake completed */
};

typedef struct {
    int kind;
    int ssl_error;              /* SSL_get_error() */
    int lib;
    int reason;
    unsigned long code;
    int sys_errno;
    long verify_code;
    char lib_str[64];
    char reason_str[160];
    char verify_msg[160];
} goaio_tlserr_t;

static void goaio_copy_str(char *dst, size_t size, const char *src) {
    if (src == NULL) {
        dst[0] = 0;
        return;
    }
    strncpy(dst, src, size - 1);
    dst[size - 1] = 0;
}

/* Fill e for a failed SSL call (ret, SSL_get_error() = err) and empty this
 * thread's error queue. */
static void goaio_tls_capture(SSL *ssl, int ret, int err, const goaio_tlsio_t *t, goaio_tlserr_t *e) {
    unsigned long code = goaio_ossl.ERR_peek_last_error();
    memset(e, 0, sizeof *e);
    e->ssl_error = err;
    (void)ret;
    if (err == GOAIO_SSL_ERROR_SSL && code != 0) {
        e->kind = GOAIO_TLSE_SSL;
    } else if (t->rerr || t->werr) {
        e->kind = GOAIO_TLSE_ERRNO;
        e->sys_errno = t->rerr ? t->rerr : t->werr;
    } else if (code != 0) {
        e->kind = GOAIO_TLSE_SSL;
    } else {
        e->kind = GOAIO_TLSE_EOF;
    }
    if (e->kind == GOAIO_TLSE_SSL) {
        e->code = code;
        e->lib = goaio_err_lib(code);
        e->reason = goaio_err_reason(code);
        goaio_copy_str(e->lib_str, sizeof e->lib_str, goaio_ossl.ERR_lib_error_string(code));
        goaio_copy_str(e->reason_str, sizeof e->reason_str, goaio_ossl.ERR_reason_error_string(code));
        if (e->lib == GOAIO_ERR_LIB_SSL && e->reason == GOAIO_SSL_R_CERTIFICATE_VERIFY_FAILED) {
            e->verify_code = goaio_ossl.SSL_get_verify_result(ssl);
            goaio_copy_str(e->verify_msg, sizeof e->verify_msg,
                           goaio_ossl.X509_verify_cert_error_string(e->verify_code));
        }
    }
    goaio_ossl.ERR_clear_error();
}

#endif

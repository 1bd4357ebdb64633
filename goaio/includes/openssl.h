/* The OpenSSL that Python's ssl module uses, reached without its headers.
 *
 * Nothing here is compiled against OpenSSL: the types are opaque, the
 * constants are the ABI-stable values of OpenSSL 1.1.1 and 3.x, and every
 * function is looked up at run time with dlsym() in the `_ssl` extension
 * Python already loaded (dlopen(RTLD_NOLOAD) of its file: the handle searches
 * _ssl and the libssl/libcrypto it was linked with). So the process holds one
 * OpenSSL, the one whose SSL_CTX a user's ssl.SSLContext wraps, and a machine
 * without OpenSSL headers still builds goaio. core/tls.pxi checks the result
 * at first use (version number, the SSL_CTX of an SSLObject). */
#ifndef GOAIO_OPENSSL_H
#define GOAIO_OPENSSL_H

#include <dlfcn.h>
#include <string.h>
#include <stdio.h>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;
typedef struct bio_method_st BIO_METHOD;

#define GOAIO_SSL_ERROR_NONE 0
#define GOAIO_SSL_ERROR_SSL 1
#define GOAIO_SSL_ERROR_WANT_READ 2
#define GOAIO_SSL_ERROR_WANT_WRITE 3
#define GOAIO_SSL_ERROR_WANT_X509_LOOKUP 4
#define GOAIO_SSL_ERROR_SYSCALL 5
#define GOAIO_SSL_ERROR_ZERO_RETURN 6

#define GOAIO_SSL_SENT_SHUTDOWN 1
#define GOAIO_SSL_RECEIVED_SHUTDOWN 2

#define GOAIO_SSL_MODE_ENABLE_PARTIAL_WRITE 0x1L
#define GOAIO_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER 0x2L
#define GOAIO_SSL_MODE_RELEASE_BUFFERS 0x10L
#define GOAIO_SSL_CTRL_MODE 33
#define GOAIO_SSL_CTRL_SET_READ_AHEAD 41

#define GOAIO_BIO_TYPE_SOURCE_SINK 0x0400
#define GOAIO_BIO_CTRL_EOF 2
#define GOAIO_BIO_CTRL_PUSH 6
#define GOAIO_BIO_CTRL_POP 7
#define GOAIO_BIO_CTRL_FLUSH 11
#define GOAIO_BIO_FLAGS_READ 0x01
#define GOAIO_BIO_FLAGS_WRITE 0x02
#define GOAIO_BIO_FLAGS_RWS 0x07
#define GOAIO_BIO_FLAGS_SHOULD_RETRY 0x08

#define GOAIO_ERR_LIB_SYS 2
#define GOAIO_ERR_LIB_SSL 20
#define GOAIO_SSL_R_CERTIFICATE_VERIFY_FAILED 134
#define GOAIO_SSL_R_UNEXPECTED_EOF 294

typedef struct {
    unsigned long (*OpenSSL_version_num)(void);
    SSL_CTX *(*SSL_get_SSL_CTX)(const SSL *);
    void (*SSL_set_bio)(SSL *, BIO *, BIO *);
    int (*SSL_do_handshake)(SSL *);
    int (*SSL_read)(SSL *, void *, int);
    int (*SSL_write)(SSL *, const void *, int);
    int (*SSL_shutdown)(SSL *);
    int (*SSL_get_error)(const SSL *, int);
    int (*SSL_get_shutdown)(const SSL *);
    long (*SSL_ctrl)(SSL *, int, long, void *);
    int (*SSL_is_init_finished)(const SSL *);
    long (*SSL_get_verify_result)(const SSL *);
    int (*SSL_has_pending)(const SSL *);
    BIO *(*SSL_get_rbio)(const SSL *);
    BIO_METHOD *(*BIO_meth_new)(int, const char *);
    int (*BIO_meth_set_write)(BIO_METHOD *, int (*)(BIO *, const char *, int));
    int (*BIO_meth_set_read)(BIO_METHOD *, int (*)(BIO *, char *, int));
    int (*BIO_meth_set_ctrl)(BIO_METHOD *, long (*)(BIO *, int, long, void *));
    int (*BIO_get_new_index)(void);
    BIO *(*BIO_new)(const BIO_METHOD *);
    int (*BIO_free)(BIO *);
    void (*BIO_set_data)(BIO *, void *);
    void *(*BIO_get_data)(BIO *);
    void (*BIO_set_init)(BIO *, int);
    void (*BIO_set_flags)(BIO *, int);
    void (*BIO_clear_flags)(BIO *, int);
    void (*ERR_clear_error)(void);
    unsigned long (*ERR_get_error)(void);
    unsigned long (*ERR_peek_last_error)(void);
    const char *(*ERR_lib_error_string)(unsigned long);
    const char *(*ERR_reason_error_string)(unsigned long);
    const char *(*X509_verify_cert_error_string)(long);
} goaio_ossl_t;

static goaio_ossl_t goaio_ossl;
static int goaio_ossl_ready = 0;
static char goaio_ossl_why[256];

#define GOAIO_OSSL_SYM(name) \
    do { \
        *(void **)(&goaio_ossl.name) = dlsym(h, #name); \
        if (goaio_ossl.name == NULL) { \
            snprintf(goaio_ossl_why, sizeof goaio_ossl_why, "%s not found in %s", #name, path); \
            return goaio_ossl_why; \
        } \
    } while (0)

/* Resolve every function from the already loaded library at `path` (the
 * _ssl extension's file). NULL on success, else why not. */
static const char *goaio_ossl_load(const char *path) {
    void *h;
    if (goaio_ossl_ready)
        return NULL;
    h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL) {
        snprintf(goaio_ossl_why, sizeof goaio_ossl_why, "dlopen(%s): %s", path, dlerror());
        return goaio_ossl_why;
    }
    GOAIO_OSSL_SYM(OpenSSL_version_num);
    GOAIO_OSSL_SYM(SSL_get_SSL_CTX);
    GOAIO_OSSL_SYM(SSL_set_bio);
    GOAIO_OSSL_SYM(SSL_do_handshake);
    GOAIO_OSSL_SYM(SSL_read);
    GOAIO_OSSL_SYM(SSL_write);
    GOAIO_OSSL_SYM(SSL_shutdown);
    GOAIO_OSSL_SYM(SSL_get_error);
    GOAIO_OSSL_SYM(SSL_get_shutdown);
    GOAIO_OSSL_SYM(SSL_ctrl);
    GOAIO_OSSL_SYM(SSL_is_init_finished);
    GOAIO_OSSL_SYM(SSL_get_verify_result);
    GOAIO_OSSL_SYM(SSL_has_pending);
    GOAIO_OSSL_SYM(SSL_get_rbio);
    GOAIO_OSSL_SYM(BIO_meth_new);
    GOAIO_OSSL_SYM(BIO_meth_set_write);
    GOAIO_OSSL_SYM(BIO_meth_set_read);
    GOAIO_OSSL_SYM(BIO_meth_set_ctrl);
    GOAIO_OSSL_SYM(BIO_get_new_index);
    GOAIO_OSSL_SYM(BIO_new);
    GOAIO_OSSL_SYM(BIO_free);
    GOAIO_OSSL_SYM(BIO_set_data);
    GOAIO_OSSL_SYM(BIO_get_data);
    GOAIO_OSSL_SYM(BIO_set_init);
    GOAIO_OSSL_SYM(BIO_set_flags);
    GOAIO_OSSL_SYM(BIO_clear_flags);
    GOAIO_OSSL_SYM(ERR_clear_error);
    GOAIO_OSSL_SYM(ERR_get_error);
    GOAIO_OSSL_SYM(ERR_peek_last_error);
    GOAIO_OSSL_SYM(ERR_lib_error_string);
    GOAIO_OSSL_SYM(ERR_reason_error_string);
    GOAIO_OSSL_SYM(X509_verify_cert_error_string);
    /* (the handle stays open: _ssl is never unloaded anyway) */
    goaio_ossl_ready = 1;
    return NULL;
}

/* ERR_GET_LIB / ERR_GET_REASON are macros (inline functions in 3.x), not
 * symbols: the packing of an error code differs between 1.1.1 and 3.x. */
static inline int goaio_err_lib(unsigned long e) {
    if (goaio_ossl.OpenSSL_version_num() >= 0x30000000UL) {
        if (e & 0x80000000UL)
            return GOAIO_ERR_LIB_SYS;
        return (int)((e >> 23) & 0xFF);
    }
    return (int)((e >> 24) & 0xFF);
}

static inline int goaio_err_reason(unsigned long e) {
    if (goaio_ossl.OpenSSL_version_num() >= 0x30000000UL) {
        if (e & 0x80000000UL)
            return (int)(e & 0x7FFFFFFFUL);
        return (int)(e & 0x7FFFFFUL);
    }
    return (int)(e & 0xFFF);
}

#define goaio_SSL_set_mode(s, m) goaio_ossl.SSL_ctrl((s), GOAIO_SSL_CTRL_MODE, (m), NULL)
#define goaio_SSL_set_read_ahead(s, on) goaio_ossl.SSL_ctrl((s), GOAIO_SSL_CTRL_SET_READ_AHEAD, (on), NULL)

#endif

# Declarations of the OpenSSL functions the compiled TLS layer uses
# (includes/openssl.h: resolved at run time from the `_ssl` extension Python
# loaded, so no OpenSSL header or -lssl is needed to build), the socket BIO
# and the error capture (includes/tlsbio.h).

cdef extern from "includes/openssl.h" nogil:
    pass    # (named here too, so a build directory gets a copy: tlsbio.h includes it)

cdef extern from "includes/tlsbio.h" nogil:
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct BIO:
        pass

    ctypedef struct goaio_ossl_t:
        unsigned long (*OpenSSL_version_num)() noexcept nogil
        SSL_CTX * (*SSL_get_SSL_CTX)(const SSL *) noexcept nogil
        void (*SSL_set_bio)(SSL *, BIO *, BIO *) noexcept nogil
        int (*SSL_do_handshake)(SSL *) noexcept nogil
        int (*SSL_read)(SSL *, void *, int) noexcept nogil
        int (*SSL_write)(SSL *, const void *, int) noexcept nogil
        int (*SSL_shutdown)(SSL *) noexcept nogil
        int (*SSL_get_error)(const SSL *, int) noexcept nogil
        int (*SSL_get_shutdown)(const SSL *) noexcept nogil
        int (*SSL_is_init_finished)(const SSL *) noexcept nogil
        int (*SSL_has_pending)(const SSL *) noexcept nogil
        BIO * (*SSL_get_rbio)(const SSL *) noexcept nogil
        void (*BIO_set_data)(BIO *, void *) noexcept nogil
        void (*ERR_clear_error)() noexcept nogil
    goaio_ossl_t goaio_ossl
    int goaio_ossl_ready
    const char *goaio_ossl_load(const char *path)
    long goaio_SSL_set_mode(SSL *s, long m)
    long goaio_SSL_set_read_ahead(SSL *s, long on)

    enum:
        GOAIO_SSL_ERROR_NONE
        GOAIO_SSL_ERROR_SSL
        GOAIO_SSL_ERROR_WANT_READ
        GOAIO_SSL_ERROR_WANT_WRITE
        GOAIO_SSL_ERROR_SYSCALL
        GOAIO_SSL_ERROR_ZERO_RETURN
        GOAIO_SSL_SENT_SHUTDOWN
        GOAIO_SSL_RECEIVED_SHUTDOWN
        GOAIO_SSL_MODE_ENABLE_PARTIAL_WRITE
        GOAIO_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        GOAIO_SSL_MODE_RELEASE_BUFFERS
        GOAIO_ERR_LIB_SSL
        GOAIO_SSL_R_UNEXPECTED_EOF
        GOAIO_SSL_R_CERTIFICATE_VERIFY_FAILED

    ctypedef struct goaio_tlsio_t:
        int fd
        char *readable
        char *writable
        char *hup
        int eof
        int rerr
        int werr
        int in_read
    bint goaio_tlsio_at_boundary(const goaio_tlsio_t *t)
    BIO *goaio_bio_new(goaio_tlsio_t *t)

    enum:
        GOAIO_TLSE_SSL
        GOAIO_TLSE_EOF
        GOAIO_TLSE_ERRNO
        GOAIO_TLSE_TIMEOUT
        GOAIO_TLSE_CLOSED
    ctypedef struct goaio_tlserr_t:
        int kind
        int ssl_error
        int lib
        int reason
        unsigned long code
        int sys_errno
        long verify_code
        char lib_str[64]
        char reason_str[160]
        char verify_msg[160]
    void goaio_tls_capture(SSL *ssl, int ret, int err, const goaio_tlsio_t *t, goaio_tlserr_t *e)

/* TLS settings shared by every connection to one upstream (mbedTLS 2.28).
 *
 * A tls_ctx holds the trust anchors, the optional client certificate and the
 * random generator; it is created once per [upstream] and borrowed by each
 * stream that starts TLS with it. TLS 1.2 is the minimum (mbedTLS 2.28 has
 * no TLS 1.3). Certificate and hostname verification are on unless the
 * options say verify = false.
 */
#ifndef TETHER_LOOP_TLS_H
#define TETHER_LOOP_TLS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct tls_ctx tls_ctx;

typedef struct tls_options {
  const char *ca_file;     /* PEM trust anchors; NULL = the system bundle */
  const char *client_cert; /* PEM certificate for mTLS; NULL = none */
  const char *client_key;  /* PEM key of client_cert (unencrypted) */
  bool verify;             /* check the chain and the host name */
  const char *alpn;        /* one protocol to offer, e.g. "http/1.1"; NULL */
} tls_options;

/* The system CA bundle tls_ctx_create reads when ca_file is NULL. */
#define TLS_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/* Loads the files and seeds the generator. Returns 0, or a negative code
 * with the reason in err, naming the file: "cannot read ca_file
 * /x/ca.pem: ..." or "client_key does not match client_cert". */
int tls_ctx_create(const tls_options *o, tls_ctx **out, char *err,
                   size_t errlen);

/* NULL is allowed. Every stream using ctx must be closed first. */
void tls_ctx_destroy(tls_ctx *ctx);

/* Words for an mbedTLS error code and, after a handshake, the verification
 * flags: "certificate verify failed: CN mismatch (expected pb.internal)". */
void tls_describe_error(int mbedtls_err, unsigned verify_flags,
                        const char *expected_host, char *out, size_t outlen);

/* Internals shared with loop/stream.c only (STYLE rule 2); other modules use
 * a tls_ctx through stream_opts.tls. */
struct mbedtls_ssl_context;

/* Sets up ssl (already mbedtls_ssl_init'ed) from ctx for a connection to
 * host: SNI and name verification, or an IP-address check for an IP
 * literal. host is borrowed until ssl is freed. */
int tls__session_init(const tls_ctx *ctx, struct mbedtls_ssl_context *ssl,
                      const char *host, char *err, size_t errlen);

/* Like tls_describe_error for a failure on ssl; also names the trust anchors
 * and the peer's alert. in_handshake picks "handshake failed: ..." over
 * "TLS error: ...". */
void tls__describe(const tls_ctx *ctx, const struct mbedtls_ssl_context *ssl,
                   int mbedtls_err, bool in_handshake, const char *host,
                   char *out, size_t outlen);

#endif

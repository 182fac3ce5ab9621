/* TLS settings shared by the streams of one upstream, and TLS errors in
 * words (mbedTLS 2.28). The per-connection state lives in loop/stream.c. */
#include "loop/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <uv.h>

struct tls_ctx {
  mbedtls_ssl_config conf;
  mbedtls_x509_crt ca;
  mbedtls_x509_crt own_cert;
  mbedtls_pk_context own_key;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  bool verify;
  bool has_client_cert;
  char *ca_name;            /* the trust anchors' file, for messages; owned */
  char *alpn;               /* owned copy of tls_options.alpn */
  const char *alpn_list[2]; /* { alpn, NULL }; must outlive conf */
};

/* Appends printf-style text to out, which always stays NUL-terminated;
 * text that does not fit is cut. */
static void tls__append(char *out, size_t outlen, const char *fmt, ...) {
  size_t used = strnlen(out, outlen);
  va_list ap;

  if (outlen == 0 || used + 1 >= outlen)
    return;
  va_start(ap, fmt);
  vsnprintf(out + used, outlen - used, fmt, ap);
  va_end(ap);
}

/* mbedtls_strerror writes "SSL - The connection indicated an EOF"; the
 * module tag says nothing to an operator, so it is dropped. */
static void tls__strerror(int code, char *out, size_t outlen) {
  char buf[160];
  const char *text = buf;
  const char *dash;

  mbedtls_strerror(code, buf, sizeof buf);
  dash = strstr(buf, " - ");
  if (dash != NULL)
    text = dash + 3;
  if (outlen == 0)
    return;
  out[0] = '\0';
  tls__append(out, outlen, "%s (-0x%04x)", text, (unsigned)-code);
}

/* Names the file, and the errno text, of a file that cannot be opened. */
static int tls__check_readable(const char *what, const char *path, char *err,
                               size_t errlen) {
  FILE *f = fopen(path, "rb");
  int r;

  if (f != NULL) {
    fclose(f);
    return 0;
  }
  r = -errno;
  snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(-r));
  return r;
}

int tls_ctx_create(const tls_options *o, tls_ctx **out, char *err,
                   size_t errlen) {
  static const char pers[] = "tether tls";
  char why[160];
  tls_ctx *ctx = NULL;
  const char *ca_path;
  int r;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (o == NULL || out == NULL || err == NULL)
    return UV_EINVAL;
  if ((o->client_cert == NULL) != (o->client_key == NULL)) {
    snprintf(err, errlen, "client_cert and client_key must be set together");
    return UV_EINVAL;
  }
  if (o->alpn != NULL && (o->alpn[0] == '\0' || strlen(o->alpn) > 255)) {
    snprintf(err, errlen, "alpn must be 1 to 255 bytes");
    return UV_EINVAL;
  }

  ctx = calloc(1, sizeof *ctx);
  if (ctx == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  mbedtls_ssl_config_init(&ctx->conf);
  mbedtls_x509_crt_init(&ctx->ca);
  mbedtls_x509_crt_init(&ctx->own_cert);
  mbedtls_pk_init(&ctx->own_key);
  mbedtls_entropy_init(&ctx->entropy);
  mbedtls_ctr_drbg_init(&ctx->drbg);
  ctx->verify = o->verify;

  r = mbedtls_ctr_drbg_seed(&ctx->drbg, mbedtls_entropy_func, &ctx->entropy,
                            (const unsigned char *)pers, sizeof pers - 1);
  if (r != 0) {
    tls__strerror(r, why, sizeof why);
    snprintf(err, errlen, "cannot seed the random generator: %s", why);
    r = UV_EIO;
    goto fail;
  }

  /* Without verification the system bundle would be parsed (about 140
   * certificates) for nothing; an explicit ca_file is still checked so a
   * typo shows up before verify is switched back on. */
  ca_path = o->ca_file != NULL ? o->ca_file : TLS_SYSTEM_CA_FILE;
  if (o->ca_file != NULL || o->verify) {
    r = tls__check_readable("ca_file", ca_path, err, errlen);
    if (r < 0)
      goto fail;
    r = mbedtls_x509_crt_parse_file(&ctx->ca, ca_path);
    /* A positive result counts certificates that did not parse. Bundles
     * often hold a few that mbedTLS rejects; the rest are still usable. */
    if (r < 0 || ctx->ca.version == 0) {
      if (r < 0)
        tls__strerror(r, why, sizeof why);
      else
        snprintf(why, sizeof why, "no certificate could be parsed");
      snprintf(err, errlen, "cannot parse ca_file %s: %s", ca_path, why);
      r = UV_EINVAL;
      goto fail;
    }
    ctx->ca_name = strdup(ca_path);
    if (ctx->ca_name == NULL) {
      snprintf(err, errlen, "out of memory");
      r = UV_ENOMEM;
      goto fail;
    }
  }

  if (o->client_cert != NULL) {
    r = tls__check_readable("client_cert", o->client_cert, err, errlen);
    if (r < 0)
      goto fail;
    r = mbedtls_x509_crt_parse_file(&ctx->own_cert, o->client_cert);
    if (r != 0) {
      if (r < 0)
        tls__strerror(r, why, sizeof why);
      else
        snprintf(why, sizeof why, "%d certificate(s) did not parse", r);
      snprintf(err, errlen, "cannot parse client_cert %s: %s", o->client_cert,
               why);
      r = UV_EINVAL;
      goto fail;
    }
    r = tls__check_readable("client_key", o->client_key, err, errlen);
    if (r < 0)
      goto fail;
    /* mbedTLS 2.28 takes three arguments here; 3.x added an RNG. */
    r = mbedtls_pk_parse_keyfile(&ctx->own_key, o->client_key, NULL);
    if (r == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
      snprintf(err, errlen,
               "client_key %s is encrypted; tether needs an unencrypted key",
               o->client_key);
      r = UV_EINVAL;
      goto fail;
    }
    if (r != 0) {
      tls__strerror(r, why, sizeof why);
      snprintf(err, errlen, "cannot parse client_key %s: %s", o->client_key,
               why);
      r = UV_EINVAL;
      goto fail;
    }
    if (mbedtls_pk_check_pair(&ctx->own_cert.pk, &ctx->own_key) != 0) {
      snprintf(err, errlen, "client_key does not match client_cert");
      r = UV_EINVAL;
      goto fail;
    }
    ctx->has_client_cert = true;
  }

  r = mbedtls_ssl_config_defaults(&ctx->conf, MBEDTLS_SSL_IS_CLIENT,
                                  MBEDTLS_SSL_TRANSPORT_STREAM,
                                  MBEDTLS_SSL_PRESET_DEFAULT);
  if (r != 0) {
    tls__strerror(r, why, sizeof why);
    snprintf(err, errlen, "TLS configuration failed: %s", why);
    r = UV_EINVAL;
    goto fail;
  }
  /* Debian's mbedTLS still enables TLS 1.0 and 1.1; 1.2 is the floor. */
  mbedtls_ssl_conf_min_version(&ctx->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                               MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_authmode(&ctx->conf, o->verify ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                  : MBEDTLS_SSL_VERIFY_NONE);
  mbedtls_ssl_conf_ca_chain(&ctx->conf, &ctx->ca, NULL);
  mbedtls_ssl_conf_rng(&ctx->conf, mbedtls_ctr_drbg_random, &ctx->drbg);
  if (ctx->has_client_cert) {
    r = mbedtls_ssl_conf_own_cert(&ctx->conf, &ctx->own_cert, &ctx->own_key);
    if (r != 0) {
      tls__strerror(r, why, sizeof why);
      snprintf(err, errlen, "cannot use client_cert: %s", why);
      r = UV_EINVAL;
      goto fail;
    }
  }
  if (o->alpn != NULL) {
    ctx->alpn = strdup(o->alpn);
    if (ctx->alpn == NULL) {
      snprintf(err, errlen, "out of memory");
      r = UV_ENOMEM;
      goto fail;
    }
    ctx->alpn_list[0] = ctx->alpn;
    ctx->alpn_list[1] = NULL;
    r = mbedtls_ssl_conf_alpn_protocols(&ctx->conf, ctx->alpn_list);
    if (r != 0) {
      tls__strerror(r, why, sizeof why);
      snprintf(err, errlen, "cannot offer alpn %s: %s", o->alpn, why);
      r = UV_EINVAL;
      goto fail;
    }
  }

  *out = ctx;
  return 0;

fail:
  tls_ctx_destroy(ctx);
  return r;
}

void tls_ctx_destroy(tls_ctx *ctx) {
  if (ctx == NULL)
    return;
  mbedtls_ssl_config_free(&ctx->conf);
  mbedtls_x509_crt_free(&ctx->ca);
  mbedtls_x509_crt_free(&ctx->own_cert);
  mbedtls_pk_free(&ctx->own_key);
  mbedtls_ctr_drbg_free(&ctx->drbg);
  mbedtls_entropy_free(&ctx->entropy);
  free(ctx->ca_name);
  free(ctx->alpn);
  free(ctx);
}

/* mbedTLS 2.28 matches the expected name against dNSName entries and the
 * CN only, so an upstream addressed by IP would always fail. For an IP
 * literal, the leaf must carry the address as an iPAddress entry instead;
 * this callback runs once per certificate of the chain. */
static int tls__verify_ip(void *data, mbedtls_x509_crt *crt, int depth,
                          uint32_t *flags) {
  const char *host = data;
  unsigned char want[16];
  size_t want_len = 4;
  const mbedtls_x509_sequence *san;

  if (depth != 0)
    return 0;
  if (inet_pton(AF_INET, host, want) != 1) {
    if (inet_pton(AF_INET6, host, want) != 1)
      return 0;
    want_len = 16;
  }
  if (crt->ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME) {
    for (san = &crt->subject_alt_names; san != NULL; san = san->next) {
      if (san->buf.tag ==
              (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_IP_ADDRESS) &&
          san->buf.len == want_len && memcmp(san->buf.p, want, want_len) == 0)
        return 0;
    }
  }
  *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
  return 0;
}

static bool tls__is_ip_literal(const char *host) {
  unsigned char addr[16];

  return inet_pton(AF_INET, host, addr) == 1 ||
         inet_pton(AF_INET6, host, addr) == 1;
}

int tls__session_init(const tls_ctx *ctx, mbedtls_ssl_context *ssl,
                      const char *host, char *err, size_t errlen) {
  char why[160];
  int r;

  if (ctx == NULL || ssl == NULL || host == NULL)
    return UV_EINVAL;
  r = mbedtls_ssl_setup(ssl, &ctx->conf);
  if (r != 0) {
    tls__strerror(r, why, sizeof why);
    snprintf(err, errlen, "TLS setup failed: %s", why);
    return r == MBEDTLS_ERR_SSL_ALLOC_FAILED ? UV_ENOMEM : UV_EINVAL;
  }
  /* RFC 6066 forbids an IP address as SNI, and mbedTLS cannot match one
   * against the certificate: an IP literal gets no hostname, only the
   * iPAddress check above. */
  if (tls__is_ip_literal(host)) {
    if (ctx->verify)
      mbedtls_ssl_set_verify(ssl, tls__verify_ip, (void *)host);
    return 0;
  }
  r = mbedtls_ssl_set_hostname(ssl, host);
  if (r != 0) {
    tls__strerror(r, why, sizeof why);
    snprintf(err, errlen, "bad TLS host name %s: %s", host, why);
    return UV_EINVAL;
  }
  return 0;
}

static const char *tls__alert_name(int alert) {
  switch (alert) {
  case MBEDTLS_SSL_ALERT_MSG_CLOSE_NOTIFY:
    return "close_notify";
  case MBEDTLS_SSL_ALERT_MSG_UNEXPECTED_MESSAGE:
    return "unexpected_message";
  case MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC:
    return "bad_record_mac";
  case MBEDTLS_SSL_ALERT_MSG_RECORD_OVERFLOW:
    return "record_overflow";
  case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE:
    return "handshake_failure";
  case MBEDTLS_SSL_ALERT_MSG_BAD_CERT:
    return "bad_certificate";
  case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT:
    return "unsupported_certificate";
  case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED:
    return "certificate_revoked";
  case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED:
    return "certificate_expired";
  case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN:
    return "certificate_unknown";
  case MBEDTLS_SSL_ALERT_MSG_ILLEGAL_PARAMETER:
    return "illegal_parameter";
  case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA:
    return "unknown_ca";
  case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED:
    return "access_denied";
  case MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR:
    return "decode_error";
  case MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR:
    return "decrypt_error";
  case MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION:
    return "protocol_version";
  case MBEDTLS_SSL_ALERT_MSG_INSUFFICIENT_SECURITY:
    return "insufficient_security";
  case MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR:
    return "internal_error";
  case MBEDTLS_SSL_ALERT_MSG_INAPROPRIATE_FALLBACK:
    return "inappropriate_fallback";
  case MBEDTLS_SSL_ALERT_MSG_USER_CANCELED:
    return "user_canceled";
  case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_EXT:
    return "unsupported_extension";
  case MBEDTLS_SSL_ALERT_MSG_UNRECOGNIZED_NAME:
    return "unrecognized_name";
  case MBEDTLS_SSL_ALERT_MSG_NO_APPLICATION_PROTOCOL:
    return "no_application_protocol";
  case 116:
    return "certificate_required";
  default:
    return NULL;
  }
}

/* The verification flags as a list: "CN mismatch (expected x), expired". */
static void tls__describe_flags(uint32_t flags, const char *host,
                                const char *ca_name, char *out, size_t outlen) {
  static const struct {
    uint32_t flag;
    const char *text;
  } simple[] = {
    { MBEDTLS_X509_BADCERT_EXPIRED, "expired" },
    { MBEDTLS_X509_BADCERT_FUTURE, "not yet valid" },
    { MBEDTLS_X509_BADCERT_REVOKED, "revoked" },
    { MBEDTLS_X509_BADCERT_MISSING, "the server sent no certificate" },
    { MBEDTLS_X509_BADCERT_KEY_USAGE | MBEDTLS_X509_BADCERT_EXT_KEY_USAGE |
          MBEDTLS_X509_BADCERT_NS_CERT_TYPE,
      "its key usage does not allow a TLS server" },
    { MBEDTLS_X509_BADCERT_BAD_MD, "signed with a hash that is not allowed" },
    { MBEDTLS_X509_BADCERT_BAD_PK,
      "signed with a key type that is not allowed" },
    { MBEDTLS_X509_BADCERT_BAD_KEY, "its key is too weak" },
    { MBEDTLS_X509_BADCRL_NOT_TRUSTED | MBEDTLS_X509_BADCRL_EXPIRED |
          MBEDTLS_X509_BADCRL_FUTURE | MBEDTLS_X509_BADCRL_BAD_MD |
          MBEDTLS_X509_BADCRL_BAD_PK | MBEDTLS_X509_BADCRL_BAD_KEY,
      "the CRL is not usable" },
    { MBEDTLS_X509_BADCERT_SKIP_VERIFY, "verification was skipped" },
    { MBEDTLS_X509_BADCERT_OTHER, "rejected" },
  };
  uint32_t known =
      MBEDTLS_X509_BADCERT_CN_MISMATCH | MBEDTLS_X509_BADCERT_NOT_TRUSTED;
  const char *sep = "";
  size_t i;

  /* The two failures an operator meets most come first, with what was
   * expected, so the fix (tls_host, ca_file) is obvious. */
  if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) {
    if (host != NULL)
      tls__append(out, outlen, "CN mismatch (expected %s)", host);
    else
      tls__append(out, outlen, "CN mismatch");
    sep = ", ";
  }
  if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) {
    if (ca_name != NULL)
      tls__append(out, outlen, "%sunknown CA (not trusted by %s)", sep,
                  ca_name);
    else
      tls__append(out, outlen, "%sunknown CA", sep);
    sep = ", ";
  }
  for (i = 0; i < sizeof simple / sizeof simple[0]; i++) {
    known |= simple[i].flag;
    if (flags & simple[i].flag) {
      tls__append(out, outlen, "%s%s", sep, simple[i].text);
      sep = ", ";
    }
  }
  if (flags & ~known)
    tls__append(out, outlen, "%sflags 0x%x", sep, (unsigned)(flags & ~known));
}

/* The common core of tls_describe_error and tls__describe. alert is the
 * peer's fatal alert (-1 when unknown); asked_cert says the server sent a
 * CertificateRequest, has_cert that we had one to give. */
static void tls__describe_core(int code, uint32_t flags, const char *host,
                               const char *ca_name, int alert, bool asked_cert,
                               bool has_cert, bool in_handshake, char *out,
                               size_t outlen) {
  const char *prefix = in_handshake ? "handshake failed: " : "TLS error: ";
  const char *name;
  char why[160];

  if (outlen == 0)
    return;
  out[0] = '\0';
  /* A failed handshake reports "verification failed" both from the
   * certificate check and when the flags say so with another code. */
  if (code == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED ||
      (flags != 0 && code == MBEDTLS_ERR_SSL_PEER_VERIFY_FAILED)) {
    tls__append(out, outlen, "certificate verify failed");
    if (flags != 0) {
      tls__append(out, outlen, ": ");
      tls__describe_flags(flags, host, ca_name, out, outlen);
    }
    return;
  }
  if (code == MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION ||
      (code == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE &&
       alert == MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION)) {
    tls__append(out, outlen,
                "%sprotocol version (the server offers no TLS 1.2)", prefix);
    return;
  }
  if (code == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
    name = tls__alert_name(alert);
    if (name != NULL)
      tls__append(out, outlen, "%sthe server sent alert %s", prefix, name);
    else if (alert >= 0)
      tls__append(out, outlen, "%sthe server sent alert %d", prefix, alert);
    else
      tls__append(out, outlen, "%sthe server sent a fatal alert", prefix);
    if (asked_cert && !has_cert)
      tls__append(out, outlen,
                  " (it asked for a client certificate and none is set)");
    else if (asked_cert && (alert == MBEDTLS_SSL_ALERT_MSG_BAD_CERT ||
                            alert == MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA ||
                            alert == MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN ||
                            alert == MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED ||
                            alert == MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED))
      tls__append(out, outlen, " (it rejected our client certificate)");
    return;
  }
  if (code == MBEDTLS_ERR_SSL_CONN_EOF ||
      code == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
    tls__append(out, outlen, "%sconnection closed", prefix);
    if (in_handshake && asked_cert && !has_cert)
      tls__append(out, outlen,
                  " (it asked for a client certificate and none is set)");
    return;
  }
  if (code == MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE) {
    tls__append(out, outlen, "%sno cipher suite in common with the server",
                prefix);
    return;
  }
  tls__strerror(code, why, sizeof why);
  tls__append(out, outlen, "%s%s", prefix, why);
}

void tls_describe_error(int mbedtls_err, unsigned verify_flags,
                        const char *expected_host, char *out, size_t outlen) {
  if (out == NULL)
    return;
  tls__describe_core(mbedtls_err, verify_flags, expected_host, NULL, -1, false,
                     false, true, out, outlen);
}

void tls__describe(const tls_ctx *ctx, const mbedtls_ssl_context *ssl,
                   int mbedtls_err, bool in_handshake, const char *host,
                   char *out, size_t outlen) {
  uint32_t flags = 0;
  int alert = -1;
  bool asked_cert = false;

  if (out == NULL)
    return;
  if (ssl != NULL) {
    flags = mbedtls_ssl_get_verify_result(ssl);
    if (flags == (uint32_t)-1)
      flags = 0;
    /* mbedTLS 2.28 keeps the last record in in_msg: after a fatal alert its
     * second byte is the alert description. client_auth is set when the
     * server sent a CertificateRequest. Both fields are public in 2.x. */
    if (mbedtls_err == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE &&
        ssl->in_msg != NULL && ssl->in_msgtype == MBEDTLS_SSL_MSG_ALERT &&
        ssl->in_msglen >= 2)
      alert = ssl->in_msg[1];
    asked_cert = ssl->client_auth != 0;
  }
  tls__describe_core(mbedtls_err, flags, host,
                     ctx != NULL ? ctx->ca_name : NULL, alert, asked_cert,
                     ctx != NULL && ctx->has_client_cert, in_handshake, out,
                     outlen);
}

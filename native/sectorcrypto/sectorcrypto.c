/*
 * The crypto work of encrypted images that node:crypto can only do slowly,
 * done with the OpenSSL that Node itself links, on libuv's thread pool:
 *
 * - pbkdf2Block: one output block of PBKDF2-HMAC. The HMAC pad states are
 *   hashed once and copied per iteration, where OpenSSL 3's own PBKDF2
 *   rebuilds its MAC context every iteration (about twice the cost), and a
 *   caller can derive the blocks of a longer key on separate threads.
 * - sectors: AES in place over 512-byte sectors, one IV per sector, with one
 *   cipher context for the whole request (node:crypto needs one per sector);
 *   sectorsSync does small requests on the calling thread.
 *
 * pbkdf2Block and sectors return a promise. The JS side (src/io/sector-crypto-addon.ts) decides
 * when to use them and falls back to node:crypto when this addon is absent.
 */
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- PBKDF2 ---- */

typedef union {
  SHA_CTX sha1;
  SHA256_CTX sha256;
  SHA512_CTX sha512;
} hash_ctx;

typedef struct {
  const char *name;
  size_t block, digest;
  int (*init)(hash_ctx *);
  int (*update)(hash_ctx *, const void *, size_t);
  int (*final)(unsigned char *, hash_ctx *);
} hash_ops;

#define WRAP(N, F, INIT, UPD, FIN)                                                                 \
  static int N##_init(hash_ctx *c) { return INIT(&c->F); }                                        \
  static int N##_update(hash_ctx *c, const void *d, size_t n) { return UPD(&c->F, d, n); }       \
  static int N##_final(unsigned char *md, hash_ctx *c) { return FIN(md, &c->F); }

WRAP(sha1, sha1, SHA1_Init, SHA1_Update, SHA1_Final)
WRAP(sha224, sha256, SHA224_Init, SHA224_Update, SHA224_Final)
WRAP(sha256, sha256, SHA256_Init, SHA256_Update, SHA256_Final)
WRAP(sha384, sha512, SHA384_Init, SHA384_Update, SHA384_Final)
WRAP(sha512, sha512, SHA512_Init, SHA512_Update, SHA512_Final)

static const hash_ops HASHES[] = {
  {"sha1", 64, 20, sha1_init, sha1_update, sha1_final},
  {"sha224", 64, 28, sha224_init, sha224_update, sha224_final},
  {"sha256", 64, 32, sha256_init, sha256_update, sha256_final},
  {"sha384", 128, 48, sha384_init, sha384_update, sha384_final},
  {"sha512", 128, 64, sha512_init, sha512_update, sha512_final},
};

typedef struct {
  const hash_ops *hash;
  unsigned char *password, *salt;
  size_t password_len, salt_len;
  uint32_t iterations, index;
  unsigned char out[64];
} pbkdf2_job;

/* T_index = U_1 ^ ... ^ U_c, U_1 = HMAC(P, S || BE32(index)), U_j = HMAC(P, U_j-1). */
static void pbkdf2_block(pbkdf2_job *j) {
  const hash_ops *h = j->hash;
  unsigned char key[128] = {0}, pad[128], u[64], be[4];
  hash_ctx inner, outer, c;
  if (j->password_len > h->block) {
    h->init(&c);
    h->update(&c, j->password, j->password_len);
    h->final(key, &c);
  } else {
    memcpy(key, j->password, j->password_len);
  }
  for (size_t i = 0; i < h->block; i++) pad[i] = key[i] ^ 0x36;
  h->init(&inner);
  h->update(&inner, pad, h->block);
  for (size_t i = 0; i < h->block; i++) pad[i] = key[i] ^ 0x5c;
  h->init(&outer);
  h->update(&outer, pad, h->block);
  be[0] = j->index >> 24;
  be[1] = j->index >> 16;
  be[2] = j->index >> 8;
  be[3] = j->index;
  c = inner;
  h->update(&c, j->salt, j->salt_len);
  h->update(&c, be, 4);
  h->final(u, &c);
  c = outer;
  h->update(&c, u, h->digest);
  h->final(u, &c);
  memcpy(j->out, u, h->digest);
  for (uint32_t n = 1; n < j->iterations; n++) {
    c = inner;
    h->update(&c, u, h->digest);
    h->final(u, &c);
    c = outer;
    h->update(&c, u, h->digest);
    h->final(u, &c);
    for (size_t i = 0; i < h->digest; i++) j->out[i] ^= u[i];
  }
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(u, sizeof u);
  OPENSSL_cleanse(&inner, sizeof inner);
  OPENSSL_cleanse(&outer, sizeof outer);
  OPENSSL_cleanse(&c, sizeof c);
}

/* ---- sectors ---- */

enum { IV_NONE = 0, IV_PLAIN = 1, IV_PLAIN64 = 2, IV_GIVEN = 3 };

typedef struct {
  const EVP_CIPHER *cipher;
  unsigned char key[64];
  int encrypt, iv_mode, ok;
  unsigned char *data, *ivs;
  size_t length;
  uint64_t first_sector;
} sectors_job;

static void run_sectors(sectors_job *j) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  j->ok = ctx && EVP_CipherInit_ex(ctx, j->cipher, NULL, j->key, NULL, j->encrypt) == 1 && EVP_CIPHER_CTX_set_padding(ctx, 0) == 1;
  unsigned char iv[16];
  for (size_t o = 0, s = 0; j->ok && o < j->length; o += 512, s++) {
    if (j->iv_mode == IV_GIVEN) {
      memcpy(iv, j->ivs + s * 16, 16);
    } else if (j->iv_mode != IV_NONE) {
      uint64_t sector = j->first_sector + s;
      if (j->iv_mode == IV_PLAIN) sector &= 0xffffffffu;
      memset(iv, 0, sizeof iv);
      for (int i = 0; i < 8; i++) iv[i] = (unsigned char)(sector >> (8 * i));
    }
    int len = 0;
    j->ok = (j->iv_mode == IV_NONE || EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) == 1) &&
            EVP_CipherUpdate(ctx, j->data + o, &len, j->data + o, 512) == 1 && len == 512;
  }
  EVP_CIPHER_CTX_free(ctx);
}

/* ---- promises on the thread pool ---- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref keep[2];
  int kind; /* 0 pbkdf2, 1 sectors */
  pbkdf2_job pbkdf2;
  sectors_job sectors;
} job;

static void execute(napi_env env, void *data) {
  (void)env;
  job *j = data;
  if (j->kind == 0) pbkdf2_block(&j->pbkdf2);
  else run_sectors(&j->sectors);
}

static void complete(napi_env env, napi_status status, void *data) {
  job *j = data;
  napi_value result;
  if (status == napi_ok && j->kind == 0) {
    void *out;
    napi_create_buffer_copy(env, j->pbkdf2.hash->digest, j->pbkdf2.out, &out, &result);
    napi_resolve_deferred(env, j->deferred, result);
  } else if (status == napi_ok && j->sectors.ok) {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, j->deferred, result);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, "sector cipher failed", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &result);
    napi_reject_deferred(env, j->deferred, result);
  }
  for (int i = 0; i < 2; i++) {
    if (j->keep[i]) napi_delete_reference(env, j->keep[i]);
  }
  napi_delete_async_work(env, j->work);
  if (j->kind == 0) {
    OPENSSL_cleanse(j->pbkdf2.out, sizeof j->pbkdf2.out);
    if (j->pbkdf2.password) OPENSSL_cleanse(j->pbkdf2.password, j->pbkdf2.password_len);
    free(j->pbkdf2.password);
    free(j->pbkdf2.salt);
  }
  OPENSSL_cleanse(j->sectors.key, sizeof j->sectors.key);
  free(j);
}

static napi_value queue(napi_env env, job *j) {
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "qimg-crypto", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

static int bytes(napi_env env, napi_value v, unsigned char **data, size_t *length) {
  napi_typedarray_type type;
  size_t n;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, &n, &p, NULL, NULL) != napi_ok || type != napi_uint8_array) return 0;
  *data = p;
  *length = n;
  return 1;
}

static unsigned char *copy(const unsigned char *src, size_t n) {
  unsigned char *d = malloc(n ? n : 1);
  if (d && n) memcpy(d, src, n);
  return d;
}

static napi_value fail(napi_env env, const char *what) {
  napi_throw_type_error(env, NULL, what);
  return NULL;
}

/* pbkdf2Block(hash, password, salt, iterations, index): Promise<Buffer> of one digest. */
static napi_value pbkdf2_block_js(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  char hash[16];
  size_t hl;
  unsigned char *pw, *salt;
  size_t pwl, saltl;
  uint32_t iterations, index;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 ||
      napi_get_value_string_utf8(env, argv[0], hash, sizeof hash, &hl) != napi_ok || !bytes(env, argv[1], &pw, &pwl) ||
      !bytes(env, argv[2], &salt, &saltl) || napi_get_value_uint32(env, argv[3], &iterations) != napi_ok ||
      napi_get_value_uint32(env, argv[4], &index) != napi_ok || iterations < 1 || index < 1) {
    return fail(env, "pbkdf2Block(hash, password, salt, iterations, index)");
  }
  const hash_ops *h = NULL;
  for (size_t i = 0; i < sizeof HASHES / sizeof HASHES[0]; i++) {
    if (strcmp(HASHES[i].name, hash) == 0) h = &HASHES[i];
  }
  if (!h) return fail(env, "pbkdf2Block: unsupported hash");
  job *j = calloc(1, sizeof *j);
  if (!j) return fail(env, "out of memory");
  j->kind = 0;
  j->pbkdf2.hash = h;
  j->pbkdf2.password = copy(pw, pwl);
  j->pbkdf2.password_len = pwl;
  j->pbkdf2.salt = copy(salt, saltl);
  j->pbkdf2.salt_len = saltl;
  j->pbkdf2.iterations = iterations;
  j->pbkdf2.index = index;
  return queue(env, j);
}

/*
 * sectors(cipher, key, encrypt, data, firstSector, ivMode, ivs): Promise<void>.
 * In place over data (whole 512-byte sectors); ivMode 0 none (ECB), 1 plain,
 * 2 plain64 (both from firstSector), 3 the 16 bytes per sector in ivs.
 * The caller must leave data alone until the promise settles.
 * sectorsSync: the same, done before it returns (small requests, where a
 * round trip through the thread pool costs more than the work).
 */
static napi_value sectors_common(napi_env env, napi_callback_info info, int sync) {
  size_t argc = 7;
  napi_value argv[7];
  char name[32];
  size_t nl;
  unsigned char *key, *data, *ivs = NULL;
  size_t keyl, datal, ivsl = 0;
  bool encrypt;
  double first;
  int32_t iv_mode;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 7 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nl) != napi_ok || !bytes(env, argv[1], &key, &keyl) ||
      napi_get_value_bool(env, argv[2], &encrypt) != napi_ok || !bytes(env, argv[3], &data, &datal) ||
      napi_get_value_double(env, argv[4], &first) != napi_ok || napi_get_value_int32(env, argv[5], &iv_mode) != napi_ok ||
      iv_mode < IV_NONE || iv_mode > IV_GIVEN || (iv_mode == IV_GIVEN && !bytes(env, argv[6], &ivs, &ivsl)) || datal % 512 != 0 ||
      (iv_mode == IV_GIVEN && ivsl < datal / 512 * 16) || first < 0) {
    return fail(env, "sectors(cipher, key, encrypt, data, firstSector, ivMode, ivs)");
  }
  const EVP_CIPHER *cipher = EVP_get_cipherbyname(name);
  if (!cipher || (size_t)EVP_CIPHER_key_length(cipher) != keyl || keyl > 64) return fail(env, "sectors: unsupported cipher or key");
  sectors_job sj = {.cipher = cipher, .encrypt = encrypt ? 1 : 0, .iv_mode = iv_mode, .data = data, .ivs = ivs, .length = datal, .first_sector = (uint64_t)first};
  memcpy(sj.key, key, keyl);
  if (sync) {
    run_sectors(&sj);
    OPENSSL_cleanse(sj.key, sizeof sj.key);
    if (!sj.ok) napi_throw_error(env, NULL, "sector cipher failed");
    return NULL;
  }
  job *j = calloc(1, sizeof *j);
  if (!j) {
    OPENSSL_cleanse(sj.key, sizeof sj.key);
    return fail(env, "out of memory");
  }
  j->kind = 1;
  j->sectors = sj;
  OPENSSL_cleanse(sj.key, sizeof sj.key);
  napi_create_reference(env, argv[3], 1, &j->keep[0]);
  if (ivs) napi_create_reference(env, argv[6], 1, &j->keep[1]);
  return queue(env, j);
}

static napi_value sectors_js(napi_env env, napi_callback_info info) { return sectors_common(env, info, 0); }
static napi_value sectors_sync_js(napi_env env, napi_callback_info info) { return sectors_common(env, info, 1); }

NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "pbkdf2Block", NAPI_AUTO_LENGTH, pbkdf2_block_js, NULL, &f);
  napi_set_named_property(env, exports, "pbkdf2Block", f);
  napi_create_function(env, "sectors", NAPI_AUTO_LENGTH, sectors_js, NULL, &f);
  napi_set_named_property(env, exports, "sectors", f);
  napi_create_function(env, "sectorsSync", NAPI_AUTO_LENGTH, sectors_sync_js, NULL, &f);
  napi_set_named_property(env, exports, "sectorsSync", f);
  return exports;
}

/*
 * The file calls Node's fs does not expose:
 * - open file description byte-range locks (fcntl F_OFD_SETLK / F_OFD_GETLK),
 *   which QEMU coordinates image users with; the lock policy lives in
 *   src/io/locks.ts, this file only makes the calls;
 * - fallocate(2), for holes (discard, zero writes that may unmap) and for
 *   preallocation=falloc, as QEMU's file driver uses it (src/io/fallocate.ts).
 *
 * Every function returns an errno value (0 on success) instead of throwing:
 * a conflict or an unsupported file system is an answer, not a failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <node_api.h>

static int args3(napi_env env, napi_callback_info info, int64_t out[3]) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return 0;
  for (int i = 0; i < 3; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok) return 0;
  }
  return 1;
}

static napi_value number(napi_env env, int v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

static void fill(struct flock *fl, short type, int64_t start) {
  memset(fl, 0, sizeof *fl);
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
  fl->l_start = (off_t)start;
  fl->l_len = 1;
}

/* setLock(fd, offset, type): type 0 unlocks, 1 takes a shared lock, 2 an exclusive one. */
static napi_value set_lock(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (!args3(env, info, a) || a[2] < 0 || a[2] > 2) {
    napi_throw_type_error(env, NULL, "setLock(fd, offset, type) takes three integers");
    return NULL;
  }
  static const short types[] = {F_UNLCK, F_RDLCK, F_WRLCK};
  struct flock fl;
  fill(&fl, types[a[2]], a[1]);
  return number(env, fcntl((int)a[0], F_OFD_SETLK, &fl) == -1 ? errno : 0);
}

/*
 * testLock(fd, offset, exclusive): 0 when a lock of that kind could be
 * taken, EAGAIN when another open file description holds a conflicting one.
 */
static napi_value test_lock(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (!args3(env, info, a)) {
    napi_throw_type_error(env, NULL, "testLock(fd, offset, exclusive) takes three integers");
    return NULL;
  }
  struct flock fl;
  fill(&fl, a[2] ? F_WRLCK : F_RDLCK, a[1]);
  if (fcntl((int)a[0], F_OFD_GETLK, &fl) == -1) return number(env, errno);
  return number(env, fl.l_type == F_UNLCK ? 0 : EAGAIN);
}

/*
 * fallocate(fd, mode, offset, length): mode 0 allocates the range (growing
 * the file), 1 punches a hole (the size is kept), 2 zeroes the range in place.
 */
static napi_value do_fallocate(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t a[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) goto bad;
  for (int i = 0; i < 4; i++) {
    if (napi_get_value_int64(env, argv[i], &a[i]) != napi_ok) goto bad;
  }
  if (a[1] < 0 || a[1] > 2 || a[2] < 0 || a[3] <= 0) goto bad;
  static const int modes[] = {0, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE};
  return number(env, fallocate((int)a[0], modes[a[1]], (off_t)a[2], (off_t)a[3]) == -1 ? errno : 0);
bad:
  napi_throw_type_error(env, NULL, "fallocate(fd, mode, offset, length) takes four integers, mode 0..2, length > 0");
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "setLock", NAPI_AUTO_LENGTH, set_lock, NULL, &fn);
  napi_set_named_property(env, exports, "setLock", fn);
  napi_create_function(env, "testLock", NAPI_AUTO_LENGTH, test_lock, NULL, &fn);
  napi_set_named_property(env, exports, "testLock", fn);
  napi_create_function(env, "fallocate", NAPI_AUTO_LENGTH, do_fallocate, NULL, &fn);
  napi_set_named_property(env, exports, "fallocate", fn);
  return exports;
}

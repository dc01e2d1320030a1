/*
 * Open file description byte-range locks (fcntl F_OFD_SETLK / F_OFD_GETLK),
 * which Node's fs does not expose. QEMU coordinates image users with these;
 * the lock policy lives in src/io/locks.ts, this file only makes the calls.
 *
 * Both functions return an errno value (0 on success) instead of throwing:
 * a conflict is an expected answer, not a failure of the call.
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

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "setLock", NAPI_AUTO_LENGTH, set_lock, NULL, &fn);
  napi_set_named_property(env, exports, "setLock", fn);
  napi_create_function(env, "testLock", NAPI_AUTO_LENGTH, test_lock, NULL, &fn);
  napi_set_named_property(env, exports, "testLock", fn);
  return exports;
}

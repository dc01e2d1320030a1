{
  "targets": [
    {
      "target_name": "sectorcrypto",
      "sources": ["sectorcrypto.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["OPENSSL_SUPPRESS_DEPRECATED"]
    }
  ]
}

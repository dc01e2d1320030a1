{
  "targets": [
    {
      "target_name": "ofdlock",
      "sources": ["ofdlock.c"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}

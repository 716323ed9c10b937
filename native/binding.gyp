{
  "targets": [
    {
      "target_name": "mgllava_native",
      "sources": ["addon.cc", "gemm.cc", "pool.cc"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-exceptions", "-fno-math-errno"],
      "cflags_cc!": ["-fno-rtti", "-std=gnu++17", "-O2"],
      "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-O3", "-std=c++17"] },
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}

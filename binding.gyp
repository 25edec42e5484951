# The CPU addon: needs only python3, make and g++. Sources are listed by tools/sources.cjs.
# ISA-specific kernels (*.avx2.cpp, *.avx512.cpp) are compiled into their own static libraries with their
# own -m flags (x64 only); everything else targets the baseline ISA and dispatches at run time.
{
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
    "cflags": ["-fPIC", "-O3", "-fno-math-errno", "-fno-trapping-math"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-fvisibility=hidden"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/include"],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_CPP_EXCEPTIONS", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL", "NODE_ADDON_API_DISABLE_DEPRECATED"]
  },
  "targets": [
    {
      "target_name": "sparse_ffn",
      "sources": ["<!@(node tools/sources.cjs base)"],
      "ldflags": ["-pthread"],
      "conditions": [["target_arch=='x64'", {"dependencies": ["sffn_avx2", "sffn_avx512"]}]]
    }
  ],
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "sffn_avx2",
          "type": "static_library",
          "sources": ["<!@(node tools/sources.cjs avx2)"],
          "cflags": ["-mavx2", "-mfma", "-mf16c"]
        },
        {
          "target_name": "sffn_avx512",
          "type": "static_library",
          "sources": ["<!@(node tools/sources.cjs avx512)"],
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-Wno-uninitialized", "-Wno-maybe-uninitialized"]
        }
      ]
    }]
  ]
}

// Node-API surface of the native GEMM. The operands live in the wasm backend's heap: JavaScript
// passes a typed array over that heap and byte offsets into it; nothing is copied.
#include <node_api.h>

#include <cstdint>
#include <climits>
#include <algorithm>
#include <string>

#include "gemm.h"

namespace {

napi_value throwError(napi_env env, const std::string& message) {
  napi_throw_error(env, "MGLLAVA_NATIVE", message.c_str());
  return nullptr;
}

// start + count * rows * cols <= length, without overflow (all arguments >= 0).
bool fits(int64_t start, int64_t count, int64_t rows, int64_t cols, size_t length) {
  int64_t elems, total;
  if (__builtin_mul_overflow(count, rows, &elems) || __builtin_mul_overflow(elems, cols, &elems)) return false;
  if (__builtin_add_overflow(start, elems, &total)) return false;
  return total <= (int64_t)length;
}

bool toInt(napi_env env, napi_value v, int64_t* out) { return napi_get_value_int64(env, v, out) == napi_ok; }

// Optional Int32Array argument (null/undefined -> nullptr); checks its length.
bool int32Array(napi_env env, napi_value v, size_t expected, const int32_t** out) {
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type == napi_null || type == napi_undefined) {
    *out = nullptr;
    return true;
  }
  napi_typedarray_type t;
  size_t length;
  void* data;
  if (napi_get_typedarray_info(env, v, &t, &length, &data, nullptr, nullptr) != napi_ok) return false;
  if (t != napi_int32_array || length != expected) return false;
  *out = static_cast<const int32_t*>(data);
  return true;
}

// gemm(heap: Float32Array, aByteOffset, bByteOffset, cByteOffset (from the start of heap), m, k, n, transA, transB, batch, aIndex, bIndex)
napi_value Gemm(napi_env env, napi_callback_info info) {
  size_t argc = 12;
  napi_value argv[12];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc != 12) return throwError(env, "gemm: expected 12 arguments");
  if (!gemmIsa()[0]) return throwError(env, "gemm: this CPU has neither AVX-512 nor AVX2+FMA");
  napi_typedarray_type type;
  size_t length;
  void* heap;
  if (napi_get_typedarray_info(env, argv[0], &type, &length, &heap, nullptr, nullptr) != napi_ok || type != napi_float32_array) {
    return throwError(env, "gemm: argument 1 must be a Float32Array over the heap");
  }
  int64_t v[6];
  for (int i = 0; i < 6; i++) {
    if (!toInt(env, argv[1 + i], &v[i])) return throwError(env, "gemm: offsets and sizes must be numbers");
  }
  bool transA, transB;
  if (napi_get_value_bool(env, argv[7], &transA) != napi_ok || napi_get_value_bool(env, argv[8], &transB) != napi_ok) {
    return throwError(env, "gemm: transA/transB must be booleans");
  }
  int64_t batch;
  if (!toInt(env, argv[9], &batch) || batch < 0) return throwError(env, "gemm: bad batch");
  const int64_t aOff = v[0], bOff = v[1], cOff = v[2], m = v[3], k = v[4], n = v[5];
  if (m < 0 || k < 0 || n < 0 || aOff < 0 || bOff < 0 || cOff < 0 || (aOff | bOff | cOff) % 4 != 0) {
    return throwError(env, "gemm: negative or misaligned offset/size");
  }
  if (m > INT32_MAX || k > INT32_MAX || n > INT32_MAX || batch > INT32_MAX) return throwError(env, "gemm: size beyond int32");
  const int32_t* aIndex;
  const int32_t* bIndex;
  if (!int32Array(env, argv[10], (size_t)batch, &aIndex) || !int32Array(env, argv[11], (size_t)batch, &bIndex)) {
    return throwError(env, "gemm: aIndex/bIndex must be null or an Int32Array of length batch");
  }
  // Bounds: every operand element addressed must lie inside the heap (overflow-checked arithmetic).
  int64_t aMax = batch - 1, bMax = batch - 1;
  if (aIndex || bIndex) {
    aMax = bMax = 0;
    for (int64_t e = 0; e < batch; e++) {
      if ((aIndex && aIndex[e] < 0) || (bIndex && bIndex[e] < 0)) return throwError(env, "gemm: negative batch index");
      aMax = std::max<int64_t>(aMax, aIndex ? aIndex[e] : e);
      bMax = std::max<int64_t>(bMax, bIndex ? bIndex[e] : e);
    }
  }
  if (batch > 0 && (!fits(aOff / 4, aMax + 1, m, k, length) || !fits(bOff / 4, bMax + 1, k, n, length) ||
                    !fits(cOff / 4, batch, m, n, length))) {
    return throwError(env, "gemm: operand out of the heap's bounds");
  }
  float* base = static_cast<float*>(heap);
  GemmArgs g{base + aOff / 4, base + bOff / 4, base + cOff / 4, (int)m, (int)k, (int)n, transA, transB, (int)batch, aIndex, bIndex};
  gemm(g);
  return nullptr;
}

napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int64_t n;
  if (argc != 1 || !toInt(env, argv[0], &n) || n < 1 || n > 64) return throwError(env, "setThreads: expected an integer in [1, 64]");
  gemmSetThreads((int)n);
  return nullptr;
}

napi_value SetIsa(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  char name[16];
  size_t len;
  if (argc != 1 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) {
    return throwError(env, "setIsa: expected 'auto', 'avx512' or 'avx2'");
  }
  if (!gemmSetIsa(name)) return throwError(env, std::string("setIsa: '") + name + "' is not available on this CPU");
  return nullptr;
}

napi_value Info(napi_env env, napi_callback_info) {
  napi_value obj, isa, threads;
  napi_create_object(env, &obj);
  napi_create_string_utf8(env, gemmIsa(), NAPI_AUTO_LENGTH, &isa);
  napi_create_int32(env, gemmThreads(), &threads);
  napi_set_named_property(env, obj, "isa", isa);
  napi_set_named_property(env, obj, "threads", threads);
  return obj;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"gemm", nullptr, Gemm, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"info", nullptr, Info, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setIsa", nullptr, SetIsa, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)

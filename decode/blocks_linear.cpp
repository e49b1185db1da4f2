// x Wᵀ for weights held as blocks of 16 outputs x 32 inputs: 4-bit (w = d*q + m, GGUF's Q4_1) or 8-bit
// (w = d*q, Q8_0), with d and m per output and group of 32 inputs. Computed in fp32: each weight is
// dequantised exactly (d*q is exact in fp32) and each output is one FMA chain over the inputs in
// order, the same chain whatever the number of rows, so a row's result does not depend on the rows
// beside it (a verify step of k tokens gives each token what a one-token step gives it, bit for bit).
// Built by decode/blocks.py with torch's extension builder; AVX-512F or AVX2 + FMA.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int BO = 16;  // outputs per block
constexpr int G = 32;   // inputs per group

#if defined(__AVX512F__)
using vec = __m512;
struct W16 { __m512 a; };
static inline __m512 q4_row(const uint8_t* p, __m512 d, __m512 m) {
  __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  __m128i lo = _mm_and_si128(v, mask);
  __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
  __m128i q = _mm_unpacklo_epi64(lo, hi);
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)), d, m);
}
static inline __m512 q8_row(const int8_t* p, __m512 d) {
  __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
}

template <int R, bool Q4>
static void block_rows(const float* x, int64_t ldx, const uint8_t* qs, const float* sc, const float* mn,
                       int64_t groups, float* out, int64_t ldo) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 d = _mm512_loadu_ps(sc + g * BO);
    const __m512 m = Q4 ? _mm512_loadu_ps(mn + g * BO) : _mm512_setzero_ps();
    const uint8_t* p = qs + g * (Q4 ? G * BO / 2 : G * BO);
    const float* xg = x + g * G;
    for (int i = 0; i < G; ++i) {
      __m512 w = Q4 ? q4_row(p + i * (BO / 2), d, m) : q8_row(reinterpret_cast<const int8_t*>(p) + i * BO, d);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xg[r * ldx + i]), w, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * ldo, acc[r]);
}
#else
static inline void q4_row(const uint8_t* p, __m256 d0, __m256 d1, __m256 m0, __m256 m1, __m256& w0, __m256& w1) {
  __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  __m128i lo = _mm_and_si128(v, mask);
  __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
  w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), d0, m0);
  w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), d1, m1);
}
template <int R, bool Q4>
static void block_rows(const float* x, int64_t ldx, const uint8_t* qs, const float* sc, const float* mn,
                       int64_t groups, float* out, int64_t ldo) {
  __m256 a0[R], a1[R];
  for (int r = 0; r < R; ++r) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); }
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 d0 = _mm256_loadu_ps(sc + g * BO), d1 = _mm256_loadu_ps(sc + g * BO + 8);
    const __m256 m0 = Q4 ? _mm256_loadu_ps(mn + g * BO) : _mm256_setzero_ps();
    const __m256 m1 = Q4 ? _mm256_loadu_ps(mn + g * BO + 8) : _mm256_setzero_ps();
    const uint8_t* p = qs + g * (Q4 ? G * BO / 2 : G * BO);
    const float* xg = x + g * G;
    for (int i = 0; i < G; ++i) {
      __m256 w0, w1;
      if (Q4) {
        q4_row(p + i * (BO / 2), d0, d1, m0, m1, w0, w1);
      } else {
        __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * BO));
        w0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d0);
        w1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), d1);
      }
      for (int r = 0; r < R; ++r) {
        __m256 xv = _mm256_set1_ps(xg[r * ldx + i]);
        a0[r] = _mm256_fmadd_ps(xv, w0, a0[r]);
        a1[r] = _mm256_fmadd_ps(xv, w1, a1[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) { _mm256_storeu_ps(out + r * ldo, a0[r]); _mm256_storeu_ps(out + r * ldo + 8, a1[r]); }
}
#endif

// rows per pass over the weights: all accumulators, the weights, d, m and x in registers
#if defined(__AVX512F__)
constexpr int RMAX = 16;  // 32 zmm
#else
constexpr int RMAX = 4;  // 16 ymm, two per row
#endif

template <bool Q4, int R = 1>
static void rows_any(int rows, const float* x, int64_t ldx, const uint8_t* qs, const float* sc, const float* mn,
                     int64_t groups, float* out, int64_t ldo) {
  if constexpr (R < RMAX) {
    if (rows != R) return rows_any<Q4, R + 1>(rows, x, ldx, qs, sc, mn, groups, out, ldo);
  }
  block_rows<R, Q4>(x, ldx, qs, sc, mn, groups, out, ldo);
}

}  // namespace

// x [T, K] fp32; qs [NB, K/32, 32*16/2] uint8 (Q4) or [NB, K/32, 32*16] int8 (Q8); scale, minv [NB, K/32, 16] fp32.
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor scale, torch::Tensor minv, bool q4) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be [T, K] float32");
  TORCH_CHECK(qs.is_contiguous() && scale.is_contiguous() && minv.is_contiguous(), "blocks must be contiguous");
  TORCH_CHECK(qs.element_size() == 1 && scale.scalar_type() == torch::kFloat32, "blocks: 8-bit q, float32 scales");
  x = x.contiguous();
  const int64_t T = x.size(0), K = x.size(1), NB = qs.size(0), groups = qs.size(1);
  TORCH_CHECK(groups * G == K, "K does not match the packed weights");
  auto out = torch::empty({T, NB * BO}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* qp = reinterpret_cast<const uint8_t*>(qs.data_ptr());
  const float* sp = scale.data_ptr<float>();
  const float* mp = q4 ? minv.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t qstride = groups * (q4 ? G * BO / 2 : G * BO), sstride = groups * BO, N = NB * BO;
  at::parallel_for(0, NB, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t r = 0; r < T; r += RMAX) {
        int R = static_cast<int>(std::min<int64_t>(RMAX, T - r));
        if (q4) rows_any<true>(R, xp + r * K, K, qp + b * qstride, sp + b * sstride, mp + b * sstride, groups, op + r * N + b * BO, N);
        else rows_any<false>(R, xp + r * K, K, qp + b * qstride, sp + b * sstride, nullptr, groups, op + r * N + b * BO, N);
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("packed_linear", &packed_linear); }

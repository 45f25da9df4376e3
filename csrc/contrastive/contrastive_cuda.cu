// CUDA kernels of the fused contrastive loss: the CPU design (contrastive_cpu.cpp) on the GPU.
//
// A block of 256 threads owns 64 rows of A and walks over 64-row tiles of B. Every tile of A·Bᵀ reaches the
// kernels in the same register layout whatever the precision: thread (tx, ty) = (t % 16, t / 16) holds the dot
// products of rows ty + 16i and columns tx + 16j (i, j < 4). The 16 threads that share a row are 16 consecutive
// lanes of one warp and combine their row statistics with shuffles in a fixed order. The backward writes each
// tile's dLoss/d(a_i · b_j), the coefficients, to shared memory and adds coefficients · B to the block's own rows
// of dA with plain adds (no other block writes them); only the triplet term, three rows per anchor, and the
// InfoNCE's dT (below) add with atomics.
//
// Where the products run:
// - float32 inputs: CUDA cores, float32 FMA, for A·Bᵀ and for coefficients · B.
// - float16 and bfloat16 inputs: tensor cores (nvcuda::wmma). A·Bᵀ in the input precision with float32
//   accumulators; coefficients · B in TF32 with float32 accumulators (add_products says why TF32). Tiles are
//   zero-padded in shared memory where N, M or D is not a multiple of the tile.
//
// The InfoNCE is one pass over the tiles of Z·Tᵀ for both softmax directions, in the forward and in the backward.
// Forward: each block keeps a running log-sum-exp for its image rows in registers and adds its share of every
// text column's sum of exp(logit - |s|) to a float64 total with atomics; a small kernel then takes the logarithms
// (logit_bound says why the columns need no running maximum). Backward: each tile's coefficients, computed once
// from both directions' statistics, give dZ (the block's rows) and dT (the tile's columns, float32 atomics). The
// multiview terms read the N×N tiles of Z·Zᵀ once in the forward and once in the backward, each block for its own
// rows (the symmetry of Z·Zᵀ is not used).
//
// Products and gradients accumulate in float32, statistics in float64. The atomics make results on the GPU
// vary in the last bits from run to run; the CPU kernels are the deterministic ones.
//
// Architectures: bfloat16 and TF32 tensor cores need sm_80. The extension may still be built for older GPUs too
// (for the rasteriser), so in a compilation pass for an architecture below sm_80 the tensor-core helpers are
// left out and the three tile kernels (multiview_forward_kernel, infonce_forward_kernel, gradient_kernel) only
// trap; forward_cuda and backward_cuda refuse to launch where a GPU would run that code (require_sm80_code).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "contrastive/contrastive.h"
#include "contrastive/contrastive_common.h"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define AFFECTVLM_SM80_CODE 1  // the host pass, or a device pass for sm_80 or newer
#else
#define AFFECTVLM_SM80_CODE 0
#pragma nv_diag_suppress declared_but_not_referenced  // what only the tile kernels use
#endif

namespace affectvlm::contrastive {
namespace {

#if AFFECTVLM_SM80_CODE
namespace wmma = nvcuda::wmma;
#endif

constexpr int kTile = 64;
constexpr int kLanes = 16;            // threads sharing a row
constexpr int kPer = kTile / kLanes;  // rows (and columns) per thread
constexpr int kThreads = kLanes * kLanes;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kReduceThreads = 256;
// The tile kernels ask for two resident blocks per SM, which caps them at 128 registers a thread; without the
// minimum, ptxas aimed some of them at 80 registers and spilled.
constexpr int kBlocksPerSm = 2;

constexpr int kDepth = 16;  // CUDA cores: embedding entries per chunk of A·Bᵀ

// Tensor cores. wmma wants the row stride (ldm) a multiple of 16 bytes and every fragment's first element 32-byte
// aligned. Shared-memory rows are padded by 16 bytes, which keeps the stride a multiple of 16 bytes (so fragments
// that start at rows 0, 8, 16, ... and at columns 0, 8, ... floats or 0, 16, ... halves of 32-byte aligned
// arrays are aligned) and spreads a fragment's rows over the memory banks.
constexpr int kFragment = 16;    // wmma fragments are 16×16
constexpr int kTf32Depth = 8;    // a TF32 fragment product is 16×8 times 8×16
constexpr int kChunk = 64;       // embedding entries per chunk of A·Bᵀ
constexpr int kSlice = 32;       // embedding entries per slice of coefficients · B
constexpr int kHalfPad = 8;
constexpr int kFloatPad = 4;
static_assert((kChunk + kHalfPad) * sizeof(__half) % 16 == 0 && (kTile + kFloatPad) * sizeof(float) % 16 == 0 &&
                  (kSlice + kFloatPad) * sizeof(float) % 16 == 0,
              "wmma row strides are multiples of 16 bytes");
static_assert(kWarps * 2 * kFragment * kFragment == kTile * kTile && kWarps * kFragment * kFragment == kTile * kSlice,
              "each warp computes two fragments of a tile of dots and one of a slice of products");

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ inline int lane_column() { return threadIdx.x % kLanes; }
__device__ inline int lane_row() { return threadIdx.x / kLanes; }
__device__ inline int warp_index() { return threadIdx.x / kWarpSize; }

template <typename T>
__device__ inline T lane_sum(T value) {
  for (int offset = kLanes / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset, kLanes);
  return value;
}

// Blocks start their walk over B's tiles at different tiles, so that they do not all add to the same columns at
// the same time.
__device__ inline int64_t column_tile_begin(int64_t step, int64_t num_b) {
  const int64_t tiles = (num_b + kTile - 1) / kTile;
  return (int64_t(blockIdx.x) + step) % tiles * kTile;
}

// ---- Shared memory of the tile products -------------------------------------------------------------------

// float32 on CUDA cores: 16-deep chunks of both tiles, transposed (out[k][row]).
struct CudaCoreDots {
  float a[kDepth][kTile + 1];
  float b[kDepth][kTile + 1];
};

struct CudaCoreProducts {
  float coefficients[kTile][kTile + 1];
  float slice[kTile][kTile + 1];  // 64 embedding entries of the 64 source rows
};

// float16/bfloat16 on tensor cores: 64-deep chunks of both tiles, row by row; once multiplied, the same memory
// holds the finished tile of dot products.
template <typename In>
union alignas(32) TensorCoreDots {
  struct Chunks {
    In a[kTile][kChunk + kHalfPad];
    In b[kTile][kChunk + kHalfPad];
  } chunks;
  float dots[kTile][kTile + kFloatPad];
};

struct alignas(32) TensorCoreProducts {
  float coefficients[kTile][kTile + kFloatPad];
  float slice[kTile][kSlice + kFloatPad];  // 32 embedding entries of the 64 source rows, then their products
};

template <typename In>
using DotMemory = std::conditional_t<std::is_same_v<In, float>, CudaCoreDots, TensorCoreDots<In>>;
template <typename In>
using ProductMemory = std::conditional_t<std::is_same_v<In, float>, CudaCoreProducts, TensorCoreProducts>;

// out[r][k] = x[begin + r][k0 + k] for r < 64 and k < kWidth, zero outside the matrix.
template <int kWidth, typename In, typename Out, int kStride>
__device__ void load_rows(const In* x, int64_t begin, int64_t num, int64_t dim, int64_t k0, Out (*out)[kStride]) {
  for (int e = threadIdx.x; e < kTile * kWidth; e += kThreads) {
    const int r = e / kWidth, k = e % kWidth;
    const int64_t row = begin + r, d = k0 + k;
    out[r][k] = (row < num && d < dim) ? Out(x[row * dim + d]) : Out(0.f);
  }
}

// acc[i][j] += a[i] * b[j]: one step of a 4×4 register block, float32 on CUDA cores.
__device__ __forceinline__ void add_outer_product(const float a[kPer], const float b[kPer], float acc[kPer][kPer]) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// ---- A·Bᵀ tiles -------------------------------------------------------------------------------------------

// out[k][r] = x[begin + r][k0 + k], zero outside the matrix.
__device__ void load_chunk(const float* x, int64_t begin, int64_t num, int64_t dim, int64_t k0,
                           float (*out)[kTile + 1]) {
  for (int e = threadIdx.x; e < kTile * kDepth; e += kThreads) {
    const int r = e / kDepth, k = e % kDepth;
    const int64_t row = begin + r, d = k0 + k;
    out[k][r] = (row < num && d < dim) ? x[row * dim + d] : 0.f;
  }
}

// acc[i][j] = a[row_begin + ty + 16i] · b[column_begin + tx + 16j], float32 on CUDA cores.
__device__ void tile_dots(const float* a, int64_t row_begin, int64_t num_a, const float* b, int64_t column_begin,
                          int64_t num_b, int64_t dim, CudaCoreDots& s, float acc[kPer][kPer]) {
  const int tx = lane_column(), ty = lane_row();
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = 0.f;
  }
  for (int64_t k0 = 0; k0 < dim; k0 += kDepth) {
    __syncthreads();  // everyone is done with the previous chunk (and with the caller's shared tiles)
    load_chunk(a, row_begin, num_a, dim, k0, s.a);
    load_chunk(b, column_begin, num_b, dim, k0, s.b);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kDepth; ++k) {
      float av[kPer], bv[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) av[i] = s.a[k][ty + kLanes * i];
#pragma unroll
      for (int j = 0; j < kPer; ++j) bv[j] = s.b[k][tx + kLanes * j];
      add_outer_product(av, bv, acc);
    }
  }
}

#if AFFECTVLM_SM80_CODE
// The same for float16/bfloat16 on tensor cores: warp w computes the 16×32 block of the tile at rows 16 (w / 2)
// and columns 32 (w % 2), two fragments sharing their A fragment, then every thread reads its 4×4 back.
template <typename In>
__device__ void tile_dots(const In* a, int64_t row_begin, int64_t num_a, const In* b, int64_t column_begin,
                          int64_t num_b, int64_t dim, TensorCoreDots<In>& s, float acc[kPer][kPer]) {
  constexpr int kStride = kChunk + kHalfPad;
  const int row0 = kFragment * (warp_index() / 2), column0 = 2 * kFragment * (warp_index() % 2);
  wmma::fragment<wmma::accumulator, kFragment, kFragment, kFragment, float> dots[2];
  wmma::fill_fragment(dots[0], 0.f);
  wmma::fill_fragment(dots[1], 0.f);
  __syncthreads();  // everyone is done with the previous tile (and with the caller's shared memory)
  for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
    load_rows<kChunk>(a, row_begin, num_a, dim, k0, s.chunks.a);
    load_rows<kChunk>(b, column_begin, num_b, dim, k0, s.chunks.b);
    __syncthreads();
#pragma unroll 1  // unrolled, ptxas hoists the fragment loads of every step and spills
    for (int k = 0; k < kChunk; k += kFragment) {
      wmma::fragment<wmma::matrix_a, kFragment, kFragment, kFragment, In, wmma::row_major> rows;
      wmma::load_matrix_sync(rows, &s.chunks.a[row0][k], kStride);
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        // Bᵀ in column-major order is B's rows as stored: column n of Bᵀ is row n of B.
        wmma::fragment<wmma::matrix_b, kFragment, kFragment, kFragment, In, wmma::col_major> columns;
        wmma::load_matrix_sync(columns, &s.chunks.b[column0 + kFragment * f][k], kStride);
        wmma::mma_sync(dots[f], rows, columns, dots[f]);
      }
    }
    __syncthreads();  // the chunks are consumed: the next chunk, or the dots, may overwrite them
  }
#pragma unroll
  for (int f = 0; f < 2; ++f) {
    wmma::store_matrix_sync(&s.dots[row0][column0 + kFragment * f], dots[f], kTile + kFloatPad, wmma::mem_row_major);
  }
  __syncthreads();
  const int tx = lane_column(), ty = lane_row();
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = s.dots[ty + kLanes * i][tx + kLanes * j];
  }
}
#endif  // AFFECTVLM_SM80_CODE

// The hardest positive (largest distance) or negative (smallest); ties go to the lowest index.
struct Extreme {
  double value;
  int64_t index;  // -1: none seen

  __device__ bool beaten_by(double v, int64_t i, bool largest) const {
    if (i < 0) return false;
    if (index < 0) return true;
    if (v != value) return largest ? v > value : v < value;
    return i < index;
  }
  __device__ void offer(double v, int64_t i, bool largest) {
    if (beaten_by(v, i, largest)) {
      value = v;
      index = i;
    }
  }
  __device__ void combine_lanes(bool largest) {
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {
      const double v = __shfl_xor_sync(0xffffffffu, value, offset, kLanes);
      const int64_t i = __shfl_xor_sync(0xffffffffu, static_cast<long long>(index), offset, kLanes);
      offer(v, i, largest);
    }
  }
};

template <typename In>
__global__ void squared_norms_kernel(const In* z, int64_t n, int64_t dim, double* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float sum = 0.f;
  for (int64_t k = 0; k < dim; ++k) {
    const float v = to_float(z[i * dim + k]);
    sum = fmaf(v, v, sum);
  }
  out[i] = sum;
}

__global__ void count_classes_kernel(Inputs in, Saved saved) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool image = e < in.num_images;
  if (e >= in.num_images + in.num_texts) return;
  const int64_t label = image ? in.image_labels[e] : in.text_labels[e - in.num_images];
  if (label < 0 || label >= in.num_classes) return;  // the caller checks labels; never write out of bounds
  unsigned long long* counts = reinterpret_cast<unsigned long long*>(saved.class_counts);
  atomicAdd(counts + (image ? 0 : in.num_classes) + label, 1ull);
}

__global__ void count_pairs_kernel(Inputs in, Saved saved) { count_pairs(in, saved); }

template <typename In>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) multiview_forward_kernel(Inputs in, Saved saved) {
#if !AFFECTVLM_SM80_CODE
  __trap();
#else
  __shared__ DotMemory<In> s;
  const In* z = static_cast<const In*>(in.images);
  const int64_t n = in.num_images, row_begin = int64_t(blockIdx.x) * kTile;
  const int tx = lane_column(), ty = lane_row();
  const double margin = in.scale_and_margin[1];
  const double* norms = saved.image_stats + kSquaredNorm * n;

  double positive_sum[kPer] = {}, hinge_sum[kPer] = {}, hinge_count[kPer] = {};
  Extreme hardest_positive[kPer], hardest_negative[kPer];
  for (int i = 0; i < kPer; ++i) hardest_positive[i] = hardest_negative[i] = Extreme{0.0, -1};

  for (int64_t column_begin = 0; column_begin < n; column_begin += kTile) {
    float acc[kPer][kPer];
    tile_dots(z, row_begin, n, z, column_begin, n, in.dim, s, acc);
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = row_begin + ty + kLanes * i;
      if (row >= n) continue;
      const int64_t label = in.image_labels[row];
      for (int j = 0; j < kPer; ++j) {
        const int64_t column = column_begin + tx + kLanes * j;
        if (column >= n || column == row) continue;
        const double cosine = acc[i][j];
        const double distance = (norms[row] + norms[column]) - 2 * cosine;
        if (in.image_labels[column] == label) {
          positive_sum[i] += cosine;
          hardest_positive[i].offer(distance, column, true);
        } else {
          if (cosine - margin > 0) {
            hinge_sum[i] += cosine - margin;
            hinge_count[i] += 1;
          }
          hardest_negative[i].offer(distance, column, false);
        }
      }
    }
  }
  for (int i = 0; i < kPer; ++i) {
    const double positives = lane_sum(positive_sum[i]), hinges = lane_sum(hinge_sum[i]);
    const double active = lane_sum(hinge_count[i]);
    hardest_positive[i].combine_lanes(true);
    hardest_negative[i].combine_lanes(false);
    const int64_t row = row_begin + ty + kLanes * i;
    if (tx != 0 || row >= n) continue;
    double* stats = saved.image_stats + row;
    stats[kPositiveCosineSum * n] = positives;
    stats[kHingeSum * n] = hinges;
    stats[kHingeCount * n] = active;
    const Extreme p = hardest_positive[i], q = hardest_negative[i];
    stats[kHardestPositiveDistance * n] = p.index >= 0 ? p.value : -INFINITY;
    stats[kHardestNegativeDistance * n] = q.index >= 0 ? q.value : INFINITY;
    saved.hardest_positive[row] = p.index;
    saved.hardest_negative[row] = q.index;
    const double hinge = p.value - q.value + margin;
    stats[kTripletHinge * n] = p.index >= 0 && q.index >= 0 && hinge > 0 ? hinge : 0.0;
  }
#endif
}

// A running log-sum-exp: maximum and sum of exp(x - maximum).
struct LogSumExp {
  float maximum = -INFINITY;
  double sum = 0;

  __device__ void add(float x) {
    if (x > maximum) {
      sum = sum * exp(double(maximum) - x) + 1.0;
      maximum = x;
    } else {
      sum += expf(x - maximum);
    }
  }
  __device__ void merge(float other_maximum, double other_sum) {
    if (other_maximum == -INFINITY) return;
    if (maximum == -INFINITY) {
      maximum = other_maximum;
      sum = other_sum;
      return;
    }
    const float m = fmaxf(maximum, other_maximum);
    sum = sum * exp(double(maximum) - m) + other_sum * exp(double(other_maximum) - m);
    maximum = m;
  }
  __device__ void merge_lane(int offset, int width) {
    const float m = __shfl_xor_sync(0xffffffffu, maximum, offset, width);
    const double s = __shfl_xor_sync(0xffffffffu, sum, offset, width);
    merge(m, s);
  }
  __device__ void combine_lanes() {
    for (int offset = kLanes / 2; offset > 0; offset /= 2) merge_lane(offset, kLanes);
  }
  __device__ double value() const { return double(maximum) + log(sum); }
};

// The texts' softmax needs a log-sum-exp over all N images per text (column), and each block sees 64 of them.
// Each block adds its share to a float64 total of exp(logit - |s|) per column: the embeddings are unit vectors,
// so |logit| <= |s| and no term exceeds 1 (no overflow, and no running maximum that blocks would have to agree
// on), while a column's largest term is at least exp(-2|s|): exp(-200), about 1e-87, at AffectLoss's clamp
// s = 100, and exp(-700) at the wrapper's limit |s| <= 350, both well above float64's smallest normal number,
// about exp(-708). Terms far below a column's largest do not matter to its sum. The block forms its share in
// the running-maximum form and scales it by exp(maximum - |s|) once, in float64.
__device__ inline double logit_bound(const double* scale_and_margin) { return fabs(scale_and_margin[0]); }

// One tile's column statistics per warp (merged over its two groups of 16 rows), then merged over the warps.
struct ColumnPartials {
  float maximum[kWarps][kTile];
  double sum[kWarps][kTile];
  double match_logits[kWarps][kTile];
};

// The log-sum-exp of column j of this thread's logits (-inf outside the matrix): one maximum, then float
// exponentials.
__device__ LogSumExp column_log_sum_exp(const float (&logits)[kPer][kPer], int j) {
  LogSumExp lse;
#pragma unroll
  for (int i = 0; i < kPer; ++i) lse.maximum = fmaxf(lse.maximum, logits[i][j]);
  if (lse.maximum == -INFINITY) return lse;
#pragma unroll
  for (int i = 0; i < kPer; ++i) lse.sum += expf(logits[i][j] - lse.maximum);
  return lse;
}

// Adds the tile's share of each text column to the totals: column_sums (of exp(logit - |s|)) and
// column_match_sums. This thread holds columns tx + 16j of `logits`, and match_logits[j] of column tx + 16j.
__device__ void add_column_statistics(const float (&logits)[kPer][kPer], double (&match_logits)[kPer],
                                      int64_t column_begin, int64_t num_columns, double bound, double* column_sums,
                                      double* column_match_sums, ColumnPartials& s) {
  const int tx = lane_column(), warp = warp_index();
  const bool first_row_group = threadIdx.x % kWarpSize < kLanes;  // lanes 16 apart hold the same columns
  LogSumExp lse[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    lse[j] = column_log_sum_exp(logits, j);
    lse[j].merge_lane(kLanes, kWarpSize);
    match_logits[j] += __shfl_xor_sync(0xffffffffu, match_logits[j], kLanes);
  }
  __syncthreads();  // the previous tile's partials are consumed
  if (first_row_group) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      s.maximum[warp][tx + kLanes * j] = lse[j].maximum;
      s.sum[warp][tx + kLanes * j] = lse[j].sum;
      s.match_logits[warp][tx + kLanes * j] = match_logits[j];
    }
  }
  __syncthreads();
  const int c = threadIdx.x;
  const int64_t column = column_begin + c;
  if (c >= kTile || column >= num_columns) return;
  LogSumExp total;
  double match_total = 0;
  for (int w = 0; w < kWarps; ++w) {
    total.merge(s.maximum[w][c], s.sum[w][c]);
    match_total += s.match_logits[w][c];
  }
  atomicAdd(column_sums + column, total.sum * exp(double(total.maximum) - bound));
  atomicAdd(column_match_sums + column, match_total);
}

// The InfoNCE statistics of both directions in one pass over the tiles of Z·Tᵀ: per image row (owned by this
// block) the log-sum-exp over texts and the sum of its match logits, written; per text column the block's share
// of the sum of exp(logit - |s|) and of the match logits, added (text_stats starts at zero;
// texts_log_sum_exp_kernel finishes it).
template <typename In>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) infonce_forward_kernel(Inputs in, Saved saved) {
#if !AFFECTVLM_SM80_CODE
  __trap();
#else
  __shared__ DotMemory<In> dots;
  __shared__ ColumnPartials columns;
  const In* z = static_cast<const In*>(in.images);
  const In* t = static_cast<const In*>(in.texts);
  const int64_t n = in.num_images, m = in.num_texts, row_begin = int64_t(blockIdx.x) * kTile;
  const int tx = lane_column(), ty = lane_row();
  const float scale = float(in.scale_and_margin[0]);
  const double bound = logit_bound(in.scale_and_margin);
  LogSumExp row_lse[kPer];
  double row_matches[kPer] = {};
  for (int64_t step = 0; step * kTile < m; ++step) {
    const int64_t column_begin = column_tile_begin(step, m);
    float acc[kPer][kPer];
    tile_dots(z, row_begin, n, t, column_begin, m, in.dim, dots, acc);
    float logits[kPer][kPer];
    double column_matches[kPer] = {};
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = row_begin + ty + kLanes * i;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t column = column_begin + tx + kLanes * j;
        const bool inside = row < n && column < m;
        logits[i][j] = inside ? scale * acc[i][j] : -INFINITY;
        if (!inside) continue;
        row_lse[i].add(logits[i][j]);
        if (in.text_labels[column] == in.image_labels[row]) {
          row_matches[i] += logits[i][j];
          column_matches[j] += logits[i][j];
        }
      }
    }
    add_column_statistics(logits, column_matches, column_begin, m, bound, saved.text_stats + kTextLogSumExp * m,
                          saved.text_stats + kTextMatchLogitSum * m, columns);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    row_lse[i].combine_lanes();
    const double match_sum = lane_sum(row_matches[i]);
    const int64_t row = row_begin + ty + kLanes * i;
    if (tx != 0 || row >= n) continue;
    saved.image_stats[kImageLogSumExp * n + row] = row_lse[i].value();
    saved.image_stats[kImageMatchLogitSum * n + row] = match_sum;
  }
#endif
}

// text_stats[kTextLogSumExp] holds sums of exp(logit - |s|) after infonce_forward_kernel; make them log-sum-exps.
__global__ void texts_log_sum_exp_kernel(Inputs in, Saved saved) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= in.num_texts) return;
  double* log_sum_exp = saved.text_stats + kTextLogSumExp * in.num_texts;
  log_sum_exp[j] = logit_bound(in.scale_and_margin) + log(log_sum_exp[j]);
}

// Sums the row statistics in a fixed order (thread t takes rows t, t + 256, ...; then a fixed tree).
__global__ void __launch_bounds__(kReduceThreads) finish_totals_kernel(Inputs in, Saved saved) {
  __shared__ RowSums partial[kReduceThreads];
  RowSums sums{};
  for (int64_t i = threadIdx.x; i < in.num_images; i += kReduceThreads) sums.add(image_row_sums(in, saved, i));
  for (int64_t j = threadIdx.x; j < in.num_texts; j += kReduceThreads) sums.add(text_row_sums(in, saved, j));
  partial[threadIdx.x] = sums;
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (threadIdx.x < stride) partial[threadIdx.x].add(partial[threadIdx.x + stride]);
  }
  if (threadIdx.x == 0) write_totals(in, saved, partial[0]);
}

// ---- coefficients · B ------------------------------------------------------------------------------------

// Whose gradient a tile's products go to. Rows: grad[tile rows of A] += C · (tile rows of B), rows that this
// block alone writes, with plain adds. Columns: grad[tile rows of B] += Cᵀ · (tile rows of A), rows that every row
// block adds to, with float32 atomics.
enum class Target { Rows, Columns };

template <Target target>
__device__ inline void add_to_gradient(float* grad, float value) {
  if constexpr (target == Target::Rows) {
    *grad += value;
  } else {
    atomicAdd(grad, value);
  }
}

// float32 on CUDA cores, one 64-wide slice of the embedding at a time. Thread (tx, ty) computes targets
// ty + 16i and embedding entries tx + 16j of the slice.
template <Target target>
__device__ void add_products(const float* source, int64_t source_begin, int64_t num_source, float* grad,
                             int64_t target_begin, int64_t num_target, int64_t dim, CudaCoreProducts& s) {
  const int tx = lane_column(), ty = lane_row();
  for (int64_t k0 = 0; k0 < dim; k0 += kTile) {
    __syncthreads();  // coefficients written; previous slice consumed
    load_rows<kTile>(source, source_begin, num_source, dim, k0, s.slice);
    __syncthreads();
    float acc[kPer][kPer] = {};
    for (int c = 0; c < kTile; ++c) {
      float cv[kPer], bv[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int t = ty + kLanes * i;
        cv[i] = target == Target::Rows ? s.coefficients[t][c] : s.coefficients[c][t];
      }
#pragma unroll
      for (int j = 0; j < kPer; ++j) bv[j] = s.slice[c][tx + kLanes * j];
      add_outer_product(cv, bv, acc);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = target_begin + ty + kLanes * i;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t d = k0 + tx + kLanes * j;
        if (row < num_target && d < dim) add_to_gradient<target>(grad + row * dim + d, acc[i][j]);
      }
    }
  }
}

#if AFFECTVLM_SM80_CODE
template <typename Fragment>
__device__ void round_to_tf32(Fragment& fragment) {
  for (int e = 0; e < fragment.num_elements; ++e) fragment.x[e] = wmma::__float_to_tf32(fragment.x[e]);
}

// float16/bfloat16 on TF32 tensor cores, one 32-wide slice of the embedding at a time: warp w computes the 16×16
// fragment at targets 16 (w / 2) and entries 16 (w % 2) of the slice, over the 64 sources in steps of 8.
//
// Why TF32, and not the input precision or CUDA cores. Tensor cores take both factors in a narrow format. The
// source rows are float16/bfloat16 values, which TF32 (11 significant bits, float32's exponent range) holds
// exactly, so the one rounding is that of the float32 coefficients, by at most 2^-11 relatively. Rounded to the
// input precision instead, as a framework's backward rounds these same coefficients, they would lose 2^-8 in
// bfloat16; in float16 the small ones (2/|P|, softmax/(rows with a match)) become subnormal (below 6e-5) from
// batches of a few hundred and flush to zero at tens of thousands. Simulated on the CPU for the shapes of
// test_cuda_low_precision_error_at_most_twice_the_reference_error, the TF32 rounding moves dZ and dT by at most
// about a quarter of the framework's own error there, inside the test's bound of twice that error. On CUDA cores
// the product would be exact to float32 but would keep half of the backward's multiply-adds off the tensor cores.
template <Target target, typename In>
__device__ void add_products(const In* source, int64_t source_begin, int64_t num_source, float* grad,
                             int64_t target_begin, int64_t num_target, int64_t dim, TensorCoreProducts& s) {
  // Rows: the A fragment is C (row-major). Columns: it is Cᵀ, which is C read in column-major order.
  using CoefficientLayout = std::conditional_t<target == Target::Rows, wmma::row_major, wmma::col_major>;
  constexpr int kCoefficientStride = kTile + kFloatPad, kSliceStride = kSlice + kFloatPad;
  const int target0 = kFragment * (warp_index() / 2), entry0 = kFragment * (warp_index() % 2);
  for (int64_t k0 = 0; k0 < dim; k0 += kSlice) {
    __syncthreads();  // coefficients written; previous slice consumed
    load_rows<kSlice>(source, source_begin, num_source, dim, k0, s.slice);
    __syncthreads();
    wmma::fragment<wmma::accumulator, kFragment, kFragment, kTf32Depth, float> products;
    wmma::fill_fragment(products, 0.f);
#pragma unroll 1  // as in tile_dots: unrolled, it spills
    for (int c = 0; c < kTile; c += kTf32Depth) {
      wmma::fragment<wmma::matrix_a, kFragment, kFragment, kTf32Depth, wmma::precision::tf32, CoefficientLayout>
          coefficients;
      wmma::fragment<wmma::matrix_b, kFragment, kFragment, kTf32Depth, wmma::precision::tf32, wmma::row_major> slice;
      const float* first = target == Target::Rows ? &s.coefficients[target0][c] : &s.coefficients[c][target0];
      wmma::load_matrix_sync(coefficients, first, kCoefficientStride);
      wmma::load_matrix_sync(slice, &s.slice[c][entry0], kSliceStride);
      round_to_tf32(coefficients);
      round_to_tf32(slice);
      wmma::mma_sync(products, coefficients, slice, products);
    }
    __syncthreads();  // the slice is consumed: it now takes the products
    wmma::store_matrix_sync(&s.slice[target0][entry0], products, kSliceStride, wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kSlice; e += kThreads) {
      const int r = e / kSlice, k = e % kSlice;
      const int64_t row = target_begin + r, d = k0 + k;
      if (row < num_target && d < dim) add_to_gradient<target>(grad + row * dim + d, s.slice[r][k]);
    }
  }
}
#endif  // AFFECTVLM_SM80_CODE

// ---- Backward -----------------------------------------------------------------------------------------------

// dA += dLoss/d(A·Bᵀ) · B and, where grad_b is given, dB += dLoss/d(A·Bᵀ)ᵀ · A, from one pass over the tiles,
// with dLoss/d(a_i · b_j) = `coefficient(i, j, dot, scale_gradient_of_row_i)`. Where scale_gradient is given,
// each row's accumulated scale gradient is written there.
template <typename In, typename Coefficient>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    gradient_kernel(const In* a, int64_t num_a, const In* b, int64_t num_b, int64_t dim, Coefficient coefficient,
                    float* grad_a, float* grad_b, double* scale_gradient) {
#if !AFFECTVLM_SM80_CODE
  __trap();
#else
  __shared__ DotMemory<In> dots;
  __shared__ ProductMemory<In> products;
  const int64_t row_begin = int64_t(blockIdx.x) * kTile;
  const int tx = lane_column(), ty = lane_row();
  double scale_partial[kPer] = {};
  for (int64_t step = 0; step * kTile < num_b; ++step) {
    const int64_t column_begin = column_tile_begin(step, num_b);
    float acc[kPer][kPer];
    tile_dots(a, row_begin, num_a, b, column_begin, num_b, dim, dots, acc);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = row_begin + ty + kLanes * i;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t column = column_begin + tx + kLanes * j;
        products.coefficients[ty + kLanes * i][tx + kLanes * j] =
            row < num_a && column < num_b ? coefficient(row, column, double(acc[i][j]), scale_partial[i]) : 0.f;
      }
    }
    add_products<Target::Rows>(b, column_begin, num_b, grad_a, row_begin, num_a, dim, products);
    if (grad_b != nullptr) {
      add_products<Target::Columns>(a, row_begin, num_a, grad_b, column_begin, num_b, dim, products);
    }
  }
  if (scale_gradient == nullptr) return;  // uniform across the block, so no shuffle below is skipped by some
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const double total = lane_sum(scale_partial[i]);
    const int64_t row = row_begin + ty + kLanes * i;
    if (tx == 0 && row < num_a) scale_gradient[row] = total;
  }
#endif
}

struct MultiviewCoefficient {
  Inputs in;
  const double* totals;
  const double* term_gradients;

  __device__ float operator()(int64_t i, int64_t j, double cosine, double&) const {
    if (i == j) return 0.f;
    return float(contrastive_pair_gradient(in.image_labels[i] == in.image_labels[j], cosine,
                                           in.scale_and_margin[1], term_gradients[0], totals));
  }
};

// dLoss/d(z_i · t_j) of the InfoNCE: both softmax directions, the image row's and the text row's, at once.
struct InfoNceCoefficient {
  Inputs in;
  Saved saved;
  const double* term_gradients;

  __device__ float operator()(int64_t i, int64_t j, double dot, double& scale_partial) const {
    const int64_t n = in.num_images, m = in.num_texts;
    const float scale = float(in.scale_and_margin[0]);
    const double logit = scale * float(dot);  // in float, exactly as the forward computed it
    const int64_t image_label = in.image_labels[i], text_label = in.text_labels[j];
    const bool match = image_label == text_label;
    const double* totals = saved.totals;
    const double g =
        0.5 * term_gradients[2] *
        (infonce_side_gradient(logit, saved.image_stats[kImageLogSumExp * n + i], match,
                               text_class_counts(saved, in.num_classes)[image_label], totals[kImageRowsWithMatch]) +
         infonce_side_gradient(logit, saved.text_stats[kTextLogSumExp * m + j], match,
                               image_class_counts(saved)[text_label], totals[kTextRowsWithMatch]));
    scale_partial += g * dot;
    return float(scale * g);
  }
};

template <typename In>
__global__ void triplet_backward_kernel(Inputs in, Saved saved, const double* term_gradients, float* grad) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = in.num_images, dim = in.dim;
  if (e >= n * dim) return;
  const int64_t i = e / dim, k = e % dim;
  if (!(saved.image_stats[kTripletHinge * n + i] > 0)) return;
  const In* z = static_cast<const In*>(in.images);
  const int64_t p = saved.hardest_positive[i], q = saved.hardest_negative[i];
  const float coefficient = float(2.0 * ratio_or_zero(term_gradients[1], saved.totals[kAnchors]));
  const float zi = to_float(z[i * dim + k]), zp = to_float(z[p * dim + k]), zq = to_float(z[q * dim + k]);
  atomicAdd(grad + i * dim + k, coefficient * (zq - zp));
  atomicAdd(grad + p * dim + k, coefficient * (zp - zi));
  atomicAdd(grad + q * dim + k, coefficient * (zi - zq));
}

__global__ void __launch_bounds__(kReduceThreads)
    scalar_gradients_kernel(Inputs in, Saved saved, Gradients grad) {
  __shared__ double partial[kReduceThreads];
  const double* rows = saved.image_stats + kScaleGradient * in.num_images;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < in.num_images; i += kReduceThreads) sum += rows[i];
  partial[threadIdx.x] = sum;
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
  }
  if (threadIdx.x == 0) {
    grad.scale_and_margin[0] = partial[0];
    grad.scale_and_margin[1] = margin_gradient(saved.totals, grad.term_gradients);
  }
}

void check(cudaError_t status, const char* step) { check_cuda(status, "contrastive loss", step); }

void check_launch(const char* what) { check(cudaGetLastError(), what); }

// The tile kernels trap where compiled for an architecture below sm_80 (AFFECTVLM_SM80_CODE), so refuse to
// launch on the current device if it would run such code: an older GPU, or a newer one for which this build has
// only the PTX of an older architecture to compile at load time (CUDAARCHS="75" run on an A100). ptxVersion is
// the virtual architecture that the code chosen for this device was compiled for. Neither refusal is tested: the
// first needs a GPU older than sm_80, the second a build for older architectures only, run on a newer GPU.
void require_sm80_code() {
  int device = 0, major = 0, minor = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  const std::string capability = std::to_string(major) + "." + std::to_string(minor);
  if (major < 8) {
    throw std::runtime_error("the fused contrastive loss on the GPU needs compute capability 8.0 or newer (this GPU "
                             "has " + capability + "); run it on the CPU");
  }
  cudaFuncAttributes tile_kernel{};
  check(cudaFuncGetAttributes(&tile_kernel, infonce_forward_kernel<float>), "cudaFuncGetAttributes");
  if (tile_kernel.ptxVersion < 80) {
    throw std::runtime_error("this build of affectvlm has no sm_80 or newer code of the fused contrastive loss for "
                             "this GPU (compute capability " + capability + "); rebuild it with " +
                             std::to_string(10 * major + minor) + " in CUDAARCHS, or run the loss on the CPU");
  }
}

unsigned int blocks_for(int64_t rows, int64_t per_block) { return unsigned((rows + per_block - 1) / per_block); }

template <typename In>
void forward(const Inputs& in, const Saved& saved, cudaStream_t stream) {
  const In* z = static_cast<const In*>(in.images);
  const int64_t n = in.num_images, m = in.num_texts;
  cudaMemsetAsync(saved.class_counts, 0, sizeof(int64_t) * 2 * in.num_classes, stream);
  count_classes_kernel<<<blocks_for(n + m, 256), 256, 0, stream>>>(in, saved);
  count_pairs_kernel<<<1, 1, 0, stream>>>(in, saved);
  squared_norms_kernel<In><<<blocks_for(n, 256), 256, 0, stream>>>(z, n, in.dim, saved.image_stats + kSquaredNorm * n);
  if (in.multiview_terms) {
    multiview_forward_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(in, saved);
  } else {
    cudaMemsetAsync(saved.image_stats, 0, sizeof(double) * (kTripletHinge + 1) * n, stream);
    cudaMemsetAsync(saved.hardest_positive, 0xff, sizeof(int64_t) * n, stream);  // all bits set: -1
    cudaMemsetAsync(saved.hardest_negative, 0xff, sizeof(int64_t) * n, stream);
  }
  if (m > 0) {
    cudaMemsetAsync(saved.text_stats, 0, sizeof(double) * kNumTextStats * m, stream);  // column totals start at 0
    infonce_forward_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(in, saved);
    texts_log_sum_exp_kernel<<<blocks_for(m, 256), 256, 0, stream>>>(in, saved);
  } else {
    cudaMemsetAsync(saved.image_stats + kImageLogSumExp * n, 0, sizeof(double) * 2 * n, stream);
  }
  finish_totals_kernel<<<1, kReduceThreads, 0, stream>>>(in, saved);
  check_launch("forward");
}

template <typename In>
void backward(const Inputs& in, const Saved& saved, const Gradients& grad, cudaStream_t stream) {
  const In* z = static_cast<const In*>(in.images);
  const In* t = static_cast<const In*>(in.texts);
  float* dz = static_cast<float*>(grad.images);
  float* dt = static_cast<float*>(grad.texts);
  const int64_t n = in.num_images, m = in.num_texts, dim = in.dim;
  double* scale_rows = saved.image_stats + kScaleGradient * n;
  cudaMemsetAsync(dz, 0, sizeof(float) * n * dim, stream);
  cudaMemsetAsync(dt, 0, sizeof(float) * m * dim, stream);
  cudaMemsetAsync(scale_rows, 0, sizeof(double) * n, stream);

  if (in.multiview_terms) {
    const MultiviewCoefficient multiview{in, saved.totals, grad.term_gradients};
    gradient_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(z, n, z, n, dim, multiview, dz, nullptr,
                                                                       nullptr);
    triplet_backward_kernel<In><<<blocks_for(n * dim, 256), 256, 0, stream>>>(in, saved, grad.term_gradients, dz);
  }
  if (m > 0) {
    const InfoNceCoefficient infonce{in, saved, grad.term_gradients};
    gradient_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(z, n, t, m, dim, infonce, dz, dt, scale_rows);
  }
  scalar_gradients_kernel<<<1, kReduceThreads, 0, stream>>>(in, saved, grad);
  check_launch("backward");
}

}  // namespace

void forward_cuda(const Inputs& in, const Saved& saved, intptr_t stream) {
  require_sm80_code();
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (in.precision) {
    case Precision::Float32: return forward<float>(in, saved, s);
    case Precision::Float16: return forward<__half>(in, saved, s);
    case Precision::BFloat16: return forward<__nv_bfloat16>(in, saved, s);
    default: throw std::invalid_argument("the CUDA contrastive kernel takes float32, float16 or bfloat16 embeddings");
  }
}

void backward_cuda(const Inputs& in, const Saved& saved, const Gradients& grad, intptr_t stream) {
  require_sm80_code();
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (in.precision) {
    case Precision::Float32: return backward<float>(in, saved, grad, s);
    case Precision::Float16: return backward<__half>(in, saved, grad, s);
    case Precision::BFloat16: return backward<__nv_bfloat16>(in, saved, grad, s);
    default: throw std::invalid_argument("the CUDA contrastive kernel takes float32, float16 or bfloat16 embeddings");
  }
}

}  // namespace affectvlm::contrastive

// CUDA kernels of the fused contrastive loss: the CPU design (contrastive_cpu.cpp) on the GPU.
//
// A block of 256 threads owns 64 rows of A and walks over 64-row tiles of B. Thread (tx, ty) = (t % 16,
// t / 16) computes the dot products of rows ty + 16i and columns tx + 16j (i, j < 4) in registers, from
// 16-deep chunks of both tiles in shared memory. The 16 threads that share a row are 16 consecutive lanes
// of one warp and combine their row statistics with shuffles in a fixed order. The backward writes each
// tile's dLoss/d(dot) to shared memory and adds coefficients · B to the block's own rows of dA, so dA needs
// no atomics; only the triplet term, three rows per anchor, scatters with atomics.
//
// Inputs are float32, float16 or bfloat16, read as float32; products and gradients accumulate in float32,
// row statistics in float64. Both InfoNCE directions are two passes (A = Z then A = T), as on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "contrastive/contrastive.h"
#include "contrastive/contrastive_common.h"

namespace affectvlm::contrastive {
namespace {

constexpr int kTile = 64;
constexpr int kDepth = 16;
constexpr int kLanes = 16;           // threads sharing a row
constexpr int kPer = kTile / kLanes;  // rows (and columns) per thread
constexpr int kThreads = kLanes * kLanes;
constexpr int kReduceThreads = 256;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ inline int lane_column() { return threadIdx.x % kLanes; }
__device__ inline int lane_row() { return threadIdx.x / kLanes; }

template <typename T>
__device__ inline T lane_sum(T value) {
  for (int offset = kLanes / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset, kLanes);
  return value;
}

struct SharedTiles {
  float a[kDepth][kTile + 1];
  float b[kDepth][kTile + 1];
};

// out[k][r] = x[begin + r][k0 + k], zero outside the matrix.
template <typename In>
__device__ void load_chunk(const In* x, int64_t begin, int64_t num, int64_t dim, int64_t k0,
                           float (*out)[kTile + 1]) {
  for (int e = threadIdx.x; e < kTile * kDepth; e += kThreads) {
    const int r = e / kDepth, k = e % kDepth;
    const int64_t row = begin + r, d = k0 + k;
    out[k][r] = (row < num && d < dim) ? to_float(x[row * dim + d]) : 0.f;
  }
}

// acc[i][j] = a[row_begin + ty + 16i] · b[column_begin + tx + 16j].
template <typename In>
__device__ void tile_dots(const In* a, int64_t row_begin, int64_t num_a, const In* b, int64_t column_begin,
                          int64_t num_b, int64_t dim, SharedTiles& s, float acc[kPer][kPer]) {
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
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
  }
}

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
__global__ void __launch_bounds__(kThreads) multiview_forward_kernel(Inputs in, Saved saved) {
  __shared__ SharedTiles s;
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
  __device__ void combine_lanes() {
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {
      const float m = __shfl_xor_sync(0xffffffffu, maximum, offset, kLanes);
      const double s = __shfl_xor_sync(0xffffffffu, sum, offset, kLanes);
      merge(m, s);
    }
  }
  __device__ double value() const { return double(maximum) + log(sum); }
};

// One direction of the InfoNCE: per row of A, log-sum-exp of scale · (a · b_j) and the sum over matches.
template <typename In>
__global__ void __launch_bounds__(kThreads)
    infonce_forward_kernel(const In* a, const int64_t* labels_a, int64_t num_a, const In* b,
                           const int64_t* labels_b, int64_t num_b, int64_t dim, const double* scale_and_margin,
                           double* log_sum_exp, double* match_logit_sum) {
  __shared__ SharedTiles s;
  const int64_t row_begin = int64_t(blockIdx.x) * kTile;
  const int tx = lane_column(), ty = lane_row();
  const float scale = float(scale_and_margin[0]);
  LogSumExp lse[kPer];
  double matches[kPer] = {};
  for (int64_t column_begin = 0; column_begin < num_b; column_begin += kTile) {
    float acc[kPer][kPer];
    tile_dots(a, row_begin, num_a, b, column_begin, num_b, dim, s, acc);
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = row_begin + ty + kLanes * i;
      if (row >= num_a) continue;
      for (int j = 0; j < kPer; ++j) {
        const int64_t column = column_begin + tx + kLanes * j;
        if (column >= num_b) continue;
        const float logit = scale * acc[i][j];
        lse[i].add(logit);
        if (labels_b[column] == labels_a[row]) matches[i] += logit;
      }
    }
  }
  for (int i = 0; i < kPer; ++i) {
    lse[i].combine_lanes();
    const double match_sum = lane_sum(matches[i]);
    const int64_t row = row_begin + ty + kLanes * i;
    if (tx != 0 || row >= num_a) continue;
    log_sum_exp[row] = lse[i].value();
    match_logit_sum[row] = match_sum;
  }
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

// grad[rows of this block] += coefficients · b[column tile], one 64-wide slice of the embedding at a time.
template <typename In>
__device__ void accumulate_tile(const In* b, int64_t column_begin, int64_t num_b, int64_t dim,
                                const float (*coefficients)[kTile + 1], float (*columns)[kTile + 1], float* grad,
                                int64_t row_begin, int64_t num_a) {
  const int tx = lane_column(), ty = lane_row();
  for (int64_t k0 = 0; k0 < dim; k0 += kTile) {
    __syncthreads();  // coefficients written; previous slice consumed
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int c = e / kTile, k = e % kTile;
      const int64_t column = column_begin + c, d = k0 + k;
      columns[c][k] = (column < num_b && d < dim) ? to_float(b[column * dim + d]) : 0.f;
    }
    __syncthreads();
    float acc[kPer][kPer] = {};
    for (int c = 0; c < kTile; ++c) {
      float cv[kPer], bv[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) cv[i] = coefficients[ty + kLanes * i][c];
#pragma unroll
      for (int j = 0; j < kPer; ++j) bv[j] = columns[c][tx + kLanes * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(cv[i], bv[j], acc[i][j]);
      }
    }
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = row_begin + ty + kLanes * i;
      for (int j = 0; j < kPer; ++j) {
        const int64_t d = k0 + tx + kLanes * j;
        if (row < num_a && d < dim) grad[row * dim + d] += acc[i][j];
      }
    }
  }
}

// dA += dLoss/d(A·Bᵀ) · B, with dLoss/d(a_i · b_j) from `coefficient(i, j, dot, scale_gradient_of_row_i)`.
// Where scale_gradient is given, each row's accumulated scale gradient is written there.
template <typename In, typename Coefficient>
__global__ void __launch_bounds__(kThreads)
    gradient_kernel(const In* a, int64_t num_a, const In* b, int64_t num_b, int64_t dim, Coefficient coefficient,
                    float* grad_a, double* scale_gradient) {
  __shared__ SharedTiles s;
  __shared__ float coefficients[kTile][kTile + 1];
  __shared__ float columns[kTile][kTile + 1];
  const int64_t row_begin = int64_t(blockIdx.x) * kTile;
  const int tx = lane_column(), ty = lane_row();
  double scale_partial[kPer] = {};
  for (int64_t column_begin = 0; column_begin < num_b; column_begin += kTile) {
    float acc[kPer][kPer];
    tile_dots(a, row_begin, num_a, b, column_begin, num_b, dim, s, acc);
    for (int i = 0; i < kPer; ++i) {
      const int64_t row = row_begin + ty + kLanes * i;
      for (int j = 0; j < kPer; ++j) {
        const int64_t column = column_begin + tx + kLanes * j;
        coefficients[ty + kLanes * i][tx + kLanes * j] =
            row < num_a && column < num_b ? coefficient(row, column, double(acc[i][j]), scale_partial[i]) : 0.f;
      }
    }
    accumulate_tile(b, column_begin, num_b, dim, coefficients, columns, grad_a, row_begin, num_a);
  }
  if (scale_gradient == nullptr) return;  // uniform across the block, so no shuffle below is skipped by some
  for (int i = 0; i < kPer; ++i) {
    const double total = lane_sum(scale_partial[i]);
    const int64_t row = row_begin + ty + kLanes * i;
    if (tx == 0 && row < num_a) scale_gradient[row] = total;
  }
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

// dLoss/d(a_i · b_j) of the InfoNCE for rows of A against rows of B, A being the images or the texts.
struct InfoNceCoefficient {
  const int64_t* labels_a;
  const int64_t* labels_b;
  const double* log_sum_exp_a;
  const double* log_sum_exp_b;
  const int64_t* b_of_class;  // matches of an A row: rows of B with its label
  const int64_t* a_of_class;
  const double* totals;
  int rows_a_total, rows_b_total;  // indices into totals: rows with at least one match
  const double* scale_and_margin;
  const double* term_gradients;

  __device__ float operator()(int64_t i, int64_t j, double dot, double& scale_partial) const {
    const float scale = float(scale_and_margin[0]);
    const double logit = scale * float(dot);  // in float, exactly as the forward computed it
    const bool match = labels_a[i] == labels_b[j];
    const double g = 0.5 * term_gradients[2] *
                     (infonce_side_gradient(logit, log_sum_exp_a[i], match, b_of_class[labels_a[i]],
                                            totals[rows_a_total]) +
                      infonce_side_gradient(logit, log_sum_exp_b[j], match, a_of_class[labels_b[j]],
                                            totals[rows_b_total]));
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

void check_launch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("contrastive loss: ") + what + " failed: " + cudaGetErrorString(status));
  }
}

unsigned int blocks_for(int64_t rows, int64_t per_block) { return unsigned((rows + per_block - 1) / per_block); }

template <typename In>
void forward(const Inputs& in, const Saved& saved, cudaStream_t stream) {
  const In* z = static_cast<const In*>(in.images);
  const In* t = static_cast<const In*>(in.texts);
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
    infonce_forward_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(
        z, in.image_labels, n, t, in.text_labels, m, in.dim, in.scale_and_margin,
        saved.image_stats + kImageLogSumExp * n, saved.image_stats + kImageMatchLogitSum * n);
    infonce_forward_kernel<In><<<blocks_for(m, kTile), kThreads, 0, stream>>>(
        t, in.text_labels, m, z, in.image_labels, n, in.dim, in.scale_and_margin,
        saved.text_stats + kTextLogSumExp * m, saved.text_stats + kTextMatchLogitSum * m);
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

  const MultiviewCoefficient multiview{in, saved.totals, grad.term_gradients};
  if (in.multiview_terms) {
    gradient_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(z, n, z, n, dim, multiview, dz, nullptr);
    triplet_backward_kernel<In><<<blocks_for(n * dim, 256), 256, 0, stream>>>(in, saved, grad.term_gradients, dz);
  }
  if (m > 0) {
    const int64_t* images_of_class = saved.class_counts;
    const int64_t* texts_of_class = saved.class_counts + in.num_classes;
    const double* image_lse = saved.image_stats + kImageLogSumExp * n;
    const double* text_lse = saved.text_stats + kTextLogSumExp * m;
    const InfoNceCoefficient image_side{in.image_labels, in.text_labels, image_lse, text_lse, texts_of_class,
                                        images_of_class, saved.totals, kImageRowsWithMatch, kTextRowsWithMatch,
                                        in.scale_and_margin, grad.term_gradients};
    const InfoNceCoefficient text_side{in.text_labels, in.image_labels, text_lse, image_lse, images_of_class,
                                       texts_of_class, saved.totals, kTextRowsWithMatch, kImageRowsWithMatch,
                                       in.scale_and_margin, grad.term_gradients};
    gradient_kernel<In><<<blocks_for(n, kTile), kThreads, 0, stream>>>(z, n, t, m, dim, image_side, dz, scale_rows);
    gradient_kernel<In><<<blocks_for(m, kTile), kThreads, 0, stream>>>(t, m, z, n, dim, text_side, dt, nullptr);
  }
  scalar_gradients_kernel<<<1, kReduceThreads, 0, stream>>>(in, saved, grad);
  check_launch("backward");
}

}  // namespace

void forward_cuda(const Inputs& in, const Saved& saved, intptr_t stream) {
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (in.precision) {
    case Precision::Float32: return forward<float>(in, saved, s);
    case Precision::Float16: return forward<__half>(in, saved, s);
    case Precision::BFloat16: return forward<__nv_bfloat16>(in, saved, s);
    default: throw std::invalid_argument("the CUDA contrastive kernel takes float32, float16 or bfloat16 embeddings");
  }
}

void backward_cuda(const Inputs& in, const Saved& saved, const Gradients& grad, intptr_t stream) {
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (in.precision) {
    case Precision::Float32: return backward<float>(in, saved, grad, s);
    case Precision::Float16: return backward<__half>(in, saved, grad, s);
    case Precision::BFloat16: return backward<__nv_bfloat16>(in, saved, grad, s);
    default: throw std::invalid_argument("the CUDA contrastive kernel takes float32, float16 or bfloat16 embeddings");
  }
}

}  // namespace affectvlm::contrastive

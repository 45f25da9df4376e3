// CPU kernels: tiles of 120 rows × 64 columns of A·Bᵀ, computed with register-blocked loops over GCC vector
// types and handed to a per-tile visitor. Threads own blocks of rows and every row's statistics and
// gradients are accumulated by its owner in column order, so results are bit-identical for any thread count.
//
// Dot products and gradient sums run in the input precision (float32 or float64); per-row statistics,
// exponentials and totals in float64.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "contrastive/contrastive.h"
#include "contrastive/contrastive_common.h"
#include "cpu_code.h"

namespace affectvlm::contrastive {
namespace {

constexpr int64_t kBlockRows = 120;  // rows of A per task, a multiple of kMicroRows; one packed column tile serves all
constexpr int64_t kTile = 64;        // columns (rows of B) per tile
constexpr int64_t kTransposeBlock = 16;
constexpr int kMicroRows = 6;  // 6 rows × 2 vectors: 12 accumulators + 3 operands fit the 16 AVX2 registers
constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Per-thread scratch, sized once per pass.
template <typename T>
struct Buffers {
  std::vector<T> rows;         // kBlockRows × dim: the block's rows of A, zero-padded
  std::vector<T> columns;      // dim × kTile: the tile's rows of B, transposed and zero-padded
  std::vector<T> dots;         // kBlockRows × kTile
  std::vector<T> coefficients; // kBlockRows × kTile: dLoss/d(dot) for the backward
  std::vector<T> gradients;    // kBlockRows × dim: the block's gradient accumulators
  double state[kBlockRows][4]; // per-row running statistics of the visitor

  explicit Buffers(int64_t dim)
      : rows(kBlockRows * dim), columns(dim * kTile), dots(kBlockRows * kTile), coefficients(kBlockRows * kTile),
        gradients(kBlockRows * dim) {}
};

// A block of rows [row_begin, row_begin + rows) against columns [column_begin, column_begin + columns).
template <typename T>
struct Tile {
  int64_t row_begin, rows, column_begin, columns;
  const T* dots;  // dots[r * kTile + c] = a[row_begin + r] · b[column_begin + c]
};

template <typename T>
void pack_rows(const T* a, int64_t begin, int64_t count, int64_t dim, T* out) {
  std::memcpy(out, a + begin * dim, sizeof(T) * count * dim);
  std::fill(out + count * dim, out + kBlockRows * dim, T(0));
}

// In blocks of 16 dimensions, so that reads and writes both stay within a few cache lines (rows of B are
// often a power-of-two apart, which a plain column-by-column gather turns into cache conflicts).
template <typename T>
void pack_columns_transposed(const T* b, int64_t begin, int64_t count, int64_t dim, T* out) {
  for (int64_t k0 = 0; k0 < dim; k0 += kTransposeBlock) {
    const int64_t k1 = std::min(dim, k0 + kTransposeBlock);
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t k = k0; k < k1; ++k) out[k * kTile + c] = b[(begin + c) * dim + k];
    }
    for (int64_t c = count; c < kTile; ++c) {
      for (int64_t k = k0; k < k1; ++k) out[k * kTile + c] = T(0);
    }
  }
}

// Register blocking with GCC/Clang vector types of kBytes: a 6-row × 2-vector block of accumulators stays
// in registers while the loop walks the shared dimension: 32-byte vectors for the 16 AVX2 registers, 16-byte
// ones for the 16 SSE2 registers (32-byte vectors there would need 24 and spill).
template <typename T, int kBytes>
struct Simd {
  typedef T Vector __attribute__((vector_size(kBytes)));
  static constexpr int kLanes = kBytes / sizeof(T);
  static constexpr int kWidth = 2 * kLanes;  // columns per register block

  // By reference: passing vectors by value would depend on the build's ABI.
  static AFFECTVLM_FORCE_INLINE void load(Vector& v, const T* p) { std::memcpy(&v, p, sizeof(v)); }
  static AFFECTVLM_FORCE_INLINE void store(T* p, const Vector& v) { std::memcpy(p, &v, sizeof(v)); }
};

// dots = rows · columnsᵀ for a full (zero-padded) 120 × 64 tile; `columns` is transposed (dim × 64). This body
// and the next are force-inlined so that each compiled clone below gets its own vectorised copy.
template <typename T, int kBytes>
AFFECTVLM_FORCE_INLINE void tile_dots_body(const T* rows, const T* columns, int64_t dim, T* dots) {
  using S = Simd<T, kBytes>;
  using V = typename S::Vector;
  for (int r0 = 0; r0 < kBlockRows; r0 += kMicroRows) {
    for (int c0 = 0; c0 < kTile; c0 += S::kWidth) {
      V acc[kMicroRows][2] = {};
      for (int64_t k = 0; k < dim; ++k) {
        V b0, b1;
        S::load(b0, columns + k * kTile + c0);
        S::load(b1, columns + k * kTile + c0 + S::kLanes);
        for (int r = 0; r < kMicroRows; ++r) {
          const T a = rows[(r0 + r) * dim + k];
          acc[r][0] += a * b0;
          acc[r][1] += a * b1;
        }
      }
      for (int r = 0; r < kMicroRows; ++r) {
        S::store(dots + (r0 + r) * kTile + c0, acc[r][0]);
        S::store(dots + (r0 + r) * kTile + c0 + S::kLanes, acc[r][1]);
      }
    }
  }
}

// gradients[r] += sum_c coefficients[r][c] * b[c] over the tile's real columns (b holds rows of B).
template <typename T, int kBytes>
AFFECTVLM_FORCE_INLINE void accumulate_body(const T* coefficients, const T* b, int64_t columns, int64_t dim,
                                            T* gradients) {
  using S = Simd<T, kBytes>;
  using V = typename S::Vector;
  for (int r0 = 0; r0 < kBlockRows; r0 += kMicroRows) {
    int64_t k0 = 0;
    for (; k0 + S::kWidth <= dim; k0 += S::kWidth) {
      V acc[kMicroRows][2] = {};
      for (int64_t c = 0; c < columns; ++c) {
        V b0, b1;
        S::load(b0, b + c * dim + k0);
        S::load(b1, b + c * dim + k0 + S::kLanes);
        for (int r = 0; r < kMicroRows; ++r) {
          const T weight = coefficients[(r0 + r) * kTile + c];
          acc[r][0] += weight * b0;
          acc[r][1] += weight * b1;
        }
      }
      for (int r = 0; r < kMicroRows; ++r) {
        T* out = gradients + (r0 + r) * dim + k0;
        V sum0, sum1;
        S::load(sum0, out);
        S::load(sum1, out + S::kLanes);
        S::store(out, sum0 + acc[r][0]);
        S::store(out + S::kLanes, sum1 + acc[r][1]);
      }
    }
    for (int r = r0; r < r0 + kMicroRows; ++r) {  // the last dim % kWidth entries
      for (int64_t c = 0; c < columns; ++c) {
        const T weight = coefficients[r * kTile + c];
        for (int64_t k = k0; k < dim; ++k) gradients[r * dim + k] += weight * b[c * dim + k];
      }
    }
  }
}

// The hot loops, compiled for x86-64-v3 and for the baseline (cpu_code.h); VectorLoops<T>::chosen() holds the
// build cpu_code() picks.
template <typename T>
void tile_dots_baseline(const T* rows, const T* columns, int64_t dim, T* dots) {
  tile_dots_body<T, 16>(rows, columns, dim, dots);
}
template <typename T>
void accumulate_baseline(const T* coefficients, const T* b, int64_t columns, int64_t dim, T* gradients) {
  accumulate_body<T, 16>(coefficients, b, columns, dim, gradients);
}
#if AFFECTVLM_HAS_X86_64_V3
template <typename T>
AFFECTVLM_X86_64_V3 void tile_dots_x86_64_v3(const T* rows, const T* columns, int64_t dim, T* dots) {
  tile_dots_body<T, 32>(rows, columns, dim, dots);
}
template <typename T>
AFFECTVLM_X86_64_V3 void accumulate_x86_64_v3(const T* coefficients, const T* b, int64_t columns, int64_t dim,
                                              T* gradients) {
  accumulate_body<T, 32>(coefficients, b, columns, dim, gradients);
}
#endif

template <typename T>
struct VectorLoops {
  void (*tile_dots)(const T* rows, const T* columns, int64_t dim, T* dots);
  void (*accumulate)(const T* coefficients, const T* b, int64_t columns, int64_t dim, T* gradients);

  static const VectorLoops& chosen() {
#if AFFECTVLM_HAS_X86_64_V3
    static const VectorLoops loops = cpu_code() == CpuCode::X86_64_V3
                                         ? VectorLoops{tile_dots_x86_64_v3<T>, accumulate_x86_64_v3<T>}
                                         : VectorLoops{tile_dots_baseline<T>, accumulate_baseline<T>};
#else
    static const VectorLoops loops{tile_dots_baseline<T>, accumulate_baseline<T>};
#endif
    return loops;
  }
};

// Visits every tile of A·Bᵀ: blocks of A's rows in parallel, each block's column tiles in order.
// visitor.begin(block_begin, rows, buffers), visitor.tile(tile, buffers), visitor.end(block_begin, rows, buffers).
template <typename T, typename Visitor>
void for_each_tile(const T* a, int64_t num_a, const T* b, int64_t num_b, int64_t dim, Visitor& visitor) {
  const int64_t blocks = (num_a + kBlockRows - 1) / kBlockRows;
#pragma omp parallel
  {
    Buffers<T> buffers(dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t row_begin = block * kBlockRows;
      const int64_t rows = std::min(kBlockRows, num_a - row_begin);
      pack_rows(a, row_begin, rows, dim, buffers.rows.data());
      visitor.begin(row_begin, rows, buffers);
      for (int64_t column_begin = 0; column_begin < num_b; column_begin += kTile) {
        const int64_t columns = std::min(kTile, num_b - column_begin);
        pack_columns_transposed(b, column_begin, columns, dim, buffers.columns.data());
        VectorLoops<T>::chosen().tile_dots(buffers.rows.data(), buffers.columns.data(), dim,
                                           buffers.dots.data());
        visitor.tile(Tile<T>{row_begin, rows, column_begin, columns, buffers.dots.data()}, buffers);
      }
      visitor.end(row_begin, rows, buffers);
    }
  }
}

template <typename T>
void squared_norms(const T* z, int64_t n, int64_t dim, double* out) {
  for (int64_t i = 0; i < n; ++i) {
    T sum = 0;
    for (int64_t k = 0; k < dim; ++k) sum += z[i * dim + k] * z[i * dim + k];
    out[i] = double(sum);
  }
}

// Forward over Z·Zᵀ: positive cosine sums, active hinges, hardest positive and negative, triplet hinge.
template <typename T>
struct MultiviewForward {
  const Inputs& in;
  const Saved& saved;
  const double* norms;  // squared norms of the normalised rows

  double* stat(int stat, int64_t i) const { return saved.image_stats + stat * in.num_images + i; }

  void begin(int64_t row_begin, int64_t rows, Buffers<T>& buffers) {
    for (int64_t r = 0; r < rows; ++r) {
      double* s = buffers.state[r];
      s[0] = s[1] = s[2] = 0;  // positive cosine sum, hinge sum, hinge count
      *stat(kHardestPositiveDistance, row_begin + r) = -kInfinity;
      *stat(kHardestNegativeDistance, row_begin + r) = kInfinity;
      saved.hardest_positive[row_begin + r] = -1;
      saved.hardest_negative[row_begin + r] = -1;
    }
  }

  void tile(const Tile<T>& tile, Buffers<T>& buffers) {
    const double margin = in.scale_and_margin[1];
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t i = tile.row_begin + r;
      const int64_t label = in.image_labels[i];
      double* s = buffers.state[r];
      double hardest_positive = *stat(kHardestPositiveDistance, i);
      double hardest_negative = *stat(kHardestNegativeDistance, i);
      for (int64_t c = 0; c < tile.columns; ++c) {
        const int64_t j = tile.column_begin + c;
        if (j == i) continue;
        const double cosine = double(tile.dots[r * kTile + c]);
        const double distance = (norms[i] + norms[j]) - 2 * cosine;
        if (in.image_labels[j] == label) {
          s[0] += cosine;
          if (distance > hardest_positive) {  // strict: the lowest index wins a tie
            hardest_positive = distance;
            saved.hardest_positive[i] = j;
          }
        } else {
          if (cosine - margin > 0) {
            s[1] += cosine - margin;
            s[2] += 1;
          }
          if (distance < hardest_negative) {
            hardest_negative = distance;
            saved.hardest_negative[i] = j;
          }
        }
      }
      *stat(kHardestPositiveDistance, i) = hardest_positive;
      *stat(kHardestNegativeDistance, i) = hardest_negative;
    }
  }

  void end(int64_t row_begin, int64_t rows, Buffers<T>& buffers) {
    const double margin = in.scale_and_margin[1];
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row_begin + r;
      *stat(kPositiveCosineSum, i) = buffers.state[r][0];
      *stat(kHingeSum, i) = buffers.state[r][1];
      *stat(kHingeCount, i) = buffers.state[r][2];
      const bool anchor = saved.hardest_positive[i] >= 0 && saved.hardest_negative[i] >= 0;
      const double hinge = *stat(kHardestPositiveDistance, i) - *stat(kHardestNegativeDistance, i) + margin;
      *stat(kTripletHinge, i) = anchor && hinge > 0 ? hinge : 0.0;
    }
  }
};

// Forward over A·Bᵀ for one direction of the InfoNCE: per row of A, the log-sum-exp of its logits and the
// sum of the logits of B rows with the same label.
template <typename T>
struct InfoNceForward {
  const int64_t* labels_a;
  const int64_t* labels_b;
  double scale;
  double* log_sum_exp;
  double* match_logit_sum;

  void begin(int64_t, int64_t rows, Buffers<T>& buffers) {
    for (int64_t r = 0; r < rows; ++r) {
      buffers.state[r][0] = -kInfinity;  // running maximum
      buffers.state[r][1] = 0;           // sum of exp(logit - maximum)
      buffers.state[r][2] = 0;           // sum of matching logits
    }
  }

  void tile(const Tile<T>& tile, Buffers<T>& buffers) {
    for (int64_t r = 0; r < tile.rows; ++r) {
      const T* dots = tile.dots + r * kTile;
      const int64_t label = labels_a[tile.row_begin + r];
      double* s = buffers.state[r];
      double tile_max = -kInfinity;
      for (int64_t c = 0; c < tile.columns; ++c) tile_max = std::max(tile_max, scale * double(dots[c]));
      const double maximum = std::max(s[0], tile_max);
      double sum = s[1] * std::exp(s[0] - maximum);
      for (int64_t c = 0; c < tile.columns; ++c) {
        const double logit = scale * double(dots[c]);
        sum += std::exp(logit - maximum);
        if (labels_b[tile.column_begin + c] == label) s[2] += logit;
      }
      s[0] = maximum;
      s[1] = sum;
    }
  }

  void end(int64_t row_begin, int64_t rows, Buffers<T>& buffers) {
    for (int64_t r = 0; r < rows; ++r) {
      log_sum_exp[row_begin + r] = buffers.state[r][0] + std::log(buffers.state[r][1]);
      match_logit_sum[row_begin + r] = buffers.state[r][2];
    }
  }
};

// Common backward visitor shape: fill the coefficient tile, then accumulate it against B's rows.
template <typename T, typename Coefficient>
struct GradientAccumulator {
  const T* b;
  int64_t dim;
  T* gradients_out;  // rows of A; the block's accumulated gradient is added on end()
  Coefficient coefficient;  // coefficient(row of A, row of B, dot) -> dLoss/d(dot)

  void begin(int64_t, int64_t, Buffers<T>& buffers) {
    std::fill(buffers.gradients.begin(), buffers.gradients.end(), T(0));
  }

  void tile(const Tile<T>& tile, Buffers<T>& buffers) {
    T* out = buffers.coefficients.data();
    for (int64_t r = 0; r < kBlockRows; ++r) {
      for (int64_t c = 0; c < tile.columns; ++c) {
        out[r * kTile + c] =
            r < tile.rows ? T(coefficient(tile.row_begin + r, tile.column_begin + c, double(tile.dots[r * kTile + c])))
                          : T(0);
      }
    }
    VectorLoops<T>::chosen().accumulate(out, b + tile.column_begin * dim, tile.columns, dim,
                                        buffers.gradients.data());
  }

  void end(int64_t row_begin, int64_t rows, Buffers<T>& buffers) {
    for (int64_t r = 0; r < rows; ++r) {
      T* row = gradients_out + (row_begin + r) * dim;
      const T* add = buffers.gradients.data() + r * dim;
      for (int64_t k = 0; k < dim; ++k) row[k] += add[k];
    }
  }
};

template <typename T, typename Coefficient>
GradientAccumulator<T, Coefficient> gradient_accumulator(const T* b, int64_t dim, T* out, Coefficient c) {
  return GradientAccumulator<T, Coefficient>{b, dim, out, c};
}

void count_classes(const Inputs& in, const Saved& saved) {
  std::fill(saved.class_counts, saved.class_counts + 2 * in.num_classes, int64_t(0));
  for (int64_t i = 0; i < in.num_images; ++i) saved.class_counts[in.image_labels[i]] += 1;
  for (int64_t j = 0; j < in.num_texts; ++j) saved.class_counts[in.num_classes + in.text_labels[j]] += 1;
}

template <typename T>
void forward(const Inputs& in, const Saved& saved) {
  const T* z = static_cast<const T*>(in.images);
  const T* t = static_cast<const T*>(in.texts);
  const int64_t n = in.num_images, m = in.num_texts, dim = in.dim;
  count_classes(in, saved);
  count_pairs(in, saved);

  double* norms = saved.image_stats + kSquaredNorm * n;
  squared_norms(z, n, dim, norms);
  if (in.multiview_terms) {
    MultiviewForward<T> multiview{in, saved, norms};
    for_each_tile(z, n, z, n, dim, multiview);
  } else {
    std::fill(saved.image_stats, saved.image_stats + (kTripletHinge + 1) * n, 0.0);
    std::fill(saved.hardest_positive, saved.hardest_positive + n, int64_t(-1));
    std::fill(saved.hardest_negative, saved.hardest_negative + n, int64_t(-1));
  }

  const double scale = in.scale_and_margin[0];
  InfoNceForward<T> image_rows{in.image_labels, in.text_labels, scale, saved.image_stats + kImageLogSumExp * n,
                               saved.image_stats + kImageMatchLogitSum * n};
  InfoNceForward<T> text_rows{in.text_labels, in.image_labels, scale, saved.text_stats + kTextLogSumExp * m,
                              saved.text_stats + kTextMatchLogitSum * m};
  if (m > 0) {
    for_each_tile(z, n, t, m, dim, image_rows);
    for_each_tile(t, m, z, n, dim, text_rows);
  } else {
    std::fill(saved.image_stats + kImageLogSumExp * n, saved.image_stats + (kImageMatchLogitSum + 1) * n, 0.0);
  }
  RowSums sums{};
  for (int64_t i = 0; i < n; ++i) sums.add(image_row_sums(in, saved, i));
  for (int64_t j = 0; j < m; ++j) sums.add(text_row_sums(in, saved, j));
  write_totals(in, saved, sums);
}

// The triplet term touches three rows per anchor; accumulated serially in anchor order.
template <typename T>
void triplet_backward(const Inputs& in, const Saved& saved, double weight, T* grad) {
  const T* z = static_cast<const T*>(in.images);
  const int64_t n = in.num_images, dim = in.dim;
  const T coefficient = T(2.0 * ratio_or_zero(weight, saved.totals[kAnchors]));
  for (int64_t i = 0; i < n; ++i) {
    if (!(saved.image_stats[kTripletHinge * n + i] > 0)) continue;
    const int64_t p = saved.hardest_positive[i], q = saved.hardest_negative[i];
    for (int64_t k = 0; k < dim; ++k) {
      const T zi = z[i * dim + k], zp = z[p * dim + k], zq = z[q * dim + k];
      grad[i * dim + k] += coefficient * (zq - zp);
      grad[p * dim + k] += coefficient * (zp - zi);
      grad[q * dim + k] += coefficient * (zi - zq);
    }
  }
}

template <typename T>
void backward(const Inputs& in, const Saved& saved, const Gradients& out) {
  const T* z = static_cast<const T*>(in.images);
  const T* t = static_cast<const T*>(in.texts);
  T* dz = static_cast<T*>(out.images);
  T* dt = static_cast<T*>(out.texts);
  const int64_t n = in.num_images, m = in.num_texts, dim = in.dim;
  const double scale = in.scale_and_margin[0], margin = in.scale_and_margin[1];
  const double* totals = saved.totals;
  const double* weights = out.term_gradients;
  std::fill(dz, dz + n * dim, T(0));
  std::fill(dt, dt + m * dim, T(0));

  auto multiview = gradient_accumulator(z, dim, dz, [&](int64_t i, int64_t j, double cosine) {
    if (i == j) return 0.0;
    return contrastive_pair_gradient(in.image_labels[i] == in.image_labels[j], cosine, margin, weights[0], totals);
  });
  if (in.multiview_terms) {
    for_each_tile(z, n, z, n, dim, multiview);
    triplet_backward(in, saved, weights[1], dz);
  }

  double* scale_gradient = saved.image_stats + kScaleGradient * n;
  std::fill(scale_gradient, scale_gradient + n, 0.0);
  if (m > 0) {
    const int64_t* texts_of_class = text_class_counts(saved, in.num_classes);
    const int64_t* images_of_class = image_class_counts(saved);
    const double* image_lse = saved.image_stats + kImageLogSumExp * n;
    const double* text_lse = saved.text_stats + kTextLogSumExp * m;
    // dLoss/dlogit(i, j) for image i and text j; both softmax directions in one place.
    auto logit_gradient = [&](int64_t i, int64_t j, double logit) {
      const bool match = in.image_labels[i] == in.text_labels[j];
      return 0.5 * weights[2] *
             (infonce_side_gradient(logit, image_lse[i], match, texts_of_class[in.image_labels[i]],
                                    totals[kImageRowsWithMatch]) +
              infonce_side_gradient(logit, text_lse[j], match, images_of_class[in.text_labels[j]],
                                    totals[kTextRowsWithMatch]));
    };
    auto image_side = gradient_accumulator(t, dim, dz, [&](int64_t i, int64_t j, double cosine) {
      const double g = logit_gradient(i, j, scale * cosine);
      scale_gradient[i] += g * cosine;  // row i belongs to this thread
      return scale * g;
    });
    for_each_tile(z, n, t, m, dim, image_side);
    auto text_side = gradient_accumulator(z, dim, dt, [&](int64_t j, int64_t i, double cosine) {
      return scale * logit_gradient(i, j, scale * cosine);
    });
    for_each_tile(t, m, z, n, dim, text_side);
  }
  double total_scale_gradient = 0;
  for (int64_t i = 0; i < n; ++i) total_scale_gradient += scale_gradient[i];
  out.scale_and_margin[0] = total_scale_gradient;
  out.scale_and_margin[1] = margin_gradient(totals, weights);
}

}  // namespace

void forward_cpu(const Inputs& in, const Saved& saved) {
  switch (in.precision) {
    case Precision::Float32: return forward<float>(in, saved);
    case Precision::Float64: return forward<double>(in, saved);
    default: throw std::invalid_argument("the CPU contrastive kernel takes float32 or float64 embeddings");
  }
}

void backward_cpu(const Inputs& in, const Saved& saved, const Gradients& grad) {
  switch (in.precision) {
    case Precision::Float32: return backward<float>(in, saved, grad);
    case Precision::Float64: return backward<double>(in, saved, grad);
    default: throw std::invalid_argument("the CPU contrastive kernel takes float32 or float64 embeddings");
  }
}

}  // namespace affectvlm::contrastive

// Fused multiview contrastive + triplet + label-aware image-text InfoNCE loss (README, "Contrastive loss").
//
// The kernels stream over tiles of Z·Zᵀ and Z·Tᵀ and never hold an N×N or N×M matrix: the forward keeps a
// few statistics per row (in `Saved`), the backward recomputes each tile and accumulates dZ and dT.
// Embeddings arrive L2-normalised (the Python wrapper normalises them and differentiates the
// normalisation); labels are int64 in [0, num_classes).
//
// Plain C++ types only: no pybind11, no torch. Every array is allocated by the caller on the kernel's
// device, so the same structs serve the CPU and the CUDA kernels.
#pragma once

#include <cstdint>

namespace affectvlm::contrastive {

enum class Precision { Float16, BFloat16, Float32, Float64 };

// Rows of Saved::image_stats, each of length num_images (float64).
enum ImageStat : int {
  // The multiview statistics come first (kPositiveCosineSum to kTripletHinge), so that skipping the
  // multiview terms can zero them in one range.
  kPositiveCosineSum,      // sum of cos(z_i, z_j) over same-label j != i
  kHingeSum,               // sum of max(0, cos - margin) over different-label j
  kHingeCount,             // how many of those hinges are active (cos - margin > 0)
  kHardestPositiveDistance,
  kHardestNegativeDistance,
  kTripletHinge,           // max(0, d(i,p) - d(i,n) + margin) for anchors, else 0
  kImageLogSumExp,         // log-sum-exp over texts of scale * cos(z_i, t_j)
  kImageMatchLogitSum,     // sum of those logits over texts with the same label
  kScaleGradient,          // this row's share of dLoss/dscale (backward)
  kSquaredNorm,            // |z_i|^2 of the normalised row: 1, or 0 for a zero vector
  kNumImageStats
};

// Rows of Saved::text_stats, each of length num_texts (float64).
enum TextStat : int { kTextLogSumExp, kTextMatchLogitSum, kNumTextStats };

// Entries of Saved::totals (float64).
enum Total : int {
  kLossContrastive,
  kLossTriplet,
  kLossImageText,
  kPositivePairs,        // ordered pairs i != j with equal labels
  kNegativePairs,        // ordered pairs with different labels
  kAnchors,              // rows with at least one positive and one negative
  kImageRowsWithMatch,   // images with at least one text of their label
  kTextRowsWithMatch,    // texts with at least one image of their label
  kActiveHinges,         // different-label pairs with cos > margin
  kActiveTriplets,       // anchors whose triplet hinge is > 0
  kNumTotals
};

struct Inputs {
  Precision precision;
  const void* images;            // num_images × dim, normalised
  const int64_t* image_labels;   // num_images
  int64_t num_images;
  const void* texts;             // num_texts × dim, normalised; num_texts may be 0
  const int64_t* text_labels;    // num_texts
  int64_t num_texts;
  int64_t dim;
  int64_t num_classes;
  const double* scale_and_margin;  // 2 values: the logit scale s and the margin alpha
  bool multiview_terms;            // false: skip L_mc and L_mt (reported as 0), for image-text training alone
};

// Written by the forward, read by the backward. Sizes are O(N + M + num_classes).
struct Saved {
  double* image_stats;         // kNumImageStats × num_images
  double* text_stats;          // kNumTextStats × num_texts
  int64_t* hardest_positive;   // num_images; -1 where the row has no positive
  int64_t* hardest_negative;   // num_images; -1 where the row has no negative
  int64_t* class_counts;       // 2 × num_classes: images per class, then texts per class
  double* totals;              // kNumTotals
};

struct Gradients {
  const double* term_gradients;  // 3 values: dOutput/dL_mc, dOutput/dL_mt, dOutput/dL_it
  // dOutput/dZ and dOutput/dT of the normalised embeddings, written in full: float64 for float64 inputs,
  // float32 otherwise (float16 and bfloat16 inputs get float32 gradients).
  void* images;                  // num_images × dim
  void* texts;                   // num_texts × dim
  double* scale_and_margin;      // 2 values: dOutput/ds, dOutput/dalpha
};

void forward_cpu(const Inputs& in, const Saved& saved);
void backward_cpu(const Inputs& in, const Saved& saved, const Gradients& grad);

#ifdef AFFECTVLM_WITH_CUDA
// float32 inputs on CUDA cores, float16 and bfloat16 on tensor cores; products and gradients accumulate in
// float32, statistics in float64. |scale| <= 350 (contrastive_cuda.cu, logit_bound). They throw
// std::runtime_error, launching nothing, on a GPU older than sm_80, whose architecture the build may include for
// the rasteriser (contrastive_cuda.cu, require_sm80_code).
void forward_cuda(const Inputs& in, const Saved& saved, intptr_t stream);
void backward_cuda(const Inputs& in, const Saved& saved, const Gradients& grad, intptr_t stream);
#endif

}  // namespace affectvlm::contrastive

// The per-pair formulas and the final reductions, shared by the CPU and CUDA kernels so that both compute
// the loss the same way. Everything here is plain arithmetic on doubles, callable from host and device.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"
#include "contrastive/contrastive.h"

namespace affectvlm::contrastive {

AFFECTVLM_HOST_DEVICE inline const int64_t* image_class_counts(const Saved& s) { return s.class_counts; }
AFFECTVLM_HOST_DEVICE inline const int64_t* text_class_counts(const Saved& s, int64_t num_classes) {
  return s.class_counts + num_classes;
}

// Pair and row counts follow from the class histograms alone.
AFFECTVLM_HOST_DEVICE inline void count_pairs(const Inputs& in, const Saved& saved) {
  const int64_t* images = image_class_counts(saved);
  const int64_t* texts = text_class_counts(saved, in.num_classes);
  double same_label_pairs = 0, anchors = 0, image_rows = 0, text_rows = 0;
  for (int64_t k = 0; k < in.num_classes; ++k) {
    const double c = double(images[k]);
    same_label_pairs += c * c;
    if (images[k] >= 2 && images[k] < in.num_images) anchors += c;
    if (texts[k] > 0) image_rows += c;
    if (images[k] > 0) text_rows += double(texts[k]);
  }
  const double n = double(in.num_images);
  saved.totals[kPositivePairs] = same_label_pairs - n;
  saved.totals[kNegativePairs] = n * n - same_label_pairs;
  saved.totals[kAnchors] = anchors;
  saved.totals[kImageRowsWithMatch] = image_rows;
  saved.totals[kTextRowsWithMatch] = text_rows;
}

AFFECTVLM_HOST_DEVICE inline double ratio_or_zero(double numerator, double count) {
  return count > 0 ? numerator / count : 0.0;
}

// One row's InfoNCE loss: log-sum-exp minus the mean logit over its matches (0 for a row without matches).
AFFECTVLM_HOST_DEVICE inline double infonce_row_loss(double log_sum_exp, double match_logit_sum, int64_t matches) {
  return matches > 0 ? log_sum_exp - match_logit_sum / double(matches) : 0.0;
}

// The sums over rows that the loss terms need. Summed in a fixed order by each kernel so that results do
// not depend on how rows were scheduled. Zero it with `RowSums sums{}`; no default member initialisers,
// so that CUDA can hold an array of them in shared memory.
struct RowSums {
  double positive_cosines, hinges, active_hinges, triplets, active_triplets;
  double image_rows, text_rows;  // InfoNCE losses of rows with at least one match

  AFFECTVLM_HOST_DEVICE void add(const RowSums& o) {
    positive_cosines += o.positive_cosines;
    hinges += o.hinges;
    active_hinges += o.active_hinges;
    triplets += o.triplets;
    active_triplets += o.active_triplets;
    image_rows += o.image_rows;
    text_rows += o.text_rows;
  }
};

AFFECTVLM_HOST_DEVICE inline RowSums image_row_sums(const Inputs& in, const Saved& saved, int64_t i) {
  const int64_t n = in.num_images;
  const double* row = saved.image_stats + i;  // stat k of row i is row[k * n]
  RowSums sums{};
  sums.positive_cosines = row[kPositiveCosineSum * n];
  sums.hinges = row[kHingeSum * n];
  sums.active_hinges = row[kHingeCount * n];
  sums.triplets = row[kTripletHinge * n];
  sums.active_triplets = row[kTripletHinge * n] > 0 ? 1.0 : 0.0;
  if (in.num_texts > 0) {
    sums.image_rows = infonce_row_loss(row[kImageLogSumExp * n], row[kImageMatchLogitSum * n],
                                       text_class_counts(saved, in.num_classes)[in.image_labels[i]]);
  }
  return sums;
}

AFFECTVLM_HOST_DEVICE inline RowSums text_row_sums(const Inputs& in, const Saved& saved, int64_t j) {
  const int64_t m = in.num_texts;
  const double* row = saved.text_stats + j;
  RowSums sums{};
  sums.text_rows = infonce_row_loss(row[kTextLogSumExp * m], row[kTextMatchLogitSum * m],
                                    image_class_counts(saved)[in.text_labels[j]]);
  return sums;
}

// Writes the three loss terms and the active counts from the row sums. Needs count_pairs first.
AFFECTVLM_HOST_DEVICE inline void write_totals(const Inputs& in, const Saved& saved, const RowSums& sums) {
  double* totals = saved.totals;
  const double positive_pairs = totals[kPositivePairs];
  totals[kLossContrastive] = (positive_pairs > 0 ? 1.0 - sums.positive_cosines / positive_pairs : 0.0) +
                             ratio_or_zero(sums.hinges, totals[kNegativePairs]);
  totals[kLossTriplet] = ratio_or_zero(sums.triplets, totals[kAnchors]);
  totals[kLossImageText] = 0.5 * (ratio_or_zero(sums.image_rows, totals[kImageRowsWithMatch]) +
                                  ratio_or_zero(sums.text_rows, totals[kTextRowsWithMatch]));
  totals[kActiveHinges] = sums.active_hinges;
  totals[kActiveTriplets] = sums.active_triplets;
  if (!in.multiview_terms) totals[kLossContrastive] = totals[kLossTriplet] = 0;
}

// dLoss/dcos(z_i, z_j) of the multiview contrastive term for an ordered pair i != j, counted twice because
// the sum over ordered pairs holds both cos(z_i, z_j) and cos(z_j, z_i).
AFFECTVLM_HOST_DEVICE inline double contrastive_pair_gradient(bool same_label, double cosine, double margin,
                                                              double weight, const double* totals) {
  if (same_label) return -2.0 * weight / totals[kPositivePairs];
  return cosine - margin > 0 ? 2.0 * weight / totals[kNegativePairs] : 0.0;
}

// What one side of the InfoNCE contributes to dLoss/dlogit(i, j): (softmax - match / matches) / rows.
AFFECTVLM_HOST_DEVICE inline double infonce_side_gradient(double logit, double log_sum_exp, bool match,
                                                          int64_t matches, double rows_with_match) {
  if (matches == 0) return 0.0;
  return (exp(logit - log_sum_exp) - (match ? 1.0 / double(matches) : 0.0)) / rows_with_match;
}

// dLoss/dalpha: each active contrastive hinge contributes -1/|Q|, each active triplet +1/A.
AFFECTVLM_HOST_DEVICE inline double margin_gradient(const double* totals, const double* term_gradients) {
  return -term_gradients[0] * ratio_or_zero(totals[kActiveHinges], totals[kNegativePairs]) +
         term_gradients[1] * ratio_or_zero(totals[kActiveTriplets], totals[kAnchors]);
}

}  // namespace affectvlm::contrastive

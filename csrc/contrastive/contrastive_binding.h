// The contrastive kernels as the Python module sees them (bound in csrc/bindings.cpp). Arrays are any
// DLPack producer; outputs are allocated by the caller (affectvlm/ops/contrastive.py) on the inputs' device.
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>

namespace affectvlm::contrastive {

void contrastive_forward(pybind11::handle images, pybind11::handle image_labels, pybind11::handle texts,
                         pybind11::handle text_labels, pybind11::handle scale_and_margin, int64_t num_classes,
                         pybind11::handle image_stats, pybind11::handle text_stats,
                         pybind11::handle hardest_positive, pybind11::handle hardest_negative,
                         pybind11::handle class_counts, pybind11::handle totals, bool multiview_terms,
                         intptr_t stream);

void contrastive_backward(pybind11::handle images, pybind11::handle image_labels, pybind11::handle texts,
                          pybind11::handle text_labels, pybind11::handle scale_and_margin, int64_t num_classes,
                          pybind11::handle image_stats, pybind11::handle text_stats,
                          pybind11::handle hardest_positive, pybind11::handle hardest_negative,
                          pybind11::handle class_counts, pybind11::handle totals, pybind11::handle term_gradients,
                          pybind11::handle image_grad, pybind11::handle text_grad,
                          pybind11::handle scale_and_margin_grad, bool multiview_terms, intptr_t stream);

pybind11::dict contrastive_layout();

}  // namespace affectvlm::contrastive

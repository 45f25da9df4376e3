#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "contrastive/contrastive_binding.h"
#include "cpu_code.h"
#include "cuda_runtime_info.h"
#include "raster/raster_binding.h"
#include "tensor.h"

namespace py = pybind11;
using namespace py::literals;

PYBIND11_MODULE(affectvlm_kernels, m) {
  m.doc() = "AffectVLM compiled core: mesh rasteriser and contrastive loss kernels (C++ and CUDA)";

  m.def("describe", &affectvlm::describe, "array"_a, "name"_a = "array", py::kw_only(), "dtype"_a = py::none(),
        "ndim"_a = py::none(), "contiguous"_a = false, "device"_a = py::none(), "writable"_a = false,
        "View an array through the extension's tensor boundary, apply the requested checks, and return what "
        "was seen (dtype, device, shape, strides, contiguity, read-only flag, data pointer).");

  m.def("cuda_runtime_info", [] {
    const auto info = affectvlm::query_cuda_runtime();
    return py::dict("kernels_built"_a = info.kernels_built, "runtime_version"_a = info.runtime_version,
                    "driver_version"_a = info.driver_version, "device_count"_a = info.device_count,
                    "reason"_a = info.reason);
  }, "What the CUDA runtime linked into this module sees; never raises.");

  m.def("cpu_code", [] { return affectvlm::cpu_code_name(affectvlm::cpu_code()); },
        "Which build of the vectorised CPU loops runs: 'x86-64-v3' (AVX2) or 'baseline' (AFFECTVLM_CPU=baseline "
        "forces it).");

  m.def("contrastive_forward", &affectvlm::contrastive::contrastive_forward, "images"_a, "image_labels"_a, "texts"_a, "text_labels"_a,
        "scale_and_margin"_a, "num_classes"_a, "image_stats"_a, "text_stats"_a, "hardest_positive"_a,
        "hardest_negative"_a, "class_counts"_a, "totals"_a, "multiview_terms"_a = true, "stream"_a = 0,
        "Forward of the fused contrastive loss on normalised embeddings; writes the saved statistics and totals "
        "(see csrc/contrastive/contrastive.h). Use affectvlm.ops.contrastive, not this.");
  m.def("contrastive_backward", &affectvlm::contrastive::contrastive_backward, "images"_a, "image_labels"_a, "texts"_a, "text_labels"_a,
        "scale_and_margin"_a, "num_classes"_a, "image_stats"_a, "text_stats"_a, "hardest_positive"_a,
        "hardest_negative"_a, "class_counts"_a, "totals"_a, "term_gradients"_a, "image_grad"_a, "text_grad"_a,
        "scale_and_margin_grad"_a, "multiview_terms"_a = true, "stream"_a = 0,
        "Backward of the fused contrastive loss: writes every element of image_grad and text_grad and the "
        "gradients of the scale and margin.");
  m.def("contrastive_layout", &affectvlm::contrastive::contrastive_layout, "Sizes and indices of the contrastive kernels' saved arrays.");

  m.def("render_views", &affectvlm::raster::render_views_binding, "vertices"_a, "faces"_a, "meshes"_a,
        "world_to_clip"_a, "world_to_view"_a, "images"_a, "triangle_ids"_a, py::kw_only(), "channels"_a,
        "normals"_a = py::none(), "attributes"_a = py::none(), "barycentrics"_a = py::none(),
        "zbuffer"_a = py::none(), "normalise_depth"_a = true, "cull_backfaces"_a = false, "light"_a = std::array<float, 3>{0.0f, 0.0f, 1.0f},
        "ambient"_a = 0.0f, "num_threads"_a = 0, "stream"_a = 0,
        "Rasterise B meshes x K cameras into caller-allocated images (see csrc/raster/raster.h); "
        "num_threads 0 means one per core; affectvlm.ops.raster.render_views is the API.");

  m.def("raster_channels", &affectvlm::raster::raster_channels,
        "The rasteriser's channels in order, each with its number of image planes (None: one per attribute).");

  m.def("vertex_normals", &affectvlm::raster::vertex_normals_binding, "vertices"_a, "faces"_a, "meshes"_a,
        "normals"_a, "num_threads"_a = 1,
        "Area-weighted unit vertex normals of packed CPU meshes into normals (NV, 3) float32.");
}

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda_runtime_info.h"
#include "tensor.h"

namespace py = pybind11;
using namespace py::literals;

PYBIND11_MODULE(_C, m) {
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
}

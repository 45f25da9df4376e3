// Python-facing entry points of the contrastive kernels: every argument is viewed and checked through
// tensor.h, then the CPU or CUDA kernel runs with the GIL released.
#include "contrastive/contrastive_binding.h"

#include <vector>

#include "common.h"
#include "contrastive/contrastive.h"
#include "tensor.h"

namespace py = pybind11;
using namespace py::literals;

namespace affectvlm::contrastive {
namespace {

ArrayView view(py::handle obj, const char* name, std::vector<DType> dtypes, Device device) {
  ArrayView v = ArrayView::from_python(obj, name);
  v.require_dtype(dtypes).require_contiguous().require_device(device);
  return v;
}

ArrayView view_output(py::handle obj, const char* name, std::vector<DType> dtypes, Device device,
                      std::vector<int64_t> shape) {
  ArrayView v = view(obj, name, std::move(dtypes), device);
  v.require_writable().require_shape(shape);
  return v;
}

Precision precision_of(DType dtype) {
  switch (dtype) {
    case DType::Float16: return Precision::Float16;
    case DType::BFloat16: return Precision::BFloat16;
    case DType::Float64: return Precision::Float64;
    default: return Precision::Float32;
  }
}

// The kernel's inputs, checked, plus the views that keep them alive while the kernel runs.
struct ContrastiveArguments {
  std::vector<ArrayView> views;
  Inputs inputs;
  Device device;
};

ContrastiveArguments contrastive_inputs(py::handle images, py::handle image_labels, py::handle texts,
                                        py::handle text_labels, py::handle scale_and_margin, int64_t num_classes,
                                        bool multiview_terms) {
  ArrayView z = ArrayView::from_python(images, "images");
  const Device device = z.device();
  z.require_dtype({DType::Float16, DType::BFloat16, DType::Float32, DType::Float64})
      .require_ndim(2)
      .require_contiguous();
  const int64_t n = z.size(0), dim = z.size(1);
  ArrayView t = view(texts, "texts", {z.dtype()}, device);
  t.require_shape({kAnySize, dim});
  const int64_t m = t.size(0);
  ArrayView y = view(image_labels, "image_labels", {DType::Int64}, device);
  y.require_shape({n});
  ArrayView yt = view(text_labels, "text_labels", {DType::Int64}, device);
  yt.require_shape({m});
  if (num_classes < 1) throw py::value_error("num_classes must be at least 1, got " + std::to_string(num_classes));
  if (device.type == DeviceType::CPU) {
    y.require_values_in_range(0, num_classes);
    yt.require_values_in_range(0, num_classes);
  }
  ArrayView scalars = view(scale_and_margin, "scale_and_margin", {DType::Float64}, device);
  scalars.require_shape({2});

  Inputs in{precision_of(z.dtype()), z.data(), y.data_as<int64_t>(), n, t.data(), yt.data_as<int64_t>(),
                         m, dim, num_classes, scalars.data_as<double>(), multiview_terms};
  return {{z, t, y, yt, scalars}, in, device};
}

struct SavedArguments {
  std::vector<ArrayView> views;
  Saved saved;
};

SavedArguments contrastive_saved(const Inputs& in, Device device, py::handle image_stats,
                                 py::handle text_stats, py::handle hardest_positive, py::handle hardest_negative,
                                 py::handle class_counts, py::handle totals) {
  const int64_t n = in.num_images, m = in.num_texts;
  std::vector<ArrayView> v{
      view_output(image_stats, "image_stats", {DType::Float64}, device, {kNumImageStats, n}),
      view_output(text_stats, "text_stats", {DType::Float64}, device, {kNumTextStats, m}),
      view_output(hardest_positive, "hardest_positive", {DType::Int64}, device, {n}),
      view_output(hardest_negative, "hardest_negative", {DType::Int64}, device, {n}),
      view_output(class_counts, "class_counts", {DType::Int64}, device, {2, in.num_classes}),
      view_output(totals, "totals", {DType::Float64}, device, {kNumTotals})};
  Saved saved{v[0].data_as<double>(),  v[1].data_as<double>(),  v[2].data_as<int64_t>(),
                           v[3].data_as<int64_t>(), v[4].data_as<int64_t>(), v[5].data_as<double>()};
  return {std::move(v), saved};
}

[[noreturn]] void no_cuda_kernels(Device device) {
  throw py::value_error(no_cuda_kernels_message("the arrays are on " + device_name(device)));
}

}  // namespace

void contrastive_forward(py::handle images, py::handle image_labels, py::handle texts, py::handle text_labels,
                         py::handle scale_and_margin, int64_t num_classes, py::handle image_stats,
                         py::handle text_stats, py::handle hardest_positive, py::handle hardest_negative,
                         py::handle class_counts, py::handle totals, bool multiview_terms, intptr_t stream) {
  const auto args = contrastive_inputs(images, image_labels, texts, text_labels, scale_and_margin, num_classes,
                                       multiview_terms);
  const auto out = contrastive_saved(args.inputs, args.device, image_stats, text_stats, hardest_positive,
                                     hardest_negative, class_counts, totals);
  py::gil_scoped_release release;
  if (args.device.type == DeviceType::CPU) return forward_cpu(args.inputs, out.saved);
#ifdef AFFECTVLM_WITH_CUDA
  forward_cuda(args.inputs, out.saved, stream);
#else
  (void)stream;
  no_cuda_kernels(args.device);
#endif
}

void contrastive_backward(py::handle images, py::handle image_labels, py::handle texts, py::handle text_labels,
                          py::handle scale_and_margin, int64_t num_classes, py::handle image_stats,
                          py::handle text_stats, py::handle hardest_positive, py::handle hardest_negative,
                          py::handle class_counts, py::handle totals, py::handle term_gradients,
                          py::handle image_grad, py::handle text_grad, py::handle scale_and_margin_grad,
                          bool multiview_terms, intptr_t stream) {
  const auto args = contrastive_inputs(images, image_labels, texts, text_labels, scale_and_margin, num_classes,
                                       multiview_terms);
  const auto in = contrastive_saved(args.inputs, args.device, image_stats, text_stats, hardest_positive,
                                    hardest_negative, class_counts, totals);
  const DType grad_dtype = args.views[0].dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  const int64_t dim = args.inputs.dim;
  std::vector<ArrayView> v{
      view_output(term_gradients, "term_gradients", {DType::Float64}, args.device, {3}),
      view_output(image_grad, "image_grad", {grad_dtype}, args.device, {args.inputs.num_images, dim}),
      view_output(text_grad, "text_grad", {grad_dtype}, args.device, {args.inputs.num_texts, dim}),
      view_output(scale_and_margin_grad, "scale_and_margin_grad", {DType::Float64}, args.device, {2})};
  const Gradients grad{v[0].data_as<double>(), v[1].data(), v[2].data(), v[3].data_as<double>()};
  py::gil_scoped_release release;
  if (args.device.type == DeviceType::CPU) return backward_cpu(args.inputs, in.saved, grad);
#ifdef AFFECTVLM_WITH_CUDA
  backward_cuda(args.inputs, in.saved, grad, stream);
#else
  (void)stream;
  no_cuda_kernels(args.device);
#endif
}

py::dict contrastive_layout() {
  return py::dict("image_stats"_a = int(kNumImageStats), "text_stats"_a = int(kNumTextStats),
                  "totals"_a = int(kNumTotals), "loss_terms"_a = 3);
}

}  // namespace affectvlm::contrastive

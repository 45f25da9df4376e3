#include "tensor.h"

#include <algorithm>
#include <sstream>

#include <pybind11/stl.h>

namespace py = pybind11;

namespace affectvlm {
namespace {

// The DLPack ABI (version 1.x), declared here for the few fields this file reads.
namespace dl {
enum DeviceCode : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kBool = 6 };
constexpr uint64_t kFlagReadOnly = 1;

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // null means compact C order
  uint64_t byte_offset;
};
struct DLManagedTensor {  // legacy, capsule name "dltensor"
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {  // capsule name "dltensor_versioned"
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};
}  // namespace dl

const char* kSupportedDtypes = "float16, bfloat16, float32, float64, int32, int64, uint8, bool";

std::string python_type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__qualname__")).cast<std::string>();
}

bool to_dtype(dl::DLDataType t, DType* out) {
  if (t.lanes != 1) return false;
  switch (t.code) {
    case dl::kFloat:
      if (t.bits == 16) *out = DType::Float16;
      else if (t.bits == 32) *out = DType::Float32;
      else if (t.bits == 64) *out = DType::Float64;
      else return false;
      return true;
    case dl::kBfloat:
      *out = DType::BFloat16;
      return t.bits == 16;
    case dl::kInt:
      if (t.bits == 32) *out = DType::Int32;
      else if (t.bits == 64) *out = DType::Int64;
      else return false;
      return true;
    case dl::kUInt:
      *out = DType::UInt8;
      return t.bits == 8;
    case dl::kBool:
      *out = DType::Bool;
      return t.bits == 8;
    default:
      return false;
  }
}

std::string describe_dl_dtype(dl::DLDataType t) {
  std::ostringstream s;
  s << "DLPack type code " << int(t.code) << " with " << int(t.bits) << " bits";
  if (t.lanes != 1) s << " x " << t.lanes << " lanes";
  return s.str();
}

// Asks the producer for a DLPack capsule, preferring the versioned protocol (it carries the read-only
// flag, so numpy can export read-only arrays) and falling back to the legacy one.
py::capsule export_capsule(py::handle obj, const std::string& name, bool is_cuda) {
  py::object dlpack = obj.attr("__dlpack__");
  py::dict kwargs;
  if (is_cuda) kwargs["stream"] = -1;
  try {
    try {
      kwargs["max_version"] = py::make_tuple(1, 0);
      return dlpack(**kwargs).cast<py::capsule>();
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) throw;  // a producer that predates max_version
      PyDict_DelItemString(kwargs.ptr(), "max_version");
      return dlpack(**kwargs).cast<py::capsule>();
    }
  } catch (py::error_already_set& e) {
    throw py::type_error(name + " cannot be read as an array: " + python_type_name(obj) +
                         ".__dlpack__() failed: " + e.what());
  }
}

}  // namespace

std::string dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "unknown";
}

std::string device_name(Device device) {
  return device.type == DeviceType::CPU ? "cpu" : "cuda:" + std::to_string(device.index);
}

DType parse_dtype(const std::string& text) {
  for (DType d : {DType::Float16, DType::BFloat16, DType::Float32, DType::Float64, DType::Int32, DType::Int64,
                  DType::UInt8, DType::Bool}) {
    if (dtype_name(d) == text) return d;
  }
  throw py::value_error("unknown dtype '" + text + "'; expected one of " + kSupportedDtypes);
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return {DeviceType::CPU, 0};
  if (text == "cuda") return {DeviceType::CUDA, 0};
  if (text.rfind("cuda:", 0) == 0) {
    const std::string index = text.substr(5);
    if (!index.empty() && std::all_of(index.begin(), index.end(), ::isdigit) && index.size() < 6) {
      return {DeviceType::CUDA, std::stoi(index)};
    }
  }
  throw py::value_error("unknown device '" + text + "'; expected 'cpu', 'cuda' or 'cuda:N'");
}

ArrayView ArrayView::from_python(py::handle obj, const std::string& name) {
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) {
    throw py::type_error(name + " must be an array supporting DLPack (a torch.Tensor or numpy.ndarray), got " +
                         python_type_name(obj));
  }
  const auto device_pair = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
  py::capsule capsule = export_capsule(obj, name, device_pair.first == dl::kCUDA);

  ArrayView view;
  view.name_ = name;
  const dl::DLTensor* tensor = nullptr;
  const std::string capsule_name = capsule.name() ? capsule.name() : "";
  if (capsule_name == "dltensor_versioned") {
    auto* managed = capsule.get_pointer<dl::DLManagedTensorVersioned>();
    view.owner_ = std::shared_ptr<void>(managed, [](void* p) {
      auto* m = static_cast<dl::DLManagedTensorVersioned*>(p);
      if (m->deleter) m->deleter(m);
    });
    capsule.set_name("used_dltensor_versioned");
    if (managed->version.major != 1) {
      throw py::type_error(name + " was exported with DLPack version " + std::to_string(managed->version.major) +
                           ".x; this build reads version 1.x");
    }
    tensor = &managed->dl_tensor;
    view.readonly_ = (managed->flags & dl::kFlagReadOnly) != 0;
  } else if (capsule_name == "dltensor") {
    auto* managed = capsule.get_pointer<dl::DLManagedTensor>();
    view.owner_ = std::shared_ptr<void>(managed, [](void* p) {
      auto* m = static_cast<dl::DLManagedTensor*>(p);
      if (m->deleter) m->deleter(m);
    });
    capsule.set_name("used_dltensor");
    tensor = &managed->dl_tensor;
  } else {
    throw py::type_error(name + ".__dlpack__() returned a capsule named '" + capsule_name +
                         "', not a DLPack tensor");
  }

  switch (tensor->device.device_type) {
    case dl::kCPU:
    case dl::kCUDAHost:  // pinned host memory is ordinary CPU memory to a kernel
      view.device_ = {DeviceType::CPU, 0};
      break;
    case dl::kCUDA:
      view.device_ = {DeviceType::CUDA, tensor->device.device_id};
      break;
    default:
      throw py::value_error(name + " lives on DLPack device type " + std::to_string(tensor->device.device_type) +
                            "; only CPU and CUDA arrays are supported");
  }
  if (!to_dtype(tensor->dtype, &view.dtype_)) {
    throw py::type_error(name + " has an unsupported dtype (" + describe_dl_dtype(tensor->dtype) +
                         "); supported dtypes are " + kSupportedDtypes);
  }
  view.shape_.assign(tensor->shape, tensor->shape + tensor->ndim);
  view.strides_.resize(tensor->ndim);
  if (tensor->strides) {
    view.strides_.assign(tensor->strides, tensor->strides + tensor->ndim);
  } else {
    int64_t stride = 1;
    for (int d = tensor->ndim - 1; d >= 0; --d) {
      view.strides_[d] = stride;
      stride *= view.shape_[d];
    }
  }
  view.data_ = static_cast<char*>(tensor->data) + tensor->byte_offset;
  return view;
}

int64_t ArrayView::size(int dim) const {
  const int d = dim < 0 ? dim + ndim() : dim;
  if (d < 0 || d >= ndim()) {
    throw py::value_error(name_ + " has " + std::to_string(ndim()) + " dimensions; dimension " +
                          std::to_string(dim) + " does not exist");
  }
  return shape_[d];
}

int64_t ArrayView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

bool ArrayView::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int d = ndim() - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != expected) return false;
    expected *= shape_[d];
  }
  return true;
}

const ArrayView& ArrayView::require_dtype(const std::vector<DType>& allowed) const {
  if (std::find(allowed.begin(), allowed.end(), dtype_) != allowed.end()) return *this;
  std::string expected;
  for (DType d : allowed) expected += (expected.empty() ? "" : " or ") + dtype_name(d);
  throw py::type_error(name_ + " must have dtype " + expected + ", got " + dtype_name(dtype_));
}

namespace {
std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}
}  // namespace

const ArrayView& ArrayView::require_ndim(int expected) const {
  if (ndim() == expected) return *this;
  throw py::value_error(name_ + " must have " + std::to_string(expected) + " dimensions, got shape " +
                        shape_text(shape_));
}

const ArrayView& ArrayView::require_size(int dim, int64_t expected) const {
  if (size(dim) == expected) return *this;
  throw py::value_error(name_ + " must have size " + std::to_string(expected) + " in dimension " +
                        std::to_string(dim) + ", got shape " + shape_text(shape_));
}

const ArrayView& ArrayView::require_shape(const std::vector<int64_t>& shape) const {
  require_ndim(static_cast<int>(shape.size()));
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] != kAnySize) require_size(static_cast<int>(d), shape[d]);
  }
  return *this;
}

const ArrayView& ArrayView::require_contiguous() const {
  if (is_contiguous()) return *this;
  throw py::value_error(name_ + " must be contiguous (C order); call .contiguous() or np.ascontiguousarray first");
}

const ArrayView& ArrayView::require_device(Device expected) const {
  if (device_ == expected) return *this;
  throw py::value_error(name_ + " must be on " + device_name(expected) + ", got " + device_name(device_));
}

const ArrayView& ArrayView::require_writable() const {
  if (!readonly_) return *this;
  throw py::value_error(name_ + " is read-only but is written to; pass a writable array");
}

const ArrayView& ArrayView::require_values_in_range(int64_t low, int64_t high) const {
  return require_values_in_range(low, high, 0, numel());
}

const ArrayView& ArrayView::require_values_in_range(int64_t low, int64_t high, int64_t first, int64_t end) const {
  require_dtype({DType::Int32, DType::Int64}).require_contiguous();
  if (device_.type != DeviceType::CPU) {
    throw py::value_error(name_ + ": values can only be range-checked on the CPU, got " + device_name(device_));
  }
  if (first < 0 || end > numel() || first > end) {
    throw py::value_error(name_ + ": elements [" + std::to_string(first) + ", " + std::to_string(end) +
                          ") do not lie within its " + std::to_string(numel()) + " elements");
  }
  for (int64_t i = first; i < end; ++i) {
    const int64_t value = dtype_ == DType::Int64 ? data_as<int64_t>()[i] : data_as<int32_t>()[i];
    if (value < low || value >= high) {
      throw py::value_error(name_ + " must hold values in [" + std::to_string(low) + ", " + std::to_string(high) +
                            "), got " + std::to_string(value) + " at index " + std::to_string(i));
    }
  }
  return *this;
}

py::dict describe(py::handle obj, const std::string& name, py::object dtype, py::object ndim, bool contiguous,
                  py::object device, bool writable) {
  const ArrayView view = ArrayView::from_python(obj, name);
  if (!dtype.is_none()) {
    // One name, or a list of names of which any is accepted.
    std::vector<DType> allowed;
    if (py::isinstance<py::str>(dtype)) {
      allowed.push_back(parse_dtype(dtype.cast<std::string>()));
    } else {
      for (const auto& n : dtype.cast<std::vector<std::string>>()) allowed.push_back(parse_dtype(n));
    }
    view.require_dtype(allowed);
  }
  if (!ndim.is_none()) view.require_ndim(ndim.cast<int>());
  if (contiguous) view.require_contiguous();
  if (!device.is_none()) view.require_device(parse_device(device.cast<std::string>()));
  if (writable) view.require_writable();

  py::dict out;
  out["name"] = view.name();
  out["dtype"] = dtype_name(view.dtype());
  out["device"] = view.device().type == DeviceType::CPU ? "cpu" : "cuda";
  out["device_index"] = view.device().index;
  out["shape"] = py::tuple(py::cast(view.shape()));
  out["strides"] = py::tuple(py::cast(view.strides()));
  out["contiguous"] = view.is_contiguous();
  out["readonly"] = view.is_readonly();
  out["data_ptr"] = reinterpret_cast<uintptr_t>(view.data());
  return out;
}

}  // namespace affectvlm

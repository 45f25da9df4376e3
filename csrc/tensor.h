// The one place where a Python array object becomes a typed view: pointer, dtype, shape, strides, device.
//
// Arrays cross the boundary through DLPack (`__dlpack__`), so torch CPU/CUDA tensors and numpy arrays are
// read without copies and without linking libtorch. Every check a kernel needs on its arguments lives here
// and raises a Python TypeError (what kind of object or dtype) or ValueError (shape, layout, device) whose
// message names the argument and what was expected.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>

namespace affectvlm {

enum class DType { Float16, BFloat16, Float32, Float64, Int32, Int64, UInt8, Bool };
enum class DeviceType { CPU, CUDA };

struct Device {
  DeviceType type;
  int index;  // 0 for the CPU
  bool operator==(const Device& other) const { return type == other.type && index == other.index; }
};

std::string dtype_name(DType dtype);
std::string device_name(Device device);  // "cpu" or "cuda:N"

// A borrowed view of an array. It keeps the producer's buffer alive until it is destroyed; destroy it with
// the GIL held, since a producer's release (numpy's) touches Python objects.
//
// CUDA arrays are exported with stream=-1 (no synchronisation): the caller launches kernels on the stream
// that produced them, torch's current stream.
constexpr int64_t kAnySize = -1;  // a dimension of any size, in require_shape

class ArrayView {
 public:
  static ArrayView from_python(pybind11::handle obj, const std::string& name);

  const std::string& name() const { return name_; }
  void* data() const { return data_; }
  template <typename T>
  T* data_as() const { return static_cast<T*>(data_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  const std::vector<int64_t>& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }  // in elements
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const;
  bool is_contiguous() const;  // C order; dimensions of size 1 may have any stride
  bool is_readonly() const { return readonly_; }

  // Each check returns *this so that a kernel's argument checks read as one chain.
  const ArrayView& require_dtype(const std::vector<DType>& allowed) const;
  const ArrayView& require_ndim(int ndim) const;
  const ArrayView& require_size(int dim, int64_t size) const;
  // require_ndim(shape.size()) and require_size for every entry of `shape` that is not kAnySize.
  const ArrayView& require_shape(const std::vector<int64_t>& shape) const;
  const ArrayView& require_contiguous() const;
  const ArrayView& require_device(Device device) const;
  const ArrayView& require_writable() const;
  // Every value of an int32/int64 CPU array lies in [low, high): what an index or label array needs before
  // a kernel indexes with it. Values on a GPU cannot be read here; checking them is the caller's job.
  const ArrayView& require_values_in_range(int64_t low, int64_t high) const;
  // The same for the flattened elements [first, end) only, e.g. one mesh's rows of a packed face array.
  const ArrayView& require_values_in_range(int64_t low, int64_t high, int64_t first, int64_t end) const;

 private:
  std::string name_;
  void* data_ = nullptr;
  DType dtype_ = DType::Float32;
  Device device_{DeviceType::CPU, 0};
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
  bool readonly_ = false;
  std::shared_ptr<void> owner_;  // releases the producer's DLPack tensor
};

// `_C.describe(array, name="array", *, dtype=None, ndim=None, contiguous=False, device=None,
// writable=False)`: views the array, applies the requested checks and returns what it saw as a dict.
pybind11::dict describe(pybind11::handle obj, const std::string& name, pybind11::object dtype,
                        pybind11::object ndim, bool contiguous, pybind11::object device, bool writable);

DType parse_dtype(const std::string& text);
Device parse_device(const std::string& text);

}  // namespace affectvlm

#include <cuda_runtime_api.h>

#include "cuda_runtime_info.h"

namespace affectvlm {

namespace {
std::string version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }
}  // namespace

CudaRuntimeInfo query_cuda_runtime() {
  CudaRuntimeInfo info;
  info.kernels_built = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess || info.driver_version == 0) {
    info.driver_version = 0;
    info.reason = "CUDA driver not found";
    return info;
  }
  if (info.driver_version < info.runtime_version) {
    info.reason = "CUDA driver " + version_text(info.driver_version) + " is older than the CUDA runtime " +
                  version_text(info.runtime_version) + " these kernels were built with; update the driver";
    return info;
  }
  const cudaError_t status = cudaGetDeviceCount(&info.device_count);
  if (status != cudaSuccess) {
    info.device_count = 0;
    info.reason = std::string("no usable CUDA device: ") + cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error so later calls start clean
  } else if (info.device_count == 0) {
    info.reason = "no CUDA device found";
  }
  return info;
}

}  // namespace affectvlm

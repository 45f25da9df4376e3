// What the CUDA runtime linked into this module can see. Never throws: a machine without a driver or a GPU
// is an answer, not an error.
#pragma once

#include <string>

namespace affectvlm {

struct CudaRuntimeInfo {
  bool kernels_built = false;
  int runtime_version = 0;  // CUDART_VERSION style: 13000 for 13.0; 0 when not built
  int driver_version = 0;   // 0 when no driver is installed
  int device_count = 0;
  std::string reason;       // why no GPU is usable; empty when one is
};

CudaRuntimeInfo query_cuda_runtime();

}  // namespace affectvlm

// The CPU-only build: no CUDA runtime is linked.
#include "cuda_runtime_info.h"

namespace affectvlm {

CudaRuntimeInfo query_cuda_runtime() {
  CudaRuntimeInfo info;
  info.reason = "the extension was built without CUDA kernels (AFFECTVLM_CUDA=OFF or no nvcc at build time)";
  return info;
}

}  // namespace affectvlm

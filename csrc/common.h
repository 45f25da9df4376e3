// What the rasteriser and the contrastive loss share: the qualifiers of functions that run on the host and the
// device, the error a build without CUDA kernels gives for GPU arrays, and the CUDA error check of the
// launch code.
#pragma once

#include <string>

#ifdef __CUDACC__
#include <cuda_runtime_api.h>

#include <stdexcept>

#define AFFECTVLM_HOST_DEVICE __host__ __device__
#define AFFECTVLM_FORCE_INLINE __forceinline__
#else
#define AFFECTVLM_HOST_DEVICE
#define AFFECTVLM_FORCE_INLINE inline __attribute__((always_inline))
#endif
// Host and device, always inlined: the small per-pixel and per-pair functions both kernels call in inner loops.
#define AFFECTVLM_HD AFFECTVLM_HOST_DEVICE AFFECTVLM_FORCE_INLINE

namespace affectvlm {

// `subject` says what lies on the GPU, e.g. "vertices are on cuda:0".
inline std::string no_cuda_kernels_message(const std::string& subject) {
  return subject + " but this build of affectvlm has no CUDA kernels; reinstall with nvcc available";
}

#ifdef __CUDACC__
// Throws std::runtime_error naming the op and the step that failed unless `status` is cudaSuccess.
inline void check_cuda(cudaError_t status, const char* op, const char* step) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(op) + ": " + step + " failed: " + cudaGetErrorString(status));
  }
}
#endif

}  // namespace affectvlm

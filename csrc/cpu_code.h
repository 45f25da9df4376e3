// Which build of the vectorised CPU loops runs. The hot loops of the CPU kernels (raster_cpu.cpp,
// contrastive_cpu.cpp) are compiled twice on x86-64 with GCC: for x86-64-v3 (AVX2, FMA) and for the baseline
// (SSE2). cpu_code() picks once per process: x86-64-v3 where the CPU has it, unless the environment variable
// AFFECTVLM_CPU=baseline asks for the baseline (so that tests can run both on one machine).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AFFECTVLM_HAS_X86_64_V3 1
#define AFFECTVLM_X86_64_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define AFFECTVLM_HAS_X86_64_V3 0
#endif

namespace affectvlm {

enum class CpuCode { Baseline, X86_64_V3 };

CpuCode cpu_code();
const char* cpu_code_name(CpuCode code);  // "baseline" or "x86-64-v3"

}  // namespace affectvlm

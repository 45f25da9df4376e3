#include "cpu_code.h"

#include <cstdlib>
#include <cstring>

namespace affectvlm {
namespace {

CpuCode choose_cpu_code() {
  const char* requested = std::getenv("AFFECTVLM_CPU");
  if (requested != nullptr && std::strcmp(requested, "baseline") == 0) return CpuCode::Baseline;
#if AFFECTVLM_HAS_X86_64_V3
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v3")) return CpuCode::X86_64_V3;
#endif
  return CpuCode::Baseline;
}

}  // namespace

CpuCode cpu_code() {
  static const CpuCode chosen = choose_cpu_code();
  return chosen;
}

const char* cpu_code_name(CpuCode code) { return code == CpuCode::X86_64_V3 ? "x86-64-v3" : "baseline"; }

}  // namespace affectvlm

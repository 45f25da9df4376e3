#!/usr/bin/env bash
# The GPU checks behind benchmarks/RESULTS.md, in one run on a machine with a CUDA GPU and the package's
# dependencies installed: build for that GPU, the CUDA tests, compute-sanitizer over every kernel, the GPU
# benchmarks, and the main job trained on the GPU. Each stage writes OUT/<stage>.log and has its own time limit,
# so a stage that fails or hangs leaves the others their time.
#
#   benchmarks/gpu/run.sh OUT [STAGE...]
#
# Stages (default: all, in this order): build, tests (the `cuda` tests), sanitizer (memcheck and racecheck),
# kernels (rasteriser, loss and augmentation benchmarks), training (training-throughput and pipeline benchmarks),
# profile (benchmarks/gpu/profile_pipeline.py), mainjob (`affectvlm train` with its defaults, on the GPU), kfold
# (the main job's 5-fold protocol, benchmarks/gpu/kfold.sh) and kfold-small224 (the same with affect-small-224).
set -uo pipefail
out=$(realpath "${1:?usage: benchmarks/gpu/run.sh OUT [STAGE...]}")
shift
stages=${*:-build tests sanitizer kernels training profile mainjob kfold kfold-small224}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the checkout first, as pytest imports it

run_stage() {  # name, time limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name: started $(date -u +%T), limit ${limit}s"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$out/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - started))s"
  tail -n 25 "$out/$name.log"
}

cuda_tests=(tests/test_ext.py tests/test_raster.py tests/test_contrastive.py tests/test_torch_library.py
            tests/test_tensor_boundary.py tests/test_augment.py tests/test_cli_render.py tests/test_pipeline_sources.py
            tests/test_train_cuda.py)
kernel_benchmarks=(benchmarks/test_raster.py benchmarks/test_contrastive.py benchmarks/test_augment.py)
training_benchmarks=(benchmarks/test_train.py benchmarks/test_pipeline.py)
main_job=$(mktemp -d)/main-job  # its generated data and caches stay out of OUT
export CACHE=$(mktemp -d)/kfold-cache  # the k-fold stages generate the data once
sanitize=(compute-sanitizer --error-exitcode 1 --print-limit 20)

for stage in $stages; do
  case $stage in
    build)
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$out/build.log" 2>&1
      run_stage build 180 bash -c 'python3 -m pip install --no-build-isolation --no-deps . && python3 -m affectvlm info' ;;
    tests)
      run_stage tests 200 python3 -m pytest -m cuda -p no:cacheprovider -rs "${cuda_tests[@]}" ;;
    sanitizer)
      run_stage sanitizer 150 bash -c "${sanitize[*]} --tool memcheck python3 benchmarks/gpu/sanitize_kernels.py &&
        ${sanitize[*]} --tool racecheck python3 benchmarks/gpu/sanitize_kernels.py" ;;
    kernels)
      run_stage kernels 240 python3 -m pytest -m cuda -p no:cacheprovider --benchmark-only \
        --benchmark-json="$out/kernels.json" --benchmark-columns=min,median,mean,rounds "${kernel_benchmarks[@]}" ;;
    training)
      run_stage training 180 python3 -m pytest -m cuda -p no:cacheprovider --benchmark-only \
        --benchmark-json="$out/training.json" --benchmark-columns=min,median,mean,rounds "${training_benchmarks[@]}" ;;
    profile)
      run_stage profile 90 python3 benchmarks/gpu/profile_pipeline.py cuda ;;
    mainjob)
      run_stage mainjob 300 python3 -m affectvlm train --out "$main_job" --no-progress ;;
    kfold)
      run_stage kfold 400 benchmarks/gpu/kfold.sh "$out" kfold ;;
    kfold-small224)
      run_stage kfold-small224 300 benchmarks/gpu/kfold.sh "$out" kfold-small224 --model affect-small-224 ;;
    *)
      echo "unknown stage '$stage'"; exit 2 ;;
  esac
done

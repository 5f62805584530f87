#!/usr/bin/env bash
# GPU check (issues 6 and 13): run on a machine with a CUDA GPU, from the repository root:
#
#     bash benchmarks/gpu_check.sh            # about 5-8 minutes on one H100
#
# 1. the CUDA tests (same reports as on the CPU, pinned memory, prefetching, --dtype);
# 2. resnet50 (random init), batch 256 x 3x224x224: reludoctor scan vs plain eager inference
#    (and hooks + numpy), fp32, then bf16 autocast; target scan/plain <= 1.05;
#    then a scan under torch.cuda.set_sync_debug_mode("error") (no host sync per batch);
# 3. the ONNX comparison when onnxruntime has a CUDA execution provider;
# 4. the model zoo (issue 13): every model of bench_zoo.py on the GPU, batch 256 x 3x224x224,
#    PyTorch (target scan/plain <= 1.10 on the light models) and ONNX where onnxruntime-gpu is
#    installed; written to zoo_cuda.json;
# 5. reludoctor.watch during training (issue 14): training steps with and without the watcher on
#    the GPU, every = 1, 10, 50 (targets <= 1.05x at 10, <= 1.02x at 50).
# Prints figures and exits 0 unless a step crashed; the verdict lines say whether targets were met.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
status=0
$PY - <<'PY' || { echo "no CUDA device: nothing to check"; exit 0; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print("CUDA:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== 1. CUDA tests"
$PY -m pytest -q tests/unit/test_cuda.py tests/perf_paths || status=1

echo "== 2a. resnet50, batch 256, 224x224, fp32, CUDA (target scan/plain <= 1.05)"
$PY benchmarks/bench_peers.py --device cuda --model resnet50 --batch-size 256 --image-size 224 \
    --batches 2 --repeats 3 --only torch --target-torch 1.05 --sync-check || status=1

echo "== 2b. the same under bf16 autocast"
$PY benchmarks/bench_peers.py --device cuda --model resnet50 --batch-size 256 --image-size 224 \
    --batches 2 --repeats 3 --only torch --target-torch 1.05 --dtype bf16 --no-peers || status=1

echo "== 3. ONNX on the CUDA execution provider (skipped without onnxruntime-gpu)"
$PY benchmarks/bench_peers.py --device cuda --model resnet50 --batch-size 64 --image-size 224 \
    --batches 2 --repeats 3 --only onnx || status=1

echo "== 4. the model zoo on the GPU, batch 256, 224x224 (target <= 1.10 on the light models)"
$PY benchmarks/bench_zoo.py --device cuda --threads 1 --batch-size 256 --image-size 224 \
    --batches 3 --repeats 3 --no-e2e --out zoo_cuda.json || status=1

echo "== 5. reludoctor.watch on the GPU (targets <= 1.05x with every=10, <= 1.02x with every=50)"
$PY benchmarks/bench_watch.py --device cuda --steps 200 --repeats 3 || status=1
exit $status

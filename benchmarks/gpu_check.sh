#!/usr/bin/env bash
# The GPU check, in one script for a machine with an NVIDIA GPU (written for one H200; about 10 minutes):
#   1. a venv (.venv-gpu) that sees the machine's own packages: a GPU machine usually has torch with
#      CUDA already; what is missing is installed where a package registry is reachable;
#   2. TensorRT (tensorrt-cu12/cu13 matching torch's CUDA, and cuda-python), where it installs;
#   3. the GPU tests (pytest -m gpu): ONNX Runtime CUDA, torch CUDA, TensorRT, each run or skipped saying why;
#   4. benchmarks/gpu_check.py: ResNet-50 baseline and pruned measured on torch-cuda (fp32, fp16) and,
#      with TensorRT, on tensorrt; prints the speedups and appends them to benchmarks/RESULTS.md,
#      only for runtimes that really ran.
# Exit status: 0 measured, 1 nothing could be measured, 2 no GPU here (RESULTS.md untouched).
set -uo pipefail
cd "$(dirname "$0")/.."
deadline=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-570} ))
left() { echo $(( deadline - $(date +%s) )); }

if ! nvidia-smi -L; then
    echo "gpu_check: no NVIDIA GPU is visible (nvidia-smi failed); nothing measured, RESULTS.md unchanged"
    exit 2
fi
PY=${PYTHON:-python3}
VENV=.venv-gpu
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV" || exit 1
pip() { timeout "$(left)" "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# The two distributions of this repository, without their dependencies (present ones stay as they are).
pip install --no-build-isolation --no-deps -e ./clients/python -e . || exit 1
missing=$("$VENV/bin/python" - <<'EOF'
import importlib.util
wanted = {"torch": "torch", "torchvision": "torchvision", "torch_pruning": "torch-pruning", "onnx": "onnx",
          "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "safetensors": "safetensors", "numpy": "numpy",
          "PIL": "pillow", "sklearn": "scikit-learn", "psutil": "psutil", "tqdm": "tqdm", "grpc": "grpcio",
          "grpc_health": "grpcio-health-checking", "grpc_reflection": "grpcio-reflection",
          "grpc_status": "grpcio-status", "prometheus_client": "prometheus-client", "matplotlib": "matplotlib",
          "pytest": "pytest", "pytest_timeout": "pytest-timeout", "jsonschema": "jsonschema"}
print(" ".join(pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: installing $missing"
    pip install -c constraints.txt $missing || echo "gpu_check: could not install some of: $missing"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$VENV/bin/python" -c "import torch; print('gpu_check: torch', torch.__version__, 'sees no CUDA device')" \
        || echo "gpu_check: torch is not importable here"
    exit 1
fi
"$VENV/bin/python" -c "import torch; print('gpu_check: torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

# TensorRT where it installs (optional: the check goes on without it, and says so).
if ! "$VENV/bin/python" -c "import tensorrt" 2>/dev/null; then
    cuda_major=$("$VENV/bin/python" -c "import torch; print((torch.version.cuda or '12').split('.')[0])")
    echo "gpu_check: installing TensorRT for CUDA $cuda_major"
    pip install "tensorrt-cu${cuda_major}" "cuda-python>=${cuda_major},<$((cuda_major + 1))" \
        || echo "gpu_check: TensorRT could not be installed here; measuring without it"
fi

echo "gpu_check: GPU tests ($(left) s left)"
timeout "$(( $(left) / 3 ))" "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rs -m gpu tests/engine/test_runtimes.py
echo "gpu_check: ResNet-50 on the GPU runtimes ($(left) s left)"
timeout "$(left)" "$VENV/bin/python" benchmarks/gpu_check.py --results benchmarks/RESULTS.md

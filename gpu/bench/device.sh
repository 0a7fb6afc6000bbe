#!/usr/bin/env bash
# Runs thitl's GPU checks and benchmarks on a machine with an NVIDIA GPU and NO Rust toolchain,
# next to PyTorch (eager fp32, TF32 off), and prints a table with ratios last.
#
# Prepare on a machine with Rust (from the repository root):
#   ../shared/gpu/prepare-device.sh            # once: Vulkan loader packages into .gl/
#   cargo build --release -p gpu --bin gpu-bench
#   mkdir -p .bench && cp "${CARGO_TARGET_DIR:-target}/release/gpu-bench" .bench/
# Run on the GPU machine (repository root, carrying .gl and .bench):
#   bash gpu/bench/device.sh
# Environment: SIZES (GPU matmul sizes, default 1024,2048,4096), MODELS (default small,dit-s),
# CPU_SIZES (default 1024,4096), CPU_MODELS (default small), BATCH (default 64),
# GPU_BENCH (the binary, default .bench/gpu-bench), CPU=0 to skip the CPU backend.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
export THITL_DEVICE=wgpu
# The NVIDIA driver through Vulkan (without this, a GL adapter could be picked).
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
BIN="${GPU_BENCH:-.bench/gpu-bench}"
SIZES="${SIZES:-1024,2048,4096}"
MODELS="${MODELS:-small,dit-s}"
CPU_SIZES="${CPU_SIZES:-1024,4096}"
CPU_MODELS="${CPU_MODELS:-small}"
BATCH="${BATCH:-64}"
RESULTS="$(mktemp)"
CASE="$(mktemp -d)"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; fi

echo "== correctness: the crate's DiT (wgpu) vs the PyTorch reference =="
if [ -x "$BIN" ]; then
    # Kernel parameters as immediates (the default) and as uniform buffers.
    for immediates in 1 0; do
        echo "-- THITL_IMMEDIATES=$immediates"
        rm -rf "$CASE"; mkdir -p "$CASE"
        THITL_IMMEDIATES=$immediates timeout 120 "$BIN" --dump "$CASE" \
            && timeout 120 python3 gpu/reference/dit.py --check "$CASE" \
            | sed "s/^CHECK\t/CHECK\timmediates=$immediates /" | tee -a "$RESULTS"
    done
else
    echo "missing $BIN: build it with cargo build --release -p gpu --bin gpu-bench and copy it to .bench/"
fi

echo "== gpu-bench: wgpu =="
if [ -x "$BIN" ]; then
    timeout 360 "$BIN" --no-cpu --sizes "$SIZES" --repeats 10 --check-size 1000 \
        --models "$MODELS" --batch "$BATCH" --steps 25 --model-repeats 3 | tee -a "$RESULTS"
fi

echo "== PyTorch =="
timeout 120 python3 gpu/bench/torch_matmul.py ${SIZES//,/ } 16384x1536x384 16384x384x1536 | tee -a "$RESULTS"
timeout 300 python3 gpu/reference/dit.py --bench --batch "$BATCH" --steps 25 | tee -a "$RESULTS"

echo "== gpu-bench: CPU backend (last: it is the least important; CPU=0 skips it) =="
if [ -x "$BIN" ] && [ "${CPU:-1}" != 0 ]; then
    timeout 240 "$BIN" --no-gpu --cpu-sizes "$CPU_SIZES" --cpu-models "$CPU_MODELS" --batch "$BATCH" \
        --steps 25 --model-repeats 1 | tee -a "$RESULTS"
fi
echo
echo "== summary (ratio = thitl wgpu / PyTorch eager fp32, same machine, same run) =="
python3 - "$RESULTS" <<'PY'
import sys
lines = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
for line in lines:
    if line[0] == "CHECK":
        print("check: " + "  ".join(line[1:]))
rows = [line for line in lines if line[0] == "RESULT" and len(line) == 5]
torch = {what: float(value) for _, backend, what, value, unit in rows if backend.startswith("torch")}
print(f"{'backend':<22} {'what':<26} {'thitl':>10} {'unit':<8} {'torch':>10} {'ratio':>7}")
for _, backend, what, value, unit in rows:
    if backend.startswith("torch"):
        continue
    reference = torch.get(what) if backend.startswith("wgpu") else None
    ratio = f"{float(value) / reference:7.2f}" if reference else "      -"
    shown = f"{reference:10.2f}" if reference else "         -"
    print(f"{backend:<22} {what:<26} {float(value):10.3f} {unit:<8} {shown} {ratio}")
PY
rm -rf "$RESULTS" "$CASE"

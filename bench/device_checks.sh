#!/usr/bin/env bash
# The GPU checks of one session, in one pass (each step time-limited, each log kept; a failing step
# does not stop the next).  Needs only torch, numpy, scipy, pyyaml and tensorboard: no Ray.
#
#   OUT=/tmp/gpu bash bench/device_checks.sh
#
# 1. device facts; 2. fused vs separate steps at demo/cpu/paper widths (bench/fusion_kernels.py);
# 3. D2SC iteration seconds and device memory at paper widths, AWA2 shapes, plus one evaluation at
#    the published syn_num (bench/d2sc.py); 4. one evaluation at paper widths on SUN's 65 validation
#    unseen classes x 8000 rows (bench/evaluation_memory.py); 5. the single-run CLI on CUDA: train,
#    checkpoint, resume on CUDA and on the CPU; 6. the cpu profile's D2SC against ESZSL on the full simulated benchmarks
#    (bench/cpu_profile.py, the same configurations on the GPU).
set -u
OUT=${OUT:-/tmp/device-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}
step info 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.backends.cuda.matmul.allow_tf32)"'
step fusion 90 python3 bench/fusion_kernels.py --device cuda --widths demo,cpu,paper --ks 1,2,4,8,16 --reps 10
step d2sc_paper 80 python3 bench/d2sc.py --device cuda --iters 5 --eval --syn-num 8000
step eval_sun 80 python3 bench/evaluation_memory.py --device cuda
step cli 50 bash -c 'a="--model d2sc --dataset sim-AWA2 --preset small --epochs 3 --out /tmp/cli-run"; python3 -m zsl.train $a --device cuda && python3 -m zsl.train $a --device cuda --resume && python3 -m zsl.train $a --device cpu --resume'
step cpu_profile 150 python3 bench/cpu_profile.py --device cuda --datasets sim-SUN,sim-CUB,sim-AWA2

#!/usr/bin/env bash
# The GPU checks in one short run (see README "GPU"): the gpu-marked tests (bf16/fp16 LoRA, padding-free
# rows with CUDA sdpa, DPO in bf16, QLoRA 4-bit on CUDA, FSDP through torchrun), then the SFT benchmark
# on CUDA in bf16 for both workloads (ours vs TRL's best mode and TRL + Liger).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR] [STEPS]
#
# WHEEL_DIR: wheels to install first into a private site folder (for a machine with torch but without
# our other dependencies and no network; "" for none); each step has its own time limit, and its log
# goes to OUT_DIR. STEPS: which steps, default "gpu_tests bench_qwen05b bench_32m"; "profile_qwen05b"
# profiles 3 optimizer steps of ours and of TRL (+ Liger) on the 0.5B workload: where a step's wall
# time goes (CPU ops, CUDA kernels, device busy share, host-device syncs; sft_throughput.py
# --profile-steps).
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [WHEEL_DIR] [STEPS]}
wheels=${2:-}
steps=${3:-gpu_tests bench_qwen05b bench_32m}
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$repo"
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, report the exit status
    local name=$1 limit=$2; shift 2
    case " $steps " in *" $name "*) ;; *) return 0 ;; esac
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    tail -n 25 "$out/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, trl, bitsandbytes, datasets; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| trl', trl.__version__, \
'| bitsandbytes', bitsandbytes.__version__, '| datasets', datasets.__version__)"; } 2>&1 | tee "$out/summary.txt"
step gpu_tests 170 python3 -m pytest -q -p no:cacheprovider --gpu -m gpu -rs --timeout 150 \
    tests/gpu tests/trainers/test_trainers.py tests/trainers/test_distributed.py
step bench_qwen05b 210 python3 benchmarks/sft_throughput.py --device cuda --workload qwen0.5b --samples 256 --quick \
    --skip-prep --out "$out/sft_throughput_qwen0.5b_cuda.json"
step bench_32m 150 python3 benchmarks/sft_throughput.py --device cuda --samples 1024 --quick --skip-prep \
    --out "$out/sft_throughput_32m_cuda.json"
step profile_qwen05b 240 python3 benchmarks/sft_throughput.py --device cuda --workload qwen0.5b --samples 64 --quick \
    --skip-prep --profile-steps 3 --variants ours_default,trl_group_by_length,trl_liger \
    --out "$out/sft_profile_qwen0.5b_cuda.json"

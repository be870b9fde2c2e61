#!/usr/bin/env bash
# GPU checks on one H100/H200 (the `device` machine or any CUDA box), in well under 8 minutes:
#   1. the GPU-only tests (tests/test_gpu.py: CUDA bitsandbytes 4-bit QLoRA, bf16 autocast over fp32 master weights,
#      the shared-prompt GRPO path in fp32 and bf16),
#   2. the GRPO step benchmark on a randomly initialised Qwen2.5-VL-3B (shared vs repeated prompt, G = 4 and 8).
# Tables and logs go to $OUT (or gpu_check_out/).
#
# The device machine has torch, transformers, lightning, peft, torchmetrics, tensorboard; it lacks (and cannot
# download) hydra-core, omegaconf, antlr4-python3-runtime, av, decord and bitsandbytes. Carry them as wheels, made
# here before the run (.whl/ is listed in .git/info/exclude), with transformers pinned to the version tested on CPU:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 av decord bitsandbytes \
#     transformers==5.24.0 tokenizers==0.23.3 huggingface_hub
# and name .whl in the run's `carry`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"; } \
  2>&1 | tee "$OUT/machine.txt"
status=0
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
timeout 300 python3 benchmarks/grpo_step.py --size 3b --mode lora --device cuda --groups 4 8 --steps 5 --warmup 1 --rss-steps 2 \
  --out "$OUT/grpo_step_3b.md" 2>&1 | tee "$OUT/grpo_step_3b.log" || status=1
exit $status

#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv (the versions in requirements/constraints.txt), build a
# tiny base model locally (no hub), then LoRA-fine-tune it on the shipped example data. Ends with
# metrics, the adapter and loss.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
make_venv .venv requirements/constraints.txt -e .
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ ! -f tiny-model/config.json ]; then
  # A 0.85M-parameter Llama (hidden 128, 4 layers), pre-trained for 300 steps on the corpus text so it acts as a base model.
  sage-finetune tiny-model ./tiny-model --corpus examples/data/*.jsonl \
    --hidden-size 128 --layers 4 --pretrain-steps 300
fi
sage-finetune train examples/configs/lora_tiny.yaml "$@"
python - <<'PY'
import json
from peft import PeftModel
from transformers import AutoModelForCausalLM
m = json.load(open("outputs/lora-tiny/metrics.json"))
PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("tiny-model"), "outputs/lora-tiny/adapter")
print(f"\neval loss {m['eval_loss_before']:.3f} -> {m['eval_loss']:.3f}; "
      "adapter reloads with PeftModel.from_pretrained; plot: outputs/lora-tiny/loss.png")
PY

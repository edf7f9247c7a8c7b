"""Peak memory of preference training's sequence log-probabilities with a 129k vocabulary: the
chunked LM head (``training.chunked_lm_loss``) vs the selective logits path.

    python benchmarks/preference_logps_memory.py          # ~30 s on 2 cores; prints one line per variant

Workload (built locally from config, seeded; nothing is downloaded): a 2-layer Llama with hidden 64
and vocab 129280 (DeepSeek-V3's), untied head, fp32; 4 pairs (8 sequences) of 32 prompt and 128
scored tokens each: 1024 scored positions, whose float32 logits take 505 MiB. One
``sequence_logps`` forward and a backward of the summed log-probs per variant, each in its own
interpreter (so the peak RSS is that run's alone), after a warm-up on a small batch; reported: the
peak RSS the call added, its time, and the first sequence's log-prob (equal across variants).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

VOCAB, PAIRS, PROMPT, REPLY = 129280, 4, 32, 128


def run(variant: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sage_libs.sage_finetune.trainers._preference_core import sequence_logps

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         tie_word_embeddings=False))
    n, length = 2 * PAIRS, PROMPT + REPLY
    ids = torch.randint(0, VOCAB, (n, length))
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             "sequence_ids": torch.arange(n)[:, None].expand(n, length).contiguous()}
    chunked = variant == "chunked"
    small = {k: v[:2, :PROMPT + 8].contiguous() for k, v in batch.items()}  # warm-up: probe, first allocations
    sequence_logps(model, small, 2, chunked=chunked).sums.sum().backward()
    model.zero_grad(set_to_none=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = sequence_logps(model, batch, n, selective=True, chunked=chunked)
    out.sums.sum().backward()
    seconds = time.perf_counter() - start
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    scored = int((labels[:, 1:] != -100).sum())
    return (f"{variant:9s} {scored} scored tokens x vocab {VOCAB}: peak RSS +{added:.0f} MiB, {seconds:.2f} s, "
            f"first log-prob {out.sums[0].item():.4f}")


def main() -> None:
    if len(sys.argv) > 1:
        print(run(sys.argv[1]))
        return
    for variant in ("selective", "chunked"):
        subprocess.run([sys.executable, __file__, variant], check=True)


if __name__ == "__main__":
    main()

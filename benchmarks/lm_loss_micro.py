"""Time of the LM head and its loss alone (forward and backward): the chunked loss against the plain path.

    python benchmarks/lm_loss_micro.py                          # ~1 min on 2 cores
    python benchmarks/lm_loss_micro.py --shape 2048x896x129280   # positions x hidden x vocab

For each shape (trained positions x hidden x vocabulary; random float32 hidden states and head,
the head frozen, the hidden states trained), four functions, each run once to warm up and then
``--repeats`` times alternated; the median is reported:

* ``sft_plain``: ``cross_entropy(linear(h, w).float(), targets, reduction="sum")`` (the plain path,
  ``training.chunked_lm_loss: false``);
* ``sft_chunked``: :func:`sage_finetune.perf.chunked_ce.chunked_linear_cross_entropy` (the default);
* ``logps_plain``: ``log_softmax(linear(h, w).float()).gather(targets)``, summed (preference
  training's per-token log-probabilities, plain);
* ``logps_chunked``: :func:`sage_finetune.perf.chunked_ce.chunked_linear_token_logps`.

The default shapes: 384 positions of a 129k vocabulary at hidden 896 (one chunk), 720 positions of
SmolLM2's 49k vocabulary at hidden 576 (the real-model workload's batch; one chunk) and 2048 of the
129k one (four chunks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", default=None, help="positions x hidden x vocab (repeatable)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import torch

    from sage_libs.sage_finetune.perf import chunked_ce

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shape or ["384x896x129280", "720x576x49152", "2048x896x129280"]
    out = {}
    for shape in shapes:
        n, hidden, vocab = (int(x) for x in shape.split("x"))
        gen = torch.Generator().manual_seed(0)
        h = torch.randn(n, hidden, generator=gen).requires_grad_(True)
        w = torch.randn(vocab, hidden, generator=gen) * 0.02
        t = torch.randint(0, vocab, (n,), generator=gen)
        F = torch.nn.functional

        fns = {
            "sft_plain": lambda: F.cross_entropy(F.linear(h, w).float(), t, reduction="sum"),
            "sft_chunked": lambda: chunked_ce.chunked_linear_cross_entropy(h, w, t),
            "logps_plain": lambda: torch.log_softmax(F.linear(h, w).float(), -1).gather(-1, t[:, None]).sum(),
            "logps_chunked": lambda: chunked_ce.chunked_linear_token_logps(h, w, t).sum(),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn().backward()
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn().backward()
                times[name].append(time.perf_counter() - t0)
        med = {k: round(statistics.median(v), 4) for k, v in times.items()}
        med["sft_chunked_vs_plain"] = round(med["sft_chunked"] / med["sft_plain"], 3)
        med["logps_chunked_vs_plain"] = round(med["logps_chunked"] / med["logps_plain"], 3)
        med["chunks"] = -(-n // chunked_ce.chunk_rows_for(vocab))
        out[shape] = med
        print(shape, json.dumps(med), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

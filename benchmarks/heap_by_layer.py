"""Where a training step's CPU heap grows: glibc's ``mallinfo2`` (heap size, bytes in use, free bytes
the heap holds) at the start of a step, after the forward of a few decoder layers, after their
backward and at the end of the step, for the first two steps of a real ``sage-finetune train``.

    python benchmarks/heap_by_layer.py examples/real_model/booking_lora.yaml \\
        training.model_name_or_path=PATH training.eval_strategy=no data.eval_file=null

Any ``train`` override can follow the config (``training.max_steps`` is set to 2). The free bytes
that grow layer by layer during the forward are blocks the forward freed and the heap cannot hand
out again, because the tensors kept for backward sit between them (docs/real-model.md). glibc
only (Linux); prints one line per point, in MB: arena (heap size), in use, free.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    points: list[tuple] = []

    def record(label: str) -> None:
        m = libc.mallinfo2()
        points.append((label, m.arena >> 20, m.uordblks >> 20, m.fordblks >> 20))

    import transformers.trainer as hf_trainer

    original = hf_trainer.Trainer.training_step
    steps = [0]

    def training_step(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        if steps[0] == 0:
            from sage_libs.sage_finetune.perf.compiled_layers import decoder_layers

            layers = decoder_layers(model)
            def after_forward(module: Any, _inputs: Any, _output: Any, i: int) -> None:
                if module.training:  # an evaluation's forwards run through the same layers
                    record(f"forward of layer {i}")

            for i in sorted({0, len(layers) // 3, 2 * len(layers) // 3, len(layers) - 1}):
                layers[i].register_forward_hook(lambda m, x, y, i=i: after_forward(m, x, y, i))
                layers[i].register_full_backward_hook(lambda *_, i=i: record(f"backward of layer {i}"))
        record(f"start of step {steps[0] + 1}")
        out = original(self, model, *args, **kwargs)
        steps[0] += 1
        record(f"end of step {steps[0]}")
        return out

    hf_trainer.Trainer.training_step = training_step
    from sage_libs.sage_finetune.cli import main as cli

    code = cli(["train", *argv, "training.max_steps=2", "training.disable_tqdm=true", "training.plan_check=false"])
    print(f"{'point':<24} {'arena MB':>9} {'in use MB':>10} {'free MB':>8}")
    for label, arena, used, free in points:
        print(f"{label:<24} {arena:>9} {used:>10} {free:>8}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

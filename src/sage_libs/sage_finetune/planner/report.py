"""The plan as text: a memory breakdown, the time, and the suggestions table with overrides."""

from __future__ import annotations

from typing import Any

from .shapes import GIB

__all__ = ["render_plan", "format_seconds"]

_LABELS = {
    "base_weights": "base weights",
    "trainable_weights": "adapter / trained copies",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations (largest batch)",
    "step_transients": "loss and backward transients",
    "allocator_overhead": "allocator overhead",
    "process_baseline": "process baseline",
}


def format_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def render_plan(plan: Any) -> str:
    spec, run, mem = plan.spec, plan.run, plan.memory
    d = mem.details
    lines = []
    what = {"cpu": "peak RSS", "cuda": "peak device memory"}[run.device]
    weights = f"{run.quant_bits}-bit" if run.quant_bits else {4: "float32", 2: "16-bit", 8: "float64"}.get(
        run.weight_bytes, f"{run.weight_bytes}-byte")
    lines.append(f"plan: {run.method} on {plan.model} ({spec.total_params / 1e6:.1f}M parameters, {weights} "
                 f"weights), {run.device}, {run.processes} process{'es' if run.processes > 1 else ''}")
    lens = plan.lengths
    kind = "packed rows" if lens.packed else "preference pairs" if plan.preference else "samples"
    # a pair's length is chosen + rejected; max_seq_length cuts each of the two
    cut = f"max_seq_length {plan.max_seq_length}" + (" per sequence" if plan.preference else "")
    lines.append(f"data: {len(lens)} {kind}, {lens.total_tokens} tokens ({'pair lengths: ' if plan.preference else ''}"
                 f"max {max(lens.lengths, default=0)}, p95 {lens.percentile(95)}; {lens.truncated} truncated at "
                 f"{cut}); "
                 f"largest batch: {d['tokens']} positions"
                 + (f" in {d['rows']} padded rows" if d["rows"] > 1 else " in one padding-free row"
                    if run.padding_free else "")
                 + f", {d['trained_positions']} trained")
    path = [("padding-free" if run.padding_free else "padded") + (" + packed" if run.packing else "")
            + (" batches grouped by length" if plan.group_by_length else ""),
            "per-document attention" if run.attention == "doc" else f"attention {run.attention}",
            "selective logits" if run.selective_logits else "full logits"]
    if d.get("chunked_lm_loss"):
        path.append("chunked LM loss")
    if run.gradient_checkpointing:
        path.append("gradient checkpointing")
    if run.zero_stage:
        path.append(f"ZeRO-{run.zero_stage}")
    lines.append("paths: " + ", ".join(path) + f"; trainable parameters {d['trainable_params'] / 1e6:.2f}M")
    lines.append("")
    lines.append(f"memory ({what}, GiB)")
    for key, value in mem.components.items():
        lines.append(f"  {_LABELS.get(key, key):<32} {_gib(value):>8}")
    verdict = ""
    if plan.budget is not None:
        share = mem.peak / plan.budget if plan.budget else float("inf")
        verdict = (f"   budget {_gib(plan.budget)} ({plan.budget_source}): "
                   + ("fits" if plan.fits else "DOES NOT FIT") + f" ({share:.0%})")
    lines.append(f"  {'total (peak at ' + mem.phase + ')':<32} {_gib(mem.peak):>8}{verdict}")
    if "cuda_max_allocated" in d:
        lines.append(f"  {'of which tensors (max_allocated)':<32} {_gib(d['cuda_max_allocated']):>8}")
    if "load_peak" in d:
        lines.append(f"  {'while loading (quantizing)':<32} {_gib(d['load_peak']):>8}")
    t = plan.time
    if t is not None:
        tp = t.throughput
        lines.append("")
        lines.append(f"time: {format_seconds(t.step_seconds)} per optimizer step (largest: "
                     f"{format_seconds(t.largest_step_seconds)}), {t.steps_per_epoch} steps per epoch: "
                     f"{format_seconds(t.epoch_seconds)} per epoch, {format_seconds(t.total_seconds)} for the "
                     f"{t.total_steps} steps of the run")
        if tp is not None:
            lines.append(f"  throughput ({tp.source}): matmul {tp.matmul_flops / 1e9:.0f} GFLOP/s, attention "
                         f"{tp.attention_flops / 1e9:.0f} GFLOP/s, bandwidth {tp.bandwidth / 1e9:.1f} GB/s, "
                         f"efficiency {tp.efficiency:.2f}; {t.epoch_flops / 1e12:.2f} useful TFLOP per epoch")
    if len(plan.options) > 1 or plan.fits is False:
        lines.append("")
        if plan.budget is None:
            lines.append("options:")
        elif plan.fits:
            lines.append(f"options within {_gib(plan.budget)} GiB:")
        else:
            lines.append(f"to fit {_gib(plan.budget)} GiB:")
        header = ("option", "batch", "accum", "grad ckpt", "method", "max len (truncates)", "peak GiB", "s/step",
                  "fits")
        rows = [header]
        for o in plan.options:
            rows.append((o.label, str(o.batch_size), str(o.grad_accum), "on" if o.gradient_checkpointing else "off",
                         o.method, f"{o.max_seq_length} ({o.truncates})", _gib(o.peak),
                         "-" if o.step_seconds is None else f"{o.step_seconds:.2f}",
                         "-" if o.fits is None else "yes" if o.fits else "no"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for i, r in enumerate(rows):
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        pasteable = [o for o in plan.options if o.overrides and o.fits]
        if pasteable:
            lines.append("")
            lines.append("overrides (paste after the config file):")
            for o in pasteable:
                lines.append(f"  {o.label}: " + " ".join(o.overrides))
    for note in plan.notes + mem.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)

"""Held-out exact match of the booking task (examples/real_model/make_booking_data.py).

Each evaluation record's conversation up to its last user message is answered greedily (at most
``--max-new-tokens`` tokens, stopped at the end-of-turn token) and the reply is compared with the
record's assistant reply two ways:

* ``exact_match``: the reply string equals the expected one (same keys, same order, same compact
  separators, nothing before or after);
* ``json_match``: the reply parses as JSON and equals the expected object (key order and spacing
  not looked at).

Two ways to load the model:

    python examples/real_model/evaluate.py MODEL --out result.json
        MODEL: a saved adapter (on the base it records), a merged/full model folder, or a GGUF file
        as a base model; loaded and answered through the library's own serving code
        (sage_libs.sage_finetune.serving: the chat template the run trained with, its end-of-turn stops).

    python examples/real_model/evaluate.py --plain-gguf FILE.gguf --out result.json [--compare other.json]
        A GGUF file loaded by plain transformers, in this process, WITHOUT importing the library:
        AutoModelForCausalLM/AutoTokenizer.from_pretrained(folder, gguf_file=name), the chat template
        stored in the file, greedy generate. ``--compare`` counts the replies identical to another
        result file's (the export round trip: the exported file must answer as the trained adapter did).

The result file holds the scores, per-field accuracy, the time taken and every reply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "booking_eval.jsonl"


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(records: list[dict[str, Any]], replies: list[str]) -> dict[str, Any]:
    """exact_match, json_match, valid_json and per-field accuracy of ``replies`` against the records'
    last assistant messages, and one row per record."""
    rows, exact, same_json, valid = [], 0, 0, 0
    field_hits: dict[str, int] = {}
    for record, reply in zip(records, replies, strict=True):
        expected = record["messages"][-1]["content"]
        want = json.loads(expected)
        try:
            got = json.loads(reply)
            ok_json = True
        except ValueError:
            got, ok_json = None, False
        is_exact = reply == expected
        is_json = ok_json and got == want
        exact += is_exact
        same_json += is_json
        valid += ok_json
        for key, value in want.items():
            field_hits[key] = field_hits.get(key, 0) + (isinstance(got, dict) and got.get(key) == value)
        rows.append({"request": record["messages"][-2]["content"], "expected": expected, "reply": reply,
                     "exact": is_exact, "json": is_json})
    n = len(records)
    return {"n": n, "exact_match": exact / n, "json_match": same_json / n, "valid_json": valid / n,
            "exact_count": exact, "json_count": same_json,
            "field_accuracy": {k: v / n for k, v in field_hits.items()}, "by_phrasing": by_phrasing(rows),
            "replies": rows}


def by_phrasing(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Exact matches among the requests phrased as in training and among those phrased in the
    held-out templates (make_booking_data.TEMPLATES, the last HELD_OUT of each type)."""
    import re

    sys.path.insert(0, str(HERE))
    try:
        import make_booking_data as gen
    finally:
        sys.path.remove(str(HERE))
    patterns = [re.compile(re.sub(r"\\\{(city|date|party|name)\\\}", ".+", re.escape(t)))
                for ts in gen.TEMPLATES.values() for t in ts[-gen.HELD_OUT:]]
    out = {"seen_phrasing": {"exact": 0, "n": 0}, "held_out_phrasing": {"exact": 0, "n": 0}}
    for row in rows:
        key = "held_out_phrasing" if any(p.fullmatch(row["request"]) for p in patterns) else "seen_phrasing"
        out[key]["n"] += 1
        out[key]["exact"] += row["exact"]
    return out


def answer_all(records: list[dict[str, Any]], reply: Callable[[list[dict[str, Any]]], str]) -> list[str]:
    out = []
    for i, record in enumerate(records, 1):
        out.append(reply(record["messages"][:-1]))
        if i % 10 == 0:
            print(f"  {i}/{len(records)} answered", file=sys.stderr, flush=True)
    return out


def library_model(path: str) -> tuple[Any, Any]:
    """(model, tokenizer) through the library: an adapter or model folder by serving.load_chat_model;
    a GGUF file by the folder the library converts it into (models.files.resolve_model)."""
    from sage_libs.sage_finetune.serving import load_chat_model

    p = Path(path).expanduser()
    if p.is_file():  # a GGUF base model
        from sage_libs.sage_finetune.models.files import resolve_model

        p = Path(resolve_model(str(p)))
    return load_chat_model(p, dtype="float32")


def evaluate_library(path: str, records: list[dict[str, Any]], max_new_tokens: int) -> list[str]:
    import torch

    from sage_libs.sage_finetune.serving import generate_reply

    torch.manual_seed(0)
    model, tokenizer = library_model(path)
    return answer_all(records, lambda messages: generate_reply(model, tokenizer, messages,
                                                               max_new_tokens=max_new_tokens))


def evaluate_plain_gguf(gguf: str, records: list[dict[str, Any]], max_new_tokens: int) -> list[str]:
    """Plain transformers on a GGUF file; the library is not imported (checked by the caller)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(gguf).resolve()
    tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
    stops = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    stops = sorted({i for i in stops if i is not None and i != tokenizer.unk_token_id})

    def reply(messages: list[dict[str, Any]]) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id or stops[0])
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return answer_all(records, reply)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Held-out exact match of the booking task.")
    parser.add_argument("model", nargs="?", help="an adapter folder, a merged/full model folder or a GGUF base file "
                                                  "(through the library)")
    parser.add_argument("--plain-gguf", help="a GGUF file, loaded by plain transformers without the library")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="evaluation records (default: booking_eval.jsonl)")
    parser.add_argument("--out", required=True, help="the result JSON file to write")
    parser.add_argument("--label", default=None, help="a name for this result (default: the model path)")
    parser.add_argument("--max-new-tokens", type=int, default=56)
    parser.add_argument("--limit", type=int, default=None, help="only the first N records (quick checks)")
    parser.add_argument("--compare", help="another result file: count the replies identical to its replies")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.plain_gguf):
        parser.error("give MODEL or --plain-gguf FILE (one of them)")

    records = load_records(args.data)[: args.limit]
    start = time.perf_counter()
    if args.plain_gguf:
        replies = evaluate_plain_gguf(args.plain_gguf, records, args.max_new_tokens)
        library_imported = any(name.startswith("sage_libs") for name in sys.modules)
        if library_imported:
            raise SystemExit("the plain GGUF check imported sage_libs: it must run without the library")
    else:
        replies = evaluate_library(args.model, records, args.max_new_tokens)
        library_imported = True
    seconds = time.perf_counter() - start

    result = {"label": args.label or args.model or args.plain_gguf, "model": args.model or args.plain_gguf,
              "loaded_by": "plain transformers (gguf_file=), without sage_libs" if args.plain_gguf
              else "sage_libs.sage_finetune.serving", "library_imported": library_imported,
              "data": str(args.data), "max_new_tokens": args.max_new_tokens, "seconds": round(seconds, 1)}
    result.update(score(records, replies))
    if args.compare:
        other = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        theirs = [row["reply"] for row in other["replies"]]
        same = sum(a == b for a, b in zip(replies, theirs, strict=True))
        result["agreement"] = {"with": args.compare, "identical_replies": same, "n": len(replies)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    line = (f"{result['label']}: exact match {result['exact_count']}/{result['n']} ({result['exact_match']:.0%}), "
            f"JSON match {result['json_count']}/{result['n']} ({result['json_match']:.0%}), "
            f"valid JSON {result['valid_json']:.0%}, {seconds:.0f} s")
    if args.compare:
        line += f"; identical replies to {args.compare}: {result['agreement']['identical_replies']}/{len(replies)}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preference masks on the template zoo: chosen and rejected checked exactly against the zoo's oracle.

Every template and tokenizer of :mod:`tests.data.test_template_zoo` renders preference pairs
(single turn, a multi-turn prompt, a system prompt, a tool-call reply, a text reply after a tool
result). Each side ``prompt + [reply]`` must equal the zoo's independent oracle for that
conversation with only the last reply trained (one whole ``apply_chat_template`` render, the reply
found by string search), cut after its last trained token. On top of that, exactly:

- each side trains one contiguous run: the last reply and its end-of-turn marker, nothing else;
- the prompt tokens of chosen and rejected are identical and fully masked;
- the same pair given three ways (prompt + replies, prompt + full conversations, implicit prompt
  inside full conversations) gives the same columns, and so does KTO's unpaired view of it.

A case either matches or is refused with a message naming its cause (``EXPECTED_REFUSALS``); a
pair dropped without a message, or any difference, fails.
"""

from __future__ import annotations

import pytest

from sage_libs.sage_finetune.data.preference import tokenize_preference_records
from sage_libs.sage_finetune.data.unpaired import tokenize_unpaired_records
from sage_libs.sage_finetune.data.render import IGNORE_INDEX

from .test_render_templates import trained
from .test_template_zoo import (
    A1,
    A2,
    A3,
    FAMILIES,
    TEMPLATES,
    TOKENIZERS,
    TOOLS,
    U1,
    U2,
    U3,
    Template,
    _call,
    oracle,
    zoo_tokenizer,
)
from .test_template_zoo import EXPECTED_REFUSALS as SFT_REFUSALS


# -- pairs ---------------------------------------------------------------------------------------------
def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def _tool_call(city, text=""):
    call = _call(json_args=True)
    call["function"]["arguments"] = f'{{"city": "{city}"}}'
    return {"role": "assistant", "content": text, "tool_calls": [call]}


SYSTEM = {"role": "system", "content": "You can look up the weather."}
WEATHER = _user("Is it warm in Paris today?")

# name -> (prompt messages, chosen reply, rejected reply, tools)
PAIRS: dict[str, tuple[list[dict], dict, dict, list | None]] = {
    "single": ([_user(U1)], _assistant(A1), _assistant("The capital of France is Lyon."), None),
    "multi_turn_prompt": ([_user(U1), _assistant(A1), _user(U2), _assistant(A2), _user(U3)], _assistant(A3),
                          _assistant("Paris has more inhabitants than Rome."), None),
    "system": ([{"role": "system", "content": "Answer in one sentence."}, _user(U1)], _assistant(A1),
               _assistant("Lyon."), None),
    "tool_call_reply": ([SYSTEM, WEATHER], _tool_call("Paris"), _tool_call("Rome"), TOOLS),
    "tool_call_with_text": ([SYSTEM, WEATHER], _tool_call("Paris", "Let me check."), _tool_call("Rome", "Let me check."),
                            TOOLS),
    "reply_after_tool_result": ([SYSTEM, WEATHER, _tool_call("Paris"),
                                 {"role": "tool", "content": "22 degrees and sunny", "tool_call_id": "call12345"}],
                                _assistant("Yes, it is 22 degrees and sunny in Paris."),
                                _assistant("No, it is freezing in Paris."), TOOLS),
}


def record_forms(name: str) -> dict[str, dict]:
    """One pair as the three record shapes that must tokenize alike."""
    prompt, chosen, rejected, tools = PAIRS[name]
    extra = {"tools": tools} if tools else {}
    return {
        "explicit": {"prompt": prompt, "chosen": [chosen], "rejected": [rejected], **extra},
        "explicit_full": {"prompt": prompt, "chosen": [*prompt, chosen], "rejected": [*prompt, rejected], **extra},
        "implicit": {"chosen": [*prompt, chosen], "rejected": [*prompt, rejected], **extra},
    }


# (template, pair) -> what the refusal message must say. Every other case must be exact.
# Templates that refuse these conversations refuse them as the zoo's SFT scenarios do (a system
# message, a tool message); templates that write no tool call refuse a reply with one, as SFT does
# (it would render as nothing, or the two tool-call replies with the same text as the same tokens).
_NO_CALL = "assistant turn 2: the chat template does not render its tool call 'get_weather'"
EXPECTED_REFUSALS: dict[tuple[str, str], str] = {}
for _template in ("gemma", "gemma_training", "mistral_v0.1"):
    for _pair in ("system", "tool_call_reply", "tool_call_with_text", "reply_after_tool_result"):
        EXPECTED_REFUSALS[(_template, _pair)] = SFT_REFUSALS[(_template, "system")]
for _template in ("gemma3", "gemma3_training"):
    EXPECTED_REFUSALS[(_template, "reply_after_tool_result")] = SFT_REFUSALS[(_template, "tools")]
for _template in ("llama3", "llama3_training", "gemma3", "gemma3_training", "phi3", "phi3_training",
                  "deepseek_r1_distill", "deepseek_r1_distill_training", "qwen1.5_chat", "vllm_chatml"):
    EXPECTED_REFUSALS[(_template, "tool_call_reply")] = _NO_CALL
    EXPECTED_REFUSALS[(_template, "tool_call_with_text")] = _NO_CALL
    # a tool call in the prompt: the scored reply's context would lack it
    EXPECTED_REFUSALS.setdefault((_template, "reply_after_tool_result"), _NO_CALL)


# -- the oracle ----------------------------------------------------------------------------------------
def expected_side(tok, spec: Template, prompt: list[dict], reply: dict, tools) -> tuple[list[int], list[int]] | None:
    """The zoo oracle's ids and labels of ``prompt + [reply]`` with only the reply trained, cut after
    the last trained token (a preference sequence ends where its score ends); None: nothing trained."""
    record = {"messages": [*prompt, reply], **({"tools": tools} if tools else {})}
    exp = oracle(tok, spec, record, {"mask_history": True})
    if exp is None:
        return None
    last = max(i for i, lab in enumerate(exp.labels) if lab != IGNORE_INDEX)
    return exp.input_ids[:last + 1], exp.labels[:last + 1]


def first_trained(labels: list[int]) -> int:
    return next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)


def pair_problems(tok, spec: Template, name: str, columns: dict[str, list]) -> list[str]:
    """How one tokenized pair differs from the oracle and the rules of the module docstring."""
    prompt, chosen, rejected, tools = PAIRS[name]
    problems = []
    for side, reply in (("chosen", chosen), ("rejected", rejected)):
        ids, labels = columns[f"{side}_input_ids"][0], columns[f"{side}_labels"][0]
        want = expected_side(tok, spec, prompt, reply, tools)
        if want is None:
            problems.append(f"{side}: the oracle trains nothing, but the pair was kept")
            continue
        if ids != want[0]:
            problems.append(f"{side} input_ids differ from the template's own render:\n  ours:   "
                            f"{tok.decode(ids)!r}\n  oracle: {tok.decode(want[0])!r}")
        elif labels != want[1]:
            problems.append(f"{side} labels differ:\n  ours trains:   {trained(tok, ids, labels)}\n"
                            f"  oracle trains: {trained(tok, *want)}")
        start = first_trained(labels)
        if labels[start:] != ids[start:]:
            problems.append(f"{side}: the trained tokens are not one run to the end: {trained(tok, ids, labels)}")
        # the run closes with the family's end-of-turn marker; after it only what the template writes
        # at the end of a conversation (Phi-3: "\n<|endoftext|>")
        close = FAMILIES[spec.family].close or tok.eos_token
        run = tok.decode(ids[start:])
        if close not in run or run[run.index(close) + len(close):].replace(tok.eos_token, "").strip():
            problems.append(f"{side}: the trained run does not end with the end-of-turn marker {close!r}: {run!r}")
    c_ids, c_labels = columns["chosen_input_ids"][0], columns["chosen_labels"][0]
    r_ids, r_labels = columns["rejected_input_ids"][0], columns["rejected_labels"][0]
    c_start, r_start = first_trained(c_labels), first_trained(r_labels)
    if c_ids[:c_start] != r_ids[:r_start]:
        problems.append(f"the prompt tokens of chosen and rejected differ:\n  chosen:   {tok.decode(c_ids[:c_start])!r}"
                        f"\n  rejected: {tok.decode(r_ids[:r_start])!r}")
    if set(c_labels[:c_start]) | set(r_labels[:r_start]) != {IGNORE_INDEX}:
        problems.append("a prompt token is trained")
    return problems


def unpaired_problems(tok, name: str, columns: dict[str, list]) -> list[str]:
    """KTO's view of the pair (two unpaired examples, and a ``prompt``/``completion``/``label``
    record of the chosen reply) must be the pair's sides, token for token."""
    prompt, chosen, _rejected, tools = PAIRS[name]
    extra = {"tools": tools} if tools else {}
    unpaired, _ = tokenize_unpaired_records(
        [record_forms(name)["explicit"], {"prompt": prompt, "completion": [chosen], "label": True, **extra}], tok)
    want = [(columns["chosen_input_ids"][0], columns["chosen_labels"][0], True),
            (columns["rejected_input_ids"][0], columns["rejected_labels"][0], False),
            (columns["chosen_input_ids"][0], columns["chosen_labels"][0], True)]
    got = list(zip(unpaired["completion_input_ids"], unpaired["completion_labels"], unpaired["label"]))
    return [] if got == want else [f"the unpaired (KTO) sequences differ from the pair's sides: {len(got)} examples"]


# -- running a case ------------------------------------------------------------------------------------
def run_pair(tok, spec: Template, name: str) -> tuple[str, str]:
    """(exact | refused | WRONG, detail) for one pair on one template."""
    outcomes = {}
    for form, record in record_forms(name).items():
        columns, stats = tokenize_preference_records([record], tok, on_error="skip",
                                                     locate=lambda _records, _i: "zoo.jsonl:1")
        outcomes[form] = (columns, stats)
    refusals = {form: stats.errors[0] for form, (_c, stats) in outcomes.items() if stats.errors}
    if refusals:
        if len(refusals) != len(outcomes) or len(set(refusals.values())) != 1:
            return "WRONG", f"refused in some record shapes only, or differently: {refusals}"
        return "refused", next(iter(refusals.values()))
    if any(stats.pairs != 1 for _c, stats in outcomes.values()):
        return "WRONG", f"a pair was dropped without a message: { {f: s.to_dict() for f, (_c, s) in outcomes.items()} }"
    columns = outcomes["explicit"][0]
    for form, (other, _stats) in outcomes.items():
        if other != columns:
            return "WRONG", f"the {form} record shape tokenizes differently from the explicit one"
    problems = pair_problems(tok, spec, name, columns) + unpaired_problems(tok, name, columns)
    return ("WRONG", "\n".join(problems)) if problems else ("exact", "")


def check_template(tok, spec: Template) -> tuple[list[str], dict[str, int]]:
    failures, counts = [], {"exact": 0, "refused": 0}
    for name in PAIRS:
        kind, detail = run_pair(tok, spec, name)
        want = EXPECTED_REFUSALS.get((spec.name, name))
        if kind == "exact" and want is None:
            counts["exact"] += 1
        elif kind == "refused" and want is not None and want in detail and detail.startswith("zoo.jsonl:1: "):
            counts["refused"] += 1
        else:
            failures.append(f"{spec.name} / {name}: {kind} (expected {'refusal: ' + want if want else 'exact'}) "
                            f"{detail}")
    return failures, counts


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("spec", TEMPLATES, ids=[t.name for t in TEMPLATES])
def test_preference_zoo(tiny_model_dir, spec, kind):
    tok = zoo_tokenizer(kind, str(tiny_model_dir), spec.name)
    failures, counts = check_template(tok, spec)
    assert not failures, "\n".join(failures)
    assert counts["exact"] + counts["refused"] == len(PAIRS)


def test_preference_rendering_honours_reasoning_and_source_mixing(tiny_model_dir, tmp_path):
    """The preference path renders with the run's options, not only its template: data.reasoning
    (train, mask, drop) applies to the scored replies, and weighted data.train_file entries are mixed
    as in SFT."""
    import json

    from sage_libs.sage_finetune import DataConfig, TrainingConfig, create_trainer

    from .test_render_templates import _tok, _trl

    tok = _tok(tiny_model_dir, template=_trl("qwen3"))
    pair = {"prompt": [{"role": "user", "content": "What is 2+2?"}],
            "chosen": [{"role": "assistant", "content": "It is 4.", "reasoning_content": "Two plus two is four."}],
            "rejected": [{"role": "assistant", "content": "It is 5."}]}
    scored = {}
    for mode in ("train", "mask", "drop"):
        columns, _ = tokenize_preference_records([pair], tok, reasoning=mode)
        scored[mode] = trained(tok, columns["chosen_input_ids"][0], columns["chosen_labels"][0])
        if mode == "drop":
            assert "Two plus" not in tok.decode(columns["chosen_input_ids"][0])
    assert scored["train"] == ["<think>\nTwo plus two is four.\n</think>\n\nIt is 4.<|im_end|>"]
    assert scored["mask"] == ["<think>\n", "\n</think>\n\nIt is 4.<|im_end|>"]
    assert scored["drop"] == ["<think>\n\n</think>\n\nIt is 4.<|im_end|>"]
    columns, _ = tokenize_unpaired_records([{**pair, "completion": pair["chosen"], "label": True}], tok,
                                           reasoning="drop")
    assert "Two plus" not in tok.decode(columns["completion_input_ids"][0])

    path = tmp_path / "pairs.jsonl"
    plain = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."}
    path.write_text("".join(json.dumps({**plain, "chosen": f"Hi {i}!"}) + "\n" for i in range(4)))
    trainer = create_trainer("dpo", training_config=TrainingConfig(model_name_or_path=str(tiny_model_dir),
                                                                   output_dir=str(tmp_path / "out")),
                             data_config=DataConfig(train_file=[{"path": str(path), "samples": 7}]))
    trainer.setup_tokenizer()
    dataset = trainer.prepare_dataset(trainer.data_config.train_file, "train")
    assert len(dataset) == 7 and trainer.data_stats["train"]["mixture"][0]["used"] == 7

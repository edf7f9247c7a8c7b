"""Hypothesis strategies for the fuzzer: run configs and their mutations, ``key=value`` overrides,
data records of every format and their mutations, and the bytes of the files that hold them.

Every string the fuzzer makes up goes through :func:`safe`: no absolute path, no ``..``, no ``~``,
no ``$``, no URL, so that a path option can only name something under the case's own temporary
folder (the current directory of the case). Values the fuzzer does not invent (the tiny model, the
shipped example data) are only read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import yaml
from hypothesis import strategies as st

from ..helpers import TINY_LORA
from ..paths import AGENT_DATA, EXAMPLE_DATA, REPO
from ..reliability._helpers import RELIABILITY_RUN

PREF_DATA = REPO / "examples" / "preference"


def safe(text: str) -> str:
    """A made-up string that cannot point outside the case's folder, nor fake an error line."""
    for bad, good in (("..", "_"), ("~", "_"), ("$", "_"), ("://", ":_"), ("\\", "_")):
        text = text.replace(bad, good)
    text = text.lstrip("/")
    return text.replace("rror:", "rror;")


# ---- values ---------------------------------------------------------------------------------

INTERESTING_NUMBERS = [0, 1, -1, 2, 3, 7, 64, 1024, 4096, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 10 ** 30,
                       0.0, 0.5, -0.5, 1.5, 1e-9, 1e-300, 1e308, -1e308, math.inf, -math.inf, math.nan]
INTERESTING_STRINGS = [
    "", " ", "auto", "none", "null", "None", "true", "no", "yes", "0", "1e-4", "0x10", ".inf", ".nan", "nan",
    "all-linear", "q_proj", "v_proj", "lm_head", "cosine", "linear", "adamw_torch", "steps", "epoch", "no",
    "tensorboard", "wandb", "lora", "qlora", "dora", "full", "freeze", "agent", "dpo", "kto", "sigmoid", "ipo",
    "skip", "raise", "text", "messages", "alpaca", "sharegpt", "prompt_completion", "react", "tool_calls",
    "train", "mask", "drop", "control", "refuse", "jsonl", "parquet", "huggingface", "instruction",
    "float32", "bfloat16", "float16", "nf4", "fp4", "sdpa", "eager", "default", "chatml", "CAUSAL_LM",
    "{% for m in messages %}{{ m.content }}{% endfor %}", "{{ messages", "{{ ''.__class__ }}",
    "a.py:f", "fmt.py:to_messages", "data.jsonl", "data.json", "data.parquet", "out", "tools.json", "x.jinja",
    "\x00", "é", "🙂", "\ufeff", "a\nb", "[1", "- x", "{a: 1}", "<|im_end|>", "<think>", "org/name",
]

_alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
short_text = st.text(_alphabet, max_size=12).map(safe)
strings = st.one_of(st.sampled_from(INTERESTING_STRINGS), short_text)
numbers = st.one_of(st.sampled_from(INTERESTING_NUMBERS), st.integers(-10 ** 6, 10 ** 6),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(strings, inner, max_size=3)), max_leaves=5)


# ---- run configs ----------------------------------------------------------------------------

def _sections() -> dict[str, list[str]]:
    from sage_libs.sage_finetune.config import SECTIONS

    return {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}


SECTION_OPTIONS = _sections()


def _plausible_values(section: str, option: str) -> list[Any]:
    """Values of the option's own type (its default, its choices, small and edge numbers): the
    cases that get past the type checks into the checks behind them."""
    from sage_libs.sage_finetune.config import SECTIONS

    f = next((f for f in dataclasses.fields(SECTIONS[section]) if f.name == option), None)
    if f is None:
        return [None]
    tp = str(f.type)
    out: list[Any] = []
    if f.default is not dataclasses.MISSING:
        out.append(f.default)
    out += list(f.metadata.get("choices") or ())
    if "bool" in tp:
        out += [True, False]
    if "int" in tp:
        out += [0, 1, 2, 3, 8, 64, -1, 100000]
    if "float" in tp:
        out += [0.0, 0.1, 0.5, 1e-4, 1.0, 2.0, 1e-12]
    if "None" in tp:
        out.append(None)
    if "list[str]" in tp:
        out += [["q_proj"], ["q_proj", "v_proj"], ["lm_head"], ["embed_tokens"]]
    if "list[int]" in tp:
        out += [[0], [1], [0, 1], [5]]
    if "dict" in tp:
        out += [{}, {"instruction": "question"}, {"path": "data.jsonl"}]
    if tp == "str" and not f.metadata.get("choices"):
        out += ["out", "data.jsonl", "x"]
    return out or [None]


def plausible(section: str, option: str) -> Any:
    return st.sampled_from(_plausible_values(section, option)) if section in SECTION_OPTIONS else values
ALL_OPTIONS = sorted({o for opts in SECTION_OPTIONS.values() for o in opts})
METHODS = ["lora", "qlora", "dora", "lora_plus", "full", "freeze", "agent", "dpo"]

_agent_lora = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
BASES: dict[str, dict[str, Any]] = {
    "lora (alpaca)": TINY_LORA,
    "lora (chat)": RELIABILITY_RUN,
    "lora (two files, eval)": {**TINY_LORA, "data": {
        "train_file": [str(EXAMPLE_DATA / "alpaca_train.jsonl"), str(EXAMPLE_DATA / "chat_train.jsonl")],
        "eval_file": [str(EXAMPLE_DATA / "alpaca_eval.jsonl")], "max_samples": 16}},
    "lora (weighted mixture)": {**TINY_LORA, "data": {"train_file": [
        {"path": str(EXAMPLE_DATA / "alpaca_train.jsonl"), "weight": 2},
        {"path": str(EXAMPLE_DATA / "chat_train.jsonl"), "weight": 1}]}},
    "qlora": {**TINY_LORA, "method": "qlora", "quantization": {"load_in_4bit": True}},
    "dora": {**TINY_LORA, "method": "dora"},
    "lora_plus": {**TINY_LORA, "method": "lora_plus", "lora_plus": {"lora_lr_ratio": 16.0}},
    "full": {k: v for k, v in {**TINY_LORA, "method": "full"}.items() if k != "lora"},
    "freeze": {**{k: v for k, v in TINY_LORA.items() if k != "lora"}, "method": "freeze",
               "freeze": {"trainable_layers": 1}},
    "agent": {**TINY_LORA, "method": "agent", "lora": _agent_lora, "agent": {"method": "lora"},
              "data": {"train_file": str(AGENT_DATA / "agent_train.jsonl"), "max_samples": 8}},
    "dpo": {**TINY_LORA, "method": "dpo", "preference": {"method": "lora", "loss_type": "sigmoid", "beta": 0.1},
            "data": {"train_file": str(PREF_DATA / "pref_train.jsonl"), "max_samples": 8}},
    "kto": {**TINY_LORA, "method": "dpo", "preference": {"method": "lora", "loss_type": "kto"},
            "data": {"train_file": str(PREF_DATA / "kto_train.jsonl"), "max_samples": 8}},
}


def base_config(name: str, model_dir: str, output_dir: str = "out") -> dict[str, Any]:
    cfg = copy.deepcopy(BASES[name])
    cfg["training"] = {"model_name_or_path": model_dir, "output_dir": output_dir, **cfg["training"]}
    cfg.setdefault("data", {})["cache"] = False
    return cfg


def _typo(draw: Any, word: str) -> str:
    if not word:
        return "x"
    i = draw(st.integers(0, len(word) - 1))
    how = draw(st.sampled_from(["drop", "double", "swap", "upper"]))
    if how == "drop":
        return word[:i] + word[i + 1:] or "x"
    if how == "double":
        return word[:i] + word[i] + word[i:]
    if how == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + word[i:].upper()


def _option_name(draw: Any, section: str) -> str:
    known = SECTION_OPTIONS.get(section) or ALL_OPTIONS
    kind = draw(st.sampled_from(["known"] * 7 + ["typo", "other section", "random"]))
    if kind == "known":
        return draw(st.sampled_from(known))
    if kind == "typo":
        return _typo(draw, draw(st.sampled_from(known)))
    if kind == "other section":
        return draw(st.sampled_from(ALL_OPTIONS))
    return draw(short_text) or "k"


@st.composite
def mutated_config(draw: Any, model_dir: str) -> dict[str, Any]:
    """A base run config with 1 to 4 mutations: options set to odd values, keys removed, renamed or
    made up, sections replaced, the method changed."""
    cfg = base_config(draw(st.sampled_from(sorted(BASES))), model_dir)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "set", "set", "delete", "rename", "section", "method", "top"]))
        if op == "set":
            section = draw(st.sampled_from(sorted(SECTION_OPTIONS)))
            if not isinstance(cfg.get(section), dict):
                cfg[section] = {}
            name = _option_name(draw, section)
            cfg[section][name] = draw(st.one_of(plausible(section, name), values))
        elif op == "delete":
            paths = [(k,) for k in cfg] + [(k, o) for k, v in cfg.items() if isinstance(v, dict) for o in v]
            path = draw(st.sampled_from(paths))
            (cfg if len(path) == 1 else cfg[path[0]]).pop(path[-1], None)
        elif op == "rename":
            paths = [(k,) for k in cfg] + [(k, o) for k, v in cfg.items() if isinstance(v, dict) for o in v]
            path = draw(st.sampled_from(paths))
            holder = cfg if len(path) == 1 else cfg[path[0]]
            if path[-1] in holder:
                holder[_typo(draw, str(path[-1]))] = holder.pop(path[-1])
        elif op == "section":
            cfg[draw(st.sampled_from(sorted(SECTION_OPTIONS)))] = draw(values)
        elif op == "method":
            cfg["method"] = draw(st.one_of(st.sampled_from(METHODS), values))
        else:
            cfg[draw(st.one_of(st.sampled_from(["callbacks", "version", "method"]), short_text))] = draw(values)
    return cfg


def _dump(cfg: Any) -> bytes:
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True).encode("utf-8")


@st.composite
def config_bytes(draw: Any, model_dir: str) -> bytes:
    """The YAML text of a mutated config, sometimes damaged as text (bytes, encoding, YAML syntax)."""
    text = _dump(draw(mutated_config(model_dir)))
    if draw(st.integers(0, 3)) == 0:
        text = draw(damaged_bytes(text, yaml_text=True))
    return text


YAML_DAMAGE = [b"!!python/object/apply:os.getcwd []", b"&a [*a]", b"*missing", b"!!binary AAA=", b"? [a]\n: b",
               b"%YAML 1.2\n---", b"---\n---", b"\t", b"key: [1", b"'", b'"', b"{", b"- ", b": :", b"!!set {a}",
               b"!!timestamp 2020-01-01", b"!!timestamp 2020-13-45", b"!!float x", b"!!int 0x", b"!!bool x",
               b"<<: {a: 1}", b"[" * 3000 + b"]" * 3000]


@st.composite
def damaged_bytes(draw: Any, data: bytes, yaml_text: bool = False) -> bytes:
    """``data`` with one to three byte-level injuries: a BOM, invalid UTF-8, NUL, CRLF, a cut, a
    deleted or inserted run, a repeated line (and, for YAML, tags, anchors and broken syntax)."""
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["bom", "invalid", "nul", "crlf", "cut", "delete", "insert", "dup", "utf16", "deep"]
                                   + (["yaml"] * 3 if yaml_text else [])))
        at = draw(st.integers(0, len(data)))
        if how == "bom":
            data = b"\xef\xbb\xbf" + data
        elif how == "invalid":
            data = data[:at] + draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
        elif how == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif how == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif how == "cut":
            data = data[:at]
        elif how == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif how == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
        elif how == "dup":
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            data = b"\n".join(lines[:i + 1] + lines[i:])
        elif how == "deep":  # past the ~1000 levels Python's json and yaml parsers recurse to
            data = data + b"\n" + b'{"text": ' + b"[" * 3000 + b"]" * 3000 + b"}\n"
        elif how == "utf16":
            data = data.decode("utf-8", "replace").encode("utf-16")
        else:
            data = data[:at] + draw(st.sampled_from(YAML_DAMAGE)) + data[at:]
    return data


# ---- overrides ------------------------------------------------------------------------------

def _yaml_text(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text


@st.composite
def override(draw: Any) -> str:
    """One ``key=value`` argument: a known or misspelt option, a bare option name, method or
    callbacks, or a malformed one; the value as YAML text, raw text or broken YAML."""
    kind = draw(st.sampled_from(["section"] * 6 + ["bare", "method", "junk"]))
    value = values
    if kind == "section":
        section = draw(st.sampled_from(sorted(SECTION_OPTIONS))) if draw(st.integers(0, 5)) else \
            _typo(draw, draw(st.sampled_from(sorted(SECTION_OPTIONS))))
        name = _option_name(draw, section)
        key, value = f"{section}.{name}", st.one_of(plausible(section, name), values)
    elif kind == "bare":
        key = draw(st.sampled_from(ALL_OPTIONS)) if draw(st.integers(0, 4)) else draw(short_text)
    elif kind == "method":
        key = draw(st.sampled_from(["method", "callbacks", "version"]))
    else:
        key = draw(st.sampled_from(["", ".", "training.", ".seed", "training..seed", "a.b.c", "training.seed.x",
                                    " training.seed", "training.seed ", "TRAINING.seed", "lora.r=1"]))
    how = draw(st.sampled_from(["yaml", "yaml", "yaml", "raw", "broken"]))
    if how == "yaml":
        try:
            text = _yaml_text(draw(value))
        except yaml.YAMLError:
            text = "x"
    elif how == "raw":
        text = draw(strings)
    else:
        text = draw(st.sampled_from(["[1", "{a", "'", '"x', "!!python/object/apply:os.getcwd []", "*a", "&a", "@x",
                                     "`x`", "%x", "- a\n- b", "a: b: c", "? x", "|", ">", "!!binary x"]))
    return safe(f"{key}={text}") if draw(st.integers(0, 19)) else safe(draw(st.sampled_from([key, text, "x"])))


overrides = st.lists(override(), min_size=1, max_size=3)


# ---- data records ---------------------------------------------------------------------------

CONTROL = ["<|im_start|>", "<|im_end|>", "</s>", "<s>", "<think>", "</think>", "<|endoftext|>", "{{", "{%"]
_any_char = st.characters(codec="utf-8")  # lone surrogates too: json.dumps escapes them (\ud800)
content = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30),
    st.text(_alphabet, max_size=20),
    st.text(st.characters(), max_size=10),  # surrogates, control characters
    st.sampled_from(CONTROL + ["", " ", "\n", "\x00", "\ufeff", "\u200b", "é", "🙂" * 3]),
    st.builds(lambda s, n: s * n, st.sampled_from(["ab ", "x", "🙂", "中文"]), st.integers(100, 3000)),  # size
).map(lambda s: s.replace("rror:", "rror;"))

ROLES = ["user", "assistant", "system", "tool"]
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": content})
alternating = st.lists(st.tuples(content, content), min_size=1, max_size=3).map(
    lambda turns: [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})])
TOOLS = json.loads((AGENT_DATA / "tools.json").read_text())
tool_call = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({
    "name": st.sampled_from(["calculator", "lookup", "nope"]), "arguments": st.one_of(
        st.just({"expression": "1 + 1"}), st.dictionaries(short_text, values, max_size=2), content)})})


def _with_tool_calls(msgs: list) -> list:
    return msgs + [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "2 * 3"}}}]}, {"role": "tool", "content": "6"},
        {"role": "assistant", "content": "6", "reasoning_content": "2 times 3"}]


trajectory_step = st.one_of(
    st.fixed_dictionaries({"thought": content, "action": st.sampled_from(["calculator", "lookup", "finish", "zzz"]),
                           "input": st.one_of(st.just({"expression": "1 + 2"}), st.dictionaries(short_text, values,
                                                                                              max_size=2))}),
    st.fixed_dictionaries({"observation": content}))

RECORDS = {
    "alpaca": st.fixed_dictionaries({"instruction": content, "output": content},
                                    optional={"input": content, "system": content,
                                              "history": st.lists(st.tuples(content, content), max_size=2)}),
    "messages": st.fixed_dictionaries({"messages": st.one_of(alternating, alternating.map(_with_tool_calls),
                                                             st.lists(message, max_size=4))},
                                      optional={"tools": st.just(TOOLS)}),
    "sharegpt": st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries({
        "from": st.sampled_from(["human", "gpt", "system", "observation", "function", "bot"]), "value": content}),
        max_size=4)}),
    "prompt_completion": st.fixed_dictionaries({"prompt": content, "completion": content}),
    "text": st.fixed_dictionaries({"text": content}),
    "trajectory": st.fixed_dictionaries({"task": content, "trajectory": st.lists(trajectory_step, max_size=4)},
                                        optional={"tools": st.just(TOOLS)}),
    "preference": st.fixed_dictionaries({"prompt": st.one_of(content, alternating.map(lambda m: m[:1])),
                                         "chosen": st.one_of(content, st.lists(message, min_size=1, max_size=2)),
                                         "rejected": st.one_of(content, st.lists(message, min_size=1, max_size=2))},
                                        optional={"tools": st.just(TOOLS)}),
    "unpaired": st.fixed_dictionaries({"prompt": st.one_of(content, alternating.map(lambda m: m[:1])),
                                       "completion": st.one_of(content, st.lists(message, min_size=1, max_size=2)),
                                       "label": st.one_of(st.booleans(), values)}),
}
SFT_FORMATS = ["alpaca", "messages", "sharegpt", "prompt_completion", "text", "trajectory"]


@st.composite
def mutated_record(draw: Any, fmt: str) -> Any:
    """A record of format ``fmt``, sometimes with a key removed or added, a value of another type,
    a nested value changed, or not an object at all."""
    rec = copy.deepcopy(draw(RECORDS[fmt]))  # st.just() gives the same object every time: never mutate it
    how = draw(st.sampled_from(["none"] * 6 + ["delete", "extra", "retype", "nested", "not object"]))
    if how == "delete" and rec:
        rec.pop(draw(st.sampled_from(sorted(rec))))
    elif how == "extra":
        rec[draw(st.one_of(st.sampled_from(["messages", "text", "prompt", "output", "tools", "label", "id"]),
                           short_text))] = draw(values)
    elif how == "retype" and rec:
        rec[draw(st.sampled_from(sorted(rec)))] = draw(values)
    elif how == "nested":
        lists = [v for v in rec.values() if isinstance(v, list) and v]
        if lists:
            target = draw(st.sampled_from(lists))
            i = draw(st.integers(0, len(target) - 1))
            if isinstance(target[i], dict) and target[i] and draw(st.booleans()):
                target[i][draw(st.sampled_from(sorted(target[i])))] = draw(values)
            else:
                target[i] = draw(values)
    elif how == "not object":
        rec = draw(values)
    return rec


@dataclasses.dataclass
class DataFile:
    name: str
    data: bytes
    units: int | None    # records the file holds (None: not known, the bytes were damaged)
    formats: tuple[str, ...]


def _parquet(records: list) -> bytes | None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    if not all(isinstance(r, dict) and r for r in records):
        return None
    try:
        table = pa.Table.from_pylist(records)
        buf = io.BytesIO()
        pq.write_table(table, buf)
    except Exception:  # noqa: BLE001 - records pyarrow cannot hold in one table: written as JSONL instead
        return None
    return buf.getvalue()


@st.composite
def data_file(draw: Any, kinds: list[str]) -> DataFile:
    """A data file of 1 to 6 records of one format (sometimes two), as .jsonl, .json or .parquet,
    sometimes damaged at the byte level."""
    fmt = draw(st.sampled_from(kinds))
    formats = (fmt,) if draw(st.integers(0, 4)) else (fmt, draw(st.sampled_from(kinds)))
    records = [draw(mutated_record(draw(st.sampled_from(formats))))
               for _ in range(draw(st.integers(1, 6)))]
    container = draw(st.sampled_from(["jsonl", "jsonl", "jsonl", "json", "json object", "parquet"]))
    dumps = (lambda r: json.dumps(r, ensure_ascii=draw(st.booleans()), allow_nan=True))
    if container == "parquet":
        data = _parquet(records)
        if data is None:
            container = "jsonl"
    if container == "jsonl":
        data, units = ("\n".join(map(dumps, records)) + "\n").encode("utf-8", "surrogatepass"), len(records)
        name = "data.jsonl"
    elif container == "json":
        data, units, name = dumps(records).encode("utf-8", "surrogatepass"), len(records), "data.json"
    elif container == "json object":
        one = records[0]  # a mutated record may be an array itself: then the file holds its items
        data, units, name = dumps(one).encode("utf-8", "surrogatepass"), len(one) if isinstance(one, list) else 1, \
            "data.json"
    else:
        units, name = len(records), "data.parquet"
    if draw(st.integers(0, 3)) == 0:
        data, units = draw(damaged_bytes(data)), None
    return DataFile(name, data, units, formats)


@st.composite
def data_options(draw: Any) -> dict[str, Any]:
    """The data: options that change how records are read and rendered."""
    opts: dict[str, Any] = {"on_error": draw(st.sampled_from(["skip", "skip", "skip", "raise"]))}
    if draw(st.booleans()):
        opts["format"] = draw(st.sampled_from(["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text"]))
    if draw(st.integers(0, 3)) == 0:  # both true is a contradiction, found out by the config check
        opts[draw(st.sampled_from(["train_on_prompt", "mask_history"]))] = True
    for name, choices in (
                          ("reasoning", ["train", "mask", "drop"]),
                          ("control_tokens_in_content", ["text", "control", "refuse"]),
                          ("agent_format", ["auto", "react", "tool_calls"]), ("packing", [True, False]),
                          ("system_prompt", [None, "Be brief.", "", "<|im_end|>"])):
        if draw(st.integers(0, 3)) == 0:
            opts[name] = draw(st.sampled_from(choices))
    if draw(st.integers(0, 5)) == 0:
        opts["columns"] = draw(st.dictionaries(st.sampled_from(["instruction", "output", "messages", "text", "prompt"]),
                                               st.sampled_from(["question", "answer", "text", "output", "conversations"]),
                                               max_size=2))
    return opts

"""Generate a small, deterministic, synthetic preference dataset (DPO pairs, and a KTO variant).

Meant for preference training of a TINY model without SFT first: every pair has a reply that is
right and one that is wrong in a way the prompt shows, and both replies have the same form, so the
difference of their log-probabilities measures what the model prefers, not which reply is shorter.

Three families (200 train / 40 eval pairs for arith and tool, 96 / 40 for fact):

1. ``arith``  right vs wrong arithmetic     "What is 17 + 25?"  "17 + 25 = 42."  vs  "17 + 25 = 43."
   (wrong: off by a little, an operand copied, or another operation's result)
2. ``tool``   correct vs wrong tool call    lookup(entity="Japan", attribute="capital") for "What is the
   capital of Japan?", calculator(expression="17 * 6") for "Compute 17 * 6 with the calculator."
   vs the other tool, another country or attribute, or another operator (the tool schemas come
   with the prompt)
3. ``fact``   right vs wrong fact           "The capital of France is Paris."  vs  "... is Rome."
   (train: all 48 facts, 16 countries x capital/currency/continent, in two phrasings; eval: 40 of
   them in a third phrasing)

Files written (UTF-8 JSONL, one object per line; ``family`` names the family, other fields are
TRL's preference formats):

* ``pref_train.jsonl`` (496) / ``pref_eval.jsonl`` (120): ``{"prompt", "chosen", "rejected"}``
  (``tool``: conversational, with ``tools``; the others: strings). No eval prompt is in train.
* ``kto_train.jsonl`` (496): the unpaired variant of the train pairs for KTO,
  ``{"prompt", "completion", "label"}``: each prompt once, with its chosen reply (label true) or
  its rejected one (false), alternately, so the data are balanced but never paired.

Output is fully determined by ``random.Random(2025)``. Regenerate (byte-identical on every run;
``--out`` defaults to this script's folder)::

    python3 examples/preference/make_preference_data.py [--out DIR]
"""

import argparse
import json
import os
import random

SEED = 2025
N_TRAIN, N_EVAL = 200, 40  # per family


def _fn(name, description, **args):
    """An OpenAI function schema whose string arguments (name -> description) are all required."""
    props = {arg: {"type": "string", "description": text} for arg, text in args.items()}
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(args)}}}


TOOLS = [
    _fn("calculator", "Evaluate an integer arithmetic expression.", expression="For example '17 * 6'."),
    _fn("lookup", "Look up a fact about a country.", entity="A country name.",
        attribute="capital, currency or continent."),
]
ATTRIBUTES = ["capital", "currency", "continent"]
# country -> (capital, currency, continent)
COUNTRIES = {
    "Japan": ("Tokyo", "yen", "Asia"), "France": ("Paris", "euro", "Europe"),
    "Germany": ("Berlin", "euro", "Europe"), "Italy": ("Rome", "euro", "Europe"),
    "Spain": ("Madrid", "euro", "Europe"), "Poland": ("Warsaw", "zloty", "Europe"),
    "Canada": ("Ottawa", "Canadian dollar", "North America"), "Mexico": ("Mexico City", "peso", "North America"),
    "Brazil": ("Brasilia", "real", "South America"), "Peru": ("Lima", "sol", "South America"),
    "Egypt": ("Cairo", "Egyptian pound", "Africa"), "Kenya": ("Nairobi", "shilling", "Africa"),
    "India": ("New Delhi", "rupee", "Asia"), "China": ("Beijing", "yuan", "Asia"),
    "Thailand": ("Bangkok", "baht", "Asia"), "Australia": ("Canberra", "Australian dollar", "Oceania"),
}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _operands(rng, op):
    if op == "*":
        return rng.randint(2, 19), rng.randint(2, 9)
    a, b = rng.randint(10, 99), rng.randint(2, 49)
    return (a, b) if op == "+" or a >= b else (b, a)


def _wrong_number(rng, a, op, b):
    """A wrong result of ``a op b``: off by a little, an operand, or another operation's result."""
    right = OPS[op](a, b)
    while True:
        kind = rng.choice(["off", "off", "operand", "other_op"])
        if kind == "off":
            wrong = right + rng.choice([-10, -2, -1, 1, 2, 10])
        elif kind == "operand":
            wrong = rng.choice([a, b])
        else:
            wrong = OPS[rng.choice([o for o in OPS if o != op])](a, b)
        if wrong != right and wrong >= 0:
            return wrong


def gen_arith(rng):
    op = rng.choice("+-*")
    a, b = _operands(rng, op)
    prompt = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."]).format(
        a=a, op=op, b=b)
    return {"prompt": prompt, "chosen": f"{a} {op} {b} = {OPS[op](a, b)}.",
            "rejected": f"{a} {op} {b} = {_wrong_number(rng, a, op, b)}."}


def _call(name, **arguments):
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def gen_tool(rng):
    if rng.random() < 0.5:  # a fact about a country: lookup
        country, attribute = rng.choice(sorted(COUNTRIES)), rng.choice(ATTRIBUTES)
        question = rng.choice(["What is the {a} of {c}?", "Look up the {a} of {c}.", "Which {a} does {c} have?"])
        question = question.format(a=attribute, c=country)
        chosen = _call("lookup", entity=country, attribute=attribute)
        kind = rng.choice(["tool", "entity", "attribute"])
        if kind == "tool":
            rejected = _call("calculator", expression=f"{attribute} of {country}")
        elif kind == "entity":
            rejected = _call("lookup", entity=rng.choice([c for c in sorted(COUNTRIES) if c != country]),
                             attribute=attribute)
        else:
            rejected = _call("lookup", entity=country, attribute=rng.choice([x for x in ATTRIBUTES if x != attribute]))
    else:  # arithmetic: calculator
        op = rng.choice("+-*")
        a, b = _operands(rng, op)
        question = rng.choice(["Compute {a} {op} {b} with the calculator.", "Use a tool to find {a} {op} {b}."])
        question = question.format(a=a, op=op, b=b)
        chosen = _call("calculator", expression=f"{a} {op} {b}")
        if rng.random() < 0.5:
            rejected = _call("lookup", entity=f"{a} {op} {b}", attribute="capital")
        else:
            rejected = _call("calculator", expression=f"{a} {rng.choice([o for o in OPS if o != op])} {b}")
    return {"prompt": [{"role": "user", "content": question}], "chosen": [chosen], "rejected": [rejected],
            "tools": TOOLS}


FACT_PHRASINGS = ["What is the {a} of {c}?", "Tell me the {a} of {c}.", "Name the {a} of {c}."]


def fact_pair(rng, country, attribute, phrasing):
    value = COUNTRIES[country][ATTRIBUTES.index(attribute)]
    wrong = rng.choice(sorted({v[ATTRIBUTES.index(attribute)] for v in COUNTRIES.values()} - {value}))
    return {"prompt": phrasing.format(a=attribute, c=country), "chosen": f"The {attribute} of {country} is {value}.",
            "rejected": f"The {attribute} of {country} is {wrong}."}


def fact_splits(rng):
    """Every (country, attribute) fact in train, in the first two phrasings; eval: N_EVAL facts in
    the third phrasing (a fact the model saw preferred, asked in words it did not see)."""
    facts = [(c, a) for c in sorted(COUNTRIES) for a in ATTRIBUTES]
    train = [fact_pair(rng, c, a, p) for c, a in facts for p in FACT_PHRASINGS[:2]]
    evals = [fact_pair(rng, c, a, FACT_PHRASINGS[2]) for c, a in rng.sample(facts, N_EVAL)]
    return train, evals


FAMILIES = {"arith": gen_arith, "tool": gen_tool}  # drawn at random; "fact" is enumerated


def _key(record):
    return json.dumps(record["prompt"], sort_keys=True)


def build_splits(rng):
    """Unique prompts per drawn family, the first ones drawn go to eval; then the facts."""
    train, evals = [], []
    for family, gen in FAMILIES.items():
        seen = {}
        while len(seen) < N_TRAIN + N_EVAL:
            record = gen(rng)
            assert record["chosen"] != record["rejected"], record
            seen.setdefault(_key(record), {"family": family, **record})
        items = list(seen.values())
        evals += items[:N_EVAL]
        train += items[N_EVAL:]
    fact_train, fact_eval = fact_splits(rng)
    train += [{"family": "fact", **r} for r in fact_train]
    evals += [{"family": "fact", **r} for r in fact_eval]
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals


def unpaired(pairs):
    """Each pair's prompt once, with its chosen (even index: label true) or rejected reply."""
    out = []
    for i, pair in enumerate(pairs):
        desirable = i % 2 == 0
        record = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
        record.update(completion=pair["chosen" if desirable else "rejected"], label=desirable)
        out.append(record)
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                        help="output directory (default: this script's folder)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, evals = build_splits(random.Random(SEED))
    write_jsonl(os.path.join(args.out, "pref_train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "pref_eval.jsonl"), evals)
    write_jsonl(os.path.join(args.out, "kto_train.jsonl"), unpaired(train))
    print(f"wrote {len(train)} train pairs, {len(evals)} eval pairs and {len(train)} unpaired (KTO) records to "
          f"{args.out}")


if __name__ == "__main__":
    main()

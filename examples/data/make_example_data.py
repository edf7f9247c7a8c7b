"""Generate small, deterministic example datasets for a demo fine-tune.

The data is meant for a TINY language model (hidden size 64), so every record
is a short, templated task with exactly one correct answer: small-number
arithmetic, country capitals, reversing a word list, uppercasing a word,
counting letters, antonyms, the next day of the week, sorting numbers,
km-to-m conversion and picking the larger of two numbers.  Each task has
several phrasings and answers follow one consistent style per task.

Files written (UTF-8 JSONL, one JSON object per line):

* ``alpaca_train.jsonl`` (260) / ``alpaca_eval.jsonl`` (40):
  ``{"instruction", "input", "output"}``; about a third use a non-empty
  ``input``, about 10% also carry a ``"system"`` field.
* ``chat_train.jsonl`` (260) / ``chat_eval.jsonl`` (40):
  ``{"messages": [...]}`` with 1-3 user/assistant pairs (ending with the
  assistant); about 30% start with a system message.  Later turns may refer
  to earlier ones ("And double it?").

Every record is unique within its file, no eval record equals a train record,
and output is fully determined by ``random.Random(1234)``.  Regenerate
(byte-identical on every run; ``--out`` defaults to this script's folder)::

    python3 examples/data/make_example_data.py [--out DIR]
"""

import argparse
import json
import os
import random
from functools import partial

SEED = 1234
N_TRAIN, N_EVAL = 260, 40
MAX_WORDS = 60

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"),
    ("Australia", "Canberra"), ("Russia", "Moscow"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Ireland", "Dublin"),
    ("Turkey", "Ankara"), ("Thailand", "Bangkok"),
]
ANTONYM_PAIRS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("happy", "sad"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
    ("young", "old"), ("tall", "short"), ("wet", "dry"), ("rich", "poor"), ("strong", "weak"),
    ("loud", "quiet"), ("near", "far"), ("left", "right"),
]
ANTONYMS = dict(ANTONYM_PAIRS + [(b, a) for a, b in ANTONYM_PAIRS])
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
WORDS = ("apple garden river yellow pencil window tiger planet music orange silver cloud bridge "
         "forest candle rabbit lemon castle winter dragon").split()
LIST_WORDS = "cat dog fish bird tree sun moon star car book cup hat red blue green".split()
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer in one sentence.",
           "You are a friendly tutor who gives short, exact answers.",
           "Answer briefly and accurately."]


def join(nums):  # [3, 1] -> "3, 1"
    return ", ".join(str(n) for n in nums)


def task(r, asks, instrs, inp, out, follow):
    """Bundle one task: inline question, split (instruction, input) form, answer."""
    return {"ask": r.choice(asks), "instr": r.choice(instrs), "inp": inp, "out": out,
            "follow": follow}


def arith_follow(r, s):
    if r.random() < 0.5:
        return r.choice(["And double it?", "What is twice that?"]), f"{s} * 2 = {s * 2}."
    c = r.randint(1, 9)
    return r.choice([f"And add {c} to that?", f"Now add {c}."]), f"{s} + {c} = {s + c}."


def t_arith(r, op):
    a, b = r.randint(0, 19), r.randint(0, 19)
    if op == "-":
        a, b = max(a, b), min(a, b)  # keep results non-negative
    value, word, verb, instrs = {
        "+": (a + b, "plus", f"Add {a} and {b}.",
              ["Add the two numbers.", "Compute the sum of the numbers."]),
        "-": (a - b, "minus", f"Subtract {b} from {a}.",
              ["Subtract the second number from the first.", "Compute the difference."]),
        "*": (a * b, "times", f"Multiply {a} by {b}.",
              ["Multiply the two numbers.", "Compute the product of the numbers."]),
    }[op]
    return task(r, [f"What is {a} {word} {b}?", verb, f"Compute {a} {op} {b}."], instrs,
                f"{a} and {b}", f"{a} {op} {b} = {value}.", arith_follow(r, value))


def t_capital(r):
    (c, cap), (c2, cap2) = r.sample(CAPITALS, 2)
    return task(r, [f"What is the capital of {c}?", f"Name the capital city of {c}.",
                    f"Which city is the capital of {c}?"],
                ["Name the capital of the given country.", "What is the capital of this country?"],
                c, f"The capital of {c} is {cap}.",
                (f"And what about {c2}?", f"The capital of {c2} is {cap2}."))


def t_reverse(r):
    ws = r.sample(LIST_WORDS, r.randint(3, 4))
    s = ", ".join(ws)
    return task(r, [f"Reverse the order of these words: {s}.", f"Write this list backwards: {s}."],
                ["Reverse the order of the words in the list.", "Write the list in reverse order."],
                s, f"Reversed: {', '.join(reversed(ws))}.",
                ("How many words is that?", f"That is {len(ws)} words."))


def t_upper(r):
    w = r.choice(WORDS)
    return task(r, [f"Write {w} in uppercase.", f"Convert the word {w} to capital letters.",
                    f"What is {w} in all caps?"],
                ["Convert the word to uppercase.", "Write the word in capital letters."],
                w, f"In uppercase: {w.upper()}.",
                ("And how many letters does it have?", f"The word {w} has {len(w)} letters."))


def t_count(r):
    w = r.choice(WORDS)
    return task(r, [f"How many letters are in the word {w}?", f"Count the letters in {w}.",
                    f"How long is the word {w}?"],
                ["Count the letters in the word.", "How many letters does this word have?"],
                w, f"The word {w} has {len(w)} letters.",
                ("And in uppercase?", f"In uppercase: {w.upper()}."))


def t_antonym(r):
    w, w2 = r.sample(sorted(ANTONYMS), 2)
    return task(r, [f"What is the opposite of {w}?", f"Give an antonym of {w}.",
                    f"Name the opposite of the word {w}."],
                ["Give the opposite of the word.", "Write an antonym of the given word."],
                w, f"The opposite of {w} is {ANTONYMS[w]}.",
                (f"And the opposite of {w2}?", f"The opposite of {w2} is {ANTONYMS[w2]}."))


def t_next_day(r):
    i = r.randrange(7)
    d, d1, d2 = DAYS[i], DAYS[(i + 1) % 7], DAYS[(i + 2) % 7]
    return task(r, [f"What day comes after {d}?", f"Which day follows {d}?",
                    f"If today is {d}, what day is tomorrow?"],
                ["Name the day after the given day.", "What is the next day of the week?"],
                d, f"The day after {d} is {d1}.",
                ("And the day after that?", f"The day after {d1} is {d2}."))


def t_sort(r):
    ns = r.sample(range(20), r.randint(3, 5))
    return task(r, [f"Sort these numbers in ascending order: {join(ns)}.",
                    f"Put {join(ns)} in order from smallest to largest."],
                ["Sort the numbers in ascending order.", "Order the numbers from small to large."],
                join(ns), f"Sorted: {join(sorted(ns))}.",
                ("Now from largest to smallest?", f"Sorted descending: {join(sorted(ns)[::-1])}."))


def t_km(r):
    k = r.randint(1, 19)
    return task(r, [f"How many meters are in {k} km?", f"Convert {k} km to meters.",
                    f"What is {k} kilometers in meters?"],
                ["Convert the distance from km to meters.", "Express this distance in meters."],
                f"{k} km", f"{k} km is {k * 1000} m.",
                ("And in centimeters?", f"{k} km is {k * 100000} cm."))


def t_larger(r):
    a, b = r.sample(range(20), 2)
    hi, lo = max(a, b), min(a, b)
    return task(r, [f"Which is larger, {a} or {b}?", f"Which number is bigger: {a} or {b}?",
                    f"Is {a} or {b} the larger number?"],
                ["Say which of the two numbers is larger.", "Pick the larger number."],
                f"{a} and {b}", f"{hi} is larger than {lo}.",
                ("And which is smaller?", f"{lo} is smaller than {hi}."))


TASKS = [partial(t_arith, op="+"), partial(t_arith, op="-"), partial(t_arith, op="*"), t_capital,
         t_reverse, t_upper, t_count, t_antonym, t_next_day, t_sort, t_km, t_larger]


def make_alpaca(r):
    t = r.choice(TASKS)(r)
    if r.random() < 1 / 3:
        rec = {"instruction": t["instr"], "input": t["inp"], "output": t["out"]}
    else:
        rec = {"instruction": t["ask"], "input": "", "output": t["out"]}
    if r.random() < 0.1:
        rec["system"] = r.choice(SYSTEMS)
    return rec


def make_chat(r):
    msgs = [{"role": "system", "content": r.choice(SYSTEMS)}] if r.random() < 0.3 else []
    t = None
    for _ in range(r.choice([1, 1, 2, 2, 3])):
        if t is not None and r.random() < 0.6:
            q, a = t["follow"]
            t = None  # a follow-up is used once; the next turn starts a new task
        else:
            t = r.choice(TASKS)(r)
            q, a = t["ask"], t["out"]
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


def n_words(rec):
    parts = [m["content"] for m in rec["messages"]] if "messages" in rec else rec.values()
    return sum(len(p.split()) for p in parts)


def generate(r, maker, n, seen):
    """Draw n records, resampling duplicates of anything in `seen` and overlong ones."""
    out = []
    while len(out) < n:
        rec = maker(r)
        key = json.dumps(rec, sort_keys=True)
        if key in seen or n_words(rec) >= MAX_WORDS:
            continue
        seen.add(key)
        out.append(rec)
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output directory (default: this script's folder)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    r = random.Random(SEED)
    for name, maker in (("alpaca", make_alpaca), ("chat", make_chat)):
        seen = set()  # shared by train and eval, so eval never repeats a train record
        train = generate(r, maker, N_TRAIN, seen)
        evals = generate(r, maker, N_EVAL, seen)
        for split, recs in (("train", train), ("eval", evals)):
            path = os.path.join(args.out, f"{name}_{split}.jsonl")
            write_jsonl(path, recs)
            print(f"wrote {len(recs):3d} records to {path}")


if __name__ == "__main__":
    main()

"""Generate a small, deterministic, synthetic tool-use agent dataset.

The data is meant for fine-tuning a TINY language model (hidden size ~128,
4 layers, BPE vocab ~1024) to choose the next action of a ReAct-style agent.
Every task is short and templated, every tool argument can be copied exactly
from the task text (or from the previous observation), and every "thought" is
a fixed template per step type, so next-action exact match is measurable.

Five task families, mixed evenly (240 train / 30 eval records each):

1. ``calc1``        one calculator call          "What is 17 * 6?"
2. ``calc2``        two calculator calls         "Add 5 to the product of 3 and 9."
3. ``lookup``       one lookup call              "What is the capital of Japan?"
4. ``lookup_calc``  lookup, then calculator      "Add 4 to the population of Peru in millions."
5. ``search``       one search call              "Find out: Who wrote Hamlet?"

Files written (UTF-8; JSONL = one JSON object per line):

* ``tools.json``: the tool schemas (OpenAI function format) for
  ``calculator``, ``lookup``, ``search`` and ``finish``.
* ``agent_train.jsonl`` (1200) / ``agent_eval.jsonl`` (150):
  ``{"task", "tools", "trajectory"}`` where ``trajectory`` alternates action
  steps ``{"thought", "action", "input"}`` and ``{"observation"}`` steps and
  ends with a ``finish`` action (no observation after it).
* ``agent_eval_malformed.jsonl`` (6): broken records for validation tests,
  each with a ``"_defect"`` field naming its single defect.

Task strings are unique within and across files (no eval task appears in
train).  Output is fully determined by ``random.Random(2024)``.  Regenerate
(byte-identical on every run; ``--out`` defaults to this script's folder)::

    python3 examples/agent/make_agent_data.py [--out DIR]
"""

import argparse
import copy
import json
import os
import random

SEED = 2024
N_TRAIN_PER_FAMILY, N_EVAL_PER_FAMILY = 240, 30


def _fn(name, description, **args):
    """An OpenAI function schema whose string arguments (name -> description) are all required."""
    props = {arg: {"type": "string", "description": text} for arg, text in args.items()}
    params = {"type": "object", "properties": props, "required": list(args)}
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": params}}


ATTRIBUTES = ["capital", "population", "currency", "continent"]
TOOLS = [
    _fn("calculator", "Evaluate an integer arithmetic expression using +, - and *.",
        expression="An expression such as '17 * 6'."),
    _fn("lookup", "Look up a fact about a country from a fixed table.",
        entity="A country name, e.g. 'Japan'.",
        attribute="One of: capital, population (in millions), currency, continent."),
    _fn("search", "Search a small knowledge base and return a short text snippet.",
        query="The question to search for."),
    _fn("finish", "Finish the task and return the final answer.", answer="The final answer."),
]

# country -> (capital, population in millions, currency, continent)
COUNTRIES = {
    "Japan": ("Tokyo", 125, "yen", "Asia"),
    "France": ("Paris", 68, "euro", "Europe"),
    "Germany": ("Berlin", 84, "euro", "Europe"),
    "Italy": ("Rome", 59, "euro", "Europe"),
    "Spain": ("Madrid", 48, "euro", "Europe"),
    "Greece": ("Athens", 10, "euro", "Europe"),
    "Poland": ("Warsaw", 37, "zloty", "Europe"),
    "United Kingdom": ("London", 67, "pound sterling", "Europe"),
    "Canada": ("Ottawa", 38, "Canadian dollar", "North America"),
    "Mexico": ("Mexico City", 129, "Mexican peso", "North America"),
    "Brazil": ("Brasilia", 203, "real", "South America"),
    "Argentina": ("Buenos Aires", 46, "Argentine peso", "South America"),
    "Peru": ("Lima", 34, "sol", "South America"),
    "Egypt": ("Cairo", 105, "Egyptian pound", "Africa"),
    "Kenya": ("Nairobi", 55, "Kenyan shilling", "Africa"),
    "Nigeria": ("Abuja", 224, "naira", "Africa"),
    "India": ("New Delhi", 1430, "rupee", "Asia"),
    "China": ("Beijing", 1410, "yuan", "Asia"),
    "South Korea": ("Seoul", 52, "won", "Asia"),
    "Thailand": ("Bangkok", 72, "baht", "Asia"),
    "Australia": ("Canberra", 26, "Australian dollar", "Oceania"),
}

# question | alternative phrasing | snippet returned by search | answer extracted from it
SEARCH_TABLE = """
Who wrote Hamlet? | Who is the author of Hamlet? | Hamlet was written by William Shakespeare. | William Shakespeare
Who painted the Mona Lisa? | Who is the painter of the Mona Lisa? | The Mona Lisa was painted by Leonardo da Vinci. | Leonardo da Vinci
What is the largest planet? | Which planet is the largest? | Jupiter is the largest planet in the solar system. | Jupiter
Who discovered penicillin? | Who found penicillin? | Penicillin was discovered by Alexander Fleming in 1928. | Alexander Fleming
What is the chemical symbol for gold? | Which chemical symbol does gold have? | The chemical symbol for gold is Au. | Au
How many continents are there? | What is the number of continents? | There are 7 continents on Earth. | 7
Who developed the theory of relativity? | Who created the theory of relativity? | The theory of relativity was developed by Albert Einstein. | Albert Einstein
What is the tallest mountain? | Which mountain is the tallest? | Mount Everest is the tallest mountain above sea level. | Mount Everest
What is the longest river? | Which river is the longest? | The longest river in the world is the Nile. | the Nile
Who wrote Pride and Prejudice? | Who is the author of Pride and Prejudice? | Pride and Prejudice was written by Jane Austen. | Jane Austen
What gas do plants absorb? | Which gas do plants take in? | Plants absorb carbon dioxide from the air. | carbon dioxide
What is the smallest prime number? | Which prime number is the smallest? | The smallest prime number is 2. | 2
Who invented the telephone? | Who is the inventor of the telephone? | The telephone was invented by Alexander Graham Bell. | Alexander Graham Bell
What is the hardest natural substance? | Which natural substance is the hardest? | The hardest natural substance is diamond. | diamond
How many legs does a spider have? | What is the number of legs on a spider? | A spider has 8 legs. | 8
What is the fastest land animal? | Which land animal is the fastest? | The cheetah is the fastest land animal. | cheetah
Who was the first person on the Moon? | Who first walked on the Moon? | Neil Armstrong was the first person on the Moon. | Neil Armstrong
What is the freezing point of water in Celsius? | At what Celsius temperature does water freeze? | Water freezes at 0 degrees Celsius. | 0 degrees Celsius
What is the boiling point of water in Celsius? | At what Celsius temperature does water boil? | Water boils at 100 degrees Celsius at sea level. | 100 degrees Celsius
Who composed the Moonlight Sonata? | Who is the composer of the Moonlight Sonata? | The Moonlight Sonata was composed by Ludwig van Beethoven. | Ludwig van Beethoven
What is the largest ocean? | Which ocean is the largest? | The largest ocean on Earth is the Pacific Ocean. | the Pacific Ocean
Who wrote The Odyssey? | Who is the author of The Odyssey? | The Odyssey is an epic poem by Homer. | Homer
Which planet is called the Red Planet? | What planet is known as the Red Planet? | Mars is known as the Red Planet. | Mars
How many days are in a leap year? | What is the number of days in a leap year? | A leap year has 366 days. | 366
Which gas makes up most of the air? | What is the main gas in air? | Most of the air is nitrogen. | nitrogen
Who proposed the theory of evolution? | Who came up with the theory of evolution? | The theory of evolution was proposed by Charles Darwin. | Charles Darwin
What is the largest mammal? | Which mammal is the largest? | The blue whale is the largest mammal. | blue whale
Who wrote Don Quixote? | Who is the author of Don Quixote? | Don Quixote was written by Miguel de Cervantes. | Miguel de Cervantes
How many sides does a hexagon have? | What is the number of sides of a hexagon? | A hexagon has 6 sides. | 6
What is the largest desert? | Which desert is the largest? | The largest hot desert is the Sahara. | the Sahara
"""
SEARCH_TOPICS = [(row[:2], row[2], row[3]) for row in
                 (line.split(" | ") for line in SEARCH_TABLE.strip().splitlines())]

OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b),
       "*": ("times", lambda a, b: a * b)}
FINISH_THOUGHT = "I have the result."


# ---- step builders ---------------------------------------------------------
def act(thought, action, **kwargs):
    return {"thought": thought, "action": action, "input": kwargs}


def obs(text):
    return {"observation": str(text)}


def calc(a, op, b, first=True):
    """Calculator step + its observation; returns (steps, result)."""
    expr = f"{a} {op} {b}"
    thought = f"I need to compute {expr}." if first else f"Now I need to compute {expr}."
    result = OPS[op][1](a, b)
    return [act(thought, "calculator", expression=expr), obs(result)], result


def finish(answer):
    return [act(FINISH_THOUGHT, "finish", answer=str(answer))]


# ---- task families: each returns (task, trajectory) -----------------------
def gen_calc1(rng):
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
    elif op == "+":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
    else:
        a = rng.randint(10, 99)
        b = rng.randint(2, a)
    word = OPS[op][0]
    task = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.",
                       f"Calculate {a} {word} {b}.", f"What is {a} {word} {b}?",
                       f"Use the calculator to find {a} {op} {b}."])
    steps, result = calc(a, op, b)
    return task, steps + finish(result)


CALC2_TEMPLATES = [  # (phrasing, first op on a and b, second op on result and c)
    ("Add {c} to the product of {a} and {b}.", "*", "+"),
    ("Subtract {c} from the product of {a} and {b}.", "*", "-"),
    ("Multiply the sum of {a} and {b} by {c}.", "+", "*"),
    ("Multiply the difference of {a} and {b} by {c}.", "-", "*"),
    ("Take {a} plus {b}, then multiply by {c}.", "+", "*"),
    ("Take {a} times {b}, then add {c}.", "*", "+"),
]


def gen_calc2(rng):
    template, op1, op2 = rng.choice(CALC2_TEMPLATES)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    if op1 == "-" and a <= b:
        a, b = b + rng.randint(1, 9), a
    s1, r1 = calc(a, op1, b)
    c = rng.randint(2, 9) if op2 == "*" else rng.randint(2, min(20, r1))  # results stay >= 0
    s2, r2 = calc(r1, op2, c, first=False)
    return template.format(a=a, b=b, c=c), s1 + s2 + finish(r2)


def lookup_steps(country, attribute):
    value = COUNTRIES[country][ATTRIBUTES.index(attribute)]
    step = act(f"I should look up the {attribute} of {country}.", "lookup",
               entity=country, attribute=attribute)
    return [step, obs(value)], value


def gen_lookup(rng):
    country, attribute = rng.choice(sorted(COUNTRIES)), rng.choice(ATTRIBUTES)
    what = "population in millions" if attribute == "population" else attribute
    task = rng.choice([f"What is the {what} of {country}?", f"Look up the {what} of {country}.",
                       f"Tell me the {what} of {country}.", f"Find the {what} of {country}."])
    steps, value = lookup_steps(country, attribute)
    return task, steps + finish(value)


LOOKUP_CALC_TEMPLATES = [
    ("What is the population of {c} in millions times {k}?", "*"),
    ("Multiply the population of {c} in millions by {k}.", "*"),
    ("Add {k} to the population of {c} in millions.", "+"),
    ("What is the population of {c} in millions plus {k}?", "+"),
    ("Subtract {k} from the population of {c} in millions.", "-"),
]


def gen_lookup_calc(rng):
    template, op = rng.choice(LOOKUP_CALC_TEMPLATES)
    country, k = rng.choice(sorted(COUNTRIES)), rng.randint(2, 9)
    s1, population = lookup_steps(country, "population")
    s2, result = calc(population, op, k, first=False)
    return template.format(c=country, k=k), s1 + s2 + finish(result)


def gen_search(rng):
    questions, snippet, answer = rng.choice(SEARCH_TOPICS)
    query = rng.choice(questions)
    task = rng.choice(["{q}", "Search for this: {q}", "Find out: {q}",
                       "Look this up: {q}", "Please answer: {q}"]).format(q=query)
    steps = [act("I need to search for this.", "search", query=query), obs(snippet)]
    return task, steps + finish(answer)


FAMILIES = {"calc1": gen_calc1, "calc2": gen_calc2, "lookup": gen_lookup,
            "lookup_calc": gen_lookup_calc, "search": gen_search}


def build_splits(rng):
    """Draw unique tasks per family; the first ones drawn go to eval."""
    train, evals = [], []
    n = N_TRAIN_PER_FAMILY + N_EVAL_PER_FAMILY
    for gen in FAMILIES.values():
        seen = {}
        while len(seen) < n:
            task, trajectory = gen(rng)
            seen.setdefault(task, trajectory)
        items = [{"task": t, "tools": TOOLS, "trajectory": tr} for t, tr in seen.items()]
        evals += items[:N_EVAL_PER_FAMILY]
        train += items[N_EVAL_PER_FAMILY:]
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals


def build_malformed(evals):
    """One broken copy of an eval record per defect (each has exactly that one defect)."""
    def pick(action):  # a fresh copy of the first eval record whose first action is `action`
        return copy.deepcopy(next(r for r in evals if r["trajectory"][0]["action"] == action))

    bad = {"unknown_tool": pick("search"), "no_final_answer": pick("calculator"),
           "observation_first": pick("lookup"), "empty_thought": pick("calculator"),
           "missing_input": pick("search"), "missing_required_arg": pick("lookup")}
    bad["unknown_tool"]["trajectory"][0]["action"] = "web_browser"
    bad["no_final_answer"]["trajectory"].pop()  # now ends with an observation
    bad["observation_first"]["trajectory"].insert(0, obs("Nothing has happened yet."))
    bad["empty_thought"]["trajectory"][0]["thought"] = ""
    del bad["missing_input"]["trajectory"][0]["input"]
    del bad["missing_required_arg"]["trajectory"][0]["input"]["attribute"]
    return [{"_defect": defect, **rec} for defect, rec in bad.items()]


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
    rng = random.Random(SEED)
    train, evals = build_splits(rng)
    with open(os.path.join(args.out, "tools.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(TOOLS, indent=2, ensure_ascii=False) + "\n")
    write_jsonl(os.path.join(args.out, "agent_train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "agent_eval.jsonl"), evals)
    write_jsonl(os.path.join(args.out, "agent_eval_malformed.jsonl"), build_malformed(evals))
    print(f"wrote {len(train)} train, {len(evals)} eval, 6 malformed records to {args.out}")


if __name__ == "__main__":
    main()

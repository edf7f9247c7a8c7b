"""The "booking request -> strict JSON" task of the real-model example (docs/real-model.md).

A free-text booking request (a hotel, a restaurant table or a flight, in varied phrasing) is to be
answered with one JSON object and nothing else::

    {"type":"hotel","city":"Lisbon","date":"2025-03-14","party_size":2,"name":"Maya Chen"}

keys always in that order, compact separators (``json.dumps(obj, separators=(",", ":"))``),
``type`` one of hotel/restaurant/flight, ``date`` as YYYY-MM-DD, ``party_size`` an integer.
Every record carries the same system message stating that format, so the base model is told the
task too (its "before" score is not a format-guessing contest).

Held out: the evaluation records use other cities, other names, other dates and, for a third of
them, phrasings (request templates) that no training record uses. Seeded: the same files every run.

    python examples/real_model/make_booking_data.py            # writes booking_train.jsonl, booking_eval.jsonl here
    python examples/real_model/make_booking_data.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = ("Convert the booking request into one JSON object with exactly these keys in this order: "
          "type (hotel, restaurant or flight), city, date (YYYY-MM-DD), party_size (an integer), name. "
          "Reply with the JSON only.")
KEYS = ("type", "city", "date", "party_size", "name")
SEED = 20261207
N_TRAIN, N_EVAL = 200, 50

TRAIN_CITIES = ["Lisbon", "Berlin", "Madrid", "Vienna", "Prague", "Dublin", "Oslo", "Helsinki", "Athens",
                "Warsaw", "Budapest", "Zurich", "Milan", "Munich", "Lyon", "Porto", "Seville", "Krakow",
                "Edinburgh", "Copenhagen", "Stockholm", "Brussels", "Amsterdam", "Florence", "Naples",
                "Toronto", "Chicago", "Boston", "Denver", "Seattle"]
EVAL_CITIES = ["Valencia", "Geneva", "Hamburg", "Bordeaux", "Rotterdam", "Tallinn", "Riga", "Montreal",
               "Austin", "Portland", "Bologna", "Salzburg"]
TRAIN_FIRST = ["Maya", "Liam", "Sofia", "Noah", "Emma", "Lucas", "Olivia", "Mateo", "Ava", "Elias", "Zoe",
               "Hugo", "Chloe", "Leon", "Nora", "Felix", "Ines", "Omar", "Clara", "Jonas"]
TRAIN_LAST = ["Chen", "Garcia", "Novak", "Silva", "Muller", "Rossi", "Kowalski", "Jensen", "Dubois",
              "Costa", "Fischer", "Moreau", "Larsen", "Berg", "Horvat", "Ward"]
EVAL_FIRST = ["Priya", "Mateus", "Hanna", "Tomas", "Yara", "Dmitri", "Aisha", "Kenji"]
EVAL_LAST = ["Okafor", "Lindqvist", "Petrov", "Haddad", "Tanaka", "Brennan"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# Request templates per booking type: {city} {date} {party} {name}. The last entries of each list
# (HELD_OUT of them) appear only in the evaluation set.
TEMPLATES = {
    "hotel": [
        "Please book a hotel room in {city} on {date} for {party}. The reservation is for {name}.",
        "I need a hotel in {city}, checking in {date}, {party}, under the name {name}.",
        "Hi! Could you reserve a room in {city} for {party} on {date}? Name: {name}.",
        "{name} here. Looking for a hotel in {city} on {date}, {party}.",
        "Hotel booking: {city}, {date}, {party}, guest name {name}.",
        "We'd like to stay in {city} starting {date}; {party}. Put it under {name}, please.",
        "Can you find us a place to stay in {city} on {date}? It's {party}, booking name {name}.",
        "Reserve accommodation in {city} for {date}, {party}, for {name}.",
    ],
    "restaurant": [
        "Book a table in {city} on {date} for {party}, name {name}.",
        "I'd like a restaurant reservation in {city} for {party} on {date}. It's under {name}.",
        "Table for {party} at a restaurant in {city}, {date}, please. My name is {name}.",
        "{name} would like to reserve dinner in {city} on {date} for {party}.",
        "Restaurant booking: {city}, {date}, {party}, name {name}.",
        "Could you get us a table in {city} on {date}? We are {party}. Reservation name: {name}.",
        "Hey, dinner reservation please: {party}, {city}, {date}, under {name}.",
        "Please reserve a lunch table in {city} for {date}, {party}, in the name of {name}.",
    ],
    "flight": [
        "Book a flight to {city} on {date} for {party}. Passenger name: {name}.",
        "I need plane tickets to {city}, departing {date}, {party}, booked under {name}.",
        "Please get {party} on a flight to {city} on {date}; the booking name is {name}.",
        "{name} wants to fly to {city} on {date}, {party}.",
        "Flight booking: destination {city}, {date}, {party}, name {name}.",
        "Can you book us flights to {city} for {date}? {party}, under {name}.",
        "Fly me to {city} on {date}, {party}, name on the booking {name}.",
        "Reserve airline seats to {city} leaving {date} for {party}, lead passenger {name}.",
    ],
}
HELD_OUT = 2  # templates per type used only in the evaluation set


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def say_date(rng: random.Random, year: int, month: int, day: int) -> str:
    """The date as a person might write it (the answer is always YYYY-MM-DD)."""
    name = MONTHS[month - 1]
    forms = [f"{name} {day}, {year}", f"{day} {name} {year}", f"the {_ordinal(day)} of {name} {year}",
             f"{year}-{month:02d}-{day:02d}", f"{name} {_ordinal(day)} {year}", f"{name[:3]} {day} {year}"]
    return rng.choice(forms)


def say_party(rng: random.Random, kind: str, n: int) -> str:
    """The party size in words or digits, in the booking type's own nouns."""
    noun = {"hotel": "guest", "restaurant": "person", "flight": "passenger"}[kind]
    plural = {"guest": "guests", "person": "people", "passenger": "passengers"}[noun]
    if n == 1:
        return rng.choice([f"one {noun}", f"1 {noun}", "just one person"])
    word = NUMBER_WORDS[n - 1]
    return rng.choice([f"{n} {plural}", f"{word} {plural}", f"a party of {n}", f"a group of {word}"])


def answer(kind: str, city: str, date: str, n: int, name: str) -> str:
    """The one correct reply: compact JSON, keys in KEYS order."""
    return json.dumps(dict(zip(KEYS, (kind, city, date, n, name))), separators=(",", ":"), ensure_ascii=False)


def make_records(rng: random.Random, count: int, *, cities: list[str], first: list[str], last: list[str],
                 dates: list[tuple[int, int, int]], templates: dict[str, list[str]]) -> list[dict]:
    records = []
    for i in range(count):
        kind = ("hotel", "restaurant", "flight")[i % 3]
        city, name = rng.choice(cities), f"{rng.choice(first)} {rng.choice(last)}"
        year, month, day = rng.choice(dates)
        n = rng.choice([1, 2, 2, 2, 3, 4, 4, 5, 6, 8])
        request = rng.choice(templates[kind]).format(city=city, date=say_date(rng, year, month, day),
                                                     party=say_party(rng, kind, n), name=name)
        records.append({"messages": [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": request},
                                     {"role": "assistant", "content": answer(kind, city, f"{year}-{month:02d}-{day:02d}",
                                                                             n, name)}]})
    rng.shuffle(records)
    return records


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, eval) records; the same for the same seed."""
    rng = random.Random(seed)
    days = [(year, month, day) for year in (2025, 2026) for month in range(1, 13) for day in range(1, 29)]
    rng.shuffle(days)
    eval_dates, train_dates = days[:60], days[60:]
    train_templates = {k: v[:-HELD_OUT] for k, v in TEMPLATES.items()}
    train = make_records(rng, N_TRAIN, cities=TRAIN_CITIES, first=TRAIN_FIRST, last=TRAIN_LAST,
                         dates=train_dates, templates=train_templates)
    seen = {k: v[:-HELD_OUT] for k, v in TEMPLATES.items()}
    unseen = {k: v[-HELD_OUT:] for k, v in TEMPLATES.items()}
    n_unseen = N_EVAL // 3
    common = dict(cities=EVAL_CITIES, first=EVAL_FIRST, last=EVAL_LAST, dates=eval_dates)
    evald = (make_records(rng, N_EVAL - n_unseen, templates=seen, **common)
             + make_records(rng, n_unseen, templates=unseen, **common))
    rng.shuffle(evald)
    return train, evald


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    train, evald = build(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "booking_train.jsonl", train)
    write_jsonl(out / "booking_eval.jsonl", evald)
    print(f"wrote {len(train)} training and {len(evald)} evaluation records to {out}")


if __name__ == "__main__":
    main()

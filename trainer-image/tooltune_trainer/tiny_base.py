"""The pre-trained tiny base model shipped in `models/tiny-tool-base/`, and how it is built.

A random tiny model fine-tuned on a few hundred examples memorises argument values instead of copying them
from the prompt. Real base models arrive already able to copy; this one is made so by pre-training a tiny
Llama once, in two phases:

1. copying alone (`induction_steps`): random token sequences said twice, the repeat supervised. A small
   transformer learns to copy (induction heads) only after a plateau, and learns it fastest on these;
2. generic, synthetic tool calls: tools of many other domains (mail, calendar, weather, shop, files,
   banking, music, travel, tickets, ...), values that must be copied from the user's words (titles, names,
   cities, dates, ids, numbers), varied phrasings, tool results with replies, turns that need no call,
   with echo turns and random repeats mixed in so the copying is kept.

None of it is the Task API: `TASK_API_WORDS` never appear as tool or parameter names, and the builder checks
it. The tokenizer is a byte-level BPE trained on the same corpus, with the tiny model's chat template, so
fine-tuning it uses the same format as `tooltune/tiny-llama`.

    scripts/build-tiny-base                       # rebuild models/tiny-tool-base (build.json: how long)
    scripts/build-tiny-base --check               # load the shipped model and verify BUILD_FILE's hashes

The build is seeded; `build.json` records the settings, the loss and the sha256 of every file it wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tooltune_trainer.formatting import IGNORE_INDEX
from tooltune_trainer.tiny import (
    BOS,
    CHAT_TEMPLATE,
    EOT,
    PAD,
    SPECIAL_TOKENS,
    corpus,
    llama_config,
    train_tokenizer,
)

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "tiny-tool-base"
BUILD_FILE = "build.json"
# Names of the Task API's tools and parameters: the generic corpus must not teach them.
Row = dict[str, list[int]]
TASK_API_WORDS = {"create_task", "list_tasks", "complete_task", "task_id", "due_before", "due_date"}


@dataclass(frozen=True)
class BaseSettings:
    """What the build does; recorded in build.json."""

    seed: int = 7
    examples: int = 6_000
    echo_examples: int = 3_000
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_length: int = 384
    batch_size: int = 16
    # The first steps train copying alone: random token sequences said twice, the second time supervised.
    # A tiny model learns to copy (induction heads) only after a plateau; on these sequences it ends within
    # ~800 steps at this learning rate (at 3e-3 it did not within 600), and tool calls come after.
    induction_steps: int = 800
    steps: int = 3_000
    # After them, the share of each batch that stays random repeats, and that is echo turns.
    induction_share: float = 0.15
    echo_share: float = 0.3
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1


# ---------------------------------------------------------------- value pools

# fmt: off
FIRST_NAMES = [
    "Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi", "Lucia",
    "Mateo", "Nadia", "Oskar", "Paula", "Quentin", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wes", "Ximena",
    "Yusuf", "Zoe", "Amara", "Bruno", "Carmen", "Dev", "Emil", "Freya", "Goran", "Hana", "Ivan", "Julia",
    "Kai", "Leah", "Milo", "Nina", "Omar", "Pia", "Raj", "Sofia", "Theo", "Uma", "Viktor", "Wanda", "Yara",
]
LAST_NAMES = [
    "Novak", "Okafor", "Schmidt", "Tanaka", "Moreau", "Silva", "Kowalski", "Haddad", "Lindqvist", "Rossi",
    "Nguyen", "Fischer", "Garcia", "Ivanova", "Mensah", "Larsen", "Costa", "Weber", "Kim", "Ortiz",
]
CITIES = [
    "Oslo", "Lima", "Cairo", "Perth", "Quito", "Dakar", "Hanoi", "Porto", "Kyoto", "Austin", "Leeds",
    "Munich", "Nairobi", "Seville", "Tampere", "Valencia", "Zagreb", "Bergen", "Calgary", "Dublin", "Krakow",
    "Lagos", "Malmo", "Ottawa", "Riga", "Santiago", "Tbilisi", "Utrecht", "Vilnius", "Windhoek", "Geneva",
]
WORDS = [
    "garden", "river", "winter", "summer", "office", "school", "kitchen", "market", "travel", "music",
    "dinner", "lunch", "coffee", "health", "science", "history", "family", "football", "tennis", "yoga",
    "piano", "camera", "laptop", "phone", "window", "bicycle", "holiday", "museum", "library", "concert",
    "birthday", "wedding", "picnic", "recipe", "pasta", "salad", "bread", "cheese", "apple", "orange",
    "mountain", "island", "forest", "ocean", "city", "village", "bridge", "tower", "castle", "harbor",
    "design", "logo", "poster", "letter", "story", "poem", "essay", "lecture", "course", "exam", "thesis",
    "server", "database", "network", "cloud", "backup", "release", "feature", "bug", "patch", "sprint",
    "client", "partner", "supplier", "customer", "team", "board", "payroll", "tax", "loan", "pension",
    "green", "blue", "red", "silver", "golden", "quiet", "bright", "early", "late", "weekly", "daily",
    "spring", "autumn", "northern", "southern", "eastern", "western", "central", "local", "global", "urban",
    "ticket", "order", "parcel", "package", "delivery", "account", "invoice", "receipt", "budget", "report",
]
SYLLABLES = [
    "ka", "lo", "mi", "ren", "to", "va", "zu", "bel", "cor", "dan", "fi", "gar", "hu", "jen", "kel", "lum",
    "mor", "nix", "pra", "qua", "ros", "sil", "tam", "ur", "vin", "wex", "yo", "zed", "ar", "bo", "ce", "di",
]
SONG_WORDS = ["love", "night", "dance", "heart", "fire", "rain", "moon", "road", "home", "dream", "light"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "SEK", "CAD", "AUD"]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Japanese", "Polish", "Dutch", "Swedish"]
# fmt: on


class Values:
    """Draws argument values from one seeded RNG: mostly common words, some made-up ones, so that a model
    which memorises values fails and one which copies them succeeds."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def made_up(self) -> str:
        return "".join(self.pick(SYLLABLES) for _ in range(self.rng.randint(2, 3)))

    def word(self) -> str:
        return self.made_up() if self.rng.random() < 0.2 else self.pick(WORDS)

    def phrase(self, low: int = 2, high: int = 5) -> str:
        text = " ".join(self.word() for _ in range(self.rng.randint(low, high)))
        return text[0].upper() + text[1:]

    def person(self) -> str:
        first = self.made_up().capitalize() if self.rng.random() < 0.15 else self.pick(FIRST_NAMES)
        return first if self.rng.random() < 0.4 else f"{first} {self.pick(LAST_NAMES)}"

    def email(self) -> str:
        return f"{self.pick(FIRST_NAMES).lower()}.{self.pick(LAST_NAMES).lower()}@{self.word()}.com"

    def city(self) -> str:
        return self.made_up().capitalize() if self.rng.random() < 0.15 else self.pick(CITIES)

    def date(self, today: date) -> str:
        return (today + timedelta(days=self.rng.randint(-400, 900))).isoformat()

    def number(self) -> int:
        return self.rng.choice(
            [self.rng.randint(1, 12), self.rng.randint(10, 999), self.rng.randint(100, 99999)]
        )

    def identifier(self, kind: str) -> tuple[str, str]:
        """(how the user names it, the id): 'the garden ticket' -> garden_ticket, or 'ticket_482'."""
        roll = self.rng.random()
        if roll < 0.45:
            word = self.word().lower()
            return self.pick([f"the {word} {kind}", f"{word}_{kind}"]), f"{word}_{kind}"
        number = str(self.rng.randint(1, 9999) if roll < 0.85 else self.rng.randint(1, 99))
        if self.rng.random() < 0.5:
            return f"{kind}_{number}", f"{kind}_{number}"
        return self.pick([f"{kind} {number}", f"{kind} number {number}", f"#{number}"]), f"{kind}_{number}"


# ---------------------------------------------------------------- tools and requests

# name -> (description, [(parameter, kind, required)]); kinds are drawn by Values.
TOOLS: dict[str, tuple[str, list[tuple[str, str, bool]]]] = {
    "send_email": ("Send an email.", [("to", "email", True), ("subject", "phrase", True)]),
    "schedule_meeting": (
        "Put a meeting in the calendar.",
        [("title", "phrase", True), ("date", "date", True), ("attendee", "person", False)],
    ),
    "add_note": ("Save a note.", [("text", "phrase", True)]),
    "get_weather": ("Weather forecast for a city.", [("city", "city", True), ("date", "date", False)]),
    "book_flight": (
        "Book a flight.",
        [("origin", "city", True), ("destination", "city", True), ("date", "date", True)],
    ),
    "play_song": ("Play a song.", [("song", "song", True), ("artist", "person", False)]),
    "add_to_cart": ("Add an item to the cart.", [("item", "word", True), ("quantity", "number", True)]),
    "track_order": ("Status of an order.", [("order_id", "id:order", True)]),
    "cancel_order": ("Cancel an order.", [("order_id", "id:order", True)]),
    "close_ticket": ("Close a support ticket.", [("ticket_id", "id:ticket", True)]),
    "open_ticket": ("Open a support ticket.", [("summary", "phrase", True), ("priority", "priority", False)]),
    "archive_project": ("Archive a project.", [("project_id", "id:project", True)]),
    "delete_file": ("Delete a file.", [("file_id", "id:file", True)]),
    "find_files": ("Search files.", [("query", "phrase", True), ("modified_after", "date", False)]),
    "lookup_contact": ("Find a contact.", [("name", "person", True)]),
    "transfer_money": ("Send money.", [("amount", "number", True), ("recipient", "person", True)]),
    "convert_currency": (
        "Convert an amount.",
        [("amount", "number", True), ("source", "currency", True), ("target", "currency", True)],
    ),
    "translate_text": ("Translate text.", [("text", "phrase", True), ("language", "language", True)]),
    "book_table": (
        "Reserve a restaurant table.",
        [("restaurant", "phrase", True), ("date", "date", True), ("guests", "number", False)],
    ),
    "start_timer": ("Start a timer.", [("minutes", "number", True), ("label", "phrase", False)]),
    "list_events": ("Calendar events.", [("after", "date", False), ("category", "category", False)]),
    "list_orders": ("Orders.", [("since", "date", False), ("state", "state", False)]),
    "get_invoice": ("Fetch an invoice.", [("invoice_id", "id:invoice", True)]),
    "rate_movie": ("Rate a movie.", [("movie", "phrase", True), ("stars", "stars", True)]),
}
ENUMS: dict[str, list[Any]] = {
    "priority": ["low", "normal", "high"],
    "category": ["work", "personal", "travel"],
    "state": ["pending", "shipped", "delivered"],
    "currency": CURRENCIES,
    "language": LANGUAGES,
    "stars": [1, 2, 3, 4, 5],
}
# How a user asks, per tool: {parameter} is replaced by how the user says the value. Optional parameters
# are said in a trailing clause (OPTIONAL_CLAUSES) when drawn.
PHRASINGS: dict[str, list[str]] = {
    "send_email": ["Email {to} about {subject}", "Send a mail to {to} with subject {subject}",
                   "Write to {to}: subject {subject}", 'Mail {to}, subject "{subject}"'],
    "schedule_meeting": ["Schedule a meeting called {title} on {date}", "Set up {title} for {date}",
                         'Book a meeting "{title}" on {date}', "Put {title} in my calendar on {date}"],
    "add_note": ["Note this: {text}", "Save a note saying {text}", 'Write down "{text}"',
                 "Add a note: {text}"],
    "get_weather": ["What's the weather in {city}?", "Weather for {city}", "Will it rain in {city}?",
                    "Forecast for {city} please"],
    "book_flight": ["Book a flight from {origin} to {destination} on {date}",
                    "Fly me {origin} to {destination}, {date}",
                    "I need a flight {origin} to {destination} on {date}"],
    "play_song": ["Play {song}", "Put on {song}", 'Play the song "{song}"', "I want to hear {song}"],
    "add_to_cart": ["Add {quantity} {item} to my cart", "Put {quantity} x {item} in the cart",
                    "Order {quantity} of {item}", "I'll take {quantity} {item}"],
    "track_order": ["Where is {order_id}?", "Track {order_id}", "Status of {order_id}?",
                    "Has {order_id} shipped?"],
    "cancel_order": ["Cancel {order_id}", "Please cancel {order_id}", "I don't want {order_id} anymore"],
    "close_ticket": ["Close {ticket_id}", "Resolve {ticket_id}", "{ticket_id} is fixed, close it",
                     "Please close {ticket_id}"],
    "open_ticket": ["Open a ticket: {summary}", "Report a problem: {summary}", 'File a ticket "{summary}"'],
    "archive_project": ["Archive {project_id}", "Move {project_id} to the archive",
                        "We're done with {project_id}"],
    "delete_file": ["Delete {file_id}", "Remove {file_id}", "Throw away {file_id}", "Get rid of {file_id}"],
    "find_files": ["Find files about {query}", "Search my files for {query}",
                   "Look for documents on {query}"],
    "lookup_contact": ["Find {name} in my contacts", "What's the number of {name}?", "Look up {name}"],
    "transfer_money": ["Send {amount} to {recipient}", "Transfer {amount} dollars to {recipient}",
                       "Pay {recipient} {amount}"],
    "convert_currency": ["Convert {amount} {source} to {target}",
                         "How much is {amount} {source} in {target}?", "{amount} {source} in {target}?"],
    "translate_text": ["Translate {text} into {language}", "How do you say {text} in {language}?",
                       'Say "{text}" in {language}'],
    "book_table": ["Reserve a table at {restaurant} on {date}", "Book {restaurant} for {date}",
                   "Get us a table at {restaurant}, {date}"],
    "start_timer": ["Set a timer for {minutes} minutes", "Start a {minutes} minute timer",
                    "Timer {minutes} min"],
    "list_events": ["What's in my calendar?", "Show my events", "List my appointments"],
    "list_orders": ["Show my orders", "What did I order?", "List my orders"],
    "get_invoice": ["Show me {invoice_id}", "Get {invoice_id}", "I need a copy of {invoice_id}"],
    "rate_movie": ["Give {movie} {stars} stars", "Rate {movie} {stars} out of 5", "{movie}: {stars} stars"],
}  # fmt: skip
OPTIONAL_CLAUSES = {
    "attendee": [" with {attendee}", ", invite {attendee}"],
    "date": [" on {date}", " for {date}"],
    "artist": [" by {artist}"],
    "priority": [", {priority} priority", " (priority {priority})"],
    "modified_after": [" changed after {modified_after}", " since {modified_after}"],
    "guests": [" for {guests} people", ", {guests} guests"],
    "label": [' called "{label}"', " for {label}"],
    "after": [" after {after}", " from {after} on"],
    "category": [" for {category}", ", only {category}"],
    "since": [" since {since}", " from {since}"],
    "state": [" that are {state}", ", only {state} ones"],
}
PLAIN_TEXT = [
    ("Hi", "Hello! What can I do for you?"), ("Hello there", "Hi! How can I help?"),
    ("Thanks", "You're welcome!"), ("Thank you so much", "Happy to help."), ("Bye", "Goodbye!"),
    ("Who are you?", "I'm an assistant that can use the tools listed above."),
    ("What can you do?", "I can call the tools I was given; tell me what you need."),
    ("Tell me a joke", "I can't do that with my tools."),
    ("Sing a song", "That's not something my tools do."),
    ("What's the meaning of life?", "I can't answer that; I can only use my tools."),
    ("Ok", "Anything else?"), ("Never mind", "Sure. Let me know if you need anything."),
]  # fmt: skip
ASK_FOR_MISSING = "Sure. What {parameter} should I use?"


class Builder:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.values = Values(self.rng)
        self.call_number = 0

    def value(self, kind: str, today: date) -> tuple[str, Any]:
        """(what the user says, the argument value)."""
        v = self.values
        if kind.startswith("id:"):
            return v.identifier(kind[3:])
        if kind in ENUMS:
            choice = v.pick(list(ENUMS[kind]))
            return str(choice), choice
        if kind == "date":
            if self.rng.random() < 0.1:
                return "today", today.isoformat()
            value = v.date(today)
            return value, value
        if kind == "number":
            number = v.number()
            return str(number), number
        if kind == "song":
            song = " ".join(v.pick([*SONG_WORDS, v.word()]) for _ in range(self.rng.randint(1, 3))).title()
            return song, song
        draw = {"phrase": v.phrase, "person": v.person, "email": v.email, "city": v.city, "word": v.word}
        text = draw[kind]()
        if kind == "phrase" and self.rng.random() < 0.5:  # said in lower case, written capitalised
            return text[0].lower() + text[1:], text
        return text, text

    def request(self, tool: str, today: date) -> tuple[str, dict[str, Any]]:
        _, parameters = TOOLS[tool]
        text = self.values.pick(PHRASINGS[tool])
        said, arguments = {}, {}
        for name, kind, required in parameters:
            if required or self.rng.random() < 0.4:
                said[name], arguments[name] = self.value(kind, today)
                if not required and "{" + name + "}" not in text:
                    text += self.values.pick(OPTIONAL_CLAUSES[name])
        text = text.format(**said)
        if self.rng.random() < 0.25:
            text = self.values.pick(["Please {}", "Can you {}?", "{}, thanks", "Hey, {}"]).format(
                text[0].lower() + text[1:]
                if text[0].isupper() and text.split()[0] not in said.values()
                else text
            )
        ordered = {name: arguments[name] for name, _, _ in parameters if name in arguments}
        return text, ordered

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.call_number += 1
        function = {"name": tool, "arguments": json.dumps(arguments, ensure_ascii=False)}
        return {"role": "assistant", "tool_calls": [{"id": f"call_{self.call_number}", "type": "function",
                                                     "function": function}]}  # fmt: skip

    def result_and_reply(self, tool: str, arguments: dict[str, Any]) -> tuple[str, str]:
        reference = f"{self.values.word().lower()}_{self.rng.randint(1, 9999)}"
        result = {"ok": True, "id": reference, **arguments}
        shown = ", ".join(f"{name} {value}" for name, value in arguments.items())
        reply = self.values.pick(["Done ({ref}): {shown}.", "{tool} finished: {shown}. Reference {ref}.",
                                  "All set, {ref}. {shown}."])  # fmt: skip
        return json.dumps(result, ensure_ascii=False), reply.format(ref=reference, shown=shown, tool=tool)

    def example(self) -> dict[str, Any]:
        today = date(2019, 1, 1) + timedelta(days=self.rng.randint(0, 3650))
        names = self.rng.sample(sorted(TOOLS), self.rng.randint(2, 4))
        tools = [
            {"type": "function", "function": {"name": name, "description": TOOLS[name][0], "parameters": {
                "type": "object",
                "properties": {p: {"type": "integer" if k in ("number", "stars") else "string"}
                               for p, k, _ in TOOLS[name][1]},
                "required": [p for p, _, required in TOOLS[name][1] if required]}}}
            for name in names
        ]  # fmt: skip
        system = self.values.pick(
            [
                "You are a helpful assistant.",
                "You help the user with the tools below.",
                "Use the tools when the user asks for something they can do.",
            ]
        )
        messages: list[dict[str, Any]] = [{"role": "system", "content": f"{system} Today is {today}."}]
        roll = self.rng.random()
        for turn in range(2 if roll > 0.9 else 1):
            if roll < 0.12 and turn == 0:
                if self.rng.random() < 0.5:
                    prompt, reply = self.values.pick(PLAIN_TEXT)
                else:  # a request that lacks what the tool needs
                    tool = self.values.pick(names)
                    required = [p for p, _, needed in TOOLS[tool][1] if needed]
                    if not required:
                        prompt, reply = self.values.pick(PLAIN_TEXT)
                    else:
                        prompt = f"I want to use {tool.replace('_', ' ')}"
                        reply = ASK_FOR_MISSING.format(parameter=required[0].replace("_", " "))
                messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
                continue
            tool = self.values.pick(names)
            text, arguments = self.request(tool, today)
            call = self.call(tool, arguments)
            messages += [{"role": "user", "content": text}, call]
            if roll > 0.75 and turn == 0:
                result, reply = self.result_and_reply(tool, arguments)
                messages += [
                    {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": result},
                    {"role": "assistant", "content": reply},
                ]
        return {"messages": messages, "tools": tools}

    def echo(self) -> dict[str, Any]:
        """A turn answered by repeating the user's words: copying with nothing else to learn."""
        words = [self.values.made_up() if self.rng.random() < 0.5 else self.values.word()
                 for _ in range(self.rng.randint(2, 8))]  # fmt: skip
        text = " ".join(words)
        text = text.capitalize() if self.rng.random() < 0.5 else text
        ask = self.values.pick(["Repeat exactly: {}", "Say {}", 'Echo "{}"', "Copy this: {}"])
        return {
            "messages": [
                {"role": "user", "content": ask.format(text)},
                {"role": "assistant", "content": text},
            ]
        }


def generic_examples(seed: int, count: int) -> list[dict[str, Any]]:
    """count generic tool-calling conversations (OpenAI fine-tuning format), the same for the same seed."""
    builder = Builder(seed)
    examples = [builder.example() for _ in range(count)]
    names = {t["function"]["name"] for e in examples for t in e["tools"]}
    names |= {p for e in examples for t in e["tools"] for p in t["function"]["parameters"]["properties"]}
    if names & TASK_API_WORDS:
        raise AssertionError(
            f"the generic corpus names Task API tools or parameters: {names & TASK_API_WORDS}"
        )
    return examples


def echo_examples(seed: int, count: int) -> list[dict[str, Any]]:
    builder = Builder(seed + 1)
    return [builder.echo() for _ in range(count)]


class Batches:
    """The build's batches, drawn by one seeded RNG: induction rows alone for the first steps, then tool
    calls mixed with induction rows and echo turns in the settings' shares."""

    def __init__(self, settings: BaseSettings, rows: list[Row], echo_rows: list[Row], tokenizer: Any):
        self.settings, self.rows, self.echo_rows = settings, rows, echo_rows
        self.bos = tokenizer.bos_token_id
        special = set(tokenizer.all_special_ids)
        self.token_ids = [i for i in range(len(tokenizer)) if i not in special]
        self.rng = random.Random(settings.seed)
        self.orders: dict[int, list[int]] = {}

    def _next(self, rows: list[Row]) -> Row:
        order = self.orders.setdefault(id(rows), [])
        if not order:
            order.extend(range(len(rows)))
            self.rng.shuffle(order)
        return rows[order.pop()]

    def induction_row(self) -> Row:
        """A random token sequence said twice; only the repeat is supervised."""
        sequence = [self.rng.choice(self.token_ids) for _ in range(self.rng.randint(12, 48))]
        return {
            "input_ids": [self.bos, *sequence, *sequence],
            "labels": [IGNORE_INDEX] * (len(sequence) + 1) + sequence,
        }

    def batch(self, step: int) -> list[Row]:
        s = self.settings
        rows = []
        for _ in range(s.batch_size):
            roll = self.rng.random()
            if step <= s.induction_steps or roll < s.induction_share:
                rows.append(self.induction_row())
            elif roll < s.induction_share + s.echo_share:
                rows.append(self._next(self.echo_rows))
            else:
                rows.append(self._next(self.rows))
        return rows


# ---------------------------------------------------------------- build


def build(dest: Path, settings: BaseSettings, log: Any = print) -> dict[str, Any]:
    """Generate the corpus, train tokenizer and model, save both into dest with build.json; returns it."""
    import torch
    from transformers import LlamaForCausalLM, get_scheduler

    from tooltune_trainer.formatting import training_rows
    from tooltune_trainer.tool_formats import prepare_tokenizer

    torch.set_num_threads(1)  # reproducible reductions; on a shared machine one thread also runs faster
    started, cpu_started = time.monotonic(), time.process_time()
    examples = generic_examples(settings.seed, settings.examples)
    tokenizer = train_tokenizer(
        corpus(examples), settings.vocab_size, SPECIAL_TOKENS, CHAT_TEMPLATE, BOS, EOT, PAD
    )
    fmt = prepare_tokenizer(tokenizer, "auto")
    rows = training_rows(tokenizer, examples, settings.max_length, fmt)
    echo_rows = training_rows(tokenizer, echo_examples(settings.seed, settings.echo_examples), 64, fmt)
    batches = Batches(settings, rows, echo_rows, tokenizer)
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(
        llama_config(
            tokenizer, settings.hidden_size, settings.intermediate_size, settings.num_hidden_layers,
            settings.num_attention_heads, max_positions=1024,
        )
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = get_scheduler(
        "cosine_with_min_lr",
        optimizer,
        num_warmup_steps=settings.warmup_steps,
        num_training_steps=settings.steps,
        scheduler_specific_kwargs={"min_lr_rate": settings.min_lr_ratio},
    )
    model.train()
    losses: list[float] = []
    for step in range(1, settings.steps + 1):
        batch = batches.batch(step)
        width = max(len(row["input_ids"]) for row in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch])
        labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in batch])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 50 == 0:
            log(f"step {step}/{settings.steps}  loss {sum(losses[-50:]) / 50:.4f}  "
                f"{time.monotonic() - started:.0f} s")  # fmt: skip
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    record = {
        "settings": asdict(settings),
        "finalLoss": round(sum(losses[-100:]) / min(100, len(losses)), 4),
        "seconds": round(time.monotonic() - started),
        "cpuSeconds": round(time.process_time() - cpu_started),
        "torchThreads": torch.get_num_threads(),
        "files": file_hashes(dest),
    }
    (dest / BUILD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != BUILD_FILE
    }


def check(directory: Path) -> list[str]:
    """Problems with a built model directory: files that differ from build.json, a config that differs
    from its settings."""
    record = json.loads((directory / BUILD_FILE).read_text())
    problems = [
        f"{name}: sha256 {digest[:12]}… differs from {BUILD_FILE}'s {record['files'].get(name, 'none')[:12]}…"
        for name, digest in file_hashes(directory).items()
        if record["files"].get(name) != digest
    ]
    problems += [f"{name}: missing" for name in record["files"] if not (directory / name).is_file()]
    config = json.loads((directory / "config.json").read_text())
    settings = record["settings"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if config.get(key) != settings[key]:
            problems.append(f"config.json {key}={config.get(key)}, {BUILD_FILE} says {settings[key]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=SHIPPED, help="where to write the model")
    parser.add_argument("--steps", type=int, default=BaseSettings.steps)
    parser.add_argument("--check", action="store_true", help="verify --out against its build.json")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(f"{args.out}: {problem}", file=sys.stderr)
        return 1 if problems else 0
    record = build(args.out, BaseSettings(steps=args.steps))
    print(json.dumps({key: record[key] for key in ("finalLoss", "seconds", "cpuSeconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["SHIPPED", "BaseSettings", "build", "check", "generic_examples"]

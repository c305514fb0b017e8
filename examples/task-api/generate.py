"""Generate the Task API tool-calling dataset (OpenAI fine-tuning JSONL), deterministically.

Three tools, create_task(title, due_date), list_tasks(due_before, status) and complete_task(task_id),
asked for in varied phrasings; some requests are answered in plain text (greetings, questions
outside the API, requests missing what the tool needs, where the user's answer then gets the call)
and some conversations carry the tool's result and the assistant's reply to it. Text answers are
15% of the examples, most of them drawn from templates as the calls are, so that a model learns
when not to call from more than a list of fixed phrases.

Argument values are written verbatim in the user's message wherever possible (titles, ISO dates,
task ids such as ``budget_task`` or ``task_17``) and drawn from large pools, so a model learns to
copy them instead of memorising them. Relative dates ("this week") resolve against the fixed
"today" in the system prompt. The lab's smoke prompts are kept out of the data so they test
generalisation.

    python examples/task-api/generate.py            # rewrite task_api_tool_calling.jsonl
    python examples/task-api/generate.py --check    # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

SEED = 66
EXAMPLE_COUNT = 1183
OUTPUT = Path(__file__).with_name("task_api_tool_calling.jsonl")

TODAY = date(2024, 1, 15)  # a Monday: "this week" ends 2024-01-21, as in the lab's smoke test
SYSTEM_PROMPT = f"You manage the user's tasks with the tools. Today is {TODAY.isoformat()}."

DATE = {"type": "string", "description": "YYYY-MM-DD"}
TOOLS = [
    {"type": "function", "function": {
        "name": "create_task", "description": "Create a task.",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "due_date": DATE},
                       "required": ["title"]}}},
    {"type": "function", "function": {
        "name": "list_tasks", "description": "List tasks, optionally due before a date or by status.",
        "parameters": {"type": "object", "properties": {
            "due_before": DATE, "status": {"type": "string", "enum": ["open", "done"]}}}}},
    {"type": "function", "function": {
        "name": "complete_task", "description": "Mark a task as done.",
        "parameters": {"type": "object", "properties": {"task_id": {"type": "string"}},
                       "required": ["task_id"]}}},
]  # fmt: skip

SMOKE_PROMPTS = {
    "Create a task to review the quarterly report",
    "What tasks do I have due this week?",
    "Mark the budget task as complete",
}

# How many examples of each kind; they add up to EXAMPLE_COUNT.
MAX_DRAWS = 1000  # attempts at a not-yet-seen example before the pool is declared too small
MIX = {
    "create": 300, "list": 200, "complete": 200, "with_result": 180, "two_requests": 80,
    "plain_text": 43, "ask": 90, "off_topic": 90,
}  # fmt: skip

# ---------------------------------------------------------------- value pools

# fmt: off
RELATIVE_DAYS = {"today": 0, "tomorrow": 1, "this week": 6, "next week": 13, "this month": 16}
DOC_ADJECTIVES = [
    "quarterly", "annual", "monthly", "weekly", "Q3", "Q4", "final", "draft", "team", "client", "sales",
    "marketing", "hiring", "budget", "project", "onboarding", "security", "board", "vendor", "research"
]
DOC_NOUNS = [
    "report", "proposal", "plan", "slides", "contract", "invoice", "roadmap", "summary", "checklist",
    "presentation", "spreadsheet", "memo", "newsletter", "forecast", "review notes", "agenda"
]
DOC_VERBS = [
    "review", "update", "finish", "send", "print", "proofread", "submit", "share", "draft", "prepare"
]
PEOPLE = [
    "Sarah", "the dentist", "the landlord", "Dr. Patel", "mom", "the plumber", "Alex", "the bank", "Priya",
    "Jordan", "the insurance company", "grandma", "Marco", "the accountant", "Lena", "the school", "Tom",
    "the vet", "Aisha", "the recruiter", "Kenji", "the electrician", "Olivia", "the IT helpdesk", "Diego",
    "the daycare", "Fatima", "the mechanic", "Nora", "the travel agent"
]
PEOPLE_VERBS = [
    "call", "email", "text", "meet", "thank", "follow up with", "reply to", "check in with"
]
ITEMS = [
    "groceries", "printer ink", "a birthday gift for Maya", "new running shoes", "coffee beans",
    "batteries", "a phone charger", "dog food", "light bulbs", "a desk lamp", "concert tickets",
    "a winter coat", "paint for the hallway", "flowers for Anna", "a new router", "stamps",
    "printer paper", "a water filter", "vitamins", "a bike helmet"
]
ITEM_VERBS = [
    "buy", "order", "pick up", "return"
]
EVENTS = [
    "a flight to Denver", "the team offsite", "a haircut", "a table for Friday dinner", "the car service",
    "a hotel in Lisbon", "the annual checkup", "a train to Boston", "the kickoff meeting",
    "a tennis court", "the venue for the party", "a room for the workshop", "the eye exam",
    "movers for March", "a babysitter"
]
EVENT_VERBS = [
    "book", "schedule", "cancel", "confirm", "reschedule"
]
CHORES = [
    "the garage", "the kitchen sink", "the plants", "the closet", "the gutters", "the car", "the backyard",
    "the bookshelf", "the fridge", "the attic", "the bathroom fan", "the fence", "the windows"
]
CHORE_VERBS = [
    "clean", "fix", "water", "organize", "paint", "wash"
]
BILLS = [
    "the electricity bill", "the car insurance", "the rent", "the phone bill", "the gym membership",
    "the water bill", "the parking permit", "the internet bill", "the credit card bill", "the taxes",
    "the domain name", "the magazine subscription"
]
BILL_VERBS = [
    "pay", "renew", "file", "cancel"
]
ID_WORDS = [
    "budget", "invoice", "dentist", "groceries", "report", "taxes", "rent", "gym", "laundry", "roadmap",
    "passport", "insurance", "newsletter", "onboarding", "payroll", "garage", "slides", "contract", "vet",
    "flight", "hotel", "checkup", "party", "plumber", "presentation", "audit", "hiring", "website",
    "backup", "blog", "survey", "training", "demo", "launch", "migration", "printer", "router", "offsite",
    "expenses", "feedback", "interview", "license", "quote", "refund", "renewal", "review", "sprint",
    "visa", "workshop"
]
# fmt: on


def title_groups() -> list[tuple[list[str], list[str]]]:
    """(verbs, objects) groups; a title is a verb, capitalised, then an object of the same group."""
    documents = [f"the {adjective} {noun}" for adjective in DOC_ADJECTIVES for noun in DOC_NOUNS]
    return [
        (DOC_VERBS, documents), (PEOPLE_VERBS, PEOPLE), (ITEM_VERBS, ITEMS), (EVENT_VERBS, EVENTS),
        (CHORE_VERBS, CHORES), (BILL_VERBS, BILLS),
    ]  # fmt: skip


# ---------------------------------------------------------------- message builders


def capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def arguments(values: dict[str, Any]) -> str:
    """Arguments as the OpenAI JSON string, keys in the tool schema's order."""
    return json.dumps(values, ensure_ascii=False)


class Builder:
    """Draws values and phrasings from one seeded RNG, so the output is the same on every run."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.title_groups = title_groups()
        # Big groups are drawn more often, but less than their size would say, so every kind appears.
        self.group_weights = [math.sqrt(len(verbs) * len(things)) for verbs, things in self.title_groups]
        self.call_number = 0
        self.task_numbers = list(range(1, 1000))

    def pick(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def task(self) -> str:
        """What to do, as the user says it: 'review the quarterly report'."""
        verbs, things = self.rng.choices(self.title_groups, weights=self.group_weights)[0]
        return f"{self.pick(verbs)} {self.pick(things)}"

    def date(self) -> str:
        return (TODAY + timedelta(days=self.rng.randint(1, 700))).isoformat()

    def task_id(self) -> tuple[str, str]:
        """(how the user names it, the id): 'the budget task' -> budget_task, 'task_17' -> task_17."""
        if self.rng.random() < 0.5:
            word = self.pick(ID_WORDS)
            return self.pick([f"the {word} task", f"{word}_task"]), f"{word}_task"
        task_id = f"task_{self.pick(self.task_numbers)}"
        return task_id, task_id

    def call(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        self.call_number += 1
        call_id = f"call_{self.call_number}"
        function = {"name": name, "arguments": arguments(values)}
        return {
            "role": "assistant",
            "tool_calls": [{"id": call_id, "type": "function", "function": function}],
        }

    # ------------------------------------------------------------ requests: (user text, tool, arguments)

    def create_request(self) -> tuple[str, str, dict[str, Any]]:
        task = self.task()
        title = capitalised(task)
        phrasing = self.pick([
            "Create a task to {task}", "Add a task to {task}", "Remind me to {task}",
            "I need to {task}, add it to my tasks", "Please create a task: {task}", "New task: {title}",
            'Add "{title}" to my list', "Can you add a task to {task}?", "Put {task} on my to-do list",
            "Make a task called {title}", "Don't let me forget to {task}", "Add {task} to my tasks",
        ])  # fmt: skip
        text = phrasing.format(task=task, title=title)
        values: dict[str, Any] = {"title": title}
        roll = self.rng.random()
        if roll < 0.45:
            due = self.date()
            text += self.pick([" due {d}", " by {d}", " before {d}", " for {d}", ", due date {d}"]).format(
                d=due
            )
            values["due_date"] = due
        elif roll < 0.6:
            when = self.pick(["today", "tomorrow", "this week", "next week"])
            text += f" {when}" if when in {"today", "tomorrow"} else f" by the end of {when}"
            values["due_date"] = (TODAY + timedelta(days=RELATIVE_DAYS[when])).isoformat()
        return text, "create_task", values

    def list_request(self) -> tuple[str, str, dict[str, Any]]:
        kind = self.pick(["date", "date", "relative", "relative", "status", "status_date", "all"])
        if kind == "date":
            due = self.date()
            text = self.pick([
                "Show my tasks due before {d}", "List tasks due by {d}", "What's due before {d}?",
                "Which tasks are due before {d}?", "What do I need to finish before {d}?",
                "Any tasks due by {d}?",
            ]).format(d=due)  # fmt: skip
            return text, "list_tasks", {"due_before": due}
        if kind == "relative":
            when = self.pick(list(RELATIVE_DAYS))
            text = self.pick([
                "What tasks do I have due {w}?", "Which tasks are due {w}?", "Show me everything due {w}",
                "What's due {w}?", "List my tasks due {w}", "Do I have anything due {w}?",
            ]).format(w=when)  # fmt: skip
            return (
                text,
                "list_tasks",
                {"due_before": (TODAY + timedelta(days=RELATIVE_DAYS[when])).isoformat()},
            )
        if kind == "status":
            status = self.pick(["open", "done"])
            text = self.pick(
                ["List my open tasks", "What tasks are still open?", "Show my unfinished tasks",
                 "Which tasks haven't I done yet?"] if status == "open" else
                ["Show my completed tasks", "What have I finished?", "List the tasks I've done",
                 "Which tasks are done?"]
            )  # fmt: skip
            return text, "list_tasks", {"status": status}
        if kind == "status_date":
            due = self.date()
            text = self.pick(["What open tasks are due before {d}?", "List open tasks due by {d}",
                              "Show unfinished tasks due before {d}"]).format(d=due)  # fmt: skip
            return text, "list_tasks", {"due_before": due, "status": "open"}
        text = self.pick(
            ["Show all my tasks", "What's on my to-do list?", "List all tasks", "What tasks do I have?"]
        )
        return text, "list_tasks", {}

    def complete_request(self) -> tuple[str, str, dict[str, Any]]:
        named, task_id = self.task_id()
        text = self.pick([
            "Mark {t} as complete", "Mark {t} as complete", "Mark {t} as done", "Complete {t}",
            "I finished {t}", "{t} is done, please close it", "Please mark {t} as completed", "Check off {t}",
            "Set {t} to done", "Close {t}", "I'm done with {t}",
        ]).format(t=named)  # fmt: skip
        text = capitalised(text) if text.startswith("the ") else text  # an id stays as written: task_17
        return text, "complete_task", {"task_id": task_id}

    def request(self) -> tuple[str, str, dict[str, Any]]:
        make: Callable[[], tuple[str, str, dict[str, Any]]] = self.pick(
            [self.create_request, self.list_request, self.complete_request]
        )
        return make()

    # ------------------------------------------------------------ tool results and replies

    def result_and_reply(self, tool: str, values: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if tool == "create_task":
            task_id = f"task_{self.pick(self.task_numbers)}"
            result = {"task_id": task_id, **values, "status": "open"}
            due = f", due {values['due_date']}" if "due_date" in values else ""
            return result, f"Created {task_id}: {values['title']}{due}."
        if tool == "complete_task":
            if self.rng.random() < 0.15:
                return {"error": f"no task {values['task_id']}"}, (
                    f"I couldn't find {values['task_id']}. Ask me to list your tasks to see their ids."
                )
            return {"task_id": values["task_id"], "status": "done"}, f"Done: {values['task_id']} is complete."
        tasks = [
            {"task_id": f"task_{self.pick(self.task_numbers)}",
             "title": capitalised(self.task()),
             "due_date": values.get("due_before") or self.date()}
            for _ in range(self.rng.randint(0, 3))
        ]  # fmt: skip
        if not tasks:
            return {"tasks": []}, "You have no matching tasks."
        listed = "; ".join(f"{t['title']} ({t['task_id']}, due {t['due_date']})" for t in tasks)
        return {"tasks": tasks}, f"You have {len(tasks)} task{'s' if len(tasks) > 1 else ''}: {listed}."

    def exchange(
        self, text: str, tool: str, values: dict[str, Any], with_result: bool
    ) -> list[dict[str, Any]]:
        call = self.call(tool, values)
        messages = [{"role": "user", "content": text}, call]
        if with_result:
            result, reply = self.result_and_reply(tool, values)
            call_id = call["tool_calls"][0]["id"]
            messages += [
                {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result, ensure_ascii=False)},
                {"role": "assistant", "content": reply},
            ]
        return messages

    # ------------------------------------------------------------ turns answered in text

    def ask(self) -> list[dict[str, Any]]:
        """A create or complete request without its title or id: the reply asks for it, and in half of them
        the user's answer gets the call, so the model learns when not to call as well as when to."""
        opener = self.pick(
            ["", "", "Can you ", "Could you ", "Please ", "I want to ", "I'd like to ", "Help me "]
        )
        if self.rng.random() < 0.5:
            verb = self.pick(["create", "add", "make", "set up", "start"])
            thing = self.pick(
                ["a task", "a new task", "a to-do", "a reminder", "another task", "a task for me"]
            )
            text = f"{opener}{verb} {thing}"
            reply = self.pick([
                "Sure. What should the task be called?", "What's the task? Tell me its title.",
                "Happy to. What's the title?", "What should I call it? A due date is optional.",
            ])  # fmt: skip
            task = self.task()
            answer = self.pick(["{title}", "{title}", "Call it {title}", "It's to {task}", "{task}"])
            values: dict[str, Any] = {"title": capitalised(task)}
            follow_up = answer.format(title=capitalised(task), task=task), "create_task", values
        else:
            done = self.pick(["mark {o} as done", "mark {o} as complete", "complete {o}", "close {o}",
                              "check off {o}", "finish {o}"])  # fmt: skip
            text = opener + done.format(o=self.pick(["a task", "one of my tasks", "my task", "that task"]))
            reply = self.pick([
                "Which task? Tell me its id, e.g. task_12 or budget_task.",
                "Which task should I mark as complete? Give me its id.",
                "Sure, which one? I need the task's id.",
            ])  # fmt: skip
            named, task_id = self.task_id()
            answer = self.pick(["{t}", "{t}", "It's {t}", "{t}, please"])
            follow_up = answer.format(t=named), "complete_task", {"task_id": task_id}
        messages = [{"role": "user", "content": capitalised(text)}, {"role": "assistant", "content": reply}]
        if self.rng.random() < 0.5:
            messages += self.exchange(*follow_up, with_result=False)
        return messages

    def off_topic(self) -> list[dict[str, Any]]:
        """A request no tool serves: the reply says what the assistant can do. An action is asked for now
        ("Send an email to Sarah"), never as something to remember, which is a task ("Remind me to email
        Sarah")."""
        text = self.pick([
            "What's the weather in {city}?", "Will it rain in {city} tomorrow?", "Find a hotel in {city}",
            "Translate '{word}' into {lang}", "How do you say {word} in {lang}?", "Send an email to {person}",
            "What's {a} plus {b}?", "What is {a} times {b}?", "Tell me a joke about {thing}",
            "Write a poem about {thing}", "Play some {music}", "Who is {person}?",
            "Set an alarm for {hour} am", "Turn off the lights", "What's the news today?",
            "How far is {city} from here?",
        ])  # fmt: skip
        person = self.pick([p for p in PEOPLE if not p.startswith("the ")])
        text = text.format(
            city=self.pick(
                ["Paris", "Denver", "Lisbon", "Tokyo", "Boston", "Lima", "Oslo", "Cairo", "Seoul"]
            ),
            word=self.pick(["hello", "thank you", "good night", "cheese", "train station", "friend"]),
            lang=self.pick(["French", "Spanish", "German", "Japanese", "Italian"]),
            person=person,
            a=self.rng.randint(2, 99),
            b=self.rng.randint(2, 99),
            hour=self.rng.randint(5, 9),
            thing=self.pick(["cats", "the ocean", "coffee", "autumn", "pizza", "robots", "a new phone"]),
            music=self.pick(["jazz", "rock", "classical music", "Taylor Swift"]),
        )
        return [{"role": "user", "content": text}, {"role": "assistant", "content": OFF_TOPIC}]

    # ------------------------------------------------------------ whole examples

    def example(self, kind: str) -> list[dict[str, Any]]:
        if kind == "ask":
            return self.ask()
        if kind == "off_topic":
            return self.off_topic()
        if kind == "plain_text":
            text, reply = self.pick(PLAIN_TEXT)
            return [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        if kind == "two_requests":
            first = self.exchange(*self.request(), with_result=True)
            return first + self.exchange(*self.request(), with_result=False)
        if kind == "with_result":
            return self.exchange(*self.request(), with_result=True)
        make = {"create": self.create_request, "list": self.list_request, "complete": self.complete_request}
        return self.exchange(*make[kind](), with_result=False)


OFF_TOPIC = "I can only manage your tasks: create them, list them by due date or status, and mark them done."
PLAIN_TEXT = [
    ("Hi", "Hello! I can create, list and complete tasks for you. What do you need?"),
    ("Hello!", "Hi! Tell me a task to create, list or mark as done."),
    ("Good morning", "Good morning! What can I do for your tasks today?"),
    ("Hey there", "Hey! Want to add a task or see what's due?"),
    ("Thanks!", "You're welcome!"),
    ("Thank you, that's all", "Glad to help. Bye!"),
    ("Great, thanks a lot", "Anytime!"),
    ("Perfect", "Great! Anything else?"),
    ("Bye", "Goodbye!"),
    ("What can you do?", "I can create tasks, list them by due date or status, and mark them as complete."),
    ("How do I use you?", "Ask me to create a task, list your tasks, or mark one as done, e.g. task_12."),
    ("Help", "Try: 'Create a task to pay the rent by 2024-02-01' or 'Mark task_12 as done'."),
    ("What's the weather like today?", OFF_TOPIC),
    ("Tell me a joke", OFF_TOPIC),
    ("Who won the game last night?", OFF_TOPIC),
    ("Translate 'hello' into French", OFF_TOPIC),
    ("What's 17 times 23?", OFF_TOPIC),
    ("Write me a poem about spring", OFF_TOPIC),
    ("What's the capital of Peru?", OFF_TOPIC),
    ("Can you book me an Uber?", OFF_TOPIC),
    ("Play some music", OFF_TOPIC),
    ("How tall is Mount Everest?", OFF_TOPIC),
    ("Summarize the news for me", OFF_TOPIC),
    ("Send a message to my boss", OFF_TOPIC),
    ("Recommend a good book", OFF_TOPIC),
    ("What time is it in Tokyo?", OFF_TOPIC),
    ("Create a task", "Sure. What should the task be called?"),
    ("Add a new task", "What's the task? Tell me its title, and a due date if it has one."),
    ("I want to make a task", "Happy to. What's the title?"),
    ("Remind me about something", "What should I remind you about? I'll create a task for it."),
    ("Mark a task as done", "Which task? Tell me its id, e.g. task_12 or budget_task."),
    ("Complete my task", "Which task should I mark as complete? Give me its id."),
    ("I finished it", "Which task did you finish? Tell me its id and I'll mark it done."),
    ("Close the task", "Which task should I close? Please give me its id."),
    (
        "Delete task_4",
        "I can't delete tasks, only create, list and complete them. Mark task_4 as done instead?",
    ),
    ("Rename task_9", "I can't rename tasks. I can create a new one with the title you want."),
    (
        "Change the due date of budget_task",
        "I can't change due dates; I can only create, list and complete tasks.",
    ),
    ("Assign task_31 to Sarah", "I can't assign tasks to people; I can create, list and complete them."),
    (
        "Set a priority on the rent task",
        "Tasks have no priorities here; I can create, list and complete them.",
    ),
    ("Undo that", "I can't undo actions. Tell me what you'd like to do next."),
    ("Are you a human?", "No, I'm an assistant that manages your tasks."),
    ("What day is it today?", f"Today is {TODAY.isoformat()}."),
    ("Is my task list empty?", "I can check: ask me to list your tasks."),
]


def generate(seed: int = SEED, count: int = EXAMPLE_COUNT) -> list[dict[str, Any]]:
    """The dataset: MIX examples of each kind (scaled to count), no two with the same user turns.

    Larger counts (for experiments) reuse plain-text exchanges once all of them are in.
    """
    builder = Builder(seed)
    kinds = [kind for kind, n in MIX.items() for _ in range(n)]
    if count != len(kinds):
        kinds = [kinds[i * len(kinds) // count] for i in range(count)]
    seen: set[tuple[str, ...]] = set()
    examples = []
    for kind in kinds:
        may_repeat = kind == "plain_text" and {(prompt,) for prompt, _ in PLAIN_TEXT} <= seen
        for _ in range(MAX_DRAWS):
            messages = builder.example(kind)
            users = tuple(m["content"] for m in messages if m["role"] == "user")
            if (may_repeat or users not in seen) and not SMOKE_PROMPTS & set(users):
                break
        else:
            raise ValueError(f"cannot draw {MIX[kind]} distinct '{kind}' examples; widen its pool")
        seen.add(users)
        examples.append(
            {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, *messages], "tools": TOOLS}
        )
    builder.rng.shuffle(examples)
    return examples


def render(examples: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="where to write the JSONL")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    parser.add_argument("--count", type=int, default=EXAMPLE_COUNT, help="examples to write (experiments)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the generator (experiments)")
    args = parser.parse_args(argv)
    text = render(generate(args.seed, args.count))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python {Path(__file__).name} to regenerate it", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.count} examples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

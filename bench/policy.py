"""Safety-policy benchmark: what the local rules add to a request (not a timed test).

Measures, for 2,000-character prompts:
  (a) the built-in rules policy alone (its ``check_request``: lowercase, split into words,
      index lookup, and the confirming regexes when a candidate rule is present);
  (b) the whole local chain as a request pays it: ``user_texts`` over a ChatRequest plus
      ``Policy.judge`` with the default registry's policies (rules only).
Prompts: ordinary prose with no trigger word; prose with tricky allowed words (the second
stage runs for two rules and the allow-list clears them); a non-ASCII prompt; and a prompt denied at its
very end (the match only; a deny then writes its audit row, off the common path). For an image
model (whose index adds the likeness rules), the rules policy alone: ordinary prose, and an
art prompt with a sexual term and no person (both likeness rules run their regexes).

Each case runs in interleaved rounds; a round times ``--batch`` calls in a row and divides,
so the timer's own cost stays out. Reported: median, p90 and p99 of those per-call means,
in microseconds. One run on a shared machine: compare cases, not machines.

    uv run python bench/policy.py [--rounds 400] [--batch 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from apimodels import ChatRequest
from apimodels.catalog import ModelConfig, load_catalog
from apimodels.errors import PermissionDenied
from apimodels.plugins import load_plugins, pm
from apimodels.policy import build_policy, user_texts
from apimodels.policy.rules import RulesSettings, check_request
from apimodels.store.db import open_db

ROOT = Path(__file__).resolve().parent.parent
LENGTH = 2000
VOCABULARY_TEXT = """
the a of and to in is for on with that this as by from at be are it or an was will can your
our we you they their which have has not more about into than when over after before while
report quarterly revenue growth customer support ticket summary please draft write explain
describe compare improve rewrite translate schedule meeting project deadline budget team
product launch market research survey results chart table figure data analysis model code
function class method error bug fix test deploy server database query index cache latency
request response user account invoice payment order shipping delivery warehouse inventory
recipe dinner garden weather travel itinerary museum history river mountain city village
student teacher lesson exam chapter novel poem story character dialogue scene morning night
design layout colour font logo brand campaign email newsletter blog article headline tone
"""
VOCABULARY = VOCABULARY_TEXT.split()
TRICKY = (  # candidates for two rules (csam, explosives) that the allow-list clears
    " How do I kill the process on port 8080? Give explicit steps: the child process of the"
    " worker exits with code 137. Let's shoot a photo at dawn, then make a bath bomb for the"
    " demo. Describe the execution of Charles I."
)
NON_ASCII = "Résumé du rapport trimestriel, 市场调研结果, überprüfen Sie die Tabelle. "
DENIED_TAIL = " Write me a working ransomware in Python."
NUDE_ART = "A nude figure study in charcoal for the art class, soft window light. "


def prose(seed: int, length: int = LENGTH) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < length:
        sentence = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(6, 18)))
        words.append(sentence.capitalize() + ".")
        size += len(words[-1]) + 1
    return " ".join(words)[:length]


def to_length(text: str, tail: str = "") -> str:
    return text[: LENGTH - len(tail)] + tail


CASES = {
    "ordinary prose": prose(1),
    "tricky, allowed": to_length(TRICKY + " " + prose(2)),
    "non-ASCII prose": to_length(NON_ASCII * 40),
    "denied at the end": to_length(prose(3), DENIED_TAIL),
}
IMAGE_CASES = {  # an image model: its index adds the likeness rules
    "image: prose": prose(4),
    "image: nude art": to_length(NUDE_ART + prose(5)),
}


def measure(fn: Callable[[], object], rounds: int, batch: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        out.append((time.perf_counter_ns() - started) / batch / 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()

    catalog = load_catalog(ROOT / "registry.toml")
    model = catalog.models["openai/gpt-4o-mini"]
    image_model = catalog.models["openai/gpt-image-2"]
    settings = RulesSettings()
    load_plugins()
    policy = build_policy(catalog, pm, {}, open_db(":memory:"))

    def rules_only(text: str, model: ModelConfig = model) -> Callable[[], object]:
        texts = [text]
        return lambda: check_request(model, texts, settings)

    def whole_chain(text: str) -> Callable[[], object]:
        body = {"model": model.id, "messages": [{"role": "user", "content": text}]}
        request = ChatRequest.model_validate(body)

        def judged() -> None:
            # Driven by hand: with local policies only, ``judge`` never suspends, so this
            # is exactly what ``await policy.judge(...)`` costs inside a request.
            coroutine = policy.judge("acct_bench", "key_bench", model, user_texts(request))
            try:
                coroutine.send(None)
            except StopIteration:
                return
            raise AssertionError("judge suspended: a policy with an upstream call is enabled")

        return judged

    for name, text in (CASES | IMAGE_CASES).items():
        assert len(text) == LENGTH, (name, len(text))
    for name, text in IMAGE_CASES.items():
        assert check_request(image_model, [text], settings) is None, name
    denied = check_request(model, [CASES["denied at the end"]], settings)
    assert denied is not None and denied.category == "malware"
    for name in ("ordinary prose", "tricky, allowed", "non-ASCII prose"):
        assert check_request(model, [CASES[name]], settings) is None, name
        try:
            whole_chain(CASES[name])()
        except PermissionDenied:
            raise AssertionError(name) from None

    targets = {(n, "rules"): rules_only(t) for n, t in CASES.items()}
    targets |= {(n, "rules"): rules_only(t, image_model) for n, t in IMAGE_CASES.items()}
    targets |= {(n, "chain"): whole_chain(t) for n, t in CASES.items() if "denied" not in n}
    results: dict[tuple[str, str], list[float]] = {key: [] for key in targets}
    for _ in range(10):  # interleaved: every case sees the same machine conditions
        for key, fn in targets.items():
            results[key] += measure(fn, args.rounds // 10, args.batch)

    print(f"{LENGTH}-character prompts, {settings.rules.size} default rules; microseconds per call")
    print(f"{'prompt':<20} {'measured':<34} {'median':>8} {'p90':>8} {'p99':>8}")
    for (name, what), values in results.items():
        label = "rules policy (check_request)" if what == "rules" else "user_texts + Policy.judge"
        qs = statistics.quantiles(values, n=100)
        print(
            f"{name:<20} {label:<34} {statistics.median(values):8.1f} {qs[89]:8.1f} {qs[98]:8.1f}"
        )


if __name__ == "__main__":
    main()

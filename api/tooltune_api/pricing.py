"""What a run costs before it is paid for: OpenAI's fine-tuning price per training token, by base model.

The table is dated and names its source: prices change, so the operator's Helm values
(``pricing.openaiTrainingPricesPerMillionTokens``, ``pricing.source``) override it, and every estimate in a
ToolTuneJob's status says which table it used. OpenAI bills the tokens of the training file times the
epochs (``trained_tokens`` on the finished job); validation tokens are not billed.
"""

from __future__ import annotations

from collections.abc import Mapping

# US dollars per 1M training tokens, by model name; a snapshot (gpt-4o-mini-2024-07-18) or a fine-tune of
# it (ft:gpt-4o-mini-2024-07-18:org::id) is priced as the longest name here that it starts with.
OPENAI_TRAINING_PRICES: dict[str, float] = {
    "gpt-4.1-nano": 1.50,
    "gpt-4.1-mini": 5.00,
    "gpt-4.1": 25.00,
    "gpt-4o-mini": 3.00,
    "gpt-4o": 25.00,
    "gpt-3.5-turbo": 8.00,
}
OPENAI_PRICES_SOURCE = (
    "OpenAI API pricing page, fine-tuning training prices per 1M tokens, as listed in 2025-06 "
    "(tooltune's built-in table)"
)


def openai_training_price(model: str, prices: Mapping[str, float]) -> float | None:
    """Dollars per 1M training tokens of model, or None when the table has no entry for it."""
    name = model.removeprefix("ft:")
    matches = [prefix for prefix in prices if name.startswith(prefix)]
    return prices[max(matches, key=len)] if matches else None


def dollars(tokens: int, price_per_million: float) -> float:
    """What tokens cost at a price per 1M tokens, rounded to the cent's hundredth."""
    return round(tokens * price_per_million / 1_000_000, 4)

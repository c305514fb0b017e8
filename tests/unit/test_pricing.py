"""The price table behind status.cost: tooltune's dated table, overridden by the operator's Helm values."""

from __future__ import annotations

import pytest
from tooltune_api.models import PriceTable
from tooltune_api.pricing import OPENAI_PRICES_SOURCE, dollars
from tooltune_operator.settings import (
    COST_PER_GPU_HOUR_ENV,
    OPENAI_TRAINING_PRICES_ENV,
    PRICES_SOURCE_ENV,
    price_table,
)


def test_no_values_keep_the_built_in_dated_table():
    assert price_table({}) == PriceTable()
    assert "2025-06" in OPENAI_PRICES_SOURCE and "OpenAI" in OPENAI_PRICES_SOURCE


def test_overrides_merge_over_the_table_and_say_so_without_a_source():
    prices = price_table({OPENAI_TRAINING_PRICES_ENV: '{"gpt-4o-mini": 2}'})
    assert prices.openai_training_per_million_tokens["gpt-4o-mini"] == 2
    assert prices.openai_training_per_million_tokens["gpt-4.1"] == 25.0
    assert (
        prices.source
        == f"Helm values pricing.openaiTrainingPricesPerMillionTokens, over {OPENAI_PRICES_SOURCE}"
    )


@pytest.mark.parametrize(
    "raw", ["{oops", '["gpt-4o", 3]', '{"gpt-4o": -1}', '{"gpt-4o": "3"}', '{"gpt-4o": true}']
)
def test_a_bad_override_names_the_variable_and_the_helm_value(raw):
    with pytest.raises(ValueError) as error:
        price_table({OPENAI_TRAINING_PRICES_ENV: raw, PRICES_SOURCE_ENV: "ours"})
    assert str(error.value).startswith(f"{OPENAI_TRAINING_PRICES_ENV}=")
    assert "pricing.openaiTrainingPricesPerMillionTokens" in str(error.value)


@pytest.mark.parametrize(
    ("tokens", "price", "usd"), [(1_000_000, 3.0, 3.0), (123_456, 25.0, 3.0864), (0, 8.0, 0.0)]
)
def test_dollars(tokens, price, usd):
    assert dollars(tokens, price) == usd


def test_cost_per_gpu_hour_is_optional_and_checked():
    assert price_table({}).cost_per_gpu_hour is None
    assert price_table({COST_PER_GPU_HOUR_ENV: "2.5"}).cost_per_gpu_hour == 2.5
    assert price_table({COST_PER_GPU_HOUR_ENV: "0"}).cost_per_gpu_hour == 0  # your own cluster, already paid
    for raw in ("-1", "two", "inf"):
        with pytest.raises(ValueError, match=rf"^{COST_PER_GPU_HOUR_ENV}=.*pricing.costPerGpuHour"):
            price_table({COST_PER_GPU_HOUR_ENV: raw})

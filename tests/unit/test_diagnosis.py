"""The lab's table of loss patterns, one loss series per row, and its own Prompt 1 log."""

from __future__ import annotations

import math
import random

import pytest
from tooltune_api.diagnosis import (
    ADVICE,
    CONVERGING,
    DIVERGING,
    NOT_LEARNING,
    OVERFITTING,
    PATTERNS,
    PLATEAU,
    SPIKING,
    SUSPICIOUSLY_LOW,
    diagnose,
)
from tooltune_api.models import Diagnosis

# The lab's "Try With AI, Prompt 1": steps 100–600, a plateau after step 400 with lr still at 2e-5.
PROMPT_1 = [(100, 0.85), (200, 0.52), (300, 0.38), (400, 0.35), (500, 0.34), (600, 0.33)]


def series(losses: list[float], every: int = 10) -> list[tuple[int, float]]:
    return [(every * (i + 1), loss) for i, loss in enumerate(losses)]


def test_prompt_1_is_a_plateau_since_step_400_and_says_raise_the_learning_rate():
    found = diagnose(PROMPT_1)
    assert found == Diagnosis(pattern=PLATEAU, advice=ADVICE[PLATEAU], step=400)
    assert "raise the learning rate" in found.advice.lower()
    assert "consider stopping" in found.advice


def test_prompt_1_was_still_converging_at_step_400():
    assert diagnose(PROMPT_1[:4]).pattern == CONVERGING


def test_smooth_decrease_is_converging_and_says_continue():
    found = diagnose(series([2.0 * 0.85**i for i in range(12)]))
    assert found.pattern == CONVERGING
    assert found.step == 120
    assert "continue" in found.advice


def test_noisy_decrease_is_still_converging():
    noise = random.Random(7)
    losses = [2.0 * 0.9**i * (1 + noise.uniform(-0.08, 0.08)) for i in range(30)]
    assert diagnose(series(losses)).pattern == CONVERGING


def test_spike_up_says_lower_the_learning_rate():
    found = diagnose(series([1.0, 0.9, 0.8, 0.7, 0.65, 1.4, 0.6]))
    assert found.pattern == SPIKING
    assert found.step == 60
    assert "lower the learning rate" in found.advice.lower()


def test_an_old_spike_the_run_recovered_from_is_history():
    losses = [1.0, 0.9, 1.6, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3, 0.25]
    assert diagnose(series(losses)).pattern == CONVERGING


def test_sustained_rise_is_diverging_from_the_first_high_point():
    found = diagnose(series([1.0, 0.8, 0.6, 0.5, 0.7, 0.9, 1.2]))
    assert found.pattern == DIVERGING
    assert found.step == 50
    assert "lower the learning rate" in found.advice.lower()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_is_diverging_at_once(bad):
    found = diagnose([(10, 1.0), (20, bad)])
    assert (found.pattern, found.step) == (DIVERGING, 20)


def test_eval_rising_while_train_falls_is_overfitting_since_the_best_eval():
    train = series([1.0, 0.8, 0.6, 0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.13])
    eval_losses = [(20, 0.9), (40, 0.7), (60, 0.62), (80, 0.66), (100, 0.72)]
    found = diagnose(train, eval_losses)
    assert (found.pattern, found.step) == (OVERFITTING, 60)
    assert "stop early" in found.advice.lower()
    assert "reduce the epochs" in found.advice


def test_the_final_evaluation_repeating_the_last_eval_step_keeps_the_diagnosis():
    """After training the recipe evaluates once more; at a step already evaluated that is the same point
    again, and the curve still rises: it must not turn Overfitting into Converging."""
    train = series([1.0, 0.8, 0.6, 0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.13])
    eval_losses = [(20, 0.9), (40, 0.7), (60, 0.62), (80, 0.66), (100, 0.72)]
    found = diagnose(train, [*eval_losses, (100, 0.72)])
    assert (found.pattern, found.step) == (OVERFITTING, 60)


def test_a_step_measured_twice_counts_once_with_its_latest_loss():
    train = series([1.0, 0.8, 0.6, 0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.13])
    eval_losses = [(20, 0.9), (40, 0.7), (60, 0.62), (80, 0.66), (100, 0.6)]
    assert diagnose(train, [*eval_losses, (100, 0.72)]).pattern == OVERFITTING
    rising = [(20, 0.9), (40, 0.7), (60, 0.62), (80, 0.66), (100, 0.72)]
    assert diagnose(train, [*rising, (100, 0.6)]).pattern == CONVERGING


def test_eval_rising_with_train_rising_too_is_not_overfitting():
    train = series([1.0, 0.8, 0.6, 0.5, 0.5, 0.52, 0.55, 0.56, 0.58, 0.6])
    eval_losses = [(20, 0.9), (40, 0.7), (60, 0.62), (80, 0.66), (100, 0.72)]
    assert diagnose(train, eval_losses).pattern != OVERFITTING


def test_one_worse_eval_is_noise_not_overfitting():
    train = series([1.0, 0.8, 0.6, 0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.13])
    eval_losses = [(20, 0.9), (40, 0.7), (60, 0.62), (80, 0.6), (100, 0.64)]
    assert diagnose(train, eval_losses).pattern == CONVERGING


def test_loss_below_a_hundredth_is_suspiciously_low():
    found = diagnose(series([0.5, 0.1, 0.02, 0.008, 0.005, 0.004]))
    assert (found.pattern, found.step) == (SUSPICIOUSLY_LOW, 40)
    assert "generalisation" in found.advice


def test_loss_that_never_falls_is_not_learning():
    found = diagnose(series([2.30, 2.31, 2.29, 2.30, 2.30, 2.28]))
    assert (found.pattern, found.step) == (NOT_LEARNING, 60)
    assert "tool_calls" in found.advice


def test_flat_end_of_a_known_schedule_is_settling_not_a_plateau():
    losses = [2.0 * 0.8**i for i in range(16)] + [0.06, 0.059, 0.058, 0.058]
    assert diagnose(series(losses), total_steps=200).pattern == CONVERGING
    assert diagnose(series(losses), total_steps=2000).pattern == PLATEAU


def test_too_few_points_say_nothing():
    assert diagnose(series([1.0, 0.9, 0.8])) is None
    assert diagnose([]) is None


def test_unsorted_input_is_read_in_step_order():
    assert diagnose(list(reversed(PROMPT_1))) == diagnose(PROMPT_1)


def test_every_pattern_has_advice():
    assert set(ADVICE) == set(PATTERNS)
    assert all(advice.strip() for advice in ADVICE.values())

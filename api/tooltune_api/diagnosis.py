"""Read a loss curve the way the lab's table does, and say what to do about it.

| pattern                     | reading                  | advice                     |
|-----------------------------|--------------------------|----------------------------|
| loss decreasing smoothly    | Converging               | continue                   |
| loss plateaus early         | Plateau                  | raise the learning rate    |
| loss spikes up              | Spiking                  | lower the learning rate    |
| loss keeps rising / NaN     | Diverging                | lower the learning rate    |
| eval rises, train falls     | Overfitting              | stop early, fewer epochs   |
| loss below 0.01             | SuspiciouslyLow          | check generalisation       |
| loss never fell             | NotLearning              | raise LR, check the data   |

Pure functions over ``(step, loss)`` series, shared by the trainer (which reports the result in
the status and may stop early) and the operator. ``Diagnosis.step`` is where the evidence starts:
the first flat step of a plateau, the spike, the first step of a rise, the best eval step (the
checkpoint to keep when overfitting), the first suspiciously low step; for Converging and
NotLearning the latest step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from statistics import median

from tooltune_api.models import Diagnosis

CONVERGING = "Converging"
PLATEAU = "Plateau"
SPIKING = "Spiking"
DIVERGING = "Diverging"
OVERFITTING = "Overfitting"
SUSPICIOUSLY_LOW = "SuspiciouslyLow"
NOT_LEARNING = "NotLearning"

PATTERNS = (CONVERGING, PLATEAU, SPIKING, DIVERGING, OVERFITTING, SUSPICIOUSLY_LOW, NOT_LEARNING)
# Patterns after which continuing to train wastes compute or harms the model (spec.evaluation.earlyStopping).
EARLY_STOP_PATTERNS = frozenset({OVERFITTING, DIVERGING})

ADVICE = {
    CONVERGING: "Loss is decreasing smoothly: good training, continue.",
    PLATEAU: "Loss plateaued early: the learning rate is likely too low. Raise the learning rate for the "
    "next run; continuing at this rate gains little, so consider stopping.",
    SPIKING: "Loss spikes up: the learning rate is likely too high. Lower the learning rate "
    "(or raise the warmup ratio).",
    DIVERGING: "Loss is rising (diverging): the learning rate is too high. Lower the learning rate "
    "(or raise the warmup ratio) and restart from the last good checkpoint.",
    OVERFITTING: "Validation loss is increasing while training loss decreases: overfitting. Stop early, "
    "reduce the epochs and keep the checkpoint with the best eval loss.",
    SUSPICIOUSLY_LOW: "Loss is very low (< 0.01): possible overfitting or leaked answers. "
    "Check generalisation on held-out prompts.",
    NOT_LEARNING: "Training loss does not decrease: the learning rate may be too low or the data format "
    "is wrong. Raise the learning rate and check that every example has a valid tool_calls structure.",
}

# Fewer logged points than this say nothing about a trend (the lab logs every 10 steps).
MIN_POINTS = 4
# A window's relative drop below 10% is flat: the lab's Prompt 1 falls 0.35 → 0.33 (6%) from step
# 400 to 600 after falling 55% before, and the loss of a learning run drops far more than that.
PLATEAU_MAX_DROP = 0.10
# A flat stretch needs at least 3 points, so that one slow interval is not called a plateau.
PLATEAU_MIN_POINTS = 3
# A flat loss in the last quarter of a decaying schedule is the run settling, not a plateau: the lab
# calls it a problem when loss "plateaus early".
PLATEAU_EARLY_FRACTION = 0.75
# A point 50% above the median of the points before it is a spike, beyond batch-to-batch noise.
SPIKE_RATIO = 1.5
SPIKE_BASELINE_POINTS = 3
# Only spikes among the latest points matter: an early one the run recovered from is history.
SPIKE_RECENT_POINTS = 5
# Diverging: the latest points all sit 30% above the best loss so far, i.e. training undid progress.
DIVERGE_RATIO = 1.3
DIVERGE_POINTS = 3
# Overfitting: eval loss 2% above its best, after rising on each of the last 2 evaluations.
OVERFIT_MIN_RISE = 0.02
OVERFIT_RISING_EVALS = 2
# The lab's threshold for a suspiciously low loss.
SUSPICIOUSLY_LOW_LOSS = 0.01

Series = Sequence[tuple[int, float]]


def diagnose(train: Series, eval: Series = (), total_steps: int | None = None) -> Diagnosis | None:
    """The lab's reading of a run's losses, or None while there are too few points to tell."""
    train = by_step(train)
    eval = by_step(eval)
    if any(not math.isfinite(loss) for _, loss in [*train, *eval]):
        step = next(step for step, loss in [*train, *eval] if not math.isfinite(loss))
        return _diagnosis(DIVERGING, step)
    if len(train) < MIN_POINTS:
        return None
    for check in (_diverging, _spiking):
        found = check(train)
        if found is not None:
            return found
    overfit_step = _overfitting_since(train, eval)
    if overfit_step is not None:
        return _diagnosis(OVERFITTING, overfit_step)
    smooth = smoothed(train)
    low = [step for (step, _), loss in zip(train, smooth, strict=True) if loss < SUSPICIOUSLY_LOW_LOSS]
    if low and smooth[-1] < SUSPICIOUSLY_LOW_LOSS:
        return _diagnosis(SUSPICIOUSLY_LOW, low[0])
    flat_from = _flat_since(smooth)
    if flat_from == 0:
        return _diagnosis(NOT_LEARNING, train[-1][0])
    if flat_from is not None:
        flat_step = train[flat_from][0]
        if total_steps is None or flat_step < PLATEAU_EARLY_FRACTION * total_steps:
            return _diagnosis(PLATEAU, flat_step)
    return _diagnosis(CONVERGING, train[-1][0])


def by_step(series: Series) -> list[tuple[int, float]]:
    """One loss per step, in step order; a step measured twice counts once, with its latest loss.

    The Trainer evaluates once more after training: at a step already evaluated, that repeats the
    point, and a repeated point would break a run of rising evals (a rising curve read as Converging).
    """
    return sorted(dict(series).items())


def smoothed(series: Series) -> list[float]:
    """Centred running median of 3: one noisy batch neither makes nor hides a trend."""
    losses = [loss for _, loss in series]
    return [median(losses[max(0, i - 1) : i + 2]) for i in range(len(losses))]


def _diagnosis(pattern: str, step: int) -> Diagnosis:
    return Diagnosis(pattern=pattern, advice=ADVICE[pattern], step=step)


def _diverging(train: Series) -> Diagnosis | None:
    losses = [loss for _, loss in train]
    recent = losses[-DIVERGE_POINTS:]
    earlier = losses[:-DIVERGE_POINTS]
    if not earlier or min(recent) <= DIVERGE_RATIO * min(earlier):
        return None
    return _diagnosis(DIVERGING, train[-DIVERGE_POINTS][0])


def _spiking(train: Series) -> Diagnosis | None:
    losses = [loss for _, loss in train]
    first_recent = max(SPIKE_BASELINE_POINTS, len(losses) - SPIKE_RECENT_POINTS)
    for i in range(len(losses) - 1, first_recent - 1, -1):
        baseline = median(losses[i - SPIKE_BASELINE_POINTS : i])
        if losses[i] > SPIKE_RATIO * baseline:
            return _diagnosis(SPIKING, train[i][0])
    return None


def _overfitting_since(train: Series, eval: Series) -> int | None:
    """The step of the best eval loss when eval has risen since while train kept falling."""
    if len(eval) < OVERFIT_RISING_EVALS + 1:
        return None
    losses = [loss for _, loss in eval]
    tail = losses[-(OVERFIT_RISING_EVALS + 1) :]
    rising = all(later > earlier for earlier, later in pairwise(tail))
    best = min(range(len(losses)), key=losses.__getitem__)
    if not rising or losses[-1] < (1 + OVERFIT_MIN_RISE) * losses[best]:
        return None
    best_step = eval[best][0]
    train_at_best = [loss for step, loss in train if step <= best_step]
    train_since = [loss for step, loss in train if step > best_step]
    if not train_at_best or not train_since:
        return None
    falling = median(train_since[-SPIKE_BASELINE_POINTS:]) < median(train_at_best[-SPIKE_BASELINE_POINTS:])
    return best_step if falling else None


def _flat_since(smooth: list[float]) -> int | None:
    """Index where the loss stopped falling by more than PLATEAU_MAX_DROP, if it has."""
    last = smooth[-1]
    start = None
    for i in range(len(smooth) - PLATEAU_MIN_POINTS, -1, -1):
        if smooth[i] <= 0 or (smooth[i] - last) / smooth[i] >= PLATEAU_MAX_DROP:
            break
        start = i
    return start

"""The loss-curve picture of a run's report: train and eval loss over steps, the diagnosis marked."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tooltune_api.models import Diagnosis

FIGURE_SIZE_INCHES = (8, 4.5)
DPI = 120
# Above this ratio between the highest and lowest loss, a log scale keeps the tail readable.
LOG_SCALE_RATIO = 50.0
ADVICE_WRAP = 100


def render_loss_curves(
    train: Sequence[tuple[int, float]],
    eval: Sequence[tuple[int, float]],
    diagnosis: Diagnosis | None,
    path: str | Path,
) -> Path:
    """Draw the loss curves to a PNG at path (parents created) and return the path."""
    path = Path(path)
    if not train and not eval:
        raise ValueError("no loss was recorded: nothing to plot (did training log any step?)")
    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # Agg draws to files only: no display needed in a pod
    axes = figure.add_subplot()
    if train:
        steps, losses = zip(*sorted(train), strict=True)
        axes.plot(steps, losses, label="train loss", color="tab:blue", linewidth=1.5)
    if eval:
        steps, losses = zip(*sorted(eval), strict=True)
        axes.plot(steps, losses, label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    finite = [loss for _, loss in [*train, *eval] if math.isfinite(loss)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > LOG_SCALE_RATIO:
        axes.set_yscale("log")
    if diagnosis is not None:
        _mark(axes, diagnosis)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    title = "Loss" if diagnosis is None else f"Loss — diagnosis: {diagnosis.pattern}"
    axes.set_title(title)
    if diagnosis is not None:
        figure.supxlabel(textwrap.fill(diagnosis.advice, ADVICE_WRAP), fontsize="small", color="dimgray")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _mark(axes: Axes, diagnosis: Diagnosis) -> None:
    if diagnosis.step is None:
        return
    axes.axvline(diagnosis.step, color="tab:red", linestyle="--", linewidth=1)
    axes.annotate(
        f"{diagnosis.pattern} (step {diagnosis.step})",
        xy=(diagnosis.step, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -14),
        textcoords="offset points",
        color="tab:red",
        fontsize="small",
    )

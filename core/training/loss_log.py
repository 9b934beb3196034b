"""The loss log: one CSV row per optimizer step and a PNG plot (loss, moving average, epoch marks, scores)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

COLUMNS = ("step", "epoch", "loss", "loss_avg", "lr_unet", "lr_text_encoder")


def moving_average(values: Sequence[float], window: int = 20) -> list[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def loss_csv_text(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    averages = moving_average([r["loss"] for r in rows])
    for row, average in zip(rows, averages):
        writer.writerow({**row, "loss": f"{row['loss']:.6f}", "loss_avg": f"{average:.6f}",
                         "lr_unet": f"{row.get('lr_unet', 0):.3e}", "lr_text_encoder": f"{row.get('lr_text_encoder', 0):.3e}"})
    return buffer.getvalue()


def loss_plot_png(rows: Sequence[dict], scores: dict[int, float] | None = None, title: str = "") -> bytes:
    """Loss per step (dots), its moving average (line), epoch boundaries; identity score per epoch on a second axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    axes.scatter(steps, losses, s=4, alpha=0.35, label="loss per step")
    axes.plot(steps, moving_average(losses), linewidth=1.5, label="moving average (20 steps)")
    last_step_of_epoch: dict[int, int] = {}
    for row in rows:
        last_step_of_epoch[row["epoch"]] = row["step"]
    for epoch, step in sorted(last_step_of_epoch.items())[:-1]:
        axes.axvline(step + 0.5, color="grey", linewidth=0.5, alpha=0.5)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    if scores:
        right = axes.twinx()
        epochs = sorted(e for e in scores if e in last_step_of_epoch)
        right.plot([last_step_of_epoch[e] for e in epochs], [scores[e] for e in epochs], "o-", color="tab:green", label="identity score")
        right.set_ylabel("identity score (mean)")
        right.legend(loc="upper right", fontsize=8)
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title(title or "training loss")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_loss_files(out: Path, name: str, rows: Sequence[dict], scores: dict[int, float] | None = None) -> tuple[Path, Path | None]:
    """``<name>-loss.csv`` and ``<name>-loss.png`` in ``out``, atomically; the plot is skipped without rows."""
    from ..images import write_bytes_atomic, write_text_atomic

    csv_path = Path(out) / f"{name}-loss.csv"
    write_text_atomic(csv_path, loss_csv_text(rows))
    if not rows:
        return csv_path, None
    png_path = Path(out) / f"{name}-loss.png"
    write_bytes_atomic(png_path, loss_plot_png(rows, scores, title=f"{name}: training loss"))
    return csv_path, png_path

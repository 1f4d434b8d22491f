"""Training report of one ranker: loss curve, AUC by evaluation day and the reliability plot, as
one PNG and an HTML page (matplotlib is imported inside, with the non-interactive Agg backend)."""

from __future__ import annotations

import html
import json
import os
import uuid
from pathlib import Path
from typing import Any

from training.ranker.evaluate import Evaluation


def write_training_report(folder: Path, tag: str, history: list[dict[str, float]], auc_by_day: dict[str, float],
                          evaluation: Evaluation | None) -> Path:
    """Write report.png, report.html and metrics.json into `folder`; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figure, (loss_ax, auc_ax, calib_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    loss_ax.plot([h["rows"] for h in history], [h["loss"] for h in history], lw=1.2)
    loss_ax.set(title="training loss (weighted BCE)", xlabel="rows seen", ylabel="loss")
    if auc_by_day:
        days = sorted(auc_by_day)
        auc_ax.plot(days, [auc_by_day[d] for d in days], "o-", label="model")
        auc_ax.tick_params(axis="x", rotation=30)
    if evaluation is not None and evaluation.oracle_auc is not None:
        auc_ax.axhline(evaluation.oracle_auc, color="grey", ls="--", label="oracle (true probabilities)")
    auc_ax.set(title="AUC by evaluation day", ylabel="AUC")
    auc_ax.legend(loc="lower right") if auc_by_day else None
    calib_ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    if evaluation is not None:
        curve = evaluation.reliability
        calib_ax.plot(curve.predicted, curve.observed, "o-", label=f"calibrated (ECE {evaluation.ece:.4f})")
        calib_ax.legend(loc="upper left")
        top = max(max(curve.predicted, default=0.1), max(curve.observed, default=0.1)) * 1.1
        calib_ax.set_xlim(0, min(1, top)), calib_ax.set_ylim(0, min(1, top))
    calib_ax.set(title="reliability", xlabel="predicted probability", ylabel="observed rate")
    figure.suptitle(tag)
    figure.tight_layout()
    png = folder / "report.png"
    staging = folder / f".report.{uuid.uuid4().hex[:8]}.png"
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    os.replace(staging, png)

    metrics = evaluation.to_dict() if evaluation is not None else {}
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>"
                   for k, v in metrics.items() if k != "reliability")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(tag)}</title></head><body>"
            f"<h1>Ranker training report: {html.escape(tag)}</h1><img src='report.png' style='max-width:100%'>"
            f"<h2>Evaluation</h2><table border='1' cellpadding='4'>{rows or '<tr><td>no evaluation day</td></tr>'}</table>"
            f"<h2>AUC by day</h2><pre>{html.escape(json.dumps(auc_by_day, indent=1))}</pre></body></html>")
    for name, payload in (("report.html", page), ("metrics.json", json.dumps(
            {"tag": tag, "metrics": metrics, "auc_by_day": auc_by_day, "history": history}, indent=1, default=str))):
        staging = folder / f".{name}.{uuid.uuid4().hex[:8]}"
        staging.write_text(payload)
        os.replace(staging, folder / name)
    return folder / "report.html"


def _fmt(value: Any) -> str:
    return f"{value:.5f}" if isinstance(value, float) else html.escape(str(value))

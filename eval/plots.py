"""PNG plots of an eval (matplotlib, Agg backend: no display needed), all read from the `EvalResults`.

- score_distributions.png: every explainer's per-feature headline scores (box + points), mean marked;
- student_vs_base.png: one point per feature, the base model's (else the teacher's) score against the
  student's, with the y = x line;
- score_by_group.png: mean score per layer of real units and per planted family, 95% bootstrap intervals;
- training_loss.png: the training loss per step of every run the eval names (when there are any);
- calibration.png: per planted rule, the true explanation's score beside every wrong one's (when the
  eval carries a calibration).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neuroscribe.runs.eval import EvalResults  # noqa: E402

from . import results as rows  # noqa: E402  (the explainer row names)

COLORS = {
    rows.TEACHER: "#d95f02",
    rows.TEACHER_BEST_OF_1: "#fc8d62",
    rows.STUDENT_BEST_OF_K: "#1b9e77",
    rows.STUDENT_BEST_OF_1: "#66c2a5",
    rows.BASE_BEST_OF_1: "#8da0cb",
    rows.REFERENCE_ROW: "#e7298a",
    rows.TOP_TOKENS: "#7570b3",
    rows.RANDOM_FEATURE: "#999999",
    rows.NULL: "#444444",
}
SCORE_LABEL = "score (Pearson r, held-out test exemplars)"


def _array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_distributions(results: EvalResults, path: Path) -> Path:
    explainers, sim = results.explainers, results.primary_simulator
    summary = results.summary(sim)
    fig, ax = plt.subplots(figsize=(1.5 * len(explainers) + 2.5, 4.8))
    data = [_array(results.values(e.name, sim)) for e in explainers]
    data = [d[~np.isnan(d)] for d in data]
    positions = np.arange(1, len(explainers) + 1)
    shown = [(p, d) for p, d in zip(positions, data) if len(d)]
    if shown:
        ax.boxplot(
            [d for _, d in shown],
            positions=[p for p, _ in shown],
            widths=0.5,
            showfliers=False,
            medianprops={"color": "black"},
        )
    rng = np.random.default_rng(0)  # jitter only; fixed so reruns draw the same picture
    for p, d, e in zip(positions, data, explainers):
        ax.scatter(p + rng.uniform(-0.15, 0.15, len(d)), d, s=16, color=COLORS.get(e.name, "#333"), alpha=0.8, zorder=3)
        mean = summary[e.name].mean["estimate"]
        if mean is not None:
            ax.scatter([p], [mean], marker="D", s=50, color="white", edgecolor="black", zorder=4)
    ax.set_xticks(positions, [e.label.replace(" (", "\n(").replace(": ", ":\n") for e in explainers], fontsize=7)
    ax.axhline(0, color="#bbbbbb", lw=0.8)
    ax.set_ylabel(SCORE_LABEL)
    ax.set_title(f"Score per explainer ({len(results.features)} held-out features; diamond = mean)\n{sim}", fontsize=10)
    return _save(fig, path)


def student_vs_base(results: EvalResults, path: Path) -> Path:
    sim, labels = results.primary_simulator, results.labels
    ref = rows.BASE_BEST_OF_1 if rows.BASE_BEST_OF_1 in labels else rows.TEACHER
    fig, ax = plt.subplots(figsize=(5.6, 5.3))
    x = _array(results.values(ref, sim))
    everything = [x]
    for name in (rows.STUDENT_BEST_OF_1, rows.STUDENT_BEST_OF_K):
        if name in labels:
            y = _array(results.values(name, sim))
            keep = ~(np.isnan(x) | np.isnan(y))
            ax.scatter(
                x[keep],
                y[keep],
                s=26,
                alpha=0.8,
                color=COLORS[name],
                marker="o" if name.endswith("_1") else "^",
                label=f"{labels[name]} ({int(keep.sum())} features)",
            )
            everything.append(y)
    finite = np.concatenate([v[~np.isnan(v)] for v in everything])
    lo, hi = (min(0.0, finite.min()), max(0.0, finite.max())) if finite.size else (-0.1, 1.0)
    pad = max(0.08 * (hi - lo), 0.02)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, ls="--", label="no change")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"{labels[ref]} score")
    ax.set_ylabel("student score")
    ax.set_title(
        f"Student vs {labels[ref]}, one point per feature\n(above the line: the student does better)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def score_by_group(results: EvalResults, path: Path) -> Path:
    """Mean score per layer of real units and per planted rule family (`results.group_of`)."""
    sim = results.primary_simulator
    groups = rows.feature_groups(results.features)
    fig, ax = plt.subplots(figsize=(max(8.5, 0.9 * len(groups) + 3), 4.2))
    n = len(results.explainers)
    step = 0.6 / max(n, 1)  # side by side, not on top
    for i, e in enumerate(results.explainers):
        by_group = results.by_group(sim, e.name)
        pts = [
            (x + (i - (n - 1) / 2) * step, iv)
            for x, g in enumerate(groups)
            if (iv := by_group.get(g)) and iv["estimate"] is not None
        ]
        if pts:
            ax.errorbar(
                [x for x, _ in pts],
                [iv["estimate"] for _, iv in pts],
                yerr=[[iv["estimate"] - iv["low"] for _, iv in pts], [iv["high"] - iv["estimate"] for _, iv in pts]],
                marker="o",
                capsize=3,
                ls="none",
                label=e.label,
                color=COLORS.get(e.name),
                lw=1.2,
            )
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="#bbbbbb", lw=0.8)
    ax.set_xlabel("layer of real units, or planted rule family")
    ax.set_ylabel("mean score [95% CI]")
    ax.set_title("Mean score by layer and planted family")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    return _save(fig, path)


def training_loss(results: EvalResults, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for run, curve in results.training.items():
        if curve:
            steps, losses = zip(*curve)
            ax.plot(steps, losses, marker=".", lw=1.2, label=Path(run).name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss (logged steps)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def calibration(results: EvalResults, path: Path) -> Path:
    sims = results.calibration.simulators
    fig, axes = plt.subplots(1, len(sims), figsize=(5.5 * len(sims), 4.4), squeeze=False)
    for ax, (sim, c) in zip(axes[0], sims.items()):
        rules = c.rules
        for i, r in enumerate(rules):
            wrong = [w for w in r["wrong_scores"] if w is not None]
            ax.scatter([i] * len(wrong), wrong, s=10, color="#999999", alpha=0.6, zorder=2)
            if r["true_score"] is not None:
                ax.scatter([i], [r["true_score"]], s=40, color="#e7298a", zorder=3)
        ax.set_xticks(range(len(rules)), [r["rule"] for r in rules], rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="#bbbbbb", lw=0.8)
        ax.set_ylabel("score on the rule's test split")
        ax.set_title(f"{sim}\ntrue (pink) vs wrong (grey): true wins {c.win_rate:.2f}", fontsize=9)
    return _save(fig, path)


def write_plots(folder: Path, results: EvalResults) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    if results.calibration:
        out["calibration"] = calibration(results, folder / "calibration.png")
    out["score_distributions"] = score_distributions(results, folder / "score_distributions.png")
    out["student_vs_base"] = student_vs_base(results, folder / "student_vs_base.png")
    if any(results.training.values()):
        out["training_loss"] = training_loss(results, folder / "training_loss.png")
    out["score_by_group"] = score_by_group(results, folder / "score_by_group.png")
    return out

"""PNG plots of an eval (matplotlib, Agg backend: no display needed).

- score_distributions.png: every explainer's per-feature scores (box + points), mean marked;
- student_vs_teacher.png: one point per feature, teacher score against student score, y = x line;
- score_by_layer.png: mean score per layer with its 95% bootstrap interval, one line per explainer.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .results import scores_of  # noqa: E402

COLORS = {
    "teacher": "#d95f02",
    "student_best_of_k": "#1b9e77",
    "student_best_of_1": "#66c2a5",
    "baseline_top_tokens": "#7570b3",
    "baseline_random_feature": "#999999",
}
SCORE_LABEL = "score (Pearson r, held-out test exemplars)"


def _finite(values) -> np.ndarray:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return arr[~np.isnan(arr)]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_distributions(results: dict, path: Path) -> Path:
    explainers = results["explainers"]
    fig, ax = plt.subplots(figsize=(1.7 * len(explainers) + 2.5, 4.5))
    data = [_finite(scores_of(results["features"], e["name"])) for e in explainers]
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
        color = COLORS.get(e["name"], "#333333")
        ax.scatter(p + rng.uniform(-0.15, 0.15, len(d)), d, s=18, color=color, alpha=0.8, zorder=3)
        mean = results["summary"][e["name"]]["mean"]["estimate"]
        if mean is not None:
            ax.scatter([p], [mean], marker="D", s=50, color="white", edgecolor="black", zorder=4)
    ax.set_xticks(positions, [e["label"].replace(": ", ":\n").replace(" (", "\n(") for e in explainers], fontsize=8)
    ax.axhline(0, color="#bbbbbb", lw=0.8)
    ax.set_ylabel(SCORE_LABEL)
    ax.set_title(f"Score per explainer ({len(results['features'])} held-out features; diamond = mean)")
    return _save(fig, path)


def student_vs_teacher(results: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    teacher = np.array([np.nan if v is None else v for v in scores_of(results["features"], "teacher")], dtype=float)
    students = [e for e in results["explainers"] if e["kind"] == "student"]
    for e in students:
        s = np.array([np.nan if v is None else v for v in scores_of(results["features"], e["name"])], dtype=float)
        keep = ~(np.isnan(s) | np.isnan(teacher))
        ax.scatter(
            teacher[keep],
            s[keep],
            s=28,
            alpha=0.8,
            color=COLORS.get(e["name"]),
            label=f"{e['label']} ({int(keep.sum())} features)",
            marker="o" if e["name"].endswith("_k") else "^",
        )
    finite = np.concatenate(
        [teacher[~np.isnan(teacher)]] + [_finite(scores_of(results["features"], e["name"])) for e in students]
    )
    lo, hi = (min(0.0, finite.min()), max(0.0, finite.max())) if finite.size else (-0.1, 1.0)
    pad = max(0.08 * (hi - lo), 0.02)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, ls="--", label="student = teacher")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("teacher score")
    ax.set_ylabel("student score")
    ax.set_title(
        "Student vs teacher, one point per feature\n(above the line: the student explains it better)", fontsize=10
    )
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def score_by_layer(results: dict, path: Path) -> Path:
    layers = sorted({f["layer"] for f in results["features"]})
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    n = len(results["explainers"])
    step = 0.02 * (layers[-1] - layers[0]) if len(layers) > 1 else 0.05  # side by side, not on top
    for i, e in enumerate(results["explainers"]):
        by_layer = results["summary"][e["name"]]["by_layer"]
        xs, ys, lows, highs = [], [], [], []
        for layer in layers:
            iv = by_layer.get(str(layer))
            if iv and iv["estimate"] is not None:
                xs.append(layer + (i - (n - 1) / 2) * step)
                ys.append(iv["estimate"])
                lows.append(iv["estimate"] - iv["low"])
                highs.append(iv["high"] - iv["estimate"])
        if xs:
            ax.errorbar(
                xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=e["label"], color=COLORS.get(e["name"]), lw=1.2
            )
    ax.set_xticks(layers)
    ax.axhline(0, color="#bbbbbb", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean score [95% CI]")
    ax.set_title("Mean score by layer")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    return _save(fig, path)


def write_plots(folder: Path, results: dict) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "score_distributions": score_distributions(results, folder / "score_distributions.png"),
        "student_vs_teacher": student_vs_teacher(results, folder / "student_vs_teacher.png"),
        "score_by_layer": score_by_layer(results, folder / "score_by_layer.png"),
    }

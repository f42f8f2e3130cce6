"""report.md and the model card's eval table, from an `EvalResults` (results.json as loaded).

The report opens with the answer: did the student get better (the distillation gain: its best-of-1
minus its base model's, paired by feature), by how much and how sure (the 95% bootstrap interval),
how it stands against the teacher, and how far the scorer can be trusted (planted-rule calibration
when the eval carries one, split-half reliability always). Then the tables and plots.

Everything here reads the EvalResults only (its accessors), so `write_report` can rebuild the report, plots and
browser from an old results.json without running a model.
"""

from __future__ import annotations

from pathlib import Path

from neuroscribe import markdown
from neuroscribe.protocols import protocol
from neuroscribe.runs.eval import BROWSER, EvalResults, write_eval_table, write_report_md

from .browser import write_browser
from .gates import Gate, verdict
from .plots import write_plots
from .results import (
    COMPARISONS,
    DISTILLATION_GAIN,
    STUDENT_BEST_OF_1,
    feature_groups,
    fmt,
    fmt_interval,
    group_of,
    model_card_rows,
)

_cell = markdown.cell
KIND_NAMES = {
    "planted": "planted features (known answer)",
    "mlp": "real MLP-neuron features",
    "sae": "real SAE features",
}


def scoring_note(results: EvalResults) -> str:
    cfg, prov = results.config, results.provenance
    sampling = cfg.get("sampling", "transluce")
    pooled = (
        "top/quantile and random mixed 1:1"
        if protocol(sampling).balanced
        else "top, interval, random and out-of-context exemplars pooled as they are"
    )
    return (
        f"Score: Pearson r between the simulated activation and {prov['target']}(activation), all tokens of a "
        f"feature's held-out `{cfg['report_split']}` exemplars pooled, {pooled} "
        f"(protocol `{cfg['protocol']}`, sampling `{sampling}`). An unparseable explanation or a constant "
        f"simulation counts "
        f"{cfg['failure_score']}; a feature whose split lacks a side is left out for every row. Best-of-k picks "
        f"its winner on `{cfg['selection_split']}` with `{prov['selection_simulator']}` and every row is reported "
        f"on `{cfg['report_split']}`, which no selection saw."
    )


def eval_table_markdown(results: EvalResults) -> str:
    """The table `neuroscribe publish --eval-results OUT/eval_table.md` puts into the model card."""
    return markdown.keyed_table(model_card_rows(results), "explainer") + "\n\n" + scoring_note(results) + "\n"


def _unbounded(interval: dict) -> bool:
    return interval.get("estimate") is not None and (interval.get("low") is None or interval.get("high") is None)


def _verdict(iv: dict | None) -> str:
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return "cannot be told (too few features)"
    if iv["low"] > 0:
        return "higher, and the 95% interval lies above zero"
    if iv["high"] < 0:
        return "lower, and the 95% interval lies below zero"
    return "not distinguishable from zero: the 95% interval spans it"


def answer(results: EvalResults) -> str:
    """The report's opening paragraph (module doc), in plain words with the numbers."""
    sim = results.primary_simulator
    comp = results.comparisons(sim)
    n = len(results.features)
    gates = results.gates().get(sim)
    lines = [_gates_verdict(gates)] if gates else []
    primary = results.primary
    if primary != DISTILLATION_GAIN:
        c = results.primary_comparison(sim)
        lines.append(
            f"**Primary comparison** (declared before the eval ran): {c.what}, paired over "
            f"{c.difference['n']} held-out features: {fmt_interval(c.difference)} — "
            f"{_verdict(c.difference)}; every other number below is secondary."
            if c
            else f"**Primary comparison** (declared before the eval ran): {primary} — not measured here (a row "
            "it needs was not evaluated)."
        )
    gain = comp.get(DISTILLATION_GAIN)
    if gain:
        d = gain.difference
        lines.append(
            f"**Did the student get better?** Its greedy best-of-1 minus its base model's, paired over "
            f"{d['n']} held-out features: {fmt_interval(d)} — {_verdict(d)} (wins/ties/losses "
            f"{gain.wins}/{gain.ties}/{gain.losses})"
            + (" — the primary comparison, declared before the eval ran." if primary == DISTILLATION_GAIN else ".")
        )
    else:
        lines.append(
            "**Did the student get better?** No base model row was evaluated (`--base`), so the "
            "distillation gain is not measured here."
        )
    seeded = results.seeded(sim).get(primary)
    if seeded:
        d = seeded.difference
        lines.append(
            f"Over the student's {seeded.seeds} training seeds, resampling seeds, units or rule families and "
            f"features (a hierarchical bootstrap), the primary comparison is {fmt_interval(d)} — {_verdict(d)}."
        )
    for kind, part in results.by_kind(sim).items():
        g = part.comparisons.get(DISTILLATION_GAIN)
        if g:
            d = g.difference
            what = KIND_NAMES.get(kind, kind)
            lines.append(f"On the {d['n']} held-out {what} alone: {fmt_interval(d)} ({_verdict(d)}).")
    for judge in results.judges:
        g = results.comparisons(judge).get(DISTILLATION_GAIN)
        if g:
            d = g.difference
            lines.append(f"Judged by `{judge}` on the {d['n']} features it scored: {fmt_interval(d)} ({_verdict(d)}).")
    student = results.summary(sim).get(STUDENT_BEST_OF_1)
    if student and student.parse_failure_rate is not None:
        lines.append(
            f"The student's explanations failed to parse for {student.n_unparsed} of {student.n} features "
            f"({fmt(100 * student.parse_failure_rate, 1)}%)."
        )
    for name in ("student_vs_teacher_best_of_1", "student_vs_teacher_best_of_k"):
        c = comp.get(name)
        if c:
            lines.append(f"{c.what.capitalize()}: {fmt_interval(c.difference)} ({_verdict(c.difference)}).")
    closed = results.gap_closed(sim)
    if closed:
        lines.append(
            f"Share of the base-to-teacher-best-of-k gap the student's best-of-1 closes: "
            f"{fmt_interval(closed.interval, 2)}"
            + (" (n/a: unbounded, the gap itself is not clearly positive)" if _unbounded(closed.interval) else "")
            + "."
        )
    cal = results.calibration.simulators.get(sim) if results.calibration else None
    if cal:
        lines.append(
            f"**How good is the scorer?** On {cal.n_rules} planted rules it never saw, the true "
            f"explanation outscores a wrong one in {fmt(cal.win_rate, 2)} of pairs and ranks first for "
            f"{cal.rank1} of {cal.n_rules} rules (mean true-rule score {fmt(cal.mean_true)}, wrong "
            f"{fmt(cal.mean_wrong)})."
        )
    rel = results.reliability().get(sim)
    pooled = rel.pooled if rel else None
    if pooled and pooled.get("estimate") is not None:
        lines.append(
            f"Split-half reliability of a per-feature score (score vs test split, unselected rows): "
            f"r = {fmt_interval(pooled, 2)} over {pooled['n']} pairs."
        )
    lines.append(
        f"{n} held-out features, scored by `{sim}`"
        + (f"; also judged by {', '.join(f'`{s}`' for s in results.judges)}." if results.judges else ".")
    )
    return " ".join(lines)


def _comparison_table(results: EvalResults, sim: str) -> str:
    comp = results.comparisons(sim)
    rows = [
        {
            "comparison": c.what,
            "mean difference [95% CI]": fmt_interval(c.difference),
            "wins / ties / losses": f"{c.wins} / {c.ties} / {c.losses}",
            "pairs": c.difference["n"],
        }
        for name, *_ in COMPARISONS
        if (c := comp.get(name))
    ]
    closed = results.gap_closed(sim)
    if closed:
        rows.append(
            {
                "comparison": closed.what,
                "mean difference [95% CI]": fmt_interval(closed.interval, 2),
                "wins / ties / losses": "-",
                "pairs": closed.interval["n"],
            }
        )
    return markdown.table(rows) if rows else "_no comparison rows in this eval_"


def _scores_table(results: EvalResults, sim: str) -> str:
    summary = results.summary(sim)
    rows = []
    for e in results.explainers:
        s = summary[e.name]
        rows.append(
            {
                "explainer": e.label,
                "features": s.n,
                "mean [95% CI]": fmt_interval(s.mean),
                "median [95% CI]": fmt_interval(s.median),
                "failed (rate)": f"{s.n_failed} ({fmt(s.failure_rate, 2)})",
                "insufficient": s.n_insufficient,
                "minus teacher [95% CI]": fmt_interval(s.vs_teacher["difference"]) if s.vs_teacher else "-",
            }
        )
    return markdown.table(rows)


def _reliability_table(results: EvalResults) -> str:
    labels = results.labels
    rows = []
    for sim, rel in results.reliability().items():
        rows.append(
            {
                "simulator": sim,
                "rows": "pooled",
                "split-half r [95% CI]": fmt_interval(rel.pooled, 2),
                "pairs": rel.pooled["n"],
            }
        )
        rows += [
            {"simulator": "", "rows": labels.get(n, n), "split-half r [95% CI]": fmt_interval(iv, 2), "pairs": iv["n"]}
            for n, iv in rel.by_explainer.items()
        ]
    return markdown.table(rows)


def _gates_verdict(gates: list[dict]) -> str:
    return verdict([Gate(**g) for g in gates])


def _gates_table(results: EvalResults) -> str | None:
    """Every simulator's validity gates (`eval/gates.py`), one row each: printed before any result."""

    rows = [
        {
            "simulator": sim,
            "gate": g.question,
            "passed": {True: "yes", False: "**NO**", None: "not measured"}[g.passed],
            "value": fmt(g.value, 2),
            "pass mark": fmt(g.threshold, 2),
            "what was measured": g.detail,
        }
        for sim, gates in results.gates().items()
        for g in (Gate(**d) for d in gates)
    ]
    return markdown.table(rows) if rows else None


def _calibration_table(results: EvalResults) -> str | None:
    cal = results.calibration
    if not cal:
        return None
    rows = [
        {
            "simulator": sim,
            "held-out rules": c.n_rules,
            "true beats wrong": fmt(c.win_rate, 2),
            "true ranked first": f"{c.rank1} / {c.n_rules}",
            "mean true score": fmt(c.mean_true),
            "mean wrong score": fmt(c.mean_wrong),
        }
        for sim, c in cal.simulators.items()
    ]
    return markdown.table(rows) + f"\n\n{cal.note}"


def _group_table(results: EvalResults, sim: str) -> str:
    return markdown.table(
        [
            {
                "layer or planted family": g,
                "features": sum(group_of(f) == g for f in results.features),
                **{e.label: fmt_interval(results.by_group(sim, e.name).get(g)) for e in results.explainers},
            }
            for g in feature_groups(results.features)
        ]
    )


def _judge_table(results: EvalResults, sim: str) -> str | None:
    summary = results.summary(sim)
    rows = [
        {"explainer": e.label, **{j: fmt_interval(iv) for j, iv in summary[e.name].judges.items()}}
        for e in results.explainers
        if summary[e.name].judges
    ]
    return markdown.table(rows) if rows else None


def _intervention_table(results: EvalResults) -> str | None:
    by_row = results.intervention
    if not by_row:
        return None
    rows = [
        {
            "explainer": e.label,
            "features": by_row[e.name]["n_features"],
            **{
                k: fmt(by_row[e.name].get(k))
                for k in (
                    "contrastive_accuracy",
                    "contrastive_accuracy_vs_null",
                    "judge_accuracy",
                    "judge_accuracy_vs_null",
                    "named_token_percentile",
                )
            },
        }
        for e in results.explainers
        if e.name in by_row
    ]
    return markdown.table(rows)


def _cost_table(results: EvalResults) -> str:
    rows = []
    for ex in results.explainers:
        c = results.cost(ex.name)
        latency = c.latency_s_per_explanation
        rows.append(
            {
                "explainer": ex.label,
                "samples / feature": c.samples_per_feature,
                "tokens in": f"{c.tokens_in_per_explanation:.0f}",
                "tokens out": f"{c.tokens_out_per_explanation:.0f}",
                "USD": "unpriced" if c.usd_per_explanation is None else f"{c.usd_per_explanation:.6f}",
                "latency (s)": ("cached" if c.cached_calls else "n/a") if latency is None else f"{latency:.2f}",
                "fresh / cached calls": f"{c.fresh_calls} / {c.cached_calls}",
                "source": c.source,
            }
        )
    return markdown.table(rows)


def _feature_table(results: EvalResults) -> str:
    sim = results.primary_simulator
    shown = [e for e in results.explainers if e.kind != "baseline"]
    rows = []
    for f in results.features:
        row = {"feature": f"`{f.key}`"}
        for e in shown:
            r = f.row(e.name)
            row[e.label] = r.text if r else "—"
            row[f"r ({e.name})"] = fmt(r.score(sim)) if r else "n/a"
        rows.append(row)
    return markdown.table(rows)


def report_markdown(results: EvalResults, plots: dict[str, str], browser: str | None) -> str:
    cfg, prov = results.config, results.provenance
    n = len(results.features)
    facts = [
        ("subject model", prov.get("subject_model")),
        ("store", prov["store"]),
        (
            "held-out features",
            f"{n} from `{prov['features_file']}` (checked against {', '.join(f'`{d}`' for d in prov['datasets'])})",
        ),
        ("student", prov["student"]),
        ("base model", prov.get("base")),
        ("teacher", prov.get("teacher")),
        ("teacher selected with", prov.get("teacher_selection_simulator")),
        ("simulators", ", ".join(f"`{s}`" for s in results.simulators) + " (the first selects)"),
        ("k", cfg["k"]),
        ("prompt", f"style `{cfg['prompt_style']}`, version `{prov['prompt_version']}`"),
        (
            "sampling",
            f"best-of-k at temperature {cfg['temperature']}, best-of-1 greedy; max {cfg['max_tokens']} "
            f"tokens, seed {cfg['seed']}",
        ),
        ("in-sample features", ", ".join(prov.get("in_sample_features") or []) or "none"),
    ]
    parts = [
        f"# neuroscribe eval: {n} held-out features",
        "",
        answer(results),
        "",
        markdown.table([{"": k, " ": v if v is not None else "n/a"} for k, v in facts]),
        "",
        scoring_note(results),
        "",
    ]
    gates = _gates_table(results)
    if gates:
        parts += ["## Validity gates (read these before any score)", "", gates, ""]
    cal = _calibration_table(results)
    parts += ["## How far to trust the scorer", ""]
    if cal:
        parts += ["Planted rules the simulators never saw (true explanation vs every other rule's):", "", cal, ""]
    parts += [
        f"Split-half reliability (the same explanations scored on the `{results.config['selection_split']}` "
        f"and the `{results.config['report_split']}` split):",
        "",
        _reliability_table(results),
        "",
    ]
    for sim in results.simulators:
        flag = " (selects best-of-k)" if sim == results.primary_simulator else " (second judge)"
        parts += [
            f"## Scored by `{sim}`{flag}",
            "",
            "### Headline comparisons, paired by feature",
            "",
            _comparison_table(results, sim),
            "",
            "### Every row",
            "",
            _scores_table(results, sim),
            "",
        ]
        judge = _judge_table(results, sim)
        if judge:
            parts += ["### Detection and fuzzing (balanced accuracy at P(yes) >= 0.5, and AUROC)", "", judge, ""]
    intervention = _intervention_table(results)
    if intervention:
        parts += [
            "## Scored by intervention (the subject's own features)",
            "",
            "The subject continues neutral prompts with the feature amplified; `contrastive_accuracy`: the subject, "
            "given the explanation, picks this feature's steered continuation among those of 3 other features "
            "(chance 0.25); `judge_accuracy`: it tells the steered continuation from the unsteered one (chance 0.5; "
            "fluency alone can win it); `named_token_percentile`: where the tokens the explanation names rank in "
            "the vocabulary by how much amplifying raises their log-probability (chance 0.5); `_vs_null`: minus "
            "the empty explanation's score on the same feature.",
            "",
            intervention,
            "",
        ]
    parts += [
        f"Intervals: 95% percentile bootstrap over features ({cfg['n_resamples']} resamples, seed {cfg['seed']}).",
        "",
        f"## By layer and planted family (`{results.primary_simulator}`, mean [95% CI])",
        "",
        _group_table(results, results.primary_simulator),
        "",
        "## Cost and latency per explanation",
        "",
        "One explanation = everything one feature's reported explanation took: k samples and, for best-of-k, "
        "scoring them on the selection split. Latency is wall time of work done in this run (a cache hit "
        "costs none).",
        "",
        _cost_table(results),
        "",
    ]
    if plots:
        parts += ["## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()] + [""]
    if browser:
        parts += [
            "## Feature browser",
            "",
            f"Every feature's exemplars, explanations and simulations: "
            f"[{browser}]({browser}) (a single file; open it in any browser).",
            "",
        ]
    parts += ["## Per feature (score on the report split)", "", _feature_table(results), ""]
    return "\n".join(parts)


def write_report(out: Path, results: EvalResults, full: bool = True) -> dict[str, Path]:
    """eval_table.md/.json always; report.md, plots/ and browser.html when `full`."""
    table_md, table_json = write_eval_table(out, eval_table_markdown(results), model_card_rows(results))
    files = {"eval_table_md": table_md, "eval_table_json": table_json}
    if not full:
        return files

    plots = write_plots(out / "plots", results)
    files.update({f"plot_{name}": path for name, path in plots.items()})
    files["browser"] = write_browser(out, results)
    rel = {name: str(path.relative_to(out)) for name, path in plots.items()}
    files["report"] = write_report_md(out, report_markdown(results, rel, BROWSER))
    return files

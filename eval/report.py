"""report.md and the model card's eval table, from a results dict (results.json as loaded).

Everything here reads the results dict only, so `write_report` can rebuild the report, plots and
browser from an old results.json without running a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from neuroscribe import markdown
from neuroscribe.runs.eval import BROWSER, REPORT, TABLE_JSON, TABLE_MD

from .results import fmt, fmt_interval, model_card_rows

_cell = markdown.cell


def scoring_note(results: dict) -> str:
    cfg, prov = results["config"], results["provenance"]
    return (
        f"Score: Pearson r between true and simulated activations, all tokens of a feature's held-out "
        f"`{cfg['report_split']}` exemplars pooled (top and random mixed 1:1), simulator `{prov['simulator']}`, "
        f"{len(results['features'])} held-out features. Best-of-k picks its winner on the `{cfg['selection_split']}` "
        f"split and is reported on `{cfg['report_split']}`, which no selection looked at."
    )


def eval_table_markdown(results: dict) -> str:
    """The table `neuroscribe publish --eval-results OUT/eval_table.md` puts into the model card."""
    return markdown.keyed_table(model_card_rows(results), "explainer") + "\n\n" + scoring_note(results) + "\n"


def _paired_table(results: dict) -> str:
    rows = [
        "| explainer | minus teacher [95% CI] | wins / ties / losses | win rate [95% CI] | pairs |",
        "|---|---|---|---|---|",
    ]
    for ex in results["explainers"]:
        vs = results["summary"][ex["name"]]["vs_teacher"]
        if vs:
            rows.append(
                f"| {ex['label']} | {fmt_interval(vs['difference'])} | {vs['wins']} / {vs['ties']} / "
                f"{vs['losses']} | {fmt_interval(vs['win_rate'], 2)} | {vs['difference']['n']} |"
            )
    return "\n".join(rows)


def _layer_table(results: dict) -> str:
    layers = sorted({f["layer"] for f in results["features"]})
    names = [(e["name"], e["label"]) for e in results["explainers"]]
    rows = ["| layer | features | " + " | ".join(label for _, label in names) + " |", "|" + "---|" * (len(names) + 2)]
    for layer in layers:
        n = sum(f["layer"] == layer for f in results["features"])
        cells = [fmt_interval(results["summary"][name]["by_layer"].get(str(layer))) for name, _ in names]
        rows.append(f"| {layer} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _judge_table(results: dict) -> str | None:
    rows = []
    for ex in results["explainers"]:
        s = results["summary"][ex["name"]]
        if s.get("detection") or s.get("fuzzing"):
            rows.append(f"| {ex['label']} | {fmt_interval(s.get('detection'))} | {fmt_interval(s.get('fuzzing'))} |")
    if not rows:
        return None
    return "\n".join(["| explainer | detection (balanced acc.) | fuzzing (balanced acc.) |", "|---|---|---|", *rows])


def _cost_table(results: dict) -> str:
    rows = [
        "| explainer | samples / feature | tokens in | tokens out | USD | latency (s) | fresh / cached calls "
        "| source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ex in results["explainers"]:
        c = results["cost"][ex["name"]]
        usd = "unpriced" if c["usd_per_explanation"] is None else f"{c['usd_per_explanation']:.6f}"
        latency = c["latency_s_per_explanation"]
        latency = ("cached" if c["cached_calls"] else "n/a") if latency is None else f"{latency:.2f}"
        rows.append(
            f"| {ex['label']} | {c['samples_per_feature']} | {c['tokens_in_per_explanation']:.0f} | "
            f"{c['tokens_out_per_explanation']:.0f} | {usd} | {latency} | {c['fresh_calls']} / "
            f"{c['cached_calls']} | {_cell(c['source'])} |"
        )
    return "\n".join(rows)


def _feature_table(results: dict) -> str:
    shown = [e for e in results["explainers"] if e["kind"] != "baseline"]
    head = "| feature | " + " | ".join(f"{e['label']} | r" for e in shown) + " |"
    rows = [head, "|" + "---|" * (1 + 2 * len(shown))]
    for f in results["features"]:
        cells = []
        for e in shown:
            r = f["results"].get(e["name"])
            cells += [_cell(r["explanation"]["text"]) if r else "—", fmt(r["score"]) if r else "n/a"]
        rows.append(f"| `{f['feature']}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report_markdown(results: dict, plots: dict[str, str], browser: str | None) -> str:
    cfg, prov = results["config"], results["provenance"]
    facts = [
        ("subject model", prov.get("subject_model")),
        ("store", prov["store"]),
        (
            "held-out features",
            f"{len(results['features'])} from `{prov['features_file']}` (checked against `{prov['datasets']}`)",
        ),
        ("student", prov["student"]),
        ("teacher", prov.get("teacher")),
        ("teacher selected with", prov.get("teacher_selection_simulator")),
        ("simulator", prov["simulator"]),
        ("k", cfg["k"]),
        ("prompt", f"style `{cfg['prompt_style']}`, version `{prov['prompt_version']}`"),
        ("sampling", f"temperature {cfg['temperature']}, max {cfg['max_tokens']} tokens, seed {cfg['seed']}"),
    ]
    parts = [
        f"# neuroscribe eval: student vs teacher on {len(results['features'])} held-out features",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_cell(v if v is not None else 'n/a')} |" for k, v in facts),
        "",
        scoring_note(results),
        "",
        "## Scores",
        "",
        markdown.keyed_table(model_card_rows(results), "explainer"),
        "",
        f"Intervals are 95% percentile bootstrap intervals over features ({cfg['n_resamples']} resamples, seed "
        f"{cfg['seed']}). "
        "Features whose score is undefined (an unparseable explanation, or a constant simulation) are left out "
        "and counted: "
        + ", ".join(f"{e['label']} {results['summary'][e['name']]['n_missing']}" for e in results["explainers"])
        + ".",
        "",
        "## Student minus teacher, paired by feature",
        "",
        _paired_table(results),
        "",
        "## By layer (mean [95% CI])",
        "",
        _layer_table(results),
        "",
    ]
    judge = _judge_table(results)
    if judge:
        parts += ["## Detection and fuzzing", "", judge, ""]
    parts += [
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


def write_report(out: Path, results: dict, full: bool = True) -> dict[str, Path]:
    """eval_table.md/.json always; report.md, plots/ and browser.html when `full`."""
    files = {"eval_table_md": out / TABLE_MD, "eval_table_json": out / TABLE_JSON}
    files["eval_table_md"].write_text(eval_table_markdown(results))
    files["eval_table_json"].write_text(json.dumps(model_card_rows(results), indent=2))
    if not full:
        return files
    from .browser import write_browser
    from .plots import write_plots

    plots = write_plots(out / "plots", results)
    files.update({f"plot_{name}": path for name, path in plots.items()})
    files["browser"] = write_browser(out / BROWSER, results)
    files["report"] = out / REPORT
    rel = {name: str(path.relative_to(out)) for name, path in plots.items()}
    files["report"].write_text(report_markdown(results, rel, files["browser"].name))
    return files

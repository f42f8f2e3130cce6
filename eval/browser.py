"""A static HTML feature browser: one self-contained file (inline CSS and JS, no external URL).

Per feature: the teacher's and the student's explanations side by side with their scores, the
other explainers below, then every report-split exemplar with its tokens shaded three times: by
the true activation, and by the simulated activation given the teacher's and the student's
explanation. Shades use the prompts' 0..9 display scale (true: `prompts.normalise` against the
feature's largest shown activation; simulated: the simulator's expected value, already 0..9).

Search: the box filters features by explanation text (every word must occur, any case). The page
reads `#q=words` (or `?q=words`) from its URL on load, so a link opens pre-filtered.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from neuroscribe.prompts import MAX_DIGIT, normalise
from neuroscribe.runs.eval import EvalResults, FeatureRow, RowResult, write_browser_html

from .results import REFERENCE_ROW, STUDENT_BEST_OF_1, STUDENT_BEST_OF_K, TEACHER, fmt

SEARCHED_KINDS = ("teacher", "student")  # baselines' text would match unrelated features
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d1f23}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #d8dbe0;padding:10px 20px;z-index:2}
h1{font-size:18px;margin:0 0 4px} header p{margin:2px 0;color:#555;font-size:12px}
#search{font-size:15px;padding:6px 10px;width:420px;max-width:70vw;border:1px solid #aab;border-radius:6px}
#count{margin-left:10px;color:#555}
main{padding:12px 20px}
section.feature{background:#fff;border:1px solid #d8dbe0;border-radius:8px;margin:0 0 16px;padding:12px 16px}
section.feature h2{font-size:16px;margin:0 0 8px;font-family:ui-monospace,monospace}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-bottom:8px}
.card{border:1px solid #e3e5e9;border-radius:6px;padding:8px 10px}
.card.teacher{border-left:4px solid #d95f02} .card.student{border-left:4px solid #1b9e77}
.who{font-size:12px;color:#666} .text{font-size:15px;margin:2px 0} .score{font-weight:600}
table.others{border-collapse:collapse;font-size:12px;margin:4px 0 10px}
table.others td{padding:2px 8px;border-top:1px solid #eee}
.ex{margin:6px 0 10px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.ex .meta{color:#888;font-family:system-ui,sans-serif;font-size:11px}
.row{display:flex;gap:8px;align-items:baseline;margin:1px 0}
.lab{flex:0 0 96px;color:#666;font-size:11px;text-align:right}
.toks{white-space:pre-wrap;word-break:break-word} .toks span{border-radius:2px}
.legend span{padding:0 4px;margin-right:6px}
.truth{margin:0 0 8px;color:#a0175d}
"""
_SHADES = "".join(
    f".t{d}{{background:rgba(230,120,0,{d / MAX_DIGIT:.2f})}}.s{d}{{background:rgba(30,100,230,{d / MAX_DIGIT:.2f})}}"
    for d in range(MAX_DIGIT + 1)
)
SCRIPT = """
(function(){
  var input=document.getElementById('search'), count=document.getElementById('count');
  var cards=Array.prototype.slice.call(document.querySelectorAll('section.feature'));
  function apply(){
    var words=input.value.toLowerCase().split(/\\s+/).filter(Boolean), shown=0;
    cards.forEach(function(c){
      var hay=c.getAttribute('data-search'), ok=words.every(function(w){return hay.indexOf(w)>=0;});
      c.hidden=!ok; if(ok){shown++;}
    });
    count.textContent=shown+' of '+cards.length+' features';
    document.getElementById('none').hidden=shown>0;
    document.body.setAttribute('data-shown', String(shown));
  }
  function fromUrl(){
    var q=new URLSearchParams(location.hash.slice(1)).get('q');
    if(q===null){q=new URLSearchParams(location.search.slice(1)).get('q');}
    if(q!==null){input.value=q;}
  }
  fromUrl(); apply();
  input.addEventListener('input',function(){
    apply();
    try{history.replaceState(null,'','#q='+encodeURIComponent(input.value));}catch(e){}
  });
  window.addEventListener('hashchange',function(){fromUrl();apply();});
})();
"""


def _display(token: str) -> str:
    return token.replace("\n", "\u23ce").replace("\t", "\u2192").replace("\r", "\u21b5")


def _tokens(tokens: list[str], levels: list[int | None], prefix: str, values: list[float | None]) -> str:
    out = []
    for tok, level, value in zip(tokens, levels, values):
        text = html.escape(_display(tok))
        if level is None or (level == 0 and not value):
            out.append(f"<span>{text}</span>")
        else:
            out.append(f'<span class="{prefix}{level}" title="{value:.3g}">{text}</span>')
    return "".join(out)


def _sim_levels(predicted: list[float | None] | None, n: int) -> tuple[list[int | None], list[float | None]]:
    if predicted is None:
        return [None] * n, [None] * n
    levels = [None if v is None or math.isnan(v) else max(0, min(MAX_DIGIT, round(v))) for v in predicted]
    return levels, list(predicted)


def _card(css: str, label: str, r: RowResult | None, sim: str) -> str:
    if r is None:
        return f'<div class="card {css}"><div class="who">{html.escape(label)}</div><div class="text">—</div></div>'
    text = html.escape(r.text) if r.ok else f"<i>unparseable: {html.escape(r.error)}</i>"
    sel = f" · selection {fmt(r.selection_score)}" if r.selection_score is not None else ""
    return (
        f'<div class="card {css}"><div class="who">{html.escape(label)}</div><div class="text">{text}</div>'
        f'<div class="who">test score <span class="score">{fmt(r.score(sim))}</span>{sel}</div></div>'
    )


def _student_name(results: EvalResults) -> str:
    return STUDENT_BEST_OF_K if STUDENT_BEST_OF_K in results.names else STUDENT_BEST_OF_1


def feature_section(results: EvalResults, f: FeatureRow) -> str:
    sim = results.primary_simulator
    labels = results.labels
    kinds = {e.name: e.kind for e in results.explainers}
    student = _student_name(results)
    res = f.rows()
    texts = [r.text for n, r in res.items() if kinds.get(n) in SEARCHED_KINDS]
    searchable = " ".join([f.key, *texts])
    others = "".join(
        f"<tr><td>{html.escape(labels[n])}</td><td>{html.escape(r.text) or '—'}</td><td>{fmt(r.score(sim))}</td></tr>"
        for n, r in res.items()
        if n not in (TEACHER, student)
    )
    rows = []
    max_value = max((a for ex in f.exemplars for a in ex.activations), default=0.0)
    sims = [(TEACHER, "sim · teacher"), (student, "sim · student"), (REFERENCE_ROW, "sim · reference")]
    for i, ex in enumerate(f.exemplars):
        toks = ex.tokens
        lines = [
            f'<div class="row"><span class="lab">true</span><span class="toks">'
            f"{_tokens(toks, normalise(ex.activations, max_value), 't', ex.activations)}</span></div>"
        ]
        for name, lab in sims:
            if name in res:
                levels, values = _sim_levels(res[name].predicted(sim)[i], len(toks))
                lines.append(
                    f'<div class="row"><span class="lab">{lab}</span><span class="toks">'
                    f"{_tokens(toks, levels, 's', values)}</span></div>"
                )
        rows.append(
            f'<div class="ex"><div class="meta">{html.escape(ex.source)} · window {ex.window_id} · '
            f"max {max(ex.activations, default=0):.3g}</div>{''.join(lines)}</div>"
        )
    note = f'<p class="who">{html.escape(f.insufficient)}</p>' if f.insufficient else ""
    reference = res.get(REFERENCE_ROW)
    truth = f'<p class="truth">true explanation: <b>{html.escape(reference.text)}</b></p>' if reference else ""
    return (
        f'<section class="feature" id="{html.escape(f.key)}" data-search="{html.escape(searchable.lower())}">'
        f"<h2>{html.escape(f.key)} <small>layer {f.layer}</small></h2>{truth}{note}"
        f'<div class="pair">{_card("teacher", labels[TEACHER], res.get(TEACHER), sim)}'
        f"{_card('student', labels.get(student, 'student'), res.get(student), sim)}</div>"
        f'<table class="others">{others}</table>{"".join(rows)}</section>'
    )


def browser_html(results: EvalResults) -> str:
    prov = results.provenance
    facts = (
        f"subject {prov.get('subject_model')} · student {prov['student']} · teacher {prov.get('teacher')} · "
        f"simulator {results.primary_simulator} · scores on the held-out '{results.config['report_split']}' split"
    )
    body = "".join(feature_section(results, f) for f in results.features)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>neuroscribe feature browser</title><style>{STYLE}{_SHADES}</style></head><body>"
        f"<header><h1>neuroscribe feature browser · {len(results.features)} held-out features</h1>"
        f"<p>{html.escape(facts)}</p>"
        '<input id="search" type="search" placeholder="Search explanations…" autocomplete="off" aria-label="search">'
        '<span id="count"></span>'
        '<p class="legend"><span class="t7">true activation</span><span class="s7">simulated activation</span>'
        "shade: 0..9 display scale; hover a token for its value</p></header>"
        f'<main><p id="none" hidden>No feature\'s explanation matches the search.</p>{body}</main>'
        f"<script>{SCRIPT}</script></body></html>"
    )


def write_browser(folder: Path, results: EvalResults) -> Path:
    """browser.html in the eval folder."""
    return write_browser_html(folder, browser_html(results))

"""distill build: SFT winners, preference pairs, feature splits, augmentation, Parquet + card.

The scored-candidates folders are written here with known scores (`write_scored_dir`), so every
expectation is computed from the inputs; other test modules import these helpers.
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from neuroscribe.distill.datasets import (
    DistillConfig,
    build_command,
    build_datasets,
    load_scored,
    preference_pairs,
    split_features,
)
from neuroscribe.prompts import PROMPT_VERSION, explainer_messages, parse_explanation
from neuroscribe.records import (
    Exemplar,
    Explanation,
    FeatureExemplars,
    FeatureId,
    FeatureStats,
    ScoredExplanation,
    best_candidate,
    to_json,
)
from neuroscribe.runs.datasets import read_heldout


def _cfg(root, out: str = "out", **kw) -> DistillConfig:
    return DistillConfig(str(root / "scored"), str(root / out), **kw)


WORDS = ["the", " cat", " sat", " on", " mat", " 1932", " harbour", " and", " (", ")", " said", " blue"]


def make_feature(key: str, n_top: int = 24, seed: int = 0) -> FeatureExemplars:
    """Explain/score/test exemplars: n_top top windows + 3 hard negatives in explain, 4 top in each other split."""
    rng = random.Random(f"{key}:{seed}")
    exemplars, wid = [], 0

    def window(split: str, source: str, rank: int, peak: float) -> Exemplar:
        nonlocal wid
        wid += 1
        tokens = tuple(rng.choice(WORDS) for _ in range(6))
        acts = tuple(round(peak * rng.random(), 3) for _ in tokens)
        return Exemplar(tokens, acts, window_id=wid, source=source, split=split, rank=rank)

    for r in range(n_top):
        exemplars.append(window("explain", "top", r, 5.0 - 0.1 * r))
    for r in range(3):
        exemplars.append(window("explain", "hard_negative", r, 0.2))
    for split in ("score", "test"):
        for r in range(4):
            exemplars.append(window(split, "top", r, 4.0))
    return FeatureExemplars(FeatureId.parse(key), tuple(exemplars), FeatureStats(max_activation=5.0))


def candidate(key: str, text: str, score: float, i: int = 0, ok: bool = True) -> ScoredExplanation:
    exp = Explanation(
        feature=key,
        text=text if ok else "",
        explainer="hf:teacher",
        prompt_style="plain",
        prompt_version=PROMPT_VERSION,
        sample_index=i,
        raw=text,
        ok=ok,
        error="" if ok else "unparseable",
    )
    return ScoredExplanation(exp, score, simulator="hf:sim")


def write_scored_dir(path, cands: dict[str, list[ScoredExplanation]], **meta) -> None:
    path.mkdir(parents=True, exist_ok=True)
    base = {
        "store": str(path / "store"),
        "teacher": "hf:teacher",
        "simulator": "hf:sim",
        "prompt_style": "plain",
        "prompt_version": PROMPT_VERSION,
        "k": 4,
        "split": "score",
        "subject_model": "tiny-subject",
    }
    (path / "meta.json").write_text(json.dumps({**base, **meta}))
    lines = [json.dumps(to_json(c)) for group in cands.values() for c in group]
    (path / "candidates.jsonl").write_text("\n".join(lines) + "\n")


def scored_fixture(path, n_features: int = 20, n_top: int = 24, **meta):
    """n features with 4 candidates each, scores 0.9/0.6/0.3/0.0 minus a per-feature offset, plus odd cases."""
    cands, records = {}, {}
    for f in range(n_features):
        key = f"mlp/L{f % 3}/{f}+"
        off = 0.01 * f
        cands[key] = [
            candidate(key, f"pattern {f} variant {i}", s - off, i) for i, s in enumerate((0.9, 0.6, 0.3, 0.0))
        ]
        records[key] = make_feature(key, n_top=n_top)
    # the odd cases: an unparseable reply with a high score, a NaN score, a feature below any threshold
    cands["mlp/L0/0+"].append(candidate("mlp/L0/0+", "garbage", 0.99, 9, ok=False))
    cands["mlp/L0/0+"].append(candidate("mlp/L0/0+", "nan text", float("nan"), 10))
    cands["mlp/L1/1+"] = [candidate("mlp/L1/1+", f"weak {i}", s, i) for i, s in enumerate((0.1, 0.05))]
    write_scored_dir(path, cands, **meta)
    return cands, records


def rows_of(out, config):
    """Load one config by its files: `load_dataset(DIR, config)` caches by folder *name* and config, so two
    different folders called `out` would share a cache entry (measured with datasets 5.2)."""
    import datasets

    files = {p.stem: str(p) for p in sorted((out / config).glob("*.parquet"))}
    return datasets.load_dataset("parquet", data_files=files)


def test_best_candidate_skips_unparseable_nan_and_below_threshold():
    cands = [
        candidate("mlp/L0/1+", "a", 0.5, 0),
        candidate("mlp/L0/1+", "b", 0.95, 1, ok=False),
        candidate("mlp/L0/1+", "c", float("nan"), 2),
        candidate("mlp/L0/1+", "d", 0.7, 3),
    ]
    assert best_candidate(cands, 0.3).explanation.text == "d"
    assert best_candidate(cands, 0.8) is None


def test_preference_pairs_respect_margin_and_limit():
    cands = [
        candidate("mlp/L0/1+", t, s, i) for i, (t, s) in enumerate([("a", 0.9), ("b", 0.85), ("c", 0.5), ("d", 0.1)])
    ]
    pairs = preference_pairs(cands, min_margin=0.3, max_pairs=10)
    got = [(c.explanation.text, r.explanation.text) for c, r in pairs]
    # every pair whose score gap is >= 0.3, best chosen first, worst rejected first
    assert got == [("a", "d"), ("a", "c"), ("b", "d"), ("b", "c"), ("c", "d")]
    assert all(c.score - r.score >= 0.3 for c, r in pairs)
    assert len(preference_pairs(cands, 0.3, max_pairs=2)) == 2
    assert preference_pairs(cands, 0.95, 10) == []


def test_split_is_by_feature_stable_and_honours_explicit_heldout():
    keys = [f"mlp/L0/{i}+" for i in range(200)]
    s = split_features(keys, 0.2, 0.1, seed=3)
    assert set(s.train) | set(s.validation) | set(s.heldout) == set(keys)
    assert not (set(s.train) & set(s.heldout)) and not (set(s.validation) & set(s.heldout))
    assert not set(s.train) & set(s.validation)
    assert 20 <= len(s.heldout) <= 60 and 5 <= len(s.validation) <= 35  # ~40 and ~20 expected
    # adding features never moves an existing feature to another split
    bigger = split_features(keys + [f"mlp/L1/{i}+" for i in range(200)], 0.2, 0.1, seed=3)
    assert set(s.heldout) <= set(bigger.heldout) and set(s.train) <= set(bigger.train)
    assert split_features(keys, 0.2, 0.1, seed=4).heldout != s.heldout
    tiny = split_features(keys[:3], 0.1, 0.1)
    assert (len(tiny.heldout), len(tiny.validation), len(tiny.train)) == (1, 1, 1)
    fixed = split_features(keys, 0.2, 0.1, heldout=["mlp/L0/7+", "mlp/L9/9+"])
    assert fixed.heldout == ("mlp/L0/7+", "mlp/L9/9+") and "mlp/L0/7+" not in fixed.train + fixed.validation
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_features(keys, 1.5, 0.1)


def test_build_writes_trl_ready_splits_without_heldout_features(tmp_path):
    from trl.data_utils import is_conversational

    cands, records = scored_fixture(tmp_path / "scored")
    cfg = _cfg(
        tmp_path,
        threshold=0.3,
        min_margin=0.25,
        max_pairs_per_feature=3,
        heldout_fraction=0.2,
        validation_fraction=0.2,
        seed=1,
    )
    result = build_datasets(cfg, records=records)
    out = result.out_dir
    heldout = set(read_heldout(out))
    build = json.loads((out / "build.json").read_text())
    assert heldout == set(build["splits"]["heldout"]) and heldout
    sft, pref, chat = rows_of(out, "sft"), rows_of(out, "preference"), rows_of(out, "chat")
    for ds in (sft, pref, chat):
        for split in ds:
            assert not heldout & set(ds[split]["feature"]), f"held-out feature leaked into {split}"
    assert set(sft["train"]["feature"]) <= set(build["splits"]["train"])
    assert set(sft["validation"]["feature"]) <= set(build["splits"]["validation"])

    row = sft["train"][0]
    assert is_conversational(row) and set(row) >= {"prompt", "completion"}
    key = row["feature"]
    # the student's prompt is exactly the teacher's prompt, and the winner is the best valid candidate
    assert row["prompt"] == explainer_messages(records[key], style="plain")
    want = best_candidate(cands[key], 0.3)
    assert parse_explanation(row["completion"][0]["content"]).text == want.explanation.text
    assert row["score"] == pytest.approx(want.score)
    assert chat["train"][0]["messages"] == row["prompt"] + row["completion"]
    assert "garbage" not in json.dumps(sft["train"].to_list() + sft["validation"].to_list())
    # a feature whose best score is below the threshold gives no SFT row but may give pairs
    assert "mlp/L1/1+" not in set(sft["train"]["feature"]) | set(sft["validation"]["feature"])

    prow = pref["train"][0]
    assert is_conversational(prow) and prow["score_chosen"] - prow["score_rejected"] >= 0.25
    per_feature = {}
    for f in pref["train"]["feature"]:
        per_feature[f] = per_feature.get(f, 0) + 1
    assert max(per_feature.values()) == 3  # several pairs per feature, capped
    assert result.rows["sft"]["train"] == len(sft["train"])


def test_augmentation_adds_shuffled_subsets_for_training_features_only(tmp_path):
    _, records = scored_fixture(tmp_path / "scored", n_features=8)
    cfg = _cfg(tmp_path, threshold=0.3, augment=3, heldout_fraction=0.2, validation_fraction=0.2, seed=0)
    build_datasets(cfg, records=records)
    sft = rows_of(tmp_path / "out", "sft")
    train = sft["train"].to_list()
    by_feature = {}
    for r in train:
        by_feature.setdefault(r["feature"], []).append(r)
    assert all(sorted(r["variant"] for r in rs) == [0, 1, 2, 3] for rs in by_feature.values())
    for rs in by_feature.values():
        texts = [r["prompt"][1]["content"] for r in rs]
        assert len(set(texts)) == 4  # different subsets / orders
        for r in rs[1:]:
            n = len(re.findall(r"^Excerpt \d+:$", r["prompt"][1]["content"], re.M))
            assert 10 <= n <= 20
        assert len({r["completion"][0]["content"] for r in rs}) == 1
    assert set(sft["validation"]["variant"]) == {0}


def test_card_reports_provenance_and_scores(tmp_path):
    from huggingface_hub import DatasetCard

    _, records = scored_fixture(tmp_path / "scored", n_features=6)
    result = build_datasets(_cfg(tmp_path, threshold=0.5), records=records)
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    for needle in ("tiny-subject", "hf:teacher", "hf:sim", f"version `{PROMPT_VERSION}`", "heldout.txt"):
        assert needle in card.text
    winner_mean = result.stats["winner_score"]["mean"]
    assert f"{winner_mean:.3f}" in card.text
    assert {c["config_name"] for c in card.data.configs} == {"sft", "chat", "preference", "sft_control"}


def test_never_clobbers_existing_output(tmp_path):
    _, records = scored_fixture(tmp_path / "scored", n_features=6)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="out"):
        build_datasets(_cfg(tmp_path), records=records)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    build_datasets(_cfg(tmp_path, overwrite=True), records=records)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "build.json").exists()


def test_bad_inputs_name_file_and_field(tmp_path):
    scored = tmp_path / "scored"
    scored_fixture(scored, n_features=4)
    meta = json.loads((scored / "meta.json").read_text())
    (scored / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "teacher"}))
    with pytest.raises(ValueError, match=r"meta\.json.*teacher"):
        load_scored(scored)
    (scored / "meta.json").write_text(json.dumps({**meta, "prompt_version": "v0"}))
    with pytest.raises(ValueError, match=r"meta\.json: field prompt_version"):
        load_scored(scored)
    (scored / "meta.json").write_text(json.dumps(meta))
    with open(scored / "candidates.jsonl", "a") as f:
        f.write('{"explanation": {"feature": "mlp/L0/1+"}, "scor": 1}\n')
    n_lines = len((scored / "candidates.jsonl").read_text().splitlines())
    with pytest.raises(ValueError, match=rf"candidates\.jsonl:{n_lines}: not a scored candidate"):
        load_scored(scored)


def test_build_command_reads_the_store_named_in_meta(tmp_path):
    from neuroscribe.runs.store import write_store

    _, records = scored_fixture(tmp_path / "scored", n_features=6)
    write_store(tmp_path / "scored" / "store", records.values(), {"model": "tiny-subject"})
    lines = []
    result = build_command(_cfg(tmp_path, threshold=0.3, seed=0), echo=lines.append)
    assert result.rows["sft"]["train"] > 0
    assert lines and lines[0].startswith(f"wrote {tmp_path / 'out'}") and "winners: 5 of 6" in lines[0]
    assert math.isfinite(result.stats["winner_score"]["mean"])


def distilled_dataset(path, n_features: int = 12, n_top: int = 24):
    """A built dataset folder (sft, chat, preference, heldout.txt) for the training and publishing tests."""
    _, records = scored_fixture(path / "scored", n_features=n_features, n_top=n_top)
    cfg = _cfg(path, "data", threshold=0.3, min_margin=0.2, heldout_fraction=0.2, validation_fraction=0.15)
    return build_datasets(cfg, records=records).out_dir


def test_the_format_control_rows_move_every_winner_to_another_feature(tmp_path):
    cands, records = scored_fixture(tmp_path / "scored", n_features=8)
    result = build_datasets(_cfg(tmp_path, augment=1, heldout_fraction=0.0, validation_fraction=0.0), records=records)
    sft, control = rows_of(result.out_dir, "sft")["train"], rows_of(result.out_dir, "sft_control")["train"]
    assert len(control) == len(sft) and sorted(control["feature"]) == sorted(sft["feature"])
    own = {r["feature"]: r["completion"] for r in sft}
    for row in control:
        assert row["control_of"] != row["feature"] and row["completion"] == own[row["control_of"]]
    # the same winners, each used once per feature: only who gets which moved
    assert sorted({r["control_of"] for r in control}) == sorted(own)
    variants = {}
    for row in control:  # a feature's augmented variants all carry the same borrowed winner
        variants.setdefault(row["feature"], set()).add(row["control_of"])
    assert all(len(v) == 1 for v in variants.values())

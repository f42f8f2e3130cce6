"""Nothing lost, nothing mixed, nothing aborted: outputs never overwrite inputs, resumable work is
fingerprinted, finished runs are never silently replaced, one process per output folder, one bad
server marks features failed instead of ending the run, secrets stay out of logs, and every bad input
gets one line naming the file (and field).

HTTP faults are injected by our counting proxy (tests/servers.py) in front of the real llama.cpp
server; every other component is real (tiny Llama models, real files, real subprocesses).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import SERVER_MODEL, Proxy, dead_url, llama_server  # noqa: F401  (session fixture)

from neuroscribe.configs import CallLimits, CollectConfig, ExplainConfig, MiningConfig
from neuroscribe.distill.collect import collect
from neuroscribe.distill.explain import explain
from neuroscribe.prompts import explainer_messages
from neuroscribe.runs.files import OutputInUse, OutputLock
from neuroscribe.runs.store import ExemplarStore

MINING = MiningConfig(top_k=6, pool=16, quantiles=3, per_quantile=1, random_k=3, hard_negatives=1)
FAST = CallLimits(timeout=30, retries=1)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """The error a command printed: exactly one line starting `error:`, no traceback."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-2000:]
    return errors[0]


def small_store(model, out, features: str = "mlp:1:0-1"):
    """The failure tests' store: a few neurons of the tiny Llama on 48 windows of 12 tokens."""
    return collect(
        CollectConfig(
            out=str(out),
            model=str(model),
            features=(features,),
            window=12,
            max_windows=48,
            mining=MINING,
            progress=False,
        )
    )


@pytest.fixture(scope="module")
def store(tiny_llama, tmp_path_factory):
    return small_store(tiny_llama, tmp_path_factory.mktemp("fail") / "store")


def explain_cfg(tiny_llama, store, out, teacher=None, **kw) -> ExplainConfig:
    return ExplainConfig(
        store=str(store),
        out=str(out),
        teacher=teacher or f"hf:{tiny_llama}",
        simulator=f"hf:{tiny_llama}",
        k=kw.pop("k", 2),
        max_tokens=kw.pop("max_tokens", 8),
        progress=False,
        **kw,
    )


# --------------------------------------------------------------------------- 1. inputs are never outputs


def test_no_stage_writes_into_or_deletes_its_inputs(store, tiny_llama, tmp_path):
    meta = (Path(store) / "meta.json").read_bytes()
    res = cli("explain", "--store", str(store), "--out", str(store), "--teacher", f"hf:{tiny_llama}")
    line = one_error_line(res)
    assert str(store) in line and "overlap" in line
    assert (Path(store) / "meta.json").read_bytes() == meta and ExemplarStore(store).keys()
    inside = Path(store) / "sub"
    assert "overlap" in one_error_line(cli("explain", "--store", str(store), "--out", str(inside)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-1").mkdir()
    assert "overlap" in one_error_line(cli("publish", str(run), "--dry-run", str(run), "--overwrite"))
    assert (run / "checkpoint-1").is_dir()
    scored = tmp_path / "scored"
    scored.mkdir()
    (scored / "candidates.jsonl").write_text("")
    assert "overlap" in one_error_line(
        cli("distill", "build", "--scored", str(scored), "--out", str(scored), "--overwrite")
    )
    assert (scored / "candidates.jsonl").exists()


# --------------------------------------------------------------------------- 2. resumable work is fingerprinted


def test_a_resumed_explain_refuses_changed_options(store, tiny_llama, tmp_path):
    explain(explain_cfg(tiny_llama, store, tmp_path / "first", k=2))
    # progress of the k=2 run, then the same folder asked for k=3: refused, not reused
    (tmp_path / "first" / "candidates.jsonl").unlink()  # as if killed before the merge
    for changed in ({"k": 3}, {"prompt_style": "highlighted"}, {"temperature": 0.5}):
        with pytest.raises(FileExistsError, match="different explain configuration"):
            explain(explain_cfg(tiny_llama, store, tmp_path / "first", **changed))
    explain(explain_cfg(tiny_llama, store, tmp_path / "first", k=2))  # the same options resume
    assert json.loads((tmp_path / "first" / "meta.json").read_text())["k"] == 2


def test_collect_fingerprints_the_dataset_content(tiny_llama, tmp_path):
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(f"Line {i} of the first corpus, with words and numbers {i * 7}." for i in range(200)))
    args = [
        "collect",
        "--out",
        str(tmp_path / "store"),
        "--model",
        str(tiny_llama),
        "--features",
        "mlp:0:0-3",
        "--dataset",
        str(data),
        "--window",
        "12",
        "--shard-windows",
        "8",
        "--max-windows",
        "64",
        "--no-progress",
    ]
    killed = cli(*args, env={"NEUROSCRIBE_TEST_KILL_AFTER_SHARDS": "2"})
    assert killed.returncode == -9 and (tmp_path / "store" / ".collect").is_dir()
    data.write_text("\n".join(f"Another text entirely, sentence {i}, about something else." for i in range(200)))
    line = one_error_line(cli(*args))
    assert "dataset content" in line and "--overwrite" in line
    assert cli(*args, "--overwrite").returncode == 0


# --------------------------------------------------------------------------- 3. finished runs are kept


def test_eval_refuses_to_replace_an_existing_report(tmp_path):
    from neuroscribe.configs import EvalConfig
    from neuroscribe.eval.benchmark import evaluate

    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    (tmp_path / "heldout.txt").write_text("mlp/L0/1+\n")
    cfg = EvalConfig(
        store=str(tmp_path / "store"),
        features=str(tmp_path / "heldout.txt"),
        student="x",
        out=str(out),
        teacher_results=str(tmp_path / "t"),
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate(cfg)
    assert json.loads((out / "results.json").read_text()) == {"kept": True}


def test_training_into_a_finished_run_without_checkpoints_is_refused(tmp_path):
    from neuroscribe.train.args import parse_args
    from neuroscribe.train.pipeline import check_output_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "neuroscribe_run.json").write_text('{"kind": "sft"}')
    root = Path(__file__).resolve().parents[1]
    script, training, model, _ = parse_args(
        "sft",
        [
            "--config",
            str(root / "recipes/tiny/sft.yaml"),
            "--output_dir",
            str(run),
            "--dataset_name",
            str(tmp_path / "data"),
        ],
    )
    with pytest.raises(FileExistsError, match="finished training run"):
        check_output_dir(script, training, model)
    assert (run / "adapter_model.safetensors").read_bytes() == b"weights"
    script.overwrite = True
    check_output_dir(script, training, model)
    # replaced on request: cleared before training starts, then stamped with the new run's fingerprint
    assert [p.name for p in run.iterdir()] == ["neuroscribe_started.json"]


# --------------------------------------------------------------------------- 4. incomplete checkpoints


def test_resume_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    from neuroscribe.runs.train import last_complete_checkpoint

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (tmp_path / "checkpoint-6").mkdir()  # killed while saving: weights there, state not yet written
    (tmp_path / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # torn write
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert last_complete_checkpoint(tmp_path / "nowhere") is None


# --------------------------------------------------------------------------- 5. one process per output folder


def test_a_second_process_on_one_output_folder_gets_a_clear_error(store, tiny_llama, tmp_path):
    out = tmp_path / "busy"
    with OutputLock(out):
        with pytest.raises(OutputInUse, match="in use by another neuroscribe process"):
            explain(explain_cfg(tiny_llama, store, out))
        holder = subprocess.run(
            [
                sys.executable,
                "-m",
                "neuroscribe.cli",
                "explain",
                "--store",
                str(store),
                "--out",
                str(out),
                "--teacher",
                f"hf:{tiny_llama}",
                "--simulator",
                f"hf:{tiny_llama}",
            ],
            capture_output=True,
            text=True,
        )
        assert "in use" in one_error_line(holder)
    assert not out.exists()  # the lock's folder held nothing else, so it is gone again
    explain(explain_cfg(tiny_llama, store, out))  # free again


# --------------------------------------------------------------------------- 6, 7. bad servers, budgets


def _fails(prompt: str) -> bool:
    """The fault rule: a teacher prompt whose hash is odd fails, on every attempt (retries included)."""
    return hashlib.sha256(prompt.encode()).digest()[0] % 2 == 1


def _failing_features(store) -> set[str]:
    st = ExemplarStore(store)
    live = st.keys()  # the store's live features (a method, not a dict view)
    return {k for k in live if _fails(explainer_messages(st.get(k), "plain", max_exemplars=20)[-1]["content"])}


def _faulty(mode: str):
    def fault(body: bytes):
        messages = json.loads(body or b"{}").get("messages") or [{}]
        return mode if _fails(messages[-1].get("content", "")) else None

    return fault


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["500", "429", "garbage", "empty"])
def test_a_bad_server_marks_features_failed_and_a_rerun_retries_only_those(
    store, tiny_llama, llama_server, tmp_path, mode
):
    keys = ExemplarStore(store).keys()
    failing = _failing_features(store)
    assert failing and failing != set(keys), "the fault rule must split the features"
    out = tmp_path / "run"
    with Proxy(llama_server, fault=_faulty(mode)) as proxy:
        teacher = f"openai:{SERVER_MODEL}@{proxy.url}"
        explain(explain_cfg(tiny_llama, store, out, teacher=teacher, limits=FAST))
        meta = json.loads((out / "meta.json").read_text())
        assert meta["status"] == "partial" and set(meta["failed_features"]) == failing
        assert all("teacher" in reason for reason in meta["failed_features"].values())
        lines = (out / "candidates.jsonl").read_text().splitlines()
        done = {json.loads(line)["explanation"]["feature"] for line in lines}
        assert done == set(keys) - failing
        assert set(proxy.faults) == {mode} and len(proxy.faults) == 2 * 2 * len(failing)  # k=2, 2 attempts each
    with Proxy(llama_server) as healthy:  # the server recovered: only the failed features are asked again
        explain(explain_cfg(tiny_llama, store, out, teacher=f"openai:{SERVER_MODEL}@{healthy.url}", limits=FAST))
        assert healthy.received == 2 * len(failing)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and not meta["failed_features"]


@pytest.mark.slow
def test_an_unreachable_teacher_ends_partial_with_exit_status_3(store, tiny_llama, tmp_path):
    res = cli(
        "explain",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "run"),
        "--teacher",
        f"openai:{SERVER_MODEL}@{dead_url()}",
        "--simulator",
        f"hf:{tiny_llama}",
        "--k",
        "2",
        "--retries",
        "1",
        "--no-progress",
    )
    assert res.returncode == 3, res.stderr[-2000:]
    assert "partial" in res.stderr and "Traceback" not in res.stderr
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["n_failed"] == len(ExemplarStore(store).keys())


@pytest.mark.slow
def test_a_hung_server_times_out_and_counts_against_the_budget(store, tiny_llama, llama_server, tmp_path):
    with Proxy(llama_server, fault=lambda body: "hang") as proxy:
        proxy.hang_seconds = 5
        limits = CallLimits(timeout=1, retries=3, max_calls=2)
        explain(
            explain_cfg(
                tiny_llama, store, tmp_path / "run", teacher=f"openai:{SERVER_MODEL}@{proxy.url}", limits=limits
            )
        )
        assert proxy.received == 2  # timed-out requests stay charged: no third request was ever sent
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["status"] == "partial" and meta["n_failed"] == len(ExemplarStore(store).keys())
    assert any("budget" in r for r in meta["failed_features"].values())


# --------------------------------------------------------------------------- 8, 9. secrets


@pytest.mark.slow
def test_a_hub_token_on_the_command_line_never_reaches_the_wandb_files(tmp_path):
    from test_datasets import distilled_dataset

    data = distilled_dataset(tmp_path, n_features=6)
    token = "hf_" + "Q7" * 15
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuroscribe.train.sft",
            "--config",
            str(root / "recipes/tiny/sft.yaml"),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "wandb",
            "--hub_token",
            token,
            "--per_device_train_batch_size",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "wandb" in str(p)]
    assert written, "wandb wrote its offline run files"
    for p in written + [p for p in (tmp_path / "run").rglob("*") if p.is_file()]:
        assert token.encode() not in p.read_bytes(), p
    assert token not in res.stdout + res.stderr


def test_an_api_key_never_travels_in_clear_text_to_another_host(monkeypatch):
    from neuroscribe.backends import BackendError, ChatRequest, load_backend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "k" * 24)
    backend = load_backend("openai:m@http://example.invalid/v1")  # .invalid never resolves: nothing is sent
    with pytest.raises(BackendError, match="clear text") as err:
        backend.generate([ChatRequest.user("hi")])
    assert "sk-test" not in str(err.value)
    for ok in ("https://example.invalid/v1", "http://127.0.0.1:9/v1", "http://localhost:9/v1", "http://[::1]:9/v1"):
        from neuroscribe.backends.remote import key_travels_safely

        assert key_travels_safely(ok), ok
    assert not key_travels_safely("http://10.0.0.5:8000/v1")


# --------------------------------------------------------------------------- 10. every dataset folder is checked


def test_eval_checks_every_dataset_folder_involved(tmp_path):
    from neuroscribe.eval.heldout import LeakageError, heldout_features

    clean, other = tmp_path / "clean", tmp_path / "other"
    for folder, train in ((clean, ["mlp/L0/5+"]), (other, ["mlp/L0/1+"])):
        folder.mkdir()
        (folder / "build.json").write_text(json.dumps({"splits": {"train": train, "validation": [], "heldout": []}}))
    (clean / "heldout.txt").write_text("mlp/L0/1+\n")
    assert heldout_features(clean / "heldout.txt") == ["mlp/L0/1+"]
    with pytest.raises(LeakageError, match=r"mlp/L0/1\+ in .*other/build.json"):
        heldout_features(clean / "heldout.txt", datasets=other)


# --------------------------------------------------------------------------- 11. clear errors


def test_bad_store_files_get_one_line_naming_the_file(store, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    (bad / "exemplars.parquet").write_bytes(b"PAR1 this is not parquet")
    assert "exemplars.parquet: not a readable Parquet file" in one_error_line(cli("inspect", str(bad), "--json"))
    table = pq.read_table(Path(store) / "exemplars.parquet").drop_columns(["activations"])
    pq.write_table(table, bad / "exemplars.parquet")
    line = one_error_line(cli("inspect", str(bad)))
    assert "exemplars.parquet: column(s) ['activations'] missing" in line
    (bad / "meta.json").write_text("{not json")
    assert "meta.json: not valid JSON" in one_error_line(cli("inspect", str(bad)))
    pq.write_table(pa.table({"x": [1]}), bad / "features.parquet")
    (bad / "meta.json").write_text((Path(store) / "meta.json").read_text())
    assert "features.parquet: column(s)" in one_error_line(cli("inspect", str(bad)))
    feats = pq.read_table(Path(store) / "features.parquet")
    i = feats.column_names.index("max_activation")
    as_text = feats.set_column(i, "max_activation", pa.array([str(v) for v in feats["max_activation"].to_pylist()]))
    pq.write_table(as_text, bad / "features.parquet")
    pq.write_table(pq.read_table(Path(store) / "exemplars.parquet"), bad / "exemplars.parquet")
    line = one_error_line(cli("inspect", str(bad)))
    assert "features.parquet: field max_activation has type string, expected" in line
    (bad / "features.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")  # garbled: Arrow's message spans lines
    assert "features.parquet: not a readable Parquet file" in one_error_line(cli("inspect", str(bad)))


def test_a_command_that_fails_before_doing_anything_leaves_no_cache_or_state_folder(store, tiny_llama, tmp_path):
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"feature": ExemplarStore(store).keys()[0], "explanation": "x"}) + "\n")
    res = cli(
        "score",
        "--explanations",
        str(ok),
        "--store",
        str(store),
        "--out",
        str(tmp_path / "s"),
        "--simulator",
        f"hf:{tmp_path / 'no-such-model'}",
    )
    assert res.returncode != 0
    assert not (tmp_path / "s").exists(), "no cache.sqlite, no empty folder"
    text = tmp_path / "corpus.jsonl"
    text.write_text(json.dumps({"body": "words " * 50}) + "\n")
    res = cli(
        "collect",
        "--model",
        str(tiny_llama),
        "--features",
        "mlp:0:0-1",
        "--dataset",
        str(text),
        "--text-field",
        "text",
        "--out",
        str(tmp_path / "c"),
    )
    assert res.returncode != 0
    assert not (tmp_path / "c" / ".collect").exists() and not (tmp_path / "c").exists()


def test_bad_explanations_recipes_and_caches_get_one_line(store, tiny_llama, tmp_path):
    listy = tmp_path / "list.jsonl"
    listy.write_text('["mlp/L1/0+", "x"]\n')
    line = one_error_line(
        cli(
            "score",
            "--explanations",
            str(listy),
            "--store",
            str(store),
            "--out",
            str(tmp_path / "s"),
            "--simulator",
            f"hf:{tiny_llama}",
        )
    )
    assert "list.jsonl:1: expected a JSON object, got list" in line
    assert not (tmp_path / "s").exists(), "a command that failed before doing anything leaves nothing behind"
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"feature": ExemplarStore(store).keys()[0], "explanation": "x"}) + "\n")
    corrupt = tmp_path / "cache.sqlite"
    corrupt.write_bytes(b"this is not a sqlite file at all, not even close" * 20)
    line = one_error_line(
        cli(
            "score",
            "--explanations",
            str(ok),
            "--store",
            str(store),
            "--out",
            str(tmp_path / "c"),
            "--simulator",
            f"hf:{tiny_llama}",
            "--cache",
            str(corrupt),
        )
    )
    assert "cache.sqlite: not a usable neuroscribe cache" in line
    root = Path(__file__).resolve().parents[1]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        (root / "recipes/tiny/sft.yaml").read_text().replace("learning_rate: 1.0e-3", "learning_rate: [1, 2]")
    )
    res = cli("train", "sft", "--config", str(recipe))
    assert "recipe.yaml: field learning_rate must be float" in one_error_line(res)


def _full_disk() -> None:
    """In the child: files may grow to 64 KiB only, as on a nearly full disk (writes fail with EFBIG)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_file(tiny_llama, tmp_path):
    out = tmp_path / "store"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuroscribe.cli",
            "collect",
            "--out",
            str(out),
            "--model",
            str(tiny_llama),
            "--features",
            "mlp:0-1",
            "--window",
            "12",
            "--max-windows",
            "64",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        preexec_fn=_full_disk,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    line = one_error_line(res)
    assert str(out) in line and "cannot write" in line and "inline_container" not in line
    assert not [p for p in out.rglob("*") if p.is_file()], "no half-written store or checkpoint is left"

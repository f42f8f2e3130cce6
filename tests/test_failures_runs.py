"""Nothing lost, round two (issue 19, items 1, 2, 3, 7 and the dataset-folder lock): a folder built aside
never deletes what sits beside it, a training run resumes only its own configuration, eval's leak check
follows every way a student can be named, and a replaced explain run never looks finished midway.

Everything is real: files, subprocesses of the CLI, the tiny Llama of conftest; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_datasets import scored_fixture
from test_failures import cli, explain_cfg, one_error_line, store  # noqa: F401  (module fixture)

from neuroscribe.configs import DistillConfig
from neuroscribe.distill.datasets import build_datasets
from neuroscribe.distill.explain import explain
from neuroscribe.eval.heldout import LeakageError, heldout_features
from neuroscribe.runs import explain as explain_files
from neuroscribe.runs.datasets import DatasetBuild, write_dataset_folder
from neuroscribe.runs.files import RunFileError

STARTED = "neuroscribe_started.json"  # the training run's fingerprint stamp (runs/train.py)

ROOT = Path(__file__).resolve().parents[1]

EMPTY_BUILD = DatasetBuild(splits={"train": [], "validation": [], "heldout": []})


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. the building sibling


def test_distill_build_never_deletes_an_input_named_like_its_building_folder(tmp_path):
    scored = tmp_path / "d" / "ex.building"  # the name the old build gave its scratch folder
    _, records = scored_fixture(scored, n_features=6)
    before = tree(scored)
    result = build_datasets(DistillConfig(str(scored), str(tmp_path / "d" / "ex")), records=records)
    assert tree(scored) == before, "the explain run (and its paid cache) is intact"
    assert (result.out_dir / "sft" / "train.parquet").is_file()
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"ex", "ex.building"}, "no scratch folder is left"


def test_a_store_beside_the_output_survives_a_failed_build(tmp_path):
    """A store at OUT.building, a build that fails half-way: the store is untouched, no scratch is left."""
    store_dir = tmp_path / "st.building"
    store_dir.mkdir()
    (store_dir / "meta.json").write_text('{"kept": true}')

    def fill(tmp: Path) -> None:
        (tmp / "sft").mkdir()
        raise ValueError("a bad row")

    with pytest.raises(ValueError, match="a bad row"):
        write_dataset_folder(tmp_path / "st", fill, [], EMPTY_BUILD, lambda tmp: None)
    assert (store_dir / "meta.json").read_text() == '{"kept": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.building"]


def test_publish_never_deletes_a_run_named_like_its_building_folder(tmp_path):
    run = tmp_path / "p" / "m.building"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"model_type": "llama"}')
    (run / "model.safetensors").write_bytes(b"w" * 4096)
    (run / "neuroscribe_run.json").write_text(json.dumps({"kind": "sft", "base_model": "base", "peft": False}))
    before = tree(run)
    res = cli("publish", str(run), "--dry-run", str(tmp_path / "p" / "m"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert tree(run) == before
    assert (tmp_path / "p" / "m" / "model.safetensors").read_bytes() == b"w" * 4096
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"m", "m.building"}


def test_a_full_disk_in_distill_build_is_one_line_and_leaves_nothing(tmp_path):
    """The Parquet writer's OSError (ENOSPC) becomes one line naming the output; no scratch folder stays."""

    def fill(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"out: cannot write \(no space left on the device\)"):
        write_dataset_folder(tmp_path / "out", fill, [], EMPTY_BUILD, lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


def test_two_builds_into_one_folder_one_waits_its_turn_or_is_refused(tmp_path):
    """The second build finds the first's lock (one clear error), and after it the finished folder
    (refused without --overwrite): never two exit-0 builds with sft/ missing."""
    out = tmp_path / "data"
    started, release = threading.Event(), threading.Event()

    def slow_fill(tmp: Path) -> None:
        (tmp / "sft").mkdir()
        (tmp / "sft" / "train.parquet").write_bytes(b"rows")
        started.set()
        release.wait(30)

    worker = threading.Thread(target=write_dataset_folder, args=(out, slow_fill, [], EMPTY_BUILD, lambda tmp: None))
    worker.start()
    assert started.wait(30)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from neuroscribe.runs.files import sibling_lock\nwith sibling_lock({str(out)!r}): pass",
        ],
        capture_output=True,
        text=True,
    )
    assert "in use by another neuroscribe process" in probe.stderr
    release.set()
    worker.join(30)
    assert (out / "sft" / "train.parquet").read_bytes() == b"rows"
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dataset_folder(out, slow_fill, [], EMPTY_BUILD, lambda tmp: None)
    from neuroscribe.runs.files import sibling_lock

    with sibling_lock(out):  # released again
        pass


# --------------------------------------------------------------------------- 2. a finished run is protected


def _training_args(out: Path, data: Path, *extra: str):
    from neuroscribe.train.args import parse_args

    return parse_args(
        "sft",
        [
            "--config",
            str(ROOT / "recipes/tiny/sft.yaml"),
            "--output_dir",
            str(out),
            "--dataset_name",
            str(data),
            *extra,
        ],
    )[:3]


def _dataset(folder: Path, content: bytes = b"rows") -> Path:
    (folder / "sft").mkdir(parents=True, exist_ok=True)
    (folder / "sft" / "train.parquet").write_bytes(content)
    return folder


def _checkpoint(out: Path, step: int) -> None:
    (out / f"checkpoint-{step}").mkdir(parents=True)
    (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_a_finished_run_with_checkpoints_is_never_resumed_without_overwrite(tmp_path):
    from neuroscribe.train.pipeline import check_output_dir

    data, out = _dataset(tmp_path / "data"), tmp_path / "run"
    check_output_dir(*_training_args(out, data))
    _checkpoint(out, 4)
    (out / "neuroscribe_run.json").write_text('{"kind": "sft"}')
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    other = _training_args(out, _dataset(tmp_path / "data2", b"other rows"), "--learning_rate", "0.5")
    with pytest.raises(FileExistsError, match="finished training run"):
        check_output_dir(*other)
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"
    with pytest.raises(FileExistsError, match="finished training run"):
        check_output_dir(*_training_args(out, data))  # the same settings: finished is finished
    script, training, model = other
    script.overwrite = True
    check_output_dir(script, training, model)
    assert sorted(p.name for p in out.iterdir()) == [STARTED], "cleared, then stamped for the new run"


def test_checkpoints_resume_only_under_the_same_settings_and_dataset_content(tmp_path):
    from neuroscribe.train.pipeline import check_output_dir

    data, out = _dataset(tmp_path / "data"), tmp_path / "run"
    check_output_dir(*_training_args(out, data))
    _checkpoint(out, 2)  # killed after checkpoint-2
    check_output_dir(*_training_args(out, data, "--logging_steps", "7"))  # bookkeeping only: resumes
    with pytest.raises(FileExistsError, match=r"another configuration \(changed: learning_rate\)"):
        check_output_dir(*_training_args(out, data, "--learning_rate", "0.5"))
    _dataset(data, b"rebuilt rows")  # the same folder, other content
    with pytest.raises(FileExistsError, match="dataset_content"):
        check_output_dir(*_training_args(out, data))
    assert (out / "checkpoint-2").is_dir()


def test_checkpoints_without_a_fingerprint_are_not_resumed_blindly(tmp_path):
    from neuroscribe.train.pipeline import check_output_dir

    out = tmp_path / "run"
    _checkpoint(out, 2)
    with pytest.raises(FileExistsError, match="no fingerprint"):
        check_output_dir(*_training_args(out, _dataset(tmp_path / "data")))


# --------------------------------------------------------------------------- 3. the leak check is not bypassed


def _split_folder(folder: Path, train: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "build.json").write_text(json.dumps({"splits": {"train": train, "validation": [], "heldout": []}}))
    return folder


@pytest.fixture
def leak_setup(tmp_path):
    clean = _split_folder(tmp_path / "clean", [])
    (clean / "heldout.txt").write_text("mlp/L0/1+\n")
    leaky = _split_folder(tmp_path / "leaky", ["mlp/L0/1+"])
    return clean / "heldout.txt", leaky


def _run(folder: Path, **info) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "neuroscribe_run.json").write_text(json.dumps({"kind": "sft", **info}))
    return folder


def test_a_checkpoint_of_a_run_is_checked_against_the_run_s_dataset(leak_setup, tmp_path):
    features, leaky = leak_setup
    run = _run(tmp_path / "run", dataset=str(leaky), dataset_path=str(leaky))
    _checkpoint(run, 4)
    with pytest.raises(LeakageError, match=r"mlp/L0/1\+ in .*leaky/build.json"):
        heldout_features(features, student=str(run / "checkpoint-4"))
    # a killed run (no run info yet) is described by its started stamp
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / STARTED).write_text(json.dumps({"fingerprint": "x", "dataset": str(leaky), "dataset_path": str(leaky)}))
    _checkpoint(killed, 2)
    with pytest.raises(LeakageError):
        heldout_features(features, student=str(killed / "checkpoint-2"))


def test_a_relative_dataset_path_is_checked_from_anywhere(leak_setup, tmp_path, monkeypatch):
    features, leaky = leak_setup
    monkeypatch.chdir(tmp_path)
    new = _run(tmp_path / "new", dataset="leaky", dataset_path=str(leaky.resolve()))
    old = _run(tmp_path / "old", dataset="./leaky")  # written before dataset_path existed
    monkeypatch.chdir("/")
    with pytest.raises(LeakageError):
        heldout_features(features, student=str(new))
    with pytest.raises(RunFileError, match="relative path that does not resolve"):
        heldout_features(features, student=str(old))


def test_a_student_with_no_run_file_or_trained_from_a_leaky_base_is_refused(leak_setup, tmp_path):
    features, leaky = leak_setup
    anonymous = tmp_path / "anonymous"
    anonymous.mkdir()
    (anonymous / "trainer_state.json").write_text("{}")
    with pytest.raises(LeakageError, match="no neuroscribe run file"):
        heldout_features(features, student=str(anonymous))
    sft_merged = _run(tmp_path / "sft-merged", dataset=str(leaky), dataset_path=str(leaky))
    clean_pref = _split_folder(tmp_path / "pref", [])
    dpo = _run(tmp_path / "dpo", dataset=str(clean_pref), dataset_path=str(clean_pref), base_model=str(sft_merged))
    from neuroscribe.runs.train import trained_on

    assert trained_on(dpo) == [clean_pref, leaky]
    with pytest.raises(LeakageError, match="leaky"):
        heldout_features(features, student=str(dpo))


# --------------------------------------------------------------------------- 7. --overwrite killed midway


@pytest.mark.slow
def test_an_overwrite_killed_midway_leaves_no_run_that_looks_finished(store, tiny_llama, tmp_path):  # noqa: F811
    out = tmp_path / "explained"
    explain(explain_cfg(tiny_llama, store, out))
    assert explain_files.is_complete(out)
    args = ["explain", "--store", str(store), "--out", str(out), "--teacher", f"hf:{tiny_llama}"]
    args += ["--simulator", f"hf:{tiny_llama}", "--k", "3", "--max-tokens", "8", "--overwrite", "--no-progress"]
    res = subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "NEUROSCRIBE_TEST_KILL_AFTER_FEATURES": "1"},
    )
    assert res.returncode == -9, res.stderr[-2000:]
    assert not explain_files.is_complete(out)
    line = one_error_line(cli("distill", "build", "--scored", str(out), "--out", str(tmp_path / "data")))
    assert str(out) in line
    assert not (tmp_path / "data").exists()

"""Nothing lost, round two (issue 19, items 4-6 and 8-11): merges read only this run's parts, the latest
line wins, torn part lines are repaired, empty replies are failures, every request counts against
--max-calls, keys never travel in clear text or come back into files, and abbreviated secret options
are redacted.

Real components throughout: tiny Llama models, real run folders, the real CLI in a subprocess, and the
counting Proxy of tests/servers.py. Where llama.cpp cannot produce the reply a test needs (a 200 with
null content, a server that echoes the Authorization header) a tiny HTTP server of our own on 127.0.0.1
answers instead (`ReplyServer`). No test sends anything to an address that is not loopback.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import Proxy, dead_url
from test_failures import small_store

from neuroscribe import dist as distributed
from neuroscribe.configs import CallLimits, ExplainConfig, ScoreConfig
from neuroscribe.distill.explain import explain
from neuroscribe.distill.score import score
from neuroscribe.runs.files import read_jsonl
from neuroscribe.runs.store import ExemplarStore

FAST = CallLimits(timeout=10, retries=1)
SECRET = "sk-test-" + "Z9" * 16


class ReplyServer:
    """An OpenAI-compatible chat endpoint of our own on 127.0.0.1 answering every request with
    `content(headers)` as the message content (any JSON value: None, "", 5, [...], or text), counting
    requests. For replies the real llama.cpp server cannot be made to give."""

    def __init__(self, content, status: int = 200):
        self.content, self.status, self.received = content, status, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                server.received += 1
                body = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": server.content(self.headers)},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
                payload = json.dumps(body if server.status == 200 else {"error": {"message": "down"}}).encode()
                self.send_response(server.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ReplyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def good_reply(headers) -> str:
    return "Explanation: the word numbers and counting"


@dataclass(frozen=True)
class ThreadRank(distributed.Dist):
    """One rank of a W-rank run as a thread of this process, its barrier a threading.Barrier: the same
    parts, barriers and merge as `accelerate launch` gives, without starting W interpreters."""

    gate: threading.Barrier | None = None

    def barrier(self) -> None:
        self.gate.wait(timeout=300)


def run_ranks(monkeypatch, world: int, fn) -> None:
    """fn(rank) in `world` threads at once, each seeing itself as that rank of the run."""
    gate, local, errors = threading.Barrier(world), threading.local(), []
    monkeypatch.setattr(distributed, "current", lambda: ThreadRank(local.rank, world, gate))

    def target(rank: int) -> None:
        local.rank = rank
        try:
            fn(rank)
        except BaseException as err:  # re-raised below; the other ranks stop waiting
            errors.append(err)
            gate.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    if errors:
        raise errors[0]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def store(tiny_llama, tmp_path_factory):
    return small_store(tiny_llama, tmp_path_factory.mktemp("remote") / "store", "mlp:1:0-2")


def explain_cfg(tiny_llama, store, out, teacher, **kw) -> ExplainConfig:
    return ExplainConfig(
        store=str(store),
        out=str(out),
        teacher=teacher,
        simulator=f"hf:{tiny_llama}",
        k=2,
        max_tokens=8,
        progress=False,
        limits=kw.pop("limits", FAST),
        **kw,
    )


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


# --------------------------------------------------------------------------- 4. stale score parts


def _explanations(store, path: Path) -> Path:
    keys = ExemplarStore(store).keys()
    rows = [{"feature": keys[i % len(keys)], "explanation": f"words number {i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_score_merges_only_this_runs_parts(store, tiny_llama, tmp_path, monkeypatch):
    """A 2-rank score, then one process with --overwrite and another split: 3 rows for 3 inputs, not 4,
    and the mean is this run's. Also a 2-rank run killed before its merge, rerun by one process."""
    expl = _explanations(store, tmp_path / "expl.jsonl")
    out = tmp_path / "scored"
    cfg = ScoreConfig(str(expl), str(store), str(out), simulator=f"hf:{tiny_llama}", progress=False)
    run_ranks(monkeypatch, 2, lambda rank: score(cfg))
    assert (out / "parts" / "rank1.json").is_file() and len((out / "scored.jsonl").read_text().splitlines()) == 3
    scored = score(replace(cfg, split="test", overwrite=True))
    assert len(scored) == 3 and len((out / "scored.jsonl").read_text().splitlines()) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and sum(summary["statuses"].values()) == 3 and summary["split"] == "test"
    assert not (out / "parts" / "rank1.json").exists()

    again = replace(cfg, out=str(tmp_path / "killed"))

    def killed(*args) -> None:
        raise KeyboardInterrupt  # rank 0 dies where it would merge; rank 1's part is on disk

    def killed_before_merge(rank: int) -> None:
        if rank == 0:
            from neuroscribe.runs import score as run_files

            monkeypatch.setattr(run_files, "read_parts", killed)
        score(again)

    with pytest.raises(KeyboardInterrupt):
        run_ranks(monkeypatch, 2, killed_before_merge)
    assert (tmp_path / "killed" / "parts" / "rank1.json").is_file()
    assert not (tmp_path / "killed" / "scored.jsonl").exists()
    with pytest.raises(FileExistsError, match="different score configuration"):
        score(replace(again, split="test"))  # another configuration's leftovers: refused, never mixed
    assert len(score(again)) == 3  # the same configuration: the leftover is discarded, not merged


# --------------------------------------------------------------------------- 5. the latest line wins


def test_a_later_success_overrides_an_old_failure_in_another_ranks_part(store, tiny_llama, tmp_path, monkeypatch):
    """A 2-rank explain whose rank 1 met 500s, rerun with one process against a healthy server: complete,
    also with --overwrite (the teacher is the same model name, so its parts are resumed)."""
    out = tmp_path / "run"
    with ReplyServer(good_reply, status=500) as down, ReplyServer(good_reply) as up, ReplyServer(good_reply) as up2:
        urls = {0: up.url, 1: down.url}
        run_ranks(monkeypatch, 2, lambda rank: explain(explain_cfg(tiny_llama, store, out, f"openai:m@{urls[rank]}")))
        assert meta(out)["status"] == "partial" and down.received > 0  # rank 1's features failed
        explain(explain_cfg(tiny_llama, store, out, f"openai:m@{up2.url}"))
        assert meta(out)["status"] == "complete" and not meta(out)["failed_features"]
        explain(explain_cfg(tiny_llama, store, out, f"openai:m@{up2.url}", overwrite=True))
        assert meta(out)["status"] == "complete"
    # a resumed run may mix two servers' answers under one model name: both are on record
    assert [s["teacher"] for s in meta(out)["servers"]] == [[up.url], [up2.url]]


# --------------------------------------------------------------------------- 6. torn part lines


def test_a_torn_part_line_is_cut_and_every_rerun_finishes(store, tiny_llama, tmp_path):
    """A kill (or a full disk) mid-append leaves a last line without its end; the reruns resume cleanly."""
    out = tmp_path / "run"
    with ReplyServer(good_reply) as up:
        cfg = explain_cfg(tiny_llama, store, out, f"openai:m@{up.url}")
        explain(cfg)
        part = out / "parts" / "rank0.jsonl"
        for _ in range(2):
            (out / "candidates.jsonl").unlink()  # as if killed before the merge ...
            lines = part.read_text().splitlines()
            part.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # ... mid-append
            explain(cfg)
            assert meta(out)["status"] == "complete", meta(out)["failed_features"]
            assert len(list(read_jsonl(part))) >= len(lines)  # every line whole again
    assert meta(out)["n_features"] == len(ExemplarStore(store).keys())


FULL_DISK_CHILD = """
import resource, signal, sys
from pathlib import Path
from neuroscribe.runs.explain import PartsLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # the part file may grow to 1000 bytes only
with PartsLog(Path(sys.argv[1]), 0) as log:
    for i in range(10):
        log.finished(f"mlp/L0/{i}+", [{"pad": "x" * 250}])
"""


def test_a_full_disk_mid_append_leaves_whole_lines_only(tmp_path):
    from neuroscribe.runs.explain import PartsLog, read_parts

    (tmp_path / "parts").mkdir()
    res = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode != 0 and "rank0.jsonl: cannot write" in res.stderr, res.stderr[-2000:]
    part = tmp_path / "parts" / "rank0.jsonl"
    whole = len(part.read_text().splitlines())
    assert whole >= 1 and part.read_bytes().endswith(b"\n"), "the cut-off line was undone"
    with PartsLog(tmp_path, 0) as log:  # the disk has room again: the next run appends cleanly
        log.finished("mlp/L0/9+", [])
    done, failed = read_parts(tmp_path)
    assert sorted(done) == [f"mlp/L0/{i}+" for i in range(whole)] + ["mlp/L0/9+"] and not failed


# --------------------------------------------------------------------------- 8. empty or null replies


@pytest.mark.parametrize("content", [None, "", "  \n", 5, ["a", "list"]], ids=["null", "empty", "blank", "int", "list"])
def test_a_reply_without_text_is_retried_never_cached_and_fails_the_feature(store, tiny_llama, tmp_path, content):
    out = tmp_path / "run"
    n = len(ExemplarStore(store).keys())
    with ReplyServer(lambda headers: content) as bad:
        explain(explain_cfg(tiny_llama, store, out, f"openai:m@{bad.url}"))
        assert bad.received == n * 2 * 2  # k=2 requests per feature, each tried twice (--retries 1)
    m = meta(out)
    assert m["status"] == "partial" and m["n_failed"] == n
    assert all("reply content" in reason for reason in m["failed_features"].values())
    if (out / "cache.sqlite").exists():  # removed again when nothing at all was cached
        with sqlite3.connect(out / "cache.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM entries WHERE kind = 'openai'").fetchone()[0] == 0


def test_a_null_reply_ends_partial_with_exit_status_3(store, tiny_llama, tmp_path):
    with ReplyServer(lambda headers: None) as bad:
        res = cli(
            "explain",
            "--store",
            str(store),
            "--out",
            str(tmp_path / "run"),
            "--teacher",
            f"openai:m@{bad.url}",
            "--simulator",
            f"hf:{tiny_llama}",
            "--k",
            "1",
            "--retries",
            "0",
            "--no-progress",
        )
    assert res.returncode == 3, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- 9. every request counts


def test_max_calls_counts_every_request_sent_retries_included(store, tiny_llama, tmp_path):
    with Proxy(dead_url(), fail_first=10**6) as proxy:  # every request answered 500 by the proxy itself
        limits = CallLimits(timeout=10, retries=5, max_calls=3)
        explain(explain_cfg(tiny_llama, store, tmp_path / "run", f"openai:m@{proxy.url}", limits=limits))
        assert proxy.received == 3
    m = meta(tmp_path / "run")
    assert m["status"] == "partial" and any("max_calls=3" in r for r in m["failed_features"].values())


# --------------------------------------------------------------------------- 10. keys: clear text, echoes


@pytest.fixture
def no_traffic_off_this_machine(monkeypatch):
    """Refuse (without sending) any connection to an address that is not loopback, so a regression could
    not leak a request; the test then fails instead."""
    import ipaddress

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    attempts = []

    def guard(address) -> None:
        host = address[0] if isinstance(address, tuple) else ""
        if host and not ipaddress.ip_address(host).is_loopback:
            attempts.append(host)
            raise ConnectionRefusedError(f"test guard: no traffic to {host}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts


@pytest.mark.parametrize(
    "spec,key_var,url_var",
    [("openai:m", "OPENAI_API_KEY", "OPENAI_BASE_URL"), ("anthropic:m", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")],
)
def test_the_key_is_refused_over_plain_http_to_a_base_url_from_the_environment(
    monkeypatch, no_traffic_off_this_machine, spec, key_var, url_var
):
    from neuroscribe.backends import BackendError, ChatRequest, load_backend

    monkeypatch.setenv(key_var, SECRET)
    monkeypatch.setenv(url_var, "http://192.0.2.2:8080/v1")
    backend = load_backend(spec, limits=CallLimits(timeout=2, retries=0))
    with pytest.raises(BackendError, match="clear text") as err:
        backend.generate([ChatRequest.user("hi")])
    assert "192.0.2.2" in str(err.value) and SECRET not in str(err.value)
    assert no_traffic_off_this_machine == [], "refused before any connection was tried"


def test_a_server_echoing_the_key_never_gets_it_into_a_file(store, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # plain http to loopback: allowed, the key stays here
    out = tmp_path / "run"
    with ReplyServer(lambda headers: f"Explanation: words, {headers.get('authorization')}") as echo:
        explain(explain_cfg(tiny_llama, store, out, f"openai:m@{echo.url}"))
        assert echo.received > 0
    assert meta(out)["status"] == "complete"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "candidates.jsonl" for p in files)
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    assert "Bearer ***" in (out / "candidates.jsonl").read_text()


# --------------------------------------------------------------------------- 11. abbreviated secret options


def test_an_abbreviated_hub_token_option_is_redacted(tmp_path, monkeypatch):
    from neuroscribe.train.args import REDACTED, parse_args

    root = Path(__file__).resolve().parents[1]
    token = "hf_" + "Q7" * 15
    argv = ["--config", str(root / "recipes/tiny/sft.yaml"), "--output_dir", str(tmp_path / "run")]
    argv += ["--dataset_name", str(tmp_path / "data"), "--hub_tok", token, "--hub-to=" + token, "--use_cpu", "true"]
    monkeypatch.setattr(sys, "argv", ["sft", *argv])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    _, training, _, source = parse_args("sft", argv)
    assert training.hub_token is None and os.environ["HF_TOKEN"] == token  # argparse read it as --hub_token
    for recorded in (sys.argv, source.overrides):
        assert token not in " ".join(recorded) and REDACTED in recorded
    assert "--hub-to=" + REDACTED in source.overrides


@pytest.mark.slow
def test_an_abbreviated_hub_token_never_reaches_wandb_or_the_run_folder(tmp_path):
    """End to end: a real (one-step) training run with wandb offline, the token given as `--hub_tok`."""
    from test_datasets import distilled_dataset

    data = distilled_dataset(tmp_path, n_features=6)
    token = "hf_" + "W4" * 15
    root = Path(__file__).resolve().parents[1]
    args = ["--config", str(root / "recipes/tiny/sft.yaml"), "--dataset_name", str(data)]
    args += ["--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--save_strategy", "no"]
    args += ["--report_to", "wandb", "--hub_tok", token, "--per_device_train_batch_size", "1"]
    res = subprocess.run(
        [sys.executable, "-m", "neuroscribe.train.sft", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "wandb" in str(p)]
    assert written and (tmp_path / "run" / "neuroscribe_run.json").is_file()
    for p in written + [p for p in (tmp_path / "run").rglob("*") if p.is_file()]:
        assert token.encode() not in p.read_bytes(), p
    assert token not in res.stdout + res.stderr


# --------------------------------------------------------------------------- clear errors


def test_a_cache_damaged_past_its_header_is_one_line_naming_the_file(store, tiny_llama, tmp_path):
    from neuroscribe.cache import Cache

    path = tmp_path / "cache.sqlite"
    with Cache(path) as cache:
        for i in range(300):
            cache.put(f"k{i}", {"text": "x" * 200}, kind="openai", model="m", stage="s")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[3 * 4096 : 12 * 4096] = b"Z" * (9 * 4096)  # the header and schema survive; the rows do not
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cache.sqlite: not a usable neuroscribe cache"), Cache(path) as cache:
        cache.get("k5")
    expl = _explanations(store, tmp_path / "expl.jsonl")
    args = ["score", "--explanations", str(expl), "--store", str(store), "--out", str(tmp_path / "s")]
    res = cli(*args, "--simulator", f"hf:{tiny_llama}", "--cache", str(path), "--no-progress")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(errors) == 1 and "cache.sqlite: not a usable neuroscribe cache" in errors[0]
    assert path.stat().st_size == len(data), "the damaged file is left as it was"


@pytest.mark.parametrize(
    "field,value,expected",
    [("retries", -1, ">= 0"), ("concurrency", 0, ">= 1"), ("timeout", 0, "> 0"), ("timeout", -5, "> 0")],
)
def test_call_limits_refuse_values_that_cannot_work(field, value, expected):
    with pytest.raises(ValueError, match=f"--{field} must be {expected}, got {value}"):
        CallLimits(**{field: value})

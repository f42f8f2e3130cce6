"""Shared fixtures: tiny random models built offline, and the bundled SmolLM2 when a test needs a real one."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from builders import build_tokenizer

    path = tmp_path_factory.mktemp("tiny_tok")
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer_dir):
    """Path of a 2-layer random Llama (hidden 64, MLP 128) with a 512-token BPE tokenizer."""
    from builders import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct, fp32, loaded once per session."""
    from neuroscribe.models import load_model

    return load_model("smollm2-135m-instruct")


from servers import llama_server  # noqa: E402,F401  (a real llama.cpp OpenAI-compatible server, session-scoped)

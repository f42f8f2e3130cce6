"""The shape of the code, checked by reading it (ARCHITECTURE.md states the rules): no import cycle
(imports inside functions included), no private name imported across modules, dependencies flow
core <- distill <- eval and core <- train, first-party imports at module top except where a module
defers one on purpose, and no file of a run folder opened outside its `neuroscribe/runs/` module."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "neuroscribe": "neuroscribe",
    "neuroscribe.distill": "distill",
    "neuroscribe.train": "train",
    "neuroscribe.eval": "eval",
}

# Modules that import first-party code inside functions on purpose: the CLI loads a stage only in the
# command that runs it (`neuroscribe --help` stays fast, no torch), and the two factories load only the
# backend or simulator a spec names (each pulls an optional SDK or engine: openai, anthropic, vllm).
DEFERRING = {"neuroscribe.cli", "neuroscribe.backends", "neuroscribe.simulators"}

# Files outside neuroscribe/runs/ that read or write files on purpose, none of them a run-folder file.
NOT_RUN_FILES = {
    "neuroscribe/costs.py": "the price table (packaged YAML or the user's --prices file)",
    "neuroscribe/saes.py": "an SAE's own cfg.json and safetensors (an input, not a run folder)",
    "neuroscribe/interchange.py": "OpenAI neuron-explainer JSON, imported from and exported to the user's files",
    "neuroscribe/bases.py": "a basis safetensors file (its own module owns it: ARCHITECTURE's last run-folder row)",
    "neuroscribe/cache.py": "the sqlite cache",
    "distill/score.py": "the user's explanation JSONL given to `neuroscribe score --explanations`",
    "eval/demo.py": "a subprocess's log file (runs.demo.log_file names it)",
    "train/args.py": "recipe YAML files",
    "train/plan.py": "accelerate and DeepSpeed config files the user passes",
    "train/publish.py": "every file of a repo folder, scanned for secrets before upload",
    "train/cards.py": "the user's --eval-results table (markdown or JSON, theirs or eval's)",
}
FILE_IO = re.compile(
    r"json\.loads?\(|\.read_text\(|\.write_text\(|\.read_bytes\(|\bread_json\(|\bwrite_json\(|\bread_jsonl\("
    r"|\bwrite_text\(|\.to_parquet\(|pq\.read_table\(|pq\.write_table\(|\bopen\(|safe_open\("
)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if prefix == "neuroscribe" and parts and parts[0] in ("distill", "train", "eval"):
                continue
            found[".".join([prefix, *parts])] = path
    return found


def imports(name: str, path: Path):
    """(node, imported module, names, at module top) for every first-party import of a module."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("neuroscribe"):
                    yield node, alias.name, [], id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            if module.startswith("neuroscribe"):
                yield node, module, [a.name for a in node.names], id(node) in top


@cache
def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        out = set()
        for _, module, names, _ in imports(name, path):
            subs = {f"{module}.{n}" for n in names} & mods.keys()
            out |= subs or ({module} & mods.keys())
        edges[name] = out - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_imports_inside_functions():
    assert len(modules()) > 60
    assert cycles(graph()) == []


def stage_of(module: str) -> str:
    for stage in ("distill", "train", "eval"):
        if module == f"neuroscribe.{stage}" or module.startswith(f"neuroscribe.{stage}."):
            return stage
    return "core"


def test_dependencies_flow_core_to_distill_to_eval_and_core_to_train():
    allowed = {"core": {"core"}, "distill": {"core", "distill"}, "train": {"core", "train"}}
    allowed["eval"] = {"core", "distill", "eval"}
    wrong = [
        f"{m} imports {d}"
        for m, deps in graph().items()
        if m != "neuroscribe.cli"  # the CLI is the one place every stage meets
        for d in deps
        if stage_of(d) not in allowed[stage_of(m)]
    ]
    assert wrong == []


def test_no_private_name_is_imported_across_modules():
    wrong = [
        f"{name}:{node.lineno} imports {module}.{n}"
        for name, path in modules().items()
        for node, module, names, _ in imports(name, path)
        for n in names
        if n.startswith("_") and n != "__version__"
    ]
    assert wrong == []


def test_first_party_imports_sit_at_module_top_unless_the_module_defers_on_purpose():
    nested = [
        f"{name}:{node.lineno} imports {module} inside a function"
        for name, path in modules().items()
        if name not in DEFERRING
        for node, module, _, at_top in imports(name, path)
        if not at_top and module != "neuroscribe.recipes"  # a data package, found by its path
    ]
    assert nested == []


def test_no_run_folder_file_is_opened_outside_its_runs_module():
    opened = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("neuroscribe/runs/") or rel in NOT_RUN_FILES:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FILE_IO.search(code) and "json.dumps" not in code:
                opened.append(f"{rel}:{n}: {line.strip()}")
    assert opened == [], "read and write run files through neuroscribe/runs/ (or list a non-run file above)"


def test_the_scan_would_catch_a_stage_reading_a_run_file_itself():
    assert FILE_IO.search('meta = json.loads((folder / "meta.json").read_text())')
    assert FILE_IO.search("build = read_json(folder / BUILD)")
    assert not FILE_IO.search("blob = json.dumps(rows)")
    assert all((ROOT / rel).is_file() for rel in NOT_RUN_FILES), "an allow-listed file moved: update the list"

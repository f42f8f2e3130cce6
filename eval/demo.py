"""`neuroscribe demo`: the whole loop on CPU with the bundled SmolLM2-135M-Instruct.

Every stage writes under one run folder and reuses what an earlier run left there, so a second
`neuroscribe demo` finishes much faster. The time each stage took is printed at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

console = Console()


@dataclass
class StageTimer:
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        note = fn()
        self.rows.append((name, time.perf_counter() - start, note))

    def print(self) -> None:
        table = Table(title="neuroscribe demo")
        for col in ("stage", "seconds", "result"):
            table.add_column(col)
        for name, secs, note in self.rows:
            table.add_row(name, f"{secs:.1f}", note)
        console.print(table)


def run_demo(out: Path, model: str = "smollm2-135m-instruct", features: str = "mlp:4:0-9;mlp:18:0-9",
             windows: int = 384) -> Path:
    from neuroscribe.distill.collect import CollectConfig, collect
    from neuroscribe.distill.mining import MiningConfig
    from neuroscribe.store import ExemplarStore

    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    store_dir = out / "store"

    def do_collect() -> str:
        if not (store_dir / "meta.json").exists():
            collect(CollectConfig(out=str(store_dir), model=model, features=(features,), window=32,
                                  max_windows=windows, mining=MiningConfig(top_k=12, per_quantile=2, random_k=6,
                                                                           hard_negatives=3)))
        s = ExemplarStore(store_dir).summary()
        return f"{s['features']} features ({s['dead']} dead), {s['exemplars']} exemplars -> {store_dir}"

    timer.run("collect", do_collect)
    timer.print()
    console.print("[yellow]explain, score, distill, train, eval: not wired into the demo yet "
                  "(the stages land with their issues); the demo runs the stages that exist.")
    return out

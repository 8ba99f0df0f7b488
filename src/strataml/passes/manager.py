"""Pass protocol, the PASSES table and the instrumented pass manager.

Every step from the imported graph down to object code is a pass of one manager: graph passes
(graph -> graph) and the lowering passes below them (`strataml.passes.lower.phases`: graph ->
kernels -> schedules -> loops -> memory plan -> LLVM), which work on a `CompileState`. So the
manager can verify after each pass at its level, print or dump the IR after each pass
(numbered files, in pipeline order), time passes and stop after the first N (bisect) at any
level: a miscompile is then a command, not an afternoon.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from strataml.errors import PassError, StrataError
from strataml.ir.dialects.graph import Graph, print_graph, verify_graph


@dataclass(frozen=True)
class GraphPass:
    """A pure graph -> graph transformation; options are dataclass fields."""

    name: ClassVar[str] = ""
    level: ClassVar[str] = "graph"  # the level of the IR it leaves

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError


@dataclass(frozen=True)
class LoweringPass:
    """A step below the graph: takes the compile state and returns it with one more level
    built (or one level rewritten). `level` names the IR it leaves, which the manager
    prints, dumps and verifies after it."""

    name: ClassVar[str] = ""
    level: ClassVar[str] = ""

    def run(self, state: Any) -> Any:
        """`lower`, and the state records that this pass has run (what later ones need)."""
        result = self.lower(state)
        return dataclasses.replace(result, done=result.done | {self.name})

    def lower(self, state: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Level:
    """How the manager prints and verifies the IR a pass leaves (`state`: what the passes
    pass along: a Graph for graph passes, the compile state below)."""

    print: Callable[[Any], str]
    verify: Callable[[Any], None]
    suffix: str = ".mlir"


def _graph_of(unit: Any) -> Graph:
    return unit if isinstance(unit, Graph) else unit.graph


LEVELS: dict[str, Level] = {
    "graph": Level(lambda u: print_graph(_graph_of(u)), lambda u: verify_graph(_graph_of(u))),
}

PASSES: dict[str, type[GraphPass] | type[LoweringPass]] = {}


def register_pass(cls: type[GraphPass] | type[LoweringPass]
                  ) -> type[GraphPass] | type[LoweringPass]:
    if not cls.name or cls.name in PASSES:
        raise ValueError(f"pass name {cls.name!r} missing or repeated")
    PASSES[cls.name] = cls
    return cls


@dataclass
class PassManager:
    passes: Sequence[GraphPass | LoweringPass]
    verify: bool = False
    dump_dir: Path | None = None
    print_after: Callable[[str, str], None] | None = None
    bisect: int | None = None  # run only the first N passes
    timings: list[tuple[str, float]] = field(default_factory=list)
    first_index: int = 0  # number of the first pass's dump (a pipeline run in parts)
    # the large constants the dumped graphs refer to, written to DIR/weights.npz
    weights: dict[str, Any] = field(default_factory=dict)

    def run(self, unit: Any) -> Any:
        """Run the passes on `unit`: a Graph (graph passes only, or the first lowering pass
        turns it into the compile state) or the compile state itself."""
        try:
            return self._run(unit)
        finally:
            if self.dump_dir is not None and self.weights:
                import numpy as np

                np.savez(self.dump_dir / "weights.npz", **self.weights)

    def _print(self, level: str, unit: Any) -> str:
        if level == "graph":  # (constants by reference into the weights store)
            return print_graph(_graph_of(unit), weights=self.weights)
        return LEVELS[level].print(unit)

    def _run(self, unit: Any) -> Any:
        if self.dump_dir is not None and self.first_index == 0:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-graph-input.mlir").write_text(self._print("graph", unit) + "\n")
        for i, p in enumerate(self.passes):
            if self.bisect is not None and i >= self.bisect:
                break
            start = time.perf_counter()
            try:
                if isinstance(p, GraphPass) and not isinstance(unit, Graph):
                    unit = dataclasses.replace(unit, graph=p.run(unit.graph))
                else:
                    unit = p.run(unit)
            except StrataError:
                raise
            except Exception as exc:
                raise PassError(f"pass {p.name} failed: {type(exc).__name__}: {exc}") from exc
            self.timings.append((p.name, time.perf_counter() - start))
            level = LEVELS[p.level]
            if self.verify:
                level.verify(unit)
            text = None
            if self.dump_dir is not None:
                text = self._print(p.level, unit)
                number = self.first_index + i + 1
                (self.dump_dir / f"{number:02d}-{p.level}-after-{p.name}{level.suffix}"
                 ).write_text(text + "\n")
            if self.print_after is not None:
                self.print_after(p.name, text or level.print(unit))
        return unit


def parse_pipeline(text: str) -> list[GraphPass | LoweringPass]:
    """'fold-constants,fuse{max-ops=8}' -> pass instances."""
    _load_passes()
    out: list[GraphPass | LoweringPass] = []
    for item in _split_top(text):
        name, _, rest = item.partition("{")
        name = name.strip()
        if name not in PASSES:
            raise ValueError(f"unknown pass {name!r}; known: {', '.join(sorted(PASSES))}")
        options: dict[str, Any] = {}
        if rest and not rest.endswith("}"):
            raise ValueError(f"pass {name!r}: options {'{' + rest!r} are missing a closing '}}'")
        defaults = {f.name: f.default for f in dataclasses.fields(PASSES[name])}
        for kv in rest[:-1].split(",") if rest else ():
            if not kv.strip():
                continue
            k, _, v = kv.partition("=")
            key = k.strip().replace("-", "_")
            if key not in defaults:
                raise ValueError(f"pass {name!r} has no option {k.strip()!r} "
                                 f"(options: {', '.join(defaults) or 'none'})")
            value = _parse_value(v.strip())
            if not isinstance(value, type(defaults[key])):
                raise ValueError(f"pass {name!r}: option {k.strip()}={v.strip()!r} should be "
                                 f"a {type(defaults[key]).__name__}")
            options[key] = value
        out.append(PASSES[name](**options))
    return out


def _split_top(text: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    if cur.strip():
        items.append(cur)
    return [i.strip() for i in items if i.strip()]


def _parse_value(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v, v)


def _load_passes() -> None:
    import strataml.passes.graph
    import strataml.passes.lower.phases  # noqa: F401  (and the lowering passes)

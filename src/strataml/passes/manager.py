"""Pass protocol, the PASSES table and the instrumented pass manager.

The manager can verify after each pass, print or dump the IR after each pass, time passes,
and stop after the first N (bisect): a miscompile is then a command, not an afternoon.
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

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError


PASSES: dict[str, type[GraphPass]] = {}


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    if not cls.name or cls.name in PASSES:
        raise ValueError(f"pass name {cls.name!r} missing or repeated")
    PASSES[cls.name] = cls
    return cls


@dataclass
class PassManager:
    passes: Sequence[GraphPass]
    verify: bool = False
    dump_dir: Path | None = None
    print_after: Callable[[str, str], None] | None = None
    bisect: int | None = None  # run only the first N passes
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, graph: Graph) -> Graph:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-graph-input.mlir").write_text(print_graph(graph) + "\n")
        for i, p in enumerate(self.passes):
            if self.bisect is not None and i >= self.bisect:
                break
            start = time.perf_counter()
            try:
                graph = p.run(graph)
            except StrataError:
                raise
            except Exception as exc:
                raise PassError(f"pass {p.name} failed: {type(exc).__name__}: {exc}") from exc
            self.timings.append((p.name, time.perf_counter() - start))
            if self.verify:
                verify_graph(graph)
            text = None
            if self.dump_dir is not None:
                text = print_graph(graph)
                (self.dump_dir / f"{i + 1:02d}-graph-after-{p.name}.mlir").write_text(text + "\n")
            if self.print_after is not None:
                self.print_after(p.name, text or print_graph(graph))
        return graph


def parse_pipeline(text: str) -> list[GraphPass]:
    """'fold-constants,fuse{max-ops=8}' -> pass instances."""
    _load_passes()
    out: list[GraphPass] = []
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
    import strataml.passes.graph  # noqa: F401  (registers the graph passes)

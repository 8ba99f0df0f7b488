"""Loop dialect: imperative loop nests over flat buffers.

Loads here take one flat element index; scalar locals (accumulators) are `Var`s introduced
by `Declare`. Every buffer access is provably in bounds once `passes.lower.kernel_to_loop`
has run (it clamps any index it cannot prove), which the verifier re-checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from strataml.errors import VerifyError
from strataml.ir.expr import Expr, Load, Reduce, Var, format_expr
from strataml.ir.types import scalar_dtype

# "rolled": keep the loop rolled (a micro-kernel body that is already unrolled by hand).
LOOP_KINDS = ("serial", "parallel", "vector", "unroll", "rolled")


@dataclass(frozen=True, slots=True)
class Stmt:
    pass


@dataclass(frozen=True, slots=True)
class For(Stmt):
    var: Var
    extent: int
    body: tuple[Stmt, ...]
    kind: str = "serial"


@dataclass(frozen=True, slots=True)
class Store(Stmt):
    buffer: str
    index: Expr
    value: Expr


@dataclass(frozen=True, slots=True)
class Prefetch(Stmt):
    """A hint to bring the cache line holding `buffer[index]` closer: into L1 for writing
    (a micro-kernel's next output tile, whose rows are too far apart for the hardware
    prefetcher), or into L2 for reading (the next panel of weights streamed from memory).
    It has no effect on results; the index must still be in bounds."""

    buffer: str
    index: Expr
    for_write: bool = True


@dataclass(frozen=True, slots=True)
class Declare(Stmt):
    """A scalar local, initialised; later `Assign`s update it."""

    var: Var
    init: Expr


@dataclass(frozen=True, slots=True)
class Assign(Stmt):
    """`var = value`. `reassociate` marks a sum/product accumulation whose order may
    change, so the loop around it vectorises with partial sums."""

    var: Var
    value: Expr
    reassociate: bool = False


@dataclass(frozen=True, slots=True)
class Allocate(Stmt):
    """A scratch buffer local to the function (on the stack), e.g. a row accumulator. Each
    thread of a parallel loop gets its own copy, unless `shared` (threads then write
    disjoint parts of the one buffer)."""

    buffer: str
    dtype: str
    size: int
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    dtype: str
    size: int  # elements


@dataclass(frozen=True, slots=True)
class LoopFunction:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    source: tuple[str, ...] = ()
    # params a call may pass the same memory for (an output written over a dying input,
    # see `passes.lower.in_place`): the others are promised disjoint to LLVM (noalias)
    aliased: tuple[str, ...] = ()


def nest(loops: list[tuple[Var, int]], body: list[Stmt], parallel: bool = False,
         kind: str = "serial") -> tuple[Stmt, ...]:
    """Wrap `body` in loops of `kind`, outermost first; the outermost parallel if asked."""
    nest: tuple[Stmt, ...] = tuple(body)
    for k in range(len(loops) - 1, -1, -1):
        v, n = loops[k]
        nest = (For(v, n, nest, "parallel" if parallel and k == 0 else kind),)
    return nest


def print_function(fn: LoopFunction) -> str:
    params = ", ".join(f"%{p.name}: {p.dtype}[{p.size}]" for p in fn.params)
    shared = f" aliased({', '.join('%' + a for a in fn.aliased)})" if fn.aliased else ""
    lines = [f"func @{fn.name}({params}) loc({', '.join(repr(s) for s in fn.source)})"
             f"{shared} {{"]
    _print_body(fn.body, "  ", lines)
    lines.append("}")
    return "\n".join(lines)


def _print_body(body: tuple[Stmt, ...], indent: str, lines: list[str]) -> None:
    for s in body:
        if isinstance(s, For):
            kind = "" if s.kind == "serial" else f" {s.kind}"
            lines.append(f"{indent}for{kind} {s.var.name} in 0..{s.extent} {{")
            _print_body(s.body, indent + "  ", lines)
            lines.append(f"{indent}}}")
        elif isinstance(s, Store):
            lines.append(f"{indent}%{s.buffer}[{format_expr(s.index)}] = {format_expr(s.value)}")
        elif isinstance(s, Prefetch):
            how = "" if s.for_write else " (read)"
            lines.append(f"{indent}prefetch{how} %{s.buffer}[{format_expr(s.index)}]")
        elif isinstance(s, Declare):
            lines.append(f"{indent}var {s.var.name}: {s.var.dtype} = {format_expr(s.init)}")
        elif isinstance(s, Assign):
            op = " +=~" if s.reassociate else " ="
            lines.append(f"{indent}{s.var.name}{op} {format_expr(s.value)}")
        elif isinstance(s, Allocate):
            shared = " shared" if s.shared else ""
            lines.append(f"{indent}alloc{shared} %{s.buffer}: {s.dtype}[{s.size}]")
        else:
            raise TypeError(type(s).__name__)


def verify_function(fn: LoopFunction) -> None:
    """Vars bound, buffers known, dtypes consistent, no Reduce left, constant indices in
    bounds (symbolic ones were clamped or proven by the lowering)."""
    params = {p.name: p for p in fn.params}
    for s in fn.body:
        if isinstance(s, Allocate):
            params[s.buffer] = Param(s.buffer, s.dtype, s.size)
    where = f"loop function {fn.name} (from {', '.join(fn.source) or '?'})"

    def check_expr(e: Expr, scope: set[Var]) -> None:
        for sub in e.walk():
            if isinstance(sub, Reduce):
                raise VerifyError(f"{where}: Reduce survives into the loop dialect")
            if isinstance(sub, Var) and sub not in scope:
                raise VerifyError(f"{where}: variable {sub.name} is not bound")
            if isinstance(sub, Load):
                p = params.get(sub.buffer)
                if p is None or len(sub.indices) != 1:
                    raise VerifyError(f"{where}: bad load of %{sub.buffer}")
                if p.dtype != scalar_dtype(sub.dtype):
                    raise VerifyError(f"{where}: load %{sub.buffer} typed {sub.dtype}, "
                                      f"buffer is {p.dtype}")

    def check(body: tuple[Stmt, ...], scope: set[Var]) -> None:
        scope = set(scope)
        for s in body:
            if isinstance(s, For):
                if s.kind not in LOOP_KINDS or s.extent < 0:
                    raise VerifyError(f"{where}: bad loop {s.var.name} ({s.kind}, {s.extent})")
                check(s.body, scope | {s.var})
            elif isinstance(s, Store):
                p = params.get(s.buffer)
                if p is None:
                    raise VerifyError(f"{where}: store to unknown buffer %{s.buffer}")
                if scalar_dtype(s.value.dtype) != p.dtype:
                    raise VerifyError(f"{where}: store of {s.value.dtype} into %{s.buffer} "
                                      f"({p.dtype})")
                check_expr(s.index, scope)
                check_expr(s.value, scope)
            elif isinstance(s, Prefetch):
                if s.buffer not in params:
                    raise VerifyError(f"{where}: prefetch of unknown buffer %{s.buffer}")
                check_expr(s.index, scope)
            elif isinstance(s, Declare):
                check_expr(s.init, scope)
                scope.add(s.var)
            elif isinstance(s, Allocate):
                if s not in fn.body:
                    raise VerifyError(f"{where}: alloc %{s.buffer} must be at function level")
            elif isinstance(s, Assign):
                if s.var not in scope:
                    raise VerifyError(f"{where}: assignment to undeclared {s.var.name}")
                check_expr(s.value, scope)

    check(fn.body, set())

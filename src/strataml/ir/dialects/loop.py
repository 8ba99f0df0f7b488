"""Loop dialect: imperative loop nests over flat buffers.

Loads here take one flat element index; scalar locals (accumulators) are `Var`s introduced
by `Declare`. Every buffer access is provably in bounds once `passes.lower.kernel_to_loop`
has run (it clamps any index it cannot prove), which the verifier re-checks.

Sizes may be known only at run time: a function's `dims` are int64 scalar parameters
(`Var("int64", "%seq")`, passed after the buffers), and a loop's extent or a parameter's size
is then an int64 expression over them (a loop's extent may also read the loops around it: a
tail `min(4, %n - io * 4)`). Vector, unrolled and rolled loops keep constant extents: their
code is laid out per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strataml.errors import VerifyError
from strataml.ir.expr import Const, Expr, Load, Reduce, Var, format_expr, rewrite
from strataml.ir.types import scalar_dtype

# "rolled": keep the loop rolled (a micro-kernel body that is already unrolled by hand).
LOOP_KINDS = ("serial", "parallel", "vector", "unroll", "rolled")
# Kinds whose trip count must be known when the code is generated.
CONSTANT_EXTENT_KINDS = ("vector", "unroll", "rolled")

# A trip count or a buffer's element count: a constant, or an int64 expression over the
# function's dims (and, for a loop, the variables of the loops around it).
Extent = int | Expr


@dataclass(frozen=True, slots=True)
class Stmt:
    pass


@dataclass(frozen=True, slots=True)
class For(Stmt):
    var: Var
    extent: Extent
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
    size: Extent  # elements


@dataclass(frozen=True, slots=True)
class LoopFunction:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    source: tuple[str, ...] = ()
    # params a call may pass the same memory for (an output written over a dying input,
    # see `passes.lower.in_place`): the others are promised disjoint to LLVM (noalias)
    aliased: tuple[str, ...] = ()
    # run-time sizes (int64 `Var`s named `%name`), passed after the buffers in this order
    dims: tuple[Var, ...] = ()


def dim(name: str) -> Var:
    """A run-time size parameter: `dim("n")` is the int64 `%n`."""
    return Var("int64", name if name.startswith("%") else f"%{name}")


def is_constant(size: Extent) -> bool:
    return isinstance(size, int)


def constant_extent(loop: For) -> int:
    """The loop's trip count, for code that needs it at compile time (a cost model's trip
    counts, an unrolled body); a symbolic one is an error that says which loop."""
    if not isinstance(loop.extent, int):
        raise VerifyError(f"loop {loop.var.name} runs {format_extent(loop.extent)} times, "
                          "known only at run time; this needs a constant trip count")
    return loop.extent


def constant_size(param: Param) -> int:
    """The parameter's element count when it is a constant (see `constant_extent`)."""
    if not isinstance(param.size, int):
        raise VerifyError(f"parameter %{param.name} holds {format_extent(param.size)} "
                          "elements, known only at run time; this needs a constant size")
    return param.size


def format_extent(size: Extent) -> str:
    return str(size) if isinstance(size, int) else format_expr(size)


def substitute_stmts(body: tuple[Stmt, ...], mapping: dict[Expr, Expr]) -> tuple[Stmt, ...]:
    """`body` with sub-expressions replaced (typically loop variables by new index
    expressions) in every index, value and loop extent; constants fold as they meet."""

    def sub(e: Expr) -> Expr:
        return rewrite(e, lambda x: mapping.get(x))

    def extent(n: Extent) -> Extent:
        if isinstance(n, int):
            return n
        folded = sub(n)
        return int(folded.value) if isinstance(folded, Const) else folded

    out: list[Stmt] = []
    for s in body:
        if isinstance(s, For):
            out.append(For(s.var, extent(s.extent), substitute_stmts(s.body, mapping), s.kind))
        elif isinstance(s, Store):
            out.append(Store(s.buffer, sub(s.index), sub(s.value)))
        elif isinstance(s, Prefetch):
            out.append(Prefetch(s.buffer, sub(s.index), s.for_write))
        elif isinstance(s, Declare):
            out.append(Declare(s.var, sub(s.init)))
        elif isinstance(s, Assign):
            out.append(Assign(s.var, sub(s.value), s.reassociate))
        else:
            out.append(s)
    return tuple(out)


def statement_exprs(body: Sequence[Stmt], declares: bool = True) -> list[Expr]:
    """The expressions of `body`'s statements, nested loops included: run-time loop extents,
    stores' indices and values, and (with `declares`) declarations' initial values."""
    out: list[Expr] = []
    for s in body:
        if isinstance(s, For):
            if not isinstance(s.extent, int):
                out.append(s.extent)
            out.extend(statement_exprs(s.body, declares))
        elif isinstance(s, Store):
            out += [s.index, s.value]
        elif isinstance(s, Declare) and declares:
            out.append(s.init)
    return out


def buffers_used(body: Sequence[Stmt]) -> set[str]:
    """The buffers `body` loads, stores or prefetches (a parameter outside it is passed but
    never touched: a temporary a later pass moved into a scratch, passes/lower/row_scratch)."""
    out: set[str] = set()
    exprs: list[Expr] = []
    for s in body:
        if isinstance(s, For):
            out |= buffers_used(s.body)
            if not isinstance(s.extent, int):
                exprs.append(s.extent)
        elif isinstance(s, Store | Prefetch):
            out.add(s.buffer)
            exprs += [s.index, s.value] if isinstance(s, Store) else [s.index]
        elif isinstance(s, Declare):
            exprs.append(s.init)
        elif isinstance(s, Assign):
            exprs.append(s.value)
    out |= {x.buffer for e in exprs for x in e.walk() if isinstance(x, Load)}
    return out


def nest(loops: Sequence[tuple[Var, Extent]], body: list[Stmt], parallel: bool = False,
         kind: str = "serial") -> tuple[Stmt, ...]:
    """Wrap `body` in loops of `kind`, outermost first; the outermost parallel if asked."""
    nest: tuple[Stmt, ...] = tuple(body)
    for k in range(len(loops) - 1, -1, -1):
        v, n = loops[k]
        nest = (For(v, n, nest, "parallel" if parallel and k == 0 else kind),)
    return nest


def print_function(fn: LoopFunction) -> str:
    params = ", ".join(f"%{p.name}: {p.dtype}[{format_extent(p.size)}]" for p in fn.params)
    shared = f" aliased({', '.join('%' + a for a in fn.aliased)})" if fn.aliased else ""
    dims = f"[{', '.join(d.name for d in fn.dims)}]" if fn.dims else ""
    lines = [f"func @{fn.name}{dims}({params}) loc({', '.join(repr(s) for s in fn.source)})"
             f"{shared} {{"]
    _print_body(fn.body, "  ", lines)
    lines.append("}")
    return "\n".join(lines)


def _print_body(body: tuple[Stmt, ...], indent: str, lines: list[str]) -> None:
    for s in body:
        if isinstance(s, For):
            kind = "" if s.kind == "serial" else f" {s.kind}"
            lines.append(f"{indent}for{kind} {s.var.name} in 0..{format_extent(s.extent)} {{")
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
    bounds (symbolic ones were clamped or proven by the lowering); dims int64 and named
    `%name`; symbolic sizes read only dims (and a loop's extent the loops around it), and
    only serial and parallel loops have them."""
    where = f"loop function {fn.name} (from {', '.join(fn.source) or '?'})"
    dims = set(fn.dims)
    for d in fn.dims:
        if d.dtype != "int64" or not d.name.startswith("%") or not d.name[1:].isidentifier():
            raise VerifyError(f"{where}: dim {d.name} must be an int64 named %name")
    if len(dims) != len(fn.dims):
        raise VerifyError(f"{where}: a dim is listed twice")
    params = {p.name: p for p in fn.params}
    for s in fn.body:
        if isinstance(s, Allocate):
            params[s.buffer] = Param(s.buffer, s.dtype, s.size)

    def check_size(size: Extent, scope: set[Var], what: str) -> None:
        """A size is a non-negative int or an int64 expression over `scope` (no loads)."""
        if isinstance(size, int):
            if size < 0:
                raise VerifyError(f"{where}: {what} has negative size {size}")
            return
        if not isinstance(size, Expr) or isinstance(size, Const) or size.dtype != "int64":
            raise VerifyError(f"{where}: {what} has size {size!r}: an int, or a non-constant "
                              "int64 expression")
        for sub in size.walk():
            if isinstance(sub, Load | Reduce):
                raise VerifyError(f"{where}: {what}'s size {format_expr(size)} reads memory")
            if isinstance(sub, Var) and sub not in scope:
                raise VerifyError(f"{where}: {what}'s size {format_expr(size)} reads "
                                  f"{sub.name}, which is not a dim of the function or a "
                                  "variable of an enclosing loop")

    for p in fn.params:
        check_size(p.size, dims, f"parameter %{p.name}")

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

    def check(body: tuple[Stmt, ...], scope: set[Var], loops: set[Var]) -> None:
        scope = set(scope)
        for s in body:
            if isinstance(s, For):
                if s.kind not in LOOP_KINDS:
                    raise VerifyError(f"{where}: bad loop {s.var.name} ({s.kind}, "
                                      f"{format_extent(s.extent)})")
                check_size(s.extent, loops, f"loop {s.var.name}")
                if not isinstance(s.extent, int) and s.kind in CONSTANT_EXTENT_KINDS:
                    raise VerifyError(f"{where}: {s.kind} loop {s.var.name} has the symbolic "
                                      f"extent {format_extent(s.extent)}; {s.kind} loops "
                                      "need a constant one (split it with a tail first)")
                if s.var in dims:
                    raise VerifyError(f"{where}: loop {s.var.name} rebinds a dim")
                check(s.body, scope | {s.var}, loops | {s.var})
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
                if not isinstance(s.size, int):  # (a stack array: its size is compiled in)
                    raise VerifyError(f"{where}: alloc %{s.buffer} needs a constant size")
            elif isinstance(s, Assign):
                if s.var not in scope:
                    raise VerifyError(f"{where}: assignment to undeclared {s.var.name}")
                check_expr(s.value, scope)

    check(fn.body, dims, dims)

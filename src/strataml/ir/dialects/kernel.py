"""Kernel dialect: one fused group = one kernel, described by index computations.

A kernel owns buffers (inputs, outputs, temporaries) and an ordered list of stages; a stage
says what each element of one buffer is: `buf[axes] = body`, where `body` is an expression
over loads of other buffers and may contain reductions. The schedule (how to compute it)
is separate: `strataml.schedule` attaches one to each stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from strataml.errors import VerifyError
from strataml.ir.expr import Expr, Load, Reduce, Var, format_expr
from strataml.sizes import Size, SizeExpr, SymbolicSizeError, size_dims

BUFFER_ROLES = ("input", "output", "temp")


@dataclass(frozen=True, slots=True)
class Buffer:
    """A tensor the kernel reads or writes. A dim may be a `SizeExpr` over run-time dims
    (`float32[batch,16]`); static buffers hold plain ints, as they always did."""

    name: str
    dtype: str
    shape: tuple[Size, ...]
    role: str

    @property
    def numel(self) -> Size:
        return prod(self.shape)

    @property
    def is_static(self) -> bool:
        return not any(isinstance(d, SizeExpr) for d in self.shape)

    @property
    def static_shape(self) -> tuple[int, ...]:
        """The shape, for code that needs every dim at compile time (the gemm generator,
        the static schedule rules); a run-time dim is an error that names the buffer."""
        return static_sizes(self.shape, f"buffer %{self.name}")

    @property
    def static_numel(self) -> int:
        return prod(self.static_shape)

    def __str__(self) -> str:
        return f"{self.role} %{self.name}: {self.dtype}[{','.join(map(str, self.shape))}]"


def static_sizes(sizes: tuple[Size, ...], what: str) -> tuple[int, ...]:
    """`sizes` as ints, or `SymbolicSizeError` saying which is known only at run time."""
    for k, d in enumerate(sizes):
        if isinstance(d, SizeExpr):
            raise SymbolicSizeError(f"{what}: size {k} is {d}, known only at run time; "
                                    "this needs static sizes")
    return tuple(int(d) for d in sizes)


@dataclass(frozen=True, slots=True)
class Stage:
    """`buffer[axes] = body` for every index in the buffer's shape."""

    buffer: str
    axes: tuple[Var, ...]
    body: Expr


@dataclass(frozen=True, slots=True)
class Kernel:
    name: str
    buffers: tuple[Buffer, ...]
    stages: tuple[Stage, ...]
    source: tuple[str, ...] = ()  # names of the graph nodes it implements (locations)

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def params(self) -> tuple[Buffer, ...]:
        """Buffers passed in by the caller, in ABI order: inputs, outputs, then temps."""
        order = {r: i for i, r in enumerate(BUFFER_ROLES)}
        return tuple(sorted(self.buffers, key=lambda b: order[b.role]))

    @property
    def dims(self) -> tuple[str, ...]:
        """The run-time dims it reads, sorted: those its buffers name, and those its stages
        read as values (`%seq` in `arange(batch) * seq`, where no buffer has a seq axis).
        That is the order the lowered loop function takes them in (`LoopFunction.dims`), so
        a caller maps them by name."""
        named = {n for b in self.buffers for d in b.shape for n in size_dims(d)}
        read = {e.name[1:] for st in self.stages for e in st.body.walk()
                if isinstance(e, Var) and _is_dim_var(e)}
        return tuple(sorted(named | read))

    @property
    def where(self) -> str:
        return f"kernel {self.name} (from {', '.join(self.source) or '?'})"


def read_inputs_only(buffers: tuple[Buffer, ...] | list[Buffer], stages: tuple[Stage, ...]
                     | list[Stage]) -> tuple[Buffer, ...]:
    """The buffers without the inputs no stage reads (a weight a lowering replaced by a
    derived or packed form is then not passed to the kernel at all)."""
    read = {e.buffer for st in stages for e in st.body.walk() if isinstance(e, Load)}
    return tuple(b for b in buffers if b.role != "input" or b.name in read)


def print_kernel(kernel: Kernel) -> str:
    lines = [f"kernel @{kernel.name} loc({', '.join(repr(s) for s in kernel.source)}) {{"]
    lines += [f"  {b}" for b in kernel.buffers]
    for st in kernel.stages:
        axes = ", ".join(a.name for a in st.axes)
        lines.append(f"  %{st.buffer}[{axes}] = {format_expr(st.body)}")
    lines.append("}")
    return "\n".join(lines)


def verify_kernel(kernel: Kernel) -> None:
    """Every load names a known buffer with the right rank, every var is bound, each
    stage's axes match its buffer, outputs are written and inputs never are."""
    buffers = {b.name: b for b in kernel.buffers}
    if len(buffers) != len(kernel.buffers):
        raise VerifyError(f"{kernel.where}: duplicate buffer names")
    for b in kernel.buffers:
        for axis, d in enumerate(b.shape):
            if not isinstance(d, int | SizeExpr) or isinstance(d, bool) \
                    or (isinstance(d, int) and d < 0):
                raise VerifyError(f"{kernel.where}: buffer %{b.name} axis {axis} has size "
                                  f"{d!r}: a non-negative int or a size expression")
    written: set[str] = set()
    for st in kernel.stages:
        buf = buffers.get(st.buffer)
        if buf is None:
            raise VerifyError(f"{kernel.where}: stage writes unknown buffer %{st.buffer}")
        if buf.role == "input":
            raise VerifyError(f"{kernel.where}: stage writes input buffer %{st.buffer}")
        if len(st.axes) != len(buf.shape):
            raise VerifyError(f"{kernel.where}: stage for %{st.buffer} has {len(st.axes)} "
                              f"axes, buffer has rank {len(buf.shape)}")
        if st.body.dtype != buf.dtype:
            raise VerifyError(f"{kernel.where}: stage for %{st.buffer} computes "
                              f"{st.body.dtype}, buffer is {buf.dtype}")
        _check_expr(kernel, st.body, set(st.axes), buffers, written | _inputs(buffers))
        written.add(st.buffer)
    for b in kernel.buffers:
        if b.role == "output" and b.name not in written:
            raise VerifyError(f"{kernel.where}: output %{b.name} is never written")


def _is_dim_var(v: Var) -> bool:
    """`%n` read as a value (a mean's run-time count): one of the kernel's dims, which the
    caller binds (loop variables are never spelt with `%`)."""
    return v.dtype == "int64" and v.name.startswith("%")


def _is_own_dim(kernel: Kernel, v: Var) -> bool:
    return _is_dim_var(v) and v.name[1:] in kernel.dims


def _inputs(buffers: dict[str, Buffer]) -> set[str]:
    return {n for n, b in buffers.items() if b.role == "input"}


def _check_expr(kernel: Kernel, e: Expr, bound: set[Var], buffers: dict[str, Buffer],
                readable: set[str]) -> None:
    if isinstance(e, Var) and e not in bound and not _is_own_dim(kernel, e):
        raise VerifyError(f"{kernel.where}: variable {e.name} is not bound")
    if isinstance(e, Load):
        buf = buffers.get(e.buffer)
        if buf is None or e.buffer not in readable:
            raise VerifyError(f"{kernel.where}: load of %{e.buffer} before it is written "
                              "or of an unknown buffer")
        if len(e.indices) != len(buf.shape):
            raise VerifyError(f"{kernel.where}: load %{e.buffer} with {len(e.indices)} "
                              f"indices, buffer has rank {len(buf.shape)}")
        if e.dtype != buf.dtype:
            raise VerifyError(f"{kernel.where}: load %{e.buffer} typed {e.dtype}, "
                              f"buffer is {buf.dtype}")
    if isinstance(e, Reduce):
        # (a reduction's extent may only name the dims the caller passes: its buffers')
        free = {n for x in e.extents for n in size_dims(x)} - set(kernel.dims)
        if free:
            raise VerifyError(f"{kernel.where}: reduction over {format_expr(e)} names "
                              f"{', '.join(sorted(free))}, which no buffer's shape does")
        _check_expr(kernel, e.init, bound, buffers, readable)
        _check_expr(kernel, e.body, bound | set(e.axes), buffers, readable)
        return
    for c in e.children():
        _check_expr(kernel, c, bound, buffers, readable)

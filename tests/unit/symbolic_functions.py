"""Hand-written loop functions over run-time sizes (`%n`), shared by the tests that run
them (test_symbolic_loops) and the ones that print and parse them (test_ir_text)."""

from __future__ import annotations

from strataml.ir.dialects.loop import (
    Assign,
    Declare,
    For,
    LoopFunction,
    Param,
    Store,
    dim,
)
from strataml.ir.expr import Const, Load, Var, binary, cast, idx, minimum, var
from strataml.passes.lower.tail_split import split_with_tail

F32, I32 = "float32", "int32"
N, ROWS, COLS, K = dim("n"), dim("rows"), dim("cols"), dim("k")
i, r, c = var("i"), var("r"), var("c")


def add_function(kind: str = "serial", dtype: str = F32) -> LoopFunction:
    """c[i] = a[i] + b[i] for i in 0..%n, the loop of `kind`."""
    store = Store("c", i, Load(dtype, "a", (i,)) + Load(dtype, "b", (i,)))
    return LoopFunction("add", tuple(Param(p, dtype, N) for p in "abc"),
                        (For(i, N, (store,), kind),), ("add",), dims=(N,))


def split_add_function(factor: int = 8, dtype: str = I32) -> LoopFunction:
    """The serial add split into a vector main loop of `factor` lanes and a serial tail."""
    (loop,) = add_function("serial", dtype).body
    assert isinstance(loop, For)
    return LoopFunction("add_split", tuple(Param(p, dtype, N) for p in "abc"),
                        split_with_tail(loop, factor), ("add",), dims=(N,))


def row_sum_function(outer: str = "parallel") -> LoopFunction:
    """y[r] = sum(x[r, :]) over a %rows x %cols matrix, both symbolic."""
    acc = Var(F32, "acc")
    body = (Declare(acc, Const(F32, 0.0)),
            For(c, COLS, (Assign(acc, acc + Load(F32, "x", (r * COLS + c,)), True),)),
            Store("y", r, acc))
    return LoopFunction("row_sum", (Param("x", F32, ROWS * COLS), Param("y", F32, ROWS)),
                        (For(r, ROWS, body, outer),), ("row_sum",), dims=(ROWS, COLS))


def blocked_scale_function(block: int = 4) -> LoopFunction:
    """A parallel loop over blocks of `block` whose body reads the dims: the last block's
    inner loop runs `min(block, %n - io * block)` (an extent over a dim and the enclosing
    loop), and the value is x * %n + %k."""
    io, ii = var("io"), var("ii")
    at = io * block + ii
    value = Load(F32, "x", (at,)) * cast(N, F32) + cast(K, F32)
    inner = For(ii, minimum(idx(block), N - io * block), (Store("y", at, value),))
    blocks = binary("floordiv", N + (block - 1), block)
    return LoopFunction("blocked_scale", (Param("x", F32, N), Param("y", F32, N)),
                        (For(io, blocks, (inner,), "parallel"),), ("scale",), dims=(N, K))


def symbolic_functions() -> list[LoopFunction]:
    """Every symbolic shape these tests build (the parser's round-trip cases use them)."""
    return [add_function(), add_function("parallel"), split_add_function(),
            split_add_function(4, F32), row_sum_function(), row_sum_function("serial"),
            blocked_scale_function()]

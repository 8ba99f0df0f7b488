"""Kernels over run-time dims (`float32[batch,16]`): their text round-trips, they lower under
the symbolic default schedule to loop functions over the dims, the bound proofs leave the
common indices (`x[i, j]` over the buffer's own dims, a transpose, a broadcast, a reduction
over a run-time row) unclamped and clamp what they cannot prove, and the functions built
natively match numpy at 1, 2, a prime and sizes the vector width does not divide."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from strataml.errors import ScheduleError, VerifyError
from strataml.ir.dialects.kernel import Buffer, Kernel, print_kernel, verify_kernel
from strataml.ir.dialects.loop import (
    For,
    LoopFunction,
    Stmt,
    Store,
    dim,
    print_function,
    verify_function,
)
from strataml.ir.expr import Binary, Expr, Load, binary, idx, var
from strataml.ir.parse import parse_function, parse_kernel
from strataml.ir.size_exprs import expr_to_size, size_to_expr
from strataml.passes.lower.kernel_to_loop import lower_kernel
from strataml.schedule import Schedule, StageSchedule
from strataml.schedule.primitives import Split, Vectorize
from strataml.schedule.schedule import TILE_ROW_VECTORS, check_schedule, default_schedule
from strataml.sizes import dim as size_dim
from strataml.sizes import evaluate, floordiv, mod, parse_size, size_max, size_min
from strataml.target import host_target
from tests.unit.test_symbolic_loops import Compiled

SIZES = [1, 2, 13, 17]  # 1, 2, primes; 13 and 17 are not multiples of any vector width

ELEMENTWISE = """kernel @ew loc('ew') {
  input %x: float32[batch,16]
  input %y: float32[batch,16]
  output %z: float32[batch,16]
  %z[i, j] = ((%x[i, j] * 2.0:float32) + exp(%y[i, j]))
}"""

ROW_REDUCE = """kernel @rows loc('rows') {
  input %x: float32[rows,cols]
  output %s: float32[rows]
  output %m: float32[rows]
  %s[i] = reduce_sum[r<cols](init=0.0:float32, %x[i, r])
  %m[i] = reduce_max[r<cols](init=-inf:float32, %x[i, r])
}"""

BROADCAST = """kernel @bias loc('bias') {
  input %x: float32[batch,seq,8]
  input %b: float32[8]
  output %y: float32[batch,seq,8]
  %y[i, j, k] = (%x[i, j, k] + %b[k])
}"""

TRANSPOSE = """kernel @transpose loc('t') {
  input %x: float32[a,b]
  output %y: float32[b,a]
  %y[i, j] = %x[j, i]
}"""

SOFTMAX = """kernel @softmax loc('softmax') {
  input %x: float32[rows,cols]
  temp %m: float32[rows]
  temp %e: float32[rows,cols]
  temp %s: float32[rows]
  output %y: float32[rows,cols]
  %m[i] = reduce_max[r<cols](init=-inf:float32, %x[i, r])
  %e[i, j] = exp((%x[i, j] - %m[i]))
  %s[i] = reduce_sum[r<cols](init=0.0:float32, %e[i, r])
  %y[i, j] = (%e[i, j] / %s[i])
}"""

SHIFTED = """kernel @shift loc('shift') {
  input %x: float32[n]
  output %y: float32[n]
  %y[i] = %x[(i + 1)]
}"""

ALL = [ELEMENTWISE, ROW_REDUCE, BROADCAST, TRANSPOSE, SOFTMAX, SHIFTED]


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(23)


# ---------------------------------------------------------------- text and sizes


@pytest.mark.parametrize("text", ALL)
def test_symbolic_kernel_text_round_trips(text):
    kernel = parse_kernel(text)
    verify_kernel(kernel)
    assert print_kernel(kernel) == text
    assert parse_kernel(print_kernel(kernel)) == kernel


def test_buffers_hold_sizes_and_the_kernel_names_its_dims():
    kernel = parse_kernel(BROADCAST)
    x, b, _ = kernel.buffers
    assert x.shape == (size_dim("batch"), size_dim("seq"), 8)
    assert x.numel == size_dim("batch") * size_dim("seq") * 8
    assert not x.is_static
    assert b.shape == (8,)
    assert isinstance(b.numel, int)
    assert b.is_static
    assert kernel.dims == ("batch", "seq")
    assert parse_kernel(ROW_REDUCE).dims == ("cols", "rows")


def test_static_kernel_text_is_unchanged():
    kernel = Kernel("k", (Buffer("x", "float32", (4, 16), "input"),
                          Buffer("y", "float32", (4, 16), "output")), ())
    assert print_kernel(kernel).splitlines()[1:3] == ["  input %x: float32[4,16]",
                                                      "  output %y: float32[4,16]"]
    assert parse_kernel(print_kernel(kernel)) == kernel
    assert all(type(d) is int for b in parse_kernel(print_kernel(kernel)).buffers
               for d in b.shape)
    assert kernel.dims == ()


def test_reduction_over_a_dim_no_buffer_names_is_refused():
    text = ROW_REDUCE.replace("reduce_sum[r<cols]", "reduce_sum[r<depth]")
    with pytest.raises(VerifyError, match="names depth, which no buffer's shape does"):
        verify_kernel(parse_kernel(text))


@pytest.mark.parametrize("text", [
    "batch", "batch*seq*12", "2*n + 1", "(h + 1)//2", "mod(s, 8)", "min(4, seq)",
    "max(a, b + 1)", "n - 1", "7"])
def test_size_to_expr_evaluates_to_the_size_and_reads_back(text):
    size = parse_size(text)
    e = size_to_expr(size)
    assert e.dtype == "int64"
    assert expr_to_size(e) == size
    for values in ({"batch": 3, "seq": 5, "n": 7, "h": 9, "s": 13, "a": 2, "b": 4},
                   {"batch": 1, "seq": 1, "n": 1, "h": 1, "s": 1, "a": 6, "b": 1}):
        assert _eval(e, values) == evaluate(size, values)


def test_expr_to_size_refuses_loop_variables():
    assert expr_to_size(binary("add", dim("n"), var("i"))) is None
    assert expr_to_size(binary("floordiv", dim("n"), dim("k"))) is None
    assert expr_to_size(binary("sub", dim("n"), 1)) == size_dim("n") - 1
    n = size_dim("n")
    assert expr_to_size(size_to_expr(floordiv(n, 4) + mod(n, 4))) == floordiv(n, 4) + mod(n, 4)
    assert expr_to_size(size_to_expr(size_min(n, 8))) == size_min(n, 8)
    assert expr_to_size(size_to_expr(size_max(n, 8))) == size_max(n, 8)


def _eval(e: Expr, values: dict[str, int]) -> int:
    if isinstance(e, Binary):
        a, b = _eval(e.a, values), _eval(e.b, values)
        return {"add": a + b, "sub": a - b, "mul": a * b, "floordiv": a // b, "mod": a % b,
                "min": min(a, b), "max": max(a, b)}[e.op]
    if hasattr(e, "value"):
        return int(e.value)
    return values[e.name[1:]]


# ---------------------------------------------------------------- schedules


def test_symbolic_default_schedule_is_the_canonical_nest_parallel_outside():
    kernel = parse_kernel(SOFTMAX)
    schedule = default_schedule(kernel, threads=4)
    assert [s.strategy for s in schedule.stages] == ["loops"] * 4
    assert [tuple(map(str, s.steps)) for s in schedule.stages] == [("parallel(i)",)] * 4
    assert all(not s.steps for s in default_schedule(kernel, threads=1).stages)
    nests = check_schedule(kernel, schedule)
    assert [lp.name for lp in nests["m"].loops] == ["i", "r"]


def test_schedule_primitives_needing_a_constant_extent_refuse_a_run_time_loop():
    kernel = parse_kernel(ELEMENTWISE)
    for step in (Split("i", 4), Vectorize("i")):
        with pytest.raises(ScheduleError, match="known only at run time"):
            check_schedule(kernel, Schedule((StageSchedule.loops(step),)))
    # the static innermost axis still splits and vectorises
    check_schedule(kernel, Schedule((StageSchedule.loops(Split("j", 8), Vectorize("j.i")),)))


def test_gemm_strategy_is_refused_over_run_time_dims_where_no_contraction_is():
    kernel = parse_kernel(ELEMENTWISE)
    gemm = StageSchedule("gemm", (), False, 4, 16, 8, 0, 0, False, 0, False, 0)
    with pytest.raises(ScheduleError, match="gemm strategy over run-time dims"):
        check_schedule(kernel, Schedule((gemm,)))


# ---------------------------------------------------------------- lowering and proofs


def _index_clamps(fn: LoopFunction) -> list[str]:
    """Every load or store index of `fn` that holds a min or max (a clamp)."""
    found: list[str] = []

    def check(index: Expr) -> None:
        if any(isinstance(x, Binary) and x.op in ("min", "max") for x in index.walk()):
            found.append(str(index))

    def visit(body: tuple[Stmt, ...]) -> None:
        for s in body:
            if isinstance(s, For):
                visit(s.body)
                continue
            exprs = [getattr(s, f.name) for f in fields(s)
                     if isinstance(getattr(s, f.name), Expr)]
            if isinstance(s, Store):
                check(s.index)
            for e in exprs:
                for x in e.walk():
                    if isinstance(x, Load):
                        check(x.indices[0])

    visit(fn.body)
    return found


def _loops(body: tuple[Stmt, ...]) -> list[For]:
    out: list[For] = []
    for s in body:
        if isinstance(s, For):
            out.append(s)
            out.extend(_loops(s.body))
    return out


@pytest.mark.parametrize("text", [ELEMENTWISE, ROW_REDUCE, BROADCAST, TRANSPOSE, SOFTMAX])
def test_common_indices_are_proven_and_left_unclamped(text):
    kernel = parse_kernel(text)
    fn = lower_kernel(kernel, threads=2)
    verify_function(fn)
    assert _index_clamps(fn) == []
    assert fn.dims == tuple(dim(n) for n in kernel.dims)
    assert parse_function(print_function(fn)) == fn
    assert any(not isinstance(lp.extent, int) for lp in _loops(fn.body))


def test_an_unprovable_index_is_clamped():
    fn = lower_kernel(parse_kernel(SHIFTED))
    clamps = _index_clamps(fn)
    assert len(clamps) == 1
    assert "%n" in clamps[0]


def test_elementwise_loops_run_over_the_dims():
    fn = lower_kernel(parse_kernel(ELEMENTWISE), threads=2)
    outer = fn.body[0]
    assert isinstance(outer, For)
    assert outer.kind == "parallel"
    assert outer.extent == dim("batch")
    (inner,) = outer.body
    assert isinstance(inner, For)
    assert inner.extent == 16
    assert [p.size for p in fn.params] == [binary("mul", idx(16), dim("batch"))] * 3


def test_dim_ranges_name_the_kernel_dims_and_add_others_after_them():
    kernel = parse_kernel(ROW_REDUCE)
    extra = dim("extra")
    fn = lower_kernel(kernel, dim_ranges={extra: None, dim("rows"): (1, 64)})
    assert fn.dims == (dim("cols"), dim("rows"), extra)


def test_static_kernel_lowers_as_before():
    """A static kernel has no dims and every extent and size stays an int (its LLVM is the
    golden files' business: tests/unit/test_symbolic_loops.py)."""
    kernel = parse_kernel(ELEMENTWISE.replace("batch", "5"))
    assert kernel.dims == ()
    fn = lower_kernel(kernel, threads=2)
    assert fn.dims == ()
    assert all(isinstance(p.size, int) for p in fn.params)
    assert all(isinstance(lp.extent, int) for lp in _loops(fn.body))


# ---------------------------------------------------------------- run natively


def _compiled(text: str, threads: int = 2) -> tuple[Kernel, Compiled]:
    kernel = parse_kernel(text)
    return kernel, Compiled(lower_kernel(kernel, threads=threads), threads)


def _outputs(kernel: Kernel, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A zeroed array per non-input buffer, one spare element past its end (checked)."""
    return {b.name: np.full(evaluate(b.numel, dims) + 1, 12345, np.float32)
            for b in kernel.buffers if b.role != "input"}


def _check_spare(arrays: dict[str, np.ndarray], names: list[str]) -> None:
    for n in names:
        assert arrays[n][-1] == 12345, f"%{n} written past its end"


def test_elementwise_runs_at_each_batch(rng):
    kernel, run = _compiled(ELEMENTWISE)
    for batch in SIZES:
        x, y = (rng.standard_normal((batch, 16)).astype(np.float32) for _ in range(2))
        arrays = {"x": x, "y": y, **_outputs(kernel, {"batch": batch})}
        run(arrays, batch=batch)
        np.testing.assert_allclose(arrays["z"][:-1].reshape(batch, 16), x * 2 + np.exp(y),
                                   rtol=1e-5)
        _check_spare(arrays, ["z"])


def test_row_sum_and_max_run_over_rows_and_cols(rng):
    kernel, run = _compiled(ROW_REDUCE)
    for rows, cols in [(1, 1), (2, 13), (13, 2), (17, 31), (3, 100)]:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        arrays = {"x": x, **_outputs(kernel, {"rows": rows, "cols": cols})}
        run(arrays, rows=rows, cols=cols)
        np.testing.assert_allclose(arrays["s"][:-1], x.sum(axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(arrays["m"][:-1], x.max(axis=1))
        _check_spare(arrays, ["s", "m"])


def test_broadcast_add_runs_over_batch_and_seq(rng):
    kernel, run = _compiled(BROADCAST)
    b = rng.standard_normal(8).astype(np.float32)
    for batch, seq in [(1, 1), (2, 13), (17, 2), (1, 31)]:
        x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
        arrays = {"x": x, "b": b, **_outputs(kernel, {"batch": batch, "seq": seq})}
        run(arrays, batch=batch, seq=seq)
        np.testing.assert_allclose(arrays["y"][:-1].reshape(batch, seq, 8), x + b,
                                   rtol=1e-5)
        _check_spare(arrays, ["y"])


def test_transpose_runs_over_both_dims(rng):
    kernel, run = _compiled(TRANSPOSE)
    for a, b in [(1, 1), (2, 13), (17, 2), (13, 17)]:
        x = rng.standard_normal((a, b)).astype(np.float32)
        arrays = {"x": x, **_outputs(kernel, {"a": a, "b": b})}
        run(arrays, a=a, b=b)
        np.testing.assert_array_equal(arrays["y"][:-1].reshape(b, a), x.T)
        _check_spare(arrays, ["y"])


@pytest.mark.parametrize("threads", [1, 2])
def test_softmax_over_a_run_time_row(threads, rng):
    kernel, run = _compiled(SOFTMAX, threads)
    for rows, cols in [(1, 1), (2, 2), (13, 17), (3, 1000)]:
        x = (rng.standard_normal((rows, cols)) * 4).astype(np.float32)
        arrays = {"x": x, **_outputs(kernel, {"rows": rows, "cols": cols})}
        run(arrays, rows=rows, cols=cols)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        np.testing.assert_allclose(arrays["y"][:-1].reshape(rows, cols),
                                   e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
        _check_spare(arrays, ["y", "m", "e", "s"])


def test_clamped_shift_reads_the_last_element_for_the_last_row(rng):
    kernel, run = _compiled(SHIFTED)
    for n in SIZES:
        x = rng.standard_normal(n).astype(np.float32)
        arrays = {"x": x, **_outputs(kernel, {"n": n})}
        run(arrays, n=n)
        np.testing.assert_array_equal(arrays["y"][:-1], x[np.minimum(np.arange(n) + 1, n - 1)])
        _check_spare(arrays, ["y"])


ODD_LANES = """kernel @odd loc('odd') {
  input %x: float32[2*n + 2]
  output %y: float32[n]
  %y[i] = (%x[((2 * i) + 1)] + %x[(i + 2)])
}"""


def test_indices_proven_against_derived_sizes(rng):
    """`2*i + 1` and `i + 2` for i in 0..%n against a buffer of `2*n + 2` elements: the
    proof compares sizes (hi = 2*n - 1 and n + 1 <= 2*n + 1), not the same name."""
    kernel = parse_kernel(ODD_LANES)
    assert parse_kernel(print_kernel(kernel)) == kernel
    fn = lower_kernel(kernel)
    assert _index_clamps(fn) == []
    run = Compiled(fn, 2)
    for n in SIZES:
        x = rng.standard_normal(2 * n + 2).astype(np.float32)
        arrays = {"x": x, **_outputs(kernel, {"n": n})}
        run(arrays, n=n)
        np.testing.assert_array_equal(arrays["y"][:-1], x[1:2 * n:2] + x[2:n + 2])
        _check_spare(arrays, ["y"])
    # the last element exactly is proven; one past it is clamped
    last = parse_kernel(ODD_LANES.replace("((2 * i) + 1)", "((2 * i) + 3)"))
    assert _index_clamps(lower_kernel(last)) == []
    past = parse_kernel(ODD_LANES.replace("((2 * i) + 1)", "((2 * i) + 4)"))
    assert len(_index_clamps(lower_kernel(past))) == 1


# ---------------------------------------------------------------- vectorised schedules

# A linear layer over run-time tokens: K and N static (N = 6 register-tile widths of
# AVX-512, 12 of AVX2), the rows (batch x seq) known only at run time.
LINEAR = """kernel @linear loc('linear') {
  input %x: float32[batch,seq,40]
  input %w: float32[40,192]
  input %b: float32[192]
  output %y: float32[batch,seq,192]
  %y[i, j, n] = (reduce_sum[k<40](init=0.0:float32, (%x[i, j, k] * %w[k, n])) + %b[n])
}"""


# The same with B batched (one weight matrix per batch row, a run-time buffer): not the
# run-time-rows gemm (tests/unit/test_dynamic_gemm.py), which takes static weights only.
BATCHED_B = LINEAR.replace("input %w: float32[40,192]", "input %w: float32[batch,40,192]") \
    .replace("%w[k, n]", "%w[i, k, n]")


def test_contraction_over_run_time_rows_with_static_weights_takes_the_gemm(rng):
    """Static K, N and B: the gemm strategy (register tiles over the run-time rows), B read
    in place here (a kernel's input; the compiler packs constant weights first)."""
    kernel = parse_kernel(LINEAR)
    (stage,) = default_schedule(kernel, threads=2).stages
    assert stage.strategy == "gemm"
    fn = lower_kernel(kernel, threads=2)
    assert _index_clamps(fn) == []
    _, run = _compiled(LINEAR, 2)
    w = rng.standard_normal((40, 192)).astype(np.float32)
    b = rng.standard_normal(192).astype(np.float32)
    for batch, seq in [(1, 1), (2, 13), (1, 17), (3, 5), (2, 8), (1, 7)]:
        x = rng.standard_normal((batch, seq, 40)).astype(np.float32)
        arrays = {"x": x, "w": w, "b": b, **_outputs(kernel, {"batch": batch, "seq": seq})}
        run(arrays, batch=batch, seq=seq)
        np.testing.assert_allclose(arrays["y"][:-1].reshape(batch, seq, 192), x @ w + b,
                                   rtol=1e-4, atol=1e-4)
        _check_spare(arrays, ["y"])


@pytest.mark.parametrize("threads", [1, 2])
def test_contraction_over_run_time_rows_takes_the_blocked_row_trace(threads, rng):
    """Static K and N, run-time rows, B batched: N in blocks of a register tile's width
    outermost, the reduction inside the rows, each block vectorised (not the scalar
    canonical nest)."""
    kernel = parse_kernel(BATCHED_B)
    target = host_target()
    block = TILE_ROW_VECTORS * target.vector_lanes_f32
    (stage,) = default_schedule(kernel, threads=threads, target=target).stages
    assert stage.strategy == "loops"
    steps = tuple(map(str, stage.steps))
    assert steps[:3] == (f"split(n, {block})", "reorder(n.o, i, j, k, n.i)",
                         "vectorize(n.i)")
    assert steps[3:] == (("parallel(n.o)",) if threads > 1 else ())
    nest = check_schedule(kernel, Schedule((stage,)))["y"]
    assert [lp.name for lp in nest.loops] == ["n.o", "i", "j", "k", "n.i"]
    _, run = _compiled(BATCHED_B, threads)
    b = rng.standard_normal(192).astype(np.float32)
    fn = lower_kernel(kernel, threads=threads)
    kinds = [(lp.var.name, lp.kind) for lp in _loops(fn.body)]
    # the token loop register-blocked (row_jam.rows_in_registers rows at a time), then the
    # tail rows
    assert ("j_2.i", "unroll") in kinds, kinds
    assert ("j_2.t", "serial") in kinds, kinds
    for batch, seq in [(1, 1), (2, 13), (1, 17), (3, 5), (2, 8), (1, 6), (1, 7), (1, 4)]:
        x = rng.standard_normal((batch, seq, 40)).astype(np.float32)
        w = rng.standard_normal((batch, 40, 192)).astype(np.float32)
        arrays = {"x": x, "w": w, "b": b, **_outputs(kernel, {"batch": batch, "seq": seq})}
        run(arrays, batch=batch, seq=seq)
        np.testing.assert_allclose(arrays["y"][:-1].reshape(batch, seq, 192), x @ w + b,
                                   rtol=1e-4, atol=1e-4)
        _check_spare(arrays, ["y"])


def test_contraction_with_a_narrow_static_row_takes_the_gemm_or_the_plain_nest():
    """N of a vector or more but no whole number of them (20) takes the run-time gemm (the
    columns past the last whole vector row by row); N narrower than a vector (6) the
    canonical nest, parallel over the innermost run-time row loop (tokens)."""
    (wide,) = default_schedule(parse_kernel(LINEAR.replace("192", "20")), threads=2).stages
    assert wide.strategy == "gemm"
    (narrow,) = default_schedule(parse_kernel(LINEAR.replace("192", "6")), threads=2).stages
    assert narrow.strategy != "gemm"
    assert tuple(map(str, narrow.steps)) == ("parallel(j)",)


def test_a_reduction_over_a_run_time_axis_jams_the_query_rows(rng):
    """P @ V's sum over the run-time key axis: the key loop carries the sum (not a row loop,
    never the one jammed); the query rows around it are jammed 4 at a time (each V vector
    loaded feeds 4 rows), the key loop inside them, with a tail for the last rows."""
    text = """kernel @pv loc('pv') {
  input %p: float32[seq,seq]
  input %v: float32[seq,32]
  output %y: float32[seq,32]
  %y[i, n] = reduce_sum[r<seq](init=0.0:float32, (%p[i, r] * %v[r, n]))
}"""
    kernel, run = _compiled(text, 1)
    loops = _loops(lower_kernel(kernel).body)
    unrolled = [lp for lp in loops if lp.kind == "unroll"]
    assert unrolled, "the query rows were not jammed"
    assert all(lp.var.name.startswith("i") for lp in unrolled)
    assert any(str(lp.extent) == "%seq" and lp.var.name.startswith("r") for lp in loops)
    for seq in (1, 4, 5, 9):
        p = rng.standard_normal((seq, seq)).astype(np.float32)
        v = rng.standard_normal((seq, 32)).astype(np.float32)
        arrays = {"p": p, "v": v, **_outputs(kernel, {"seq": seq})}
        run(arrays, seq=seq)
        np.testing.assert_allclose(arrays["y"][:-1].reshape(seq, 32), p @ v, rtol=1e-4,
                                   atol=1e-4)

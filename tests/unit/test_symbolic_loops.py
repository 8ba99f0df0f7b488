"""Loop functions over run-time sizes (`dims`): hand-written loops whose extents and buffer
sizes are expressions over `%n`, compiled natively and run at several sizes against numpy
(1, primes, sizes a vector factor does not divide, 0); the verifier's refusals; the bound
proofs over dim ranges; the tail split; and the plan ABI that passes the sizes, which must
leave a static plan's code exactly as it was."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence

import numpy as np
import pytest

from strataml.codegen.llvm import build_module, compile_module
from strataml.errors import ArtifactError, CodegenError, VerifyError
from strataml.ir.bounds import DEFAULT_DIM_RANGE, dim_env, flat_interval, interval, loop_interval
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.dialects.loop import (
    Allocate,
    Declare,
    Extent,
    For,
    LoopFunction,
    Param,
    Stmt,
    Store,
    constant_extent,
    dim,
    print_function,
    verify_function,
)
from strataml.ir.expr import Binary, Const, Expr, Load, Var, binary, cast, idx, minimum, var
from strataml.ir.parse import parse_function
from strataml.options import host_target
from strataml.passes.lower.kernel_to_loop import clamp_flat_index, lower_kernel
from strataml.passes.lower.tail_split import split_with_tail
from strataml.runtime.artifact import _call
from strataml.runtime.devices.cpu import CpuDevice
from strataml.runtime.hal import Executable, ExecutionPlan, KernelCall
from strataml.schedule import Schedule, StageSchedule
from strataml.tuning.features import loop_features
from tests.unit.static_codegen import GOLDEN, STATIC_MODULES
from tests.unit.symbolic_functions import (
    F32,
    I32,
    K,
    N,
    add_function,
    blocked_scale_function,
    c,
    i,
    row_sum_function,
    split_add_function,
)

# ---------------------------------------------------------------- compile and run


class Compiled:
    """One function behind a plan entry with a dims table, loaded into this process."""

    def __init__(self, fn: LoopFunction, threads: int = 2) -> None:
        verify_function(fn)
        self.fn = fn
        # the dims table holds the function's dims in reverse, so the call's indices matter
        table_of = {d: len(fn.dims) - 1 - k for k, d in enumerate(fn.dims)}
        call = KernelCall(fn.name, fn.name, tuple((2, k) for k in range(len(fn.params))),
                          tuple(table_of[d] for d in fn.dims))
        obj, _ = compile_module(build_module([fn], [call], f"run_{fn.name}"), host_target())
        self.entry = CpuDevice().load(Executable("object", host_target().triple, obj),
                                      f"run_{fn.name}")
        self.entry.set_num_threads(threads)
        self._run = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)(
            self.entry.function_address(f"run_{fn.name}"))

    def __call__(self, arrays: dict[str, np.ndarray], **dims: int) -> None:
        for p in self.fn.params:
            assert arrays[p.name].flags.c_contiguous
        pointers = (ctypes.c_void_p * len(self.fn.params))(
            *(arrays[p.name].ctypes.data for p in self.fn.params))
        values = [dims[d.name[1:]] for d in reversed(self.fn.dims)]
        table = (ctypes.c_int64 * max(len(values), 1))(*values)
        self._run(0, 0, ctypes.addressof(pointers), ctypes.addressof(table))


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(17)


SIZES = [0, 1, 2, 7, 8, 13, 16, 31, 97, 1000, 1031]


def _operands(rng: np.random.Generator, n: int, dtype: str) -> dict[str, np.ndarray]:
    if dtype == I32:
        a, b = (rng.integers(-1000, 1000, n).astype(np.int32) for _ in range(2))
    else:
        a, b = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    # one spare element past the end: a write beyond %n would change it
    c = np.full(n + 1, 12345, dtype=a.dtype)
    return {"a": a, "b": b, "c": c}


@pytest.mark.parametrize("kind", ["serial", "parallel"])
def test_elementwise_add_over_n(kind, rng):
    run = Compiled(add_function(kind))
    for n in [*SIZES, 10007]:
        arrays = _operands(rng, n, F32)
        run(arrays, n=n)
        np.testing.assert_allclose(arrays["c"][:n], arrays["a"] + arrays["b"], rtol=1e-6)
        assert arrays["c"][n] == 12345


@pytest.mark.parametrize(("factor", "dtype"), [(8, I32), (4, F32), (16, I32)])
def test_elementwise_add_vector_main_and_tail(factor, dtype, rng):
    fn = split_add_function(factor, dtype)
    main, tail = fn.body
    assert isinstance(main, For)
    assert isinstance(tail, For)
    assert main.body[0].kind == "vector"
    assert constant_extent(main.body[0]) == factor
    assert tail.kind == "serial"
    assert not isinstance(tail.extent, int)
    run = Compiled(fn)
    for n in SIZES:
        arrays = _operands(rng, n, dtype)
        run(arrays, n=n)
        want = arrays["a"] + arrays["b"]
        if dtype == I32:
            np.testing.assert_array_equal(arrays["c"][:n], want)
        else:
            np.testing.assert_allclose(arrays["c"][:n], want, rtol=1e-6)
        assert arrays["c"][n] == 12345


@pytest.mark.parametrize("outer", ["serial", "parallel"])
def test_row_sum_over_rows_and_cols(outer, rng):
    run = Compiled(row_sum_function(outer))
    for rows, cols in [(1, 1), (3, 5), (7, 13), (64, 33), (1, 1000), (257, 3), (0, 4), (5, 0)]:
        # small integers as floats: every order of summation gives the exact sum
        x = rng.integers(-8, 8, (rows, cols)).astype(np.float32)
        y = np.full(rows + 1, np.nan, np.float32)
        run({"x": np.ascontiguousarray(x.reshape(-1)), "y": y}, rows=rows, cols=cols)
        np.testing.assert_allclose(y[:rows], x.sum(axis=1), rtol=1e-6)
        assert np.isnan(y[rows])


def test_parallel_loop_reads_the_dims_in_its_body_and_extents(rng):
    run = Compiled(blocked_scale_function(4))
    for n, k in [(1, 3), (4, -2), (5, 0), (13, 7), (4099, 11)]:
        x = rng.standard_normal(n).astype(np.float32)
        y = np.full(n + 1, np.nan, np.float32)
        run({"x": x, "y": y}, n=n, k=k)
        np.testing.assert_allclose(y[:n], x * np.float32(n) + np.float32(k), rtol=1e-6)
        assert np.isnan(y[n])


def test_one_thread_runs_the_parallel_loop_inline(rng):
    run = Compiled(blocked_scale_function(4), threads=1)
    x = rng.standard_normal(23).astype(np.float32)
    y = np.zeros(23, np.float32)
    run({"x": x, "y": y}, n=23, k=2)
    np.testing.assert_allclose(y, x * 23 + 2, rtol=1e-6)


# ---------------------------------------------------------------- text


def test_symbolic_function_text():
    assert print_function(blocked_scale_function(4)) == (
        "func @blocked_scale[%n, %k](%x: float32[%n], %y: float32[%n]) loc('scale') {\n"
        "  for parallel io in 0..floordiv((%n + 3), 4) {\n"
        "    for ii in 0..min(4, (%n - (io * 4))) {\n"
        "      %y[((io * 4) + ii)] = ((%x[((io * 4) + ii)] * cast<float32>(%n)) + "
        "cast<float32>(%k))\n"
        "    }\n"
        "  }\n"
        "}")
    assert parse_function(print_function(blocked_scale_function(4))) == \
        blocked_scale_function(4)


def test_a_buffer_a_loop_and_a_dim_may_share_a_name():
    """`%n[...]` loads the buffer n, `%n` alone is the dim, `n` the loop variable; the code
    keeps them apart too."""
    n = var("n")
    fn = LoopFunction("f", (Param("n", F32, N),), (For(n, N, (Store(
        "n", n, Load(F32, "n", (n,)) + cast(N, F32)),), "parallel"),), dims=(N,))
    verify_function(fn)
    assert parse_function(print_function(fn)) == fn
    x = np.arange(5, dtype=np.float32)
    Compiled(fn)({"n": x}, n=5)
    np.testing.assert_array_equal(x, np.arange(5, dtype=np.float32) + 5)


# ---------------------------------------------------------------- verifier


def _fn_with_loop(extent: Extent, kind: str = "serial", dims: tuple[Var, ...] = (N,),
                  size: Extent = 64, body: Sequence[Stmt] | None = None) -> LoopFunction:
    body = tuple(body) if body is not None else (Store("a", i, Const(F32, 1.0)),)
    return LoopFunction("f", (Param("a", F32, size),), (For(i, extent, body, kind),),
                        ("src",), dims=dims)


@pytest.mark.parametrize("kind", ["vector", "unroll", "rolled"])
def test_verifier_refuses_a_symbolic_extent_where_code_is_laid_out_per_iteration(kind):
    with pytest.raises(VerifyError, match=rf"loop function f \(from src\): {kind} loop i has "
                       r"the symbolic extent %n; .*constant one"):
        verify_function(_fn_with_loop(N, kind))
    verify_function(_fn_with_loop(N, "parallel"))  # (serial and parallel may be symbolic)


@pytest.mark.parametrize(("fn", "message"), [
    (_fn_with_loop(N + var("j")), r"loop i's size \(%n \+ j\) reads j, which is not a dim"),
    (_fn_with_loop(dim("m")), "reads %m, which is not a dim"),
    (_fn_with_loop(8, size=dim("m")), r"parameter %a's size %m reads %m"),
    (_fn_with_loop(8, dims=(Var("int64", "n"),)), "dim n must be an int64 named %name"),
    (_fn_with_loop(8, dims=(N, N)), "a dim is listed twice"),
    (_fn_with_loop(Const("int64", 8)), "an int, or a non-constant int64 expression"),
    (_fn_with_loop(-1), "loop i has negative size -1"),
    (LoopFunction("f", (Param("a", F32, 8),), (Allocate("t", F32, N),), ("src",), dims=(N,)),
     "alloc %t needs a constant size"),
    (_fn_with_loop(Load("int64", "a", (idx(0),))), "reads memory"),
    # an extent may read the loops around it, not a scalar local
    (LoopFunction("f", (Param("a", F32, 8),), (
        Declare(Var("int64", "t"), idx(3)),
        For(i, Var("int64", "t"), (Store("a", i, Const(F32, 1.0)),))), ("src",)),
     "reads t, which is not a dim"),
])
def test_verifier_refuses_bad_sizes(fn, message):
    with pytest.raises(VerifyError, match=r"loop function f \(from src\): .*" + message):
        verify_function(fn)


def test_a_reader_that_needs_a_constant_says_which_loop():
    with pytest.raises(VerifyError, match=r"loop i runs %n times, known only at run time"):
        constant_extent(add_function().body[0])  # type: ignore[arg-type]
    with pytest.raises(VerifyError, match=r"loop r runs %rows times"):
        loop_features(row_sum_function(), Schedule(()), host_target(), 2)


# ---------------------------------------------------------------- bounds


def test_dim_ranges_bound_the_loops_over_them():
    env = dim_env([N, K], {K: (2, 9)})
    assert env == {N: DEFAULT_DIM_RANGE, K: (2, 9)}
    assert loop_interval(N, env) == (0, DEFAULT_DIM_RANGE[1] - 1)
    assert loop_interval(K * 3, env) == (0, 26)
    assert loop_interval(minimum(idx(4), N - 4), env) == (0, 3)
    assert loop_interval(dim("m"), env) is None
    assert loop_interval(0, env) == (0, 0)
    env[i] = loop_interval(K, env)  # type: ignore[assignment]
    assert interval(i * K + i, env) == (0, 80)
    # a symbolic row length: index (i, j) of a [%k, 16] buffer
    j = var("j")
    assert flat_interval((K, 16), (i, j), {**env, j: (0, 15)}) == (0, 8 * 16 + 15)
    assert flat_interval((16, K), (j, i), {**env, j: (0, 15)}) == (0, 15 * 9 + 8)


def test_clamp_flat_index_leaves_what_the_range_proves():
    env = {**dim_env([N], {N: (1, 64)})}
    env[i] = loop_interval(N, env)  # type: ignore[assignment]
    assert clamp_flat_index(i, 64, env) is i  # i < %n <= 64
    clamped = clamp_flat_index(i, 63, env)  # (%n may be 64: i may be 63)
    assert clamped == minimum(binary("max", i, 0), idx(62))
    # with the default range nothing bounds i by a constant
    wide = {**dim_env([N]), i: loop_interval(N, dim_env([N]))}
    assert clamp_flat_index(i, 64, wide) != i


def test_a_symbolic_clamp_runs(rng):
    """y[i] = x[min(i + %k, %n - 1)]: %k's range cannot keep i + %k below %n, so the
    lowering's clamp bounds it by the buffer's own symbolic size."""
    env = {**dim_env([N, K], {K: (0, 10)})}
    env[i] = loop_interval(N, env)  # type: ignore[assignment]
    index = clamp_flat_index(i + K, N, env)
    assert index == minimum(binary("max", i + K, 0), N - 1)
    fn = LoopFunction("shift", (Param("x", F32, N), Param("y", F32, N)),
                      (For(i, N, (Store("y", i, Load(F32, "x", (index,))),)),), dims=(N, K))
    run = Compiled(fn)
    for n, k in [(1, 0), (1, 5), (7, 3), (31, 10), (100, 0)]:
        x = rng.standard_normal(n).astype(np.float32)
        y = np.zeros(n, np.float32)
        run({"x": x, "y": y}, n=n, k=k)
        np.testing.assert_array_equal(y, x[np.minimum(np.arange(n) + k, n - 1)])


def _offset_kernel() -> Kernel:
    """out[i] = x[i + %off] (out: 32 elements, x: 64): in bounds only if %off <= 32."""
    return Kernel("offset", (Buffer("x", F32, (64,), "input"),
                             Buffer("out", F32, (32,), "output")),
                  (Stage("out", (i,), Load(F32, "x", (i + dim("off"),))),), ("offset",))


def _lowered_loads(fn: LoopFunction) -> list[Expr]:
    found: list[Expr] = []

    def visit(body: Sequence[Stmt]) -> None:
        for s in body:
            if isinstance(s, For):
                visit(s.body)
            elif isinstance(s, Store):
                found.extend(x.indices[0] for x in s.value.walk() if isinstance(x, Load))

    visit(fn.body)
    return found


@pytest.mark.parametrize("default", [True, False], ids=["default-schedule", "given"])
@pytest.mark.parametrize(("offset_range", "clamped"), [((0, 32), False), ((0, 33), True),
                                                       (None, True)])
def test_kernel_lowering_proves_or_clamps_under_dim_ranges(offset_range, clamped, default,
                                                           rng):
    off = dim("off")
    schedule = None if default else Schedule((StageSchedule("loops", ()),))
    fn = lower_kernel(_offset_kernel(), schedule, 2, dim_ranges={off: offset_range})
    verify_function(fn)
    assert fn.dims == (off,)
    (index,) = _lowered_loads(fn)
    assert any(isinstance(x, Binary) and x.op == "min" for x in index.walk()) == clamped
    assert parse_function(print_function(fn)) == fn
    run = Compiled(fn)
    x = rng.standard_normal(64).astype(np.float32)
    for k in (0, 17, 32) + ((33, 50) if clamped else ()):
        out = np.zeros(32, np.float32)
        run({"x": x, "out": out}, off=k)
        np.testing.assert_array_equal(out, x[np.minimum(np.arange(32) + k, 63)])


def test_lower_kernel_without_dims_is_unchanged():
    """The optional parameter left out (or empty) lowers exactly as before."""
    kernel = Kernel("k", (Buffer("x", F32, (8, 40), "input"), Buffer("y", F32, (8, 40),
                                                                        "output")),
                    (Stage("y", (i, c), Load(F32, "x", (i, c)) * 2.0),), ("k",))
    assert lower_kernel(kernel) == lower_kernel(kernel, dim_ranges={})
    assert lower_kernel(kernel).dims == ()


# ---------------------------------------------------------------- split with tail


def _copy_loop(extent: Extent, kind: str = "serial") -> For:
    return For(i, extent, (Store("b", i, Load(I32, "a", (i,)) * 3),), kind)


def _static_split(n: int, factor: int, inner_kind: str = "vector") -> For:
    """What the schedule's Split gives a loop of `n` (`Split.apply`: i := i.o * f + i.i)."""
    io, ii = var("i.o"), var("i.i")
    lane = binary("add", binary("mul", io, factor), ii)
    return For(io, n // factor, (For(ii, factor, (Store("b", lane, Load(I32, "a", (lane,))
                                                        * 3),), inner_kind),))


def test_split_of_a_constant_extent_is_the_static_split():
    assert split_with_tail(_copy_loop(32), 8) == (_static_split(32, 8),)
    assert split_with_tail(_copy_loop(32), 8, "unroll") == (_static_split(32, 8, "unroll"),)
    main, tail = split_with_tail(_copy_loop(35), 8)
    assert main == _static_split(32, 8)
    it = var("i.t")
    assert tail == For(it, 3, (Store("b", 32 + it, Load(I32, "a", (32 + it,)) * 3),))
    (only,) = split_with_tail(_copy_loop(5), 8)  # no whole block: the tail alone
    assert isinstance(only, For)
    assert only.extent == 5
    assert only.kind == "serial"
    assert split_with_tail(_copy_loop(0), 8) == ()
    assert split_with_tail(_copy_loop(12), 1, "serial") == (
        For(var("i.o"), 12, (For(var("i.i"), 1, (Store(
            "b", var("i.o") + var("i.i"), Load(I32, "a", (var("i.o") + var("i.i"),)) * 3),)),)),)


def test_split_of_a_symbolic_extent_has_a_tail():
    main, tail = split_with_tail(_copy_loop(N, "parallel"), 8)
    assert isinstance(main, For)
    assert isinstance(tail, For)
    assert (main.kind, main.extent) == ("parallel", binary("floordiv", N, 8))
    assert (tail.kind, tail.extent) == ("serial", binary("mod", N, 8))
    fn = LoopFunction("f", (Param("a", I32, N), Param("b", I32, N)), (main, tail), dims=(N,))
    verify_function(fn)
    assert parse_function(print_function(fn)) == fn


def test_split_names_do_not_capture_the_body():
    """A body that already reads a variable named like the new ones keeps reading it."""
    outer = var("i.o")
    loop = For(i, N, (Store("b", i + outer, Load(I32, "a", (i,))),))
    main, _ = split_with_tail(loop, 4)
    assert isinstance(main, For)
    assert main.var != outer


# ---------------------------------------------------------------- the plan ABI


def test_kernel_call_json_keeps_static_plans_as_they_were():
    static = KernelCall("k", "f", ((0, 64), (2, 1)))
    assert "dims" not in static.to_json()
    assert KernelCall.from_json(json.loads(json.dumps(static.to_json()))) == static
    dynamic = KernelCall("k", "f", ((0, 64),), (1, 0))
    assert dynamic.to_json()["dims"] == (1, 0)
    assert KernelCall.from_json(json.loads(json.dumps(dynamic.to_json()))) == dynamic
    plan = ExecutionPlan("e", 0, 0, (), (), (), ("k",), (static, dynamic))
    assert ExecutionPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert "dims" not in plan.to_json()["calls"][0]
    # an artifact's manifest: absent is (), anything but indices is refused
    assert _call({"kernel": "k", "function": "f", "args": [[0, 64]]}, "c").dims == ()
    assert _call({"kernel": "k", "function": "f", "args": [], "dims": [2]}, "c").dims == (2,)
    with pytest.raises(ArtifactError, match="dims must be indices"):
        _call({"kernel": "k", "function": "f", "args": [], "dims": [-1]}, "c")


def _entry_signature(functions: list[LoopFunction], calls: list[KernelCall]) -> str:
    text = str(build_module(functions, calls, "entry"))
    return next(line for line in text.splitlines() if line.startswith('define void @"entry"'))


def test_the_entry_takes_a_dims_table_only_when_a_call_reads_it():
    static = LoopFunction("s", (Param("a", F32, 4),), (For(i, 4, (
        Store("a", i, Const(F32, 0.0)),)),))
    call = KernelCall("s", "s", ((2, 0),))
    assert _entry_signature([static], [call]).count("i8*") == 3
    dyn = add_function()
    dyn_call = KernelCall("add", "add", ((2, 0), (2, 1), (2, 2)), (0,))
    assert _entry_signature([static, dyn], [call, dyn_call]).count("i8*") == 4
    text = str(build_module([dyn], [dyn_call]))
    assert 'define void @"add"(float* noalias %"a", float* noalias %"b", ' \
           'float* noalias %"c", i64 %"n")' in text
    with pytest.raises(CodegenError, match=r"plan step add: add takes 4 arguments, the call "
                       r"passes 3 buffers and 0 dims"):
        build_module([dyn], [KernelCall("add", "add", ((2, 0), (2, 1), (2, 2)))])


def test_the_scratch_of_a_symbolic_function_stays_constant():
    """Allocations keep constant sizes (per-thread scratch of a parallel symbolic loop)."""
    acc = Allocate("t", F32, 4)
    fn = LoopFunction("g", (Param("y", F32, N),), (acc, For(i, N, (
        Store("t", idx(0), Const(F32, 1.0)), Store("y", i, Load(F32, "t", (idx(0),)))),
        "parallel")), dims=(N,))
    verify_function(fn)
    run = Compiled(fn)
    y = np.zeros(9, np.float32)
    run({"y": y}, n=9)
    np.testing.assert_array_equal(y, np.ones(9, np.float32))


# ---------------------------------------------------------------- static code unchanged


@pytest.mark.parametrize(("name", "build"), sorted(STATIC_MODULES.items()))
def test_static_code_is_what_it_was(name, build):
    """The IR of static plans, text for text, as the emitter wrote it before loop functions
    had dims (`tests/unit/static_codegen.py` regenerates the files: only after a deliberate
    change to static code generation, reviewing the diff)."""
    assert build() == (GOLDEN / f"{name}.ll").read_text()


@pytest.mark.parametrize("op", ["floordiv", "mod"])
def test_floor_division_by_a_run_time_size(op, rng):
    """A divisor that is a run-time size (at least 1) takes no zero or -1 guard
    (`codegen.sizes.floor_divide_by_size`); negative dividends still round down."""
    m = dim("m")
    store = Store("c", i, binary(op, Load("int64", "a", (i,)), m))
    fn = LoopFunction(f"divide_{op}", tuple(Param(p, "int64", N) for p in "ac"),
                      (For(i, N, (store,)),), ("divide",), dims=(N, m))
    run = Compiled(fn)
    a = rng.integers(-1000, 1000, 97).astype(np.int64)
    for divisor in (1, 2, 7, 64):
        c = np.full(98, 12345, dtype=np.int64)
        run({"a": a, "c": c}, n=97, m=divisor)
        want = np.floor_divide(a, divisor) if op == "floordiv" else np.mod(a, divisor)
        np.testing.assert_array_equal(c[:97], want)
        assert c[97] == 12345
    call = KernelCall(fn.name, fn.name, ((2, 0), (2, 1)), (1, 0))
    assert "atomicrmw" not in str(build_module([fn], [call], "entry"))  # (no fault flag)

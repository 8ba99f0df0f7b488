"""Schedules are data: primitive traces print, round-trip through JSON, compose, and an
illegal one is refused with a reason. Every legal trace computes the same values, checked
against numpy by compiling and running the kernel natively."""

from __future__ import annotations

import ctypes
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strataml.codegen.llvm import build_module, compile_module
from strataml.errors import ScheduleError
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.dialects.loop import For, LoopFunction, print_function, verify_function
from strataml.ir.expr import Load, Reduce, compare, const, idx, maximum, reduce, select, var
from strataml.options import host_target
from strataml.passes.lower.kernel_to_loop import lower_kernel
from strataml.runtime.devices.cpu import CpuDevice
from strataml.runtime.hal import Executable, KernelCall
from strataml.schedule import Schedule, StageSchedule, default_schedule
from strataml.schedule.primitives import (
    ROOT,
    ComputeAt,
    Fuse,
    Inline,
    Pack,
    Parallel,
    Primitive,
    Reorder,
    Split,
    Tile,
    Unroll,
    Vectorize,
)
from strataml.schedule.schedule import check_schedule
from tests.unit.graphs import avx512_target, dumped

M, K, N = 36, 64, 40  # tails for every gemm tile below
i, j, r = var("i"), var("j"), var("r")


def _matmul_kernel(m: int = M, k: int = K, n: int = N, combiner: str = "sum") -> Kernel:
    body = reduce(combiner, (r,), (k,), Load("float32", "a", (i, r)) * Load("float32", "b", (r, j)))
    return Kernel("mm", (Buffer("a", "float32", (m, k), "input"),
                         Buffer("b", "float32", (k, n), "input"),
                         Buffer("c", "float32", (m, n), "output")),
                  (Stage("c", (i, j), body),), ("mm",))


def _relu_matmul_kernel() -> Kernel:
    """t = relu(a) (a temporary), c = t @ b + bias: a producer for inline / compute_at."""
    ti, tr = var("ti"), var("tr")
    relu = Stage("t", (ti, tr), maximum(Load("float32", "a", (ti, tr)), const(0, "float32")))
    body = reduce("sum", (r,), (K,), Load("float32", "t", (i, r)) * Load("float32", "b", (r, j)))
    mm = Stage("c", (i, j), body + Load("float32", "bias", (j,)))
    return Kernel("rmm", (Buffer("a", "float32", (M, K), "input"),
                          Buffer("b", "float32", (K, N), "input"),
                          Buffer("bias", "float32", (N,), "input"),
                          Buffer("c", "float32", (M, N), "output"),
                          Buffer("t", "float32", (M, K), "temp")),
                  (relu, mm), ("rmm",))


def _stencil_kernel(padded: bool = False) -> Kernel:
    """t = 2x + 1 over (8, 42); out[p, q] = t[p, q] + t[p, q+1] + t[p, q+2] (q < 40). With
    `padded`, out also reads t[p, q-1] where q > 0, so a box can start before the buffer."""
    p, q, tp, tq = var("p"), var("q"), var("tp"), var("tq")
    t = Stage("t", (tp, tq), Load("float32", "x", (tp, tq)) * 2.0 + 1.0)
    body = Load("float32", "t", (p, q)) + Load("float32", "t", (p, q + 1)) \
        + Load("float32", "t", (p, q + 2))
    if padded:
        body = body + select(compare("gt", q, idx(0)), Load("float32", "t", (p, q - 1)),
                             const(0, "float32"))
    return Kernel("stencil", (Buffer("x", "float32", (8, 42), "input"),
                              Buffer("out", "float32", (8, 40), "output"),
                              Buffer("t", "float32", (8, 42), "temp")),
                  (t, Stage("out", (p, q), body)), ("stencil",))


def _run(kernel: Kernel, schedule: Schedule | None, inputs: dict[str, np.ndarray]
         ) -> tuple[dict[str, np.ndarray], LoopFunction]:
    fn = lower_kernel(kernel, schedule, 2, avx512_target())
    verify_function(fn)
    call = KernelCall(kernel.name, kernel.name, tuple((2, k) for k in range(len(fn.params))))
    module = build_module([fn], [call], f"run_{kernel.name}")
    obj, _ = compile_module(module, host_target())
    entry = CpuDevice().load(Executable("object", host_target().triple, obj),
                             f"run_{kernel.name}")
    entry.set_num_threads(2)
    arrays = dict(inputs)
    for b in kernel.buffers:
        if b.role != "input":
            arrays[b.name] = np.full(b.shape, np.nan, np.float32)
    table = (ctypes.c_void_p * len(fn.params))(*(arrays[p.name].ctypes.data
                                                  for p in fn.params))
    entry(0, 0, ctypes.addressof(table))
    return arrays, fn


@pytest.fixture(scope="module")
def mats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"a": rng.standard_normal((M, K)).astype(np.float32),
            "b": rng.standard_normal((K, N)).astype(np.float32),
            "bias": rng.standard_normal(N).astype(np.float32),
            "x": rng.standard_normal((8, 42)).astype(np.float32)}


def _loops(fn: LoopFunction) -> list[For]:
    out: list[For] = []

    def visit(body) -> None:
        for s in body:
            if isinstance(s, For):
                out.append(s)
                visit(s.body)

    visit(fn.body)
    return out


def test_default_rules_pick_from_structure_and_round_trip_through_json():
    kernel = _matmul_kernel(64, 256, 64)
    schedule = default_schedule(kernel, 2, avx512_target())
    (stage,) = schedule.stages
    assert stage.strategy == "gemm"
    assert (stage.mr, stage.nr, stage.lanes) == (8, 32, 16)  # 64 rows: a divisor of 64
    assert Schedule.from_json(schedule.to_json()) == schedule
    assert "gemm" in str(schedule)
    narrow = default_schedule(_matmul_kernel(64, 256, 8), 1, avx512_target())
    # 8 columns: too narrow for a register tile; the row trace instead
    assert narrow.stages[0].steps == (Reorder(("r", "j")), Vectorize("j"))


def test_a_trace_with_every_primitive_prints_and_round_trips_through_json():
    steps: tuple[Primitive, ...] = (
        Split("i", 4), Fuse("i.o", "i.i"), Tile("i.o.i.i", "j", 6, 8),
        Reorder(("r", "j.i")), Vectorize("j.i"), Parallel("i.o.i.i.o"), Unroll("j.o"),
        Pack("b", "j.o"), Pack("a", ROOT), ComputeAt("c", "i"), Inline())
    schedule = Schedule((StageSchedule.loops(*steps), StageSchedule("gemm", (), True, 8, 32,
                                                                    16, 2, 64)))
    assert Schedule.from_json(schedule.to_json()) == schedule
    text = str(schedule)
    for word in ("split(i, 4)", "tile(i.o.i.i, j, 6, 8)", "pack(a, root)", "inline()",
                 "reorder(r, j.i)", "gemm 8x32/16"):
        assert word in text
    with pytest.raises(ScheduleError, match="unknown schedule primitive 'spin'"):
        Schedule.from_json('[{"strategy": "loops", "steps": [{"op": "spin"}]}]')


MATMUL_TRACES = {
    "canonical": (),
    "row": (Reorder(("r", "j")), Vectorize("j")),
    "tiled, parallel": (Tile("i", "j", 4, 8), Reorder(("i.o", "j.o", "r", "i.i", "j.i")),
                        Vectorize("j.i"), Parallel("i.o"), Unroll("i.i")),
    "reduction outermost (a whole-output accumulator tile)": (
        Split("r", 16), Reorder(("r.o", "i", "j", "r.i"))),
    "packed panels": (Split("j", 8), Reorder(("j.o", "i", "r", "j.i")), Pack("b", "j.o"),
                      Pack("a", "i"), Vectorize("j.i"), Parallel("j.o")),
    "packed once, read by every thread": (Pack("a", ROOT), Parallel("i")),
    "fused and parallel": (Fuse("i", "j"), Parallel("i.j")),
    "vectorized sum": (Split("r", 16), Vectorize("r.i")),
}


@pytest.mark.parametrize("name", list(MATMUL_TRACES))
def test_every_matmul_trace_computes_the_product(name, mats):
    kernel = _matmul_kernel()
    schedule = Schedule((StageSchedule.loops(*MATMUL_TRACES[name]),))
    out, fn = _run(kernel, schedule, mats)
    np.testing.assert_allclose(out["c"], mats["a"].astype(np.float64) @ mats["b"],
                               rtol=1e-4, atol=1e-4)
    kinds = {loop.kind for loop in _loops(fn)}
    for step, kind in ((Parallel, "parallel"), (Vectorize, "vector"), (Unroll, "unroll")):
        assert (kind in kinds) == any(isinstance(s, step) for s in MATMUL_TRACES[name])


@pytest.mark.parametrize("how", [
    StageSchedule("gemm", (), False, 8, 32, 16),
    StageSchedule("gemm", (), True, 12, 32, 16, 1),
    StageSchedule("gemm", (), False, 8, 32, 16, 0, 16),
    StageSchedule("gemm", (), True, 6, 16, 8, 2, 64),
    StageSchedule("gemm", (), False, 8, 32, 16, 4, 16, True),  # rows outer, a row tail
    StageSchedule("gemm", (), True, 8, 32, 16, 2, 32, True),   # ... one block a thread
    StageSchedule("gemm", (), True, 6, 16, 8, 3, 64, True),    # ... two panels and an edge
    # panels kept per reduction block: four blocks (the first adds to init), a row tail, an
    # edge; then two serial shares of one panel and the edge after them; then in parallel
    StageSchedule("gemm", (), False, 8, 32, 16, 2, 16, False, 0, True),
    StageSchedule("gemm", (), False, 8, 16, 8, 2, 16, False, 2, True),
    StageSchedule("gemm", (), True, 4, 16, 8, 3, 32, False, 2, True),
])
def test_every_gemm_tile_computes_the_product(how, mats):
    out, _ = _run(_matmul_kernel(), Schedule((how,)), mats)
    np.testing.assert_allclose(out["c"], mats["a"].astype(np.float64) @ mats["b"],
                               rtol=1e-4, atol=1e-4)


def test_kept_panels_with_fewer_rows_than_a_tile(mats):
    """No full row tile: the row tail packs the kept panels itself."""
    a = mats["a"][:5]
    how = StageSchedule("gemm", (), False, 8, 16, 8, 1, 16, False, 0, True)
    out, _ = _run(_matmul_kernel(m=5), Schedule((how,)), {**mats, "a": a})
    np.testing.assert_allclose(out["c"], a.astype(np.float64) @ mats["b"],
                               rtol=1e-4, atol=1e-4)


PRODUCER_TRACES = {
    "both at the root": ((), ()),
    "inlined": ((Inline(),), ()),
    "a row of t per row of c": ((ComputeAt("c", "i"), Vectorize("tr")),
                                (Reorder(("r", "j")), Vectorize("j"))),
    "one element of t per reduction step": ((ComputeAt("c", "r"),), (Reorder(("r", "j")),)),
    "a block of rows per thread": ((ComputeAt("c", "i.o"), Split("tr", 8)),
                                   (Split("i", 4), Parallel("i.o"))),
}


@pytest.mark.parametrize("name", list(PRODUCER_TRACES))
def test_producers_inlined_or_computed_inside_their_consumer(name, mats):
    kernel = _relu_matmul_kernel()
    t_steps, c_steps = PRODUCER_TRACES[name]
    schedule = Schedule((StageSchedule.loops(*t_steps), StageSchedule.loops(*c_steps)))
    out, fn = _run(kernel, schedule, mats)
    want = np.maximum(mats["a"], 0).astype(np.float64) @ mats["b"] + mats["bias"]
    np.testing.assert_allclose(out["c"], want, rtol=1e-4, atol=1e-4)
    text = print_function(fn)
    assert ("%t[" in text) == (name == "both at the root")  # else t lives in a scratch box


@pytest.mark.parametrize("out_steps", [(Split("q", 8),), (Split("q", 8), Parallel("p"))])
def test_stencil_producer_computed_per_block_covers_the_halo(out_steps, mats):
    kernel = _stencil_kernel()
    schedule = Schedule((StageSchedule.loops(ComputeAt("out", "q.o")),
                         StageSchedule.loops(*out_steps)))
    out, fn = _run(kernel, schedule, mats)
    t = mats["x"] * 2 + 1
    np.testing.assert_allclose(out["out"], t[:, :40] + t[:, 1:41] + t[:, 2:42], rtol=1e-6)
    assert any("alloc %box" in line and "[10]" in line
               for line in print_function(fn).splitlines())  # 8 columns + a halo of 2


@pytest.mark.parametrize(("kernel", "steps", "reason"), [
    (_matmul_kernel(), (Split("i", 5),), r"must divide the extent \(divisors: \[2, 3, 4, 6"),
    (_matmul_kernel(), (Parallel("r"),), "a reduction loop"),
    (_matmul_kernel(), (Vectorize("i"),), "not innermost"),
    (_matmul_kernel(), (Parallel("i"), Parallel("j")), "more than one parallel loop"),
    (_matmul_kernel(), (Fuse("i", "r"),), "must be the loop directly inside"),
    (_matmul_kernel(), (Fuse("j", "r"),), "one is a reduction loop"),
    (_matmul_kernel(), (Fuse("i", "j"), Unroll("i.j")), "exceeds 64"),
    (_matmul_kernel(), (Reorder(("r", "i")), Parallel("i")), "inside reduction loop r"),
    (_matmul_kernel(), (Reorder(("q", "i")),), "no loop named 'q'"),
    (_matmul_kernel(), (Vectorize("i"), Vectorize("i")), "already vector"),
    (_matmul_kernel(combiner="max"), (Vectorize("r"),), "change its order of operations"),
    (_matmul_kernel(), (Split("r", 16), Reorder(("r.o", "i", "r.i", "j")), Vectorize("r.i")),
     "not innermost"),
    (_matmul_kernel(), (ComputeAt("c", "i"),), "only a temporary"),
    (_matmul_kernel(), (Pack("zz"),), "no such buffer"),
    (_matmul_kernel(), (Pack("a"), Pack("a", "i")), "already packed"),
    (_matmul_kernel(), (Inline(), Split("i", 2)), "inline\\(\\) must be its only step"),
])
def test_illegal_traces_are_refused_with_a_reason(kernel, steps, reason):
    schedule = Schedule((StageSchedule.loops(*steps),))
    with pytest.raises(ScheduleError, match=reason):
        lower_kernel(kernel, schedule)


@pytest.mark.parametrize(("t_steps", "out_steps", "reason"), [
    ((ComputeAt("out", "q.o"),), (Split("q", 8),), "can leave the buffer"),
    ((ComputeAt("out", "zz"),), (), "no loop named 'zz'"),
    ((ComputeAt("t", "tq"),), (), "only reader"),
])
def test_illegal_compute_at_is_refused_with_a_reason(t_steps, out_steps, reason):
    kernel = _stencil_kernel(padded=True)
    schedule = Schedule((StageSchedule.loops(*t_steps), StageSchedule.loops(*out_steps)))
    with pytest.raises(ScheduleError, match=reason):
        lower_kernel(kernel, schedule)


def test_a_schedule_must_fit_its_kernel():
    kernel = _matmul_kernel()
    with pytest.raises(ScheduleError, match="unknown strategy"):
        check_schedule(kernel, Schedule((StageSchedule("spiral"),)))
    with pytest.raises(ScheduleError, match="bad gemm tile"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 4, 24, 16),)))
    # a reduction block that does not divide the reduction would skip its last steps
    with pytest.raises(ScheduleError, match=f"kc={K + 1} does not divide"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 8, 32, 16, 0,
                                                       K + 1),)))
    with pytest.raises(ScheduleError, match="rows_outer needs a packed gemm"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 8, 32, 16, 0, 0,
                                                       True),)))
    with pytest.raises(ScheduleError, match="column_chunks=2 needs a packed gemm"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 8, 32, 16, 0, 64,
                                                       False, 2),)))
    with pytest.raises(ScheduleError, match="keep_panels needs a packed gemm"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 8, 32, 16, 0, 64,
                                                       True, 0, True),)))
    with pytest.raises(ScheduleError, match="keep_panels needs a packed gemm"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 8, 32, 16, 0, 0,
                                                       False, 0, True),)))
    with pytest.raises(ScheduleError, match="schedule has 2 stages"):
        check_schedule(kernel, Schedule((StageSchedule(), StageSchedule())))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def matmul_traces(draw) -> tuple[Primitive, ...]:
    """Random legal traces: split each axis, permute, then mark what the rules allow."""
    steps: list[Primitive] = []
    loops = [("i", M, False), ("j", N, False), ("r", K, True)]
    for name, extent, is_reduce in list(loops):
        factor = draw(st.sampled_from(_divisors(extent)))
        if draw(st.booleans()):
            steps.append(Split(name, factor))
            at = loops.index((name, extent, is_reduce))
            loops[at:at + 1] = [(f"{name}.o", extent // factor, is_reduce),
                                (f"{name}.i", factor, is_reduce)]
    order = draw(st.permutations(loops))
    steps.append(Reorder(tuple(n for n, _, _ in order)))
    first_reduce = next(k for k, lp in enumerate(order) if lp[2])
    innermost = order[-1]
    if not innermost[2] or all(lp[2] for lp in order[first_reduce:]):
        if draw(st.booleans()):
            steps.append(Vectorize(innermost[0]))
    outer = [lp for lp in order[:first_reduce] if lp[1] > 1]
    if outer and draw(st.booleans()):
        steps.append(Parallel(draw(st.sampled_from(outer))[0]))
    if draw(st.booleans()):
        at = draw(st.sampled_from([ROOT, *(n for n, _, _ in order)]))
        steps.append(Pack(draw(st.sampled_from(["a", "b"])), at))
    return tuple(steps)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=matmul_traces())
def test_random_legal_traces_compute_the_product(trace):
    rng = np.random.default_rng(3)
    feeds = {"a": rng.standard_normal((M, K)).astype(np.float32),
             "b": rng.standard_normal((K, N)).astype(np.float32)}
    out, _ = _run(_matmul_kernel(), Schedule((StageSchedule.loops(*trace),)), feeds)
    np.testing.assert_allclose(out["c"], feeds["a"].astype(np.float64) @ feeds["b"],
                               rtol=1e-4, atol=1e-4)


def test_compile_takes_a_hand_written_schedule_by_kernel_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import strataml
    from strataml.passes.lower.kernel_to_loop import prepare_kernel

    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 24])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    plain = strataml.compile(model, num_threads=2)
    (kernel,) = plain.program.kernels
    stage = prepare_kernel(kernel).stages[-1]
    row, col = (a.name for a in stage.axes)
    (reduction,) = [e for e in stage.body.walk() if isinstance(e, Reduce)]
    red = reduction.axes[0].name
    schedule = Schedule((StageSchedule.loops(
        Tile(row, col, 8, 8), Reorder((f"{row}.o", f"{col}.o", red, f"{row}.i", f"{col}.i")),
        Vectorize(f"{col}.i"), Parallel(f"{row}.o")),))
    dump = tmp_path / "ir"
    tuned = strataml.compile(model, num_threads=2, dump_ir_dir=str(dump),
                             schedules={kernel.name: schedule.to_json()})
    x = rng.standard_normal((32, 64)).astype(np.float32)
    want = np.maximum(x.astype(np.float64) @ w, 0)
    for compiled in (plain, tuned):
        np.testing.assert_allclose(compiled.run({"x": x})[0], want, rtol=1e-4, atol=1e-4)
    assert f"tile({row}, {col}, 8, 8)" in dumped(dump, "schedule")
    with pytest.raises(ScheduleError, match="unknown kernels"):
        strataml.compile(model, schedules={"k9_nothing": schedule})


def test_b_stored_in_panels_takes_a_gemm_tile_of_the_panel_width(mats):
    """B packed at compile time ([N/32, K, 32], zeros past N) is read in place by the
    micro-kernel; a tile of another width would straddle panels and is refused."""
    from strataml.ir.expr import binary
    from strataml.passes.lower.prepack import pack_panels

    panels = pack_panels(mats["b"], 32)  # N = 40: one full panel and an edge of 8
    body = reduce("sum", (r,), (K,), Load("float32", "a", (i, r)) * Load(
        "float32", "p", (binary("floordiv", j, idx(32)), r, binary("mod", j, idx(32)))))
    kernel = Kernel("pmm", (Buffer("a", "float32", (M, K), "input"),
                            Buffer("p", "float32", panels.shape, "input"),
                            Buffer("c", "float32", (M, N), "output")),
                    (Stage("c", (i, j), body),), ("pmm",))
    want = mats["a"].astype(np.float64) @ mats["b"]
    for how in (StageSchedule("gemm", (), False, 6, 32, 16, 0, 64),
                StageSchedule("gemm", (), True, 6, 32, 16, 2, 16),
                StageSchedule("gemm", (), False, 6, 32, 16)):
        out, fn = _run(kernel, Schedule((how,)), {"a": mats["a"], "p": panels})
        np.testing.assert_allclose(out["c"], want, rtol=1e-4, atol=1e-4)
        assert not any("panel" in s.buffer for s in fn.body if hasattr(s, "size"))
    with pytest.raises(ScheduleError, match="panels of 32 columns"):
        check_schedule(kernel, Schedule((StageSchedule("gemm", (), False, 6, 16, 16),)))


@pytest.mark.parametrize("padded", [False, True])
def test_default_rules_compute_a_copy_inside_its_consumer_where_the_box_is_provable(
        padded, mats):
    """The copy stage t goes inside out's outermost loop when every box it must provide
    lies inside t; the padded reader's box would start at column -1, so t stays a stage."""
    from strataml.passes.lower.kernel_to_loop import lower_with_default_schedule

    kernel = _stencil_kernel(padded)
    _, schedule = lower_with_default_schedule(kernel, 2, avx512_target())
    computed_at = [s for s in schedule.stages[0].steps if isinstance(s, ComputeAt)]
    assert computed_at == ([] if padded else [ComputeAt("out", "p")])
    out, _ = _run(kernel, schedule, mats)
    t = mats["x"] * 2 + 1
    want = t[:, :40] + t[:, 1:41] + t[:, 2:42]
    if padded:
        want[:, 1:] += t[:, :39]
    np.testing.assert_allclose(out["out"], want, rtol=1e-6)


@pytest.mark.parametrize(("lower", "guarded"), [(1, True), (2, False)])
def test_a_padded_copy_loads_unclamped_only_where_its_condition_bounds_the_index(
        lower, guarded):
    """y[p] = x[p - 1] where p >= lower, else 0. With p >= 1 the condition is exactly the
    load's lower bound, so the load runs unclamped behind a guarded select (LLVM makes it a
    masked vector load); with p >= 2 it is not the index's own bound, and the index keeps
    its clamp. Both must compute the same padded copy."""
    n = 40
    p = var("p")
    body = select(compare("ge", p, idx(lower)), Load("float32", "x", (p - 1,)),
                  const(0.0, "float32"))
    kernel = Kernel("pad", (Buffer("x", "float32", (n,), "input"),
                            Buffer("y", "float32", (n,), "output")),
                    (Stage("y", (p,), body),), ("pad",))
    x = np.arange(1, n + 1, dtype=np.float32)
    out, fn = _run(kernel, None, {"x": x})
    text = print_function(fn)
    assert ("guarded_select" in text) == guarded
    assert ("min(" in text) != guarded
    expected = np.concatenate([np.zeros(lower, np.float32), x[lower - 1:n - 1]])
    np.testing.assert_array_equal(out["y"], expected)


def test_compute_at_boxes_take_phase_terms_and_refuse_gathers():
    """A box may be indexed by any term of the inner loops whose range is known (a stride
    phase's r % 2, r // 2); a gathered index (a load) has none: a ScheduleError, so the
    default lowering falls back to computing the producer at the root, never a crash."""
    p, q, r = var("p"), var("q"), var("r")
    x = Buffer("x", "float32", (8, 42), "input")
    t = Stage("t", (p, q), Load("float32", "x", (p, q)) * const(2, "float32"))
    phase = reduce("sum", (r,), (3,), Load("float32", "t", (p, q + r // idx(2) + r % idx(2))))
    kernel = Kernel("phase", (x, Buffer("out", "float32", (8, 40), "output"),
                              Buffer("t", "float32", (8, 42), "temp")),
                    (t, Stage("out", (p, q), phase)), ("phase",))
    schedule = Schedule((StageSchedule.loops(ComputeAt("out", "q")), StageSchedule.loops()))
    xs = np.random.default_rng(0).standard_normal((8, 42)).astype(np.float32)
    out, _ = _run(kernel, schedule, {"x": xs})
    want = 2 * (xs[:, :40] + 2 * xs[:, 1:41])  # r = 0, 1, 2 read q, q + 1, q + 1
    np.testing.assert_allclose(out["out"], want, rtol=1e-5)

    gather = Buffer("g", "int64", (3,), "input")
    gathered = reduce("sum", (r,), (3,), Load("float32", "t", (
        p, q + Load("int64", "g", (r,)))))
    kernel = Kernel("gather", (x, gather, Buffer("out", "float32", (8, 40), "output"),
                               Buffer("t", "float32", (8, 42), "temp")),
                    (t, Stage("out", (p, q), gathered)), ("gather",))
    with pytest.raises(ScheduleError, match="no known range"):
        lower_kernel(kernel, schedule, 2, avx512_target())


def test_threads_split_a_gemm_along_its_longer_side():
    """[1024, 768] x [768, 768] by rows (each thread reads half of A), [128, 768] x
    [768, 3072] by column panels (each thread packs half of B)."""
    (tall,) = default_schedule(_matmul_kernel(1024, 768, 768), 2, avx512_target(2 << 20)).stages
    (wide,) = default_schedule(_matmul_kernel(128, 768, 3072), 2, avx512_target(2 << 20)).stages
    assert (tall.row_chunks, tall.column_chunks) == (2, 0)
    assert (wide.row_chunks, wide.column_chunks) == (0, 2)
    with pytest.raises(ScheduleError, match="row_chunks=2 needs a parallel packed gemm"):
        check_schedule(_matmul_kernel(1024, 768, 768), Schedule((replace(tall, kc=0),)))


def test_a_reduction_of_long_steps_still_goes_in_blocks():
    """A 3x3 conv's reduction over 256 channels per tap row (768 steps a row) goes in blocks
    of one tap row, not unblocked (its pre-packed panel, 2304 x 32 floats, would leave L2
    between row tiles); 1024 steps is the longest step blocked."""
    from strataml.schedule.schedule import pack_block

    assert pack_block((3, 3, 256), 400, 12, True, 256) == 1
    assert pack_block((2304,), 400, 12, True, 256) == 256
    assert pack_block((3, 3, 512), 400, 12, True, 256) == 0


def test_kept_panels_are_swept_row_tile_by_row_tile_when_the_output_is_big():
    """[256, 128] x [128, 3136] (a 1x1 conv's weights by a 56x56 map, 3.2 MB out): each row
    tile sweeps its thread's 0.8 MB of kept panels, so the output is written row after row;
    with K = 256 (1.6 MB of panels a thread) whole row blocks keep the panels in L2."""
    (short,) = default_schedule(_matmul_kernel(256, 128, 3136), 2, avx512_target(2 << 20)).stages
    (deep,) = default_schedule(_matmul_kernel(256, 256, 3136), 2, avx512_target(2 << 20)).stages
    assert short.keep_panels
    assert deep.keep_panels
    assert short.mc == 1
    assert deep.mc > 1


def test_a_short_reduction_into_a_big_output_is_packed_whole_and_kept():
    """[256, 64] x [64, 3136] (ResNet-50's 64 -> 256 1x1 convs on 56x56): too short for
    packing's own rule, but 32 row tiles reuse each panel, so B is packed whole into kept
    panels; a 16-step reduction, or a one-thread product, still reads B in place."""
    (short,) = default_schedule(_matmul_kernel(256, 64, 3136), 2, avx512_target(2 << 20)).stages
    (shorter,) = default_schedule(_matmul_kernel(256, 16, 3136), 2, avx512_target(2 << 20)).stages
    (serial,) = default_schedule(_matmul_kernel(256, 64, 3136), 1, avx512_target(2 << 20)).stages
    assert (short.kc, short.keep_panels, short.mc) == (64, True, 1)
    assert shorter.kc == 0
    assert serial.kc == 0

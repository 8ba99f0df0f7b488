"""The gemm strategy over a run-time row count (schedule/dynamic_gemm.py,
passes/lower/dynamic_gemm.py): Linear layers `[batch, seq, K] x [K, N]` with fused
epilogues, compiled once and run at row counts around the register tile (1, 2, 3, MR - 1,
MR, MR + 1, 2 MR + 3, 127, 300) against ONNX Runtime; each test also checks that the gemm
strategy fired (a `gemm` schedule, B read from its compile-time panels, no clamped index),
so a silent fallback to the row trace fails."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from onnx import ModelProto, helper

import strataml
from strataml.errors import ScheduleError
from strataml.ir.dialects.loop import print_function
from strataml.schedule.dynamic_gemm import REPRESENTATIVE_ROWS
from strataml.schedule.schedule import Schedule, StageSchedule, gemm_tile
from strataml.sizes import dim, floordiv, mod, size_interval
from strataml.target import host_target
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model

F32 = "float32"
RTOL, ATOL = 1e-3, 1e-4
MR = gemm_tile(host_target(), REPRESENTATIVE_ROWS, True)[0]
ROWS = sorted({1, 2, 3, MR - 1, MR, MR + 1, 2 * MR + 3, 127, 300})
RANGES = {"batch": (1, 4), "seq": (1, 512)}


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) / math.sqrt(shape[0])
            ).astype(F32)


def linear(k: int, n: int, epilogue: str, rows: tuple[str, ...] = ("batch", "seq")
           ) -> ModelProto:
    """x @ w + b, then the epilogue an exporter writes after a Linear layer."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["t" if epilogue != "bias" else "y"])]
    consts: dict[str, Any] = {"w": weights(k, n, seed=1), "b": weights(n, seed=2)}
    inputs = {"x": (F32, [*rows, k])}
    if epilogue == "gelu":  # BERT's: 0.5 * t * (1 + erf(t / sqrt(2)))
        nodes += [helper.make_node("Div", ["t", "sqrt2"], ["u"]),
                  helper.make_node("Erf", ["u"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]),
                  helper.make_node("Mul", ["t", "e1"], ["te"]),
                  helper.make_node("Mul", ["te", "half"], ["y"])]
        consts |= {"sqrt2": np.array(math.sqrt(2), F32), "one": np.array(1, F32),
                   "half": np.array(0.5, F32)}
    elif epilogue == "gelu_tanh":  # GPT-2's: 0.5 t (1 + tanh(sqrt(2/pi) (t + 0.044715 t^3)))
        nodes += [helper.make_node("Mul", ["t", "t"], ["t2"]),
                  helper.make_node("Mul", ["t2", "t"], ["t3"]),
                  helper.make_node("Mul", ["t3", "c"], ["ct3"]),
                  helper.make_node("Add", ["t", "ct3"], ["inner"]),
                  helper.make_node("Mul", ["inner", "s"], ["scaled"]),
                  helper.make_node("Tanh", ["scaled"], ["th"]),
                  helper.make_node("Add", ["th", "one"], ["th1"]),
                  helper.make_node("Mul", ["t", "th1"], ["tt"]),
                  helper.make_node("Mul", ["tt", "half"], ["y"])]
        consts |= {"c": np.array(0.044715, F32), "s": np.array(math.sqrt(2 / math.pi), F32),
                   "one": np.array(1, F32), "half": np.array(0.5, F32)}
    elif epilogue == "residual":
        nodes.append(helper.make_node("Add", ["t", "r"], ["y"]))
        inputs["r"] = (F32, [*rows, n])
    return onnx_model(nodes, inputs, {"y": (F32, None)}, consts)


def gemm_fired(compiled: strataml.CompiledModel, packed: bool = True) -> None:
    """The matmul's kernel took the run-time gemm: a gemm schedule over run-time dims, its
    B from the compile-time panels (where N holds a whole panel), no index clamped."""
    program = compiled.program
    gemms = [(name, s) for name, sched in program.schedules.items()
             for s in sched.stages if s.strategy == "gemm"]
    assert gemms, f"no gemm stage: {program.schedules}"
    texts = [print_function(fn) for fn in program.loops]
    (text,) = [t for t in texts if "matmul" in t.split("(")[0]]
    assert "%seq" in text.split("(")[0], "the matmul's function takes no run-time dims"
    assert ("panels" in text) == packed, text
    assert "min(max(" not in text, text
    # (the row tiles over the tokens, or over batch x tokens where the batch axis fuses
    # with them: `fuse_axes.fuse_contraction_rows`)
    assert f"0..floordiv(%seq, {MR})" in text or f"0..floordiv((%batch * %seq), {MR})" in text, \
        text


def check(model: ModelProto, shapes: list[dict[str, tuple[int, ...]]], packed: bool = True
          ) -> None:
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2)
    gemm_fired(compiled, packed)
    gen = np.random.default_rng(5)
    for shape in shapes:
        feeds = {name: gen.standard_normal(s).astype(F32) for name, s in shape.items()}
        (got,) = compiled.run(feeds)
        (want,) = ort_run(model, feeds)
        assert got.shape == want.shape, shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=str(shape))


@pytest.mark.parametrize("epilogue", ["bias", "gelu", "gelu_tanh", "residual"])
def test_each_epilogue_at_rows_around_the_tile(epilogue):
    k, n = 96, 64
    shapes = [{"x": (1, s, k)} for s in ROWS]
    if epilogue == "residual":
        shapes = [{**sh, "r": (*sh["x"][:2], n)} for sh in shapes]
    check(linear(k, n, epilogue), shapes)


def test_batched_rows_and_an_edge_panel():
    """[batch, seq, K] with batch > 1 (the batch loop around the row tiles), N = 80: two
    whole 32-column panels and a 16-column edge read from the zero-padded last panel."""
    k, n = 72, 80
    check(linear(k, n, "bias"), [{"x": (b, s, k)} for b, s in
                                 [(1, 1), (2, MR + 1), (3, 2 * MR + 3), (4, 127), (2, 300)]])


def test_narrow_output_reads_b_in_place():
    """N = 16, narrower than a panel: not packed, B read in place, one vector a row."""
    k, n = 40, 16
    check(linear(k, n, "bias"), [{"x": (1, s, k)} for s in ROWS], packed=False)


def test_a_schedule_the_run_time_gemm_cannot_take_is_refused_by_name():
    model = linear(32, 64, "bias")
    bad = StageSchedule("gemm", (), False, MR, 32, 16, mc=2)
    with pytest.raises(ScheduleError, match=r"run-time dims takes .* not gemm .* mc=2"):
        strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES,
                         schedules={"k0_matmul_add": Schedule((bad,))})


def test_whole_blocks_and_tail_are_proven_inside_the_rows():
    """`seq - d*(seq//d)` is bounded as `mod(seq, d)`: what proves `d*(seq//d) + t`, t below
    `mod(seq, d)`, a row of `seq` (the term-by-term bounds would be -2^31..2^31)."""
    s = dim("seq")
    assert size_interval(s - 8 * floordiv(s, 8)) == (0, 7)
    rem = mod(s, 8)
    first = 8 * floordiv(s, 8) + 4 * floordiv(rem, 4)
    assert size_interval(s - first) == (0, 3)
    assert size_interval(s - first - mod(rem, 4)) == (0, 0)
    assert size_interval(384 * s - 3072 * floordiv(s, 8), {"seq": (1, 512)}) == (0, 2688)


@pytest.mark.parametrize(("k", "n", "epilogue"), [(768, 48, "gelu"), (768, 48, "residual"),
                                                 (512, 640, "gelu")])
def test_reduction_in_blocks_with_partial_sums_in_the_output(k, n, epilogue):
    """K = 768 or 512: the static rules' reduction blocks (kc = 256 on AVX-512), the earlier
    blocks' partial sums kept in the output and the epilogue run by the last block only.
    K > N (48: one whole panel and a 16-column edge) puts the blocks outermost; N = 640 (20
    panels) > K the panels."""
    model = linear(k, n, epilogue)
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2)
    (how,) = [s for sched in compiled.program.schedules.values() for s in sched.stages
              if s.strategy == "gemm"]
    assert 0 < how.kc < k, how
    gemm_fired(compiled)
    gen = np.random.default_rng(6)
    for b, s in [(1, 1), (1, MR - 1), (2, MR + 1), (1, 2 * MR + 3), (3, 127)]:
        feeds = {"x": gen.standard_normal((b, s, k)).astype(F32)}
        if epilogue == "residual":
            feeds["r"] = gen.standard_normal((b, s, n)).astype(F32)
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL, err_msg=str((b, s)))


def test_run_time_tokens_as_one_axis_and_static_rows_under_a_run_time_batch():
    """[tokens, K] (rows the only axis before N) and [batch, 5, K] (5 static rows: a 4-row
    tile and a single row, under a run-time batch loop)."""
    k, n = 64, 32
    w, b = weights(k, n, seed=3), weights(n, seed=4)
    for rows, shapes in ((["tokens", k], [(t, k) for t in ROWS]),
                         (["batch", 5, k], [(bt, 5, k) for bt in (1, 2, 4)])):
        model = onnx_model([helper.make_node("MatMul", ["x", "w"], ["m"]),
                            helper.make_node("Add", ["m", "b"], ["y"])],
                           {"x": (F32, rows)}, {"y": (F32, None)}, {"w": w, "b": b})
        compiled = strataml.compile(model, dynamic_dims=True,
                                    dim_ranges={"tokens": (1, 512), "batch": (1, 4)},
                                    num_threads=2)
        assert any(s.strategy == "gemm" for sched in compiled.program.schedules.values()
                   for s in sched.stages), compiled.program.schedules
        gen = np.random.default_rng(7)
        for shape in shapes:
            feeds = {"x": gen.standard_normal(shape).astype(F32)}
            np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                       rtol=RTOL, atol=ATOL, err_msg=str(shape))


def test_one_panel_shares_its_row_tiles_between_threads():
    """[tokens, 64] x [64, 32] + GELU: one column panel, so the whole row tiles are the
    parallel loop (each thread with its own tile scratch for the epilogue); 4000 tokens
    run on the pool."""
    model = linear(64, 32, "gelu", rows=("tokens",))
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges={"tokens": (1, 4096)},
                                num_threads=2)
    (text,) = [print_function(fn) for fn in compiled.program.loops]
    assert "for parallel io" in text, text
    gen = np.random.default_rng(8)
    for tokens in (1, MR - 1, MR + 1, 300, 4000):
        feeds = {"x": gen.standard_normal((tokens, 64)).astype(F32)}
        for _ in range(3):  # (threads racing on one scratch would show as a flaky answer)
            np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                       rtol=RTOL, atol=ATOL, err_msg=str(tokens))


@pytest.mark.parametrize(("k", "n", "epilogue", "packed"),
                         [(512, 1000, "bias", True), (64, 17, "gelu", False),
                          (96, 40, "residual", True), (768, 1000, "bias", True)])
def test_columns_past_the_last_whole_vector_go_row_by_row(k, n, epilogue, packed):
    """N = 1000 (a classifier: 31 panels, then 8 columns), 17 (a vector, then 1), 40 (a
    panel, then 8 with a residual), and 768 x 1000 (reduction blocks, the tail outside
    them): the register tiles take the whole vectors, the last N % 16 columns a small row
    per run-time row (B from the zero-padded last panel where packed), as in the static
    gemm; the tail's row loop is the run-time row count and nothing is clamped."""
    model = linear(k, n, epilogue)
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2)
    gemm_fired(compiled, packed)
    (text,) = [print_function(fn) for fn in compiled.program.loops if "matmul" in fn.name]
    assert "tailrow" in text, text
    assert "0..%seq" in text or "0..(%batch * %seq)" in text, text
    gen = np.random.default_rng(9)
    for b, s in [(1, 1), (1, 2), (1, 3), (3, 5), (1, MR + 1), (2, 2 * MR + 3), (1, 127)]:
        feeds = {"x": gen.standard_normal((b, s, k)).astype(F32)}
        if epilogue == "residual":
            feeds["r"] = gen.standard_normal((b, s, n)).astype(F32)
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL, err_msg=str((b, s)))


def test_a_classifier_over_the_batch_takes_the_run_time_gemm():
    """Gemm [batch, 512] x [512, 1000]^T + bias (ResNet's fc; the flatten before it) at
    batch 1, 2, 3, 5: the run-time gemm with its 8-column tail, not the row trace."""
    fw, fb = weights(1000, 512, seed=5), weights(1000, seed=6)
    model = onnx_model([helper.make_node("Flatten", ["x"], ["f"]),
                        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)],
                       {"x": (F32, ["batch", 512, 1, 1])}, {"y": (F32, None)},
                       {"fw": fw, "fb": fb})
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    (text,) = [print_function(fn) for fn in compiled.program.loops if "gemm" in fn.name]
    assert "panels" in text, text
    assert "tailrow" in text, text
    assert "min(max(" not in text, text
    assert any(s.strategy == "gemm" for sched in compiled.program.schedules.values()
               for s in sched.stages)
    gen = np.random.default_rng(10)
    for n in (1, 2, 3, 5):
        feeds = {"x": gen.standard_normal((n, 512, 1, 1)).astype(F32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL, err_msg=f"batch {n}")


def test_fewer_columns_than_a_vector_keep_the_symbolic_nest():
    """N = 10 is narrower than an AVX-512 vector: no register tile; the symbolic nest
    computes it over the run-time rows, against ONNX Runtime (with 8 lanes the gemm takes
    it: a vector and a 2-column tail)."""
    model = linear(48, 10, "bias")
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2)
    gemm = any(s.strategy == "gemm" for sched in compiled.program.schedules.values()
               for s in sched.stages)
    assert gemm == (10 >= host_target().vector_lanes_f32)
    gen = np.random.default_rng(11)
    for b, s in [(1, 1), (2, 3), (3, 5), (1, 17)]:
        feeds = {"x": gen.standard_normal((b, s, 48)).astype(F32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL, err_msg=str((b, s)))


def _gemm_schedule(compiled: strataml.CompiledModel) -> StageSchedule:
    (how,) = [s for sched in compiled.program.schedules.values() for s in sched.stages
              if s.strategy == "gemm"]
    return how


@pytest.mark.parametrize(("k", "n", "epilogue"), [(384, 384, "bias"), (384, 1536, "gelu"),
                                                 (1536, 384, "residual")])
def test_many_rows_take_the_static_rules_tiles_from_a_run_time_switch(k, n, epilogue):
    """BERT-sized Linear layers: the run-time gemm's tile and reduction blocks are the static
    build's at REPRESENTATIVE_ROWS tokens and at TALL_ROWS (the static rules go in one pass
    and take the widest tile for many rows), the tall ones from the row count where the
    static rules settle on them; both nests are in the kernel, each behind a loop the row
    count runs once or not at all, and rows on either side of the switch match ONNX
    Runtime."""
    from strataml.schedule.dynamic_gemm import TALL_ROWS

    model = linear(k, n, epilogue, rows=("tokens",))
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges={"tokens": (1, 1024)},
                                num_threads=2)
    how = _gemm_schedule(compiled)
    for rows, got in ((REPRESENTATIVE_ROWS, how), (TALL_ROWS, how.tall or how)):
        static = _gemm_schedule(strataml.compile(model, dim_values={"tokens": rows},
                                                 num_threads=2))
        assert (got.mr, got.nr, got.kc) == (static.mr, static.nr, static.kc), (rows, how,
                                                                                static)
    (text,) = [print_function(fn) for fn in compiled.program.loops if "matmul" in fn.name]
    switch = how.tall_rows or TALL_ROWS
    if how.tall is not None:
        assert REPRESENTATIVE_ROWS < switch <= TALL_ROWS, how
        static = _gemm_schedule(strataml.compile(model, dim_values={"tokens": switch},
                                                 num_threads=2))
        assert (static.mr, static.kc) == (how.tall.mr, how.tall.kc), (how, static)
        assert text.count("variant") >= 2, text
    gen = np.random.default_rng(12)
    for tokens in (1, switch - 1, switch, switch + 1, 389, 1024):
        feeds = {"x": gen.standard_normal((tokens, k)).astype(F32)}
        if epilogue == "residual":
            feeds["r"] = gen.standard_normal((tokens, n)).astype(F32)
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL, err_msg=str(tokens))


def test_a_tall_variant_round_trips_and_is_refused_where_rows_are_static():
    tall = StageSchedule("gemm", (), True, 12, 32, 16, kc=0)
    how = StageSchedule("gemm", (), True, MR, 32, 16, kc=0, tall=tall, tall_rows=256)
    schedule = Schedule((how,))
    assert Schedule.from_json(schedule.to_json()) == schedule
    assert "rows>=256: gemm 12x32/16" in str(how)
    model = linear(32, 64, "bias", rows=("tokens",))
    with pytest.raises(ScheduleError, match="tall variant is for rows known at run time"):
        strataml.compile(model, dim_values={"tokens": 64},
                         schedules={"k0_matmul_add": schedule})
    nested = StageSchedule("gemm", (), True, MR, 32, 16, tall=how, tall_rows=256)
    with pytest.raises(ScheduleError, match="no tall variant of its own"):
        strataml.compile(model, dynamic_dims=True, dim_ranges={"tokens": (1, 512)},
                         schedules={"k0_matmul_add": Schedule((nested,))})


def test_a_variant_the_rows_range_never_reaches_is_left_out():
    """tokens in 1..200 never reach the tall variant and 400..1024 never leave it: one nest,
    no run-time switch, the short or the tall tile (right at either end of the range)."""
    model = linear(384, 384, "bias", rows=("tokens",))
    for (lo, hi), tile in (((1, 200), "short"), ((400, 1024), "tall")):
        compiled = strataml.compile(model, dynamic_dims=True, dim_ranges={"tokens": (lo, hi)},
                                    num_threads=2)
        how = _gemm_schedule(compiled)
        if how.tall is None:
            pytest.skip("the static rules pick one tile for every row count on this target")
        chosen = how.tall if tile == "tall" else how
        (text,) = [print_function(fn) for fn in compiled.program.loops if "matmul" in fn.name]
        assert "variant" not in text, text
        assert f"floordiv(%tokens, {chosen.mr})" in text, (tile, text)
        gen = np.random.default_rng(13)
        for tokens in (lo, hi, (lo + hi) // 2):
            assert (tokens >= how.tall_rows) == (tile == "tall")
            feeds = {"x": gen.standard_normal((tokens, 384)).astype(F32)}
            np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                       rtol=RTOL, atol=ATOL, err_msg=str(tokens))

"""Attention over a run-time key axis, compiled once (`dynamic_dims`) and run at key counts
the vector width does and does not divide: softmax over a run-time row (with a mask added
in the same kernel), Q . K^T and P . V over run-time keys, an attention block and a causal
one, each against ONNX Runtime on the same model. The loop IR is checked for the vector
main loop over the keys (`passes/lower/key_vector.py`) and the jammed rows, so a silent
fallback to the scalar nest fails here rather than only in a benchmark."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import ModelProto, helper

import strataml
from strataml.errors import InputError
from strataml.ir.dialects.loop import Allocate, For
from strataml.ir.parse import parse_kernel
from strataml.ir.size_exprs import dim_var
from strataml.passes.lower.kernel_to_loop import lower_kernel
from strataml.passes.lower.key_vector import VECTORS_PER_BLOCK, column_rows
from strataml.passes.lower.row_scratch import ROW_SCRATCH_MAX
from strataml.sizes import evaluate
from strataml.target import host_target
from tests.conftest import ort_run
from tests.unit.graphs import dumped, onnx_model
from tests.unit.test_symbolic_loops import Compiled

F32 = "float32"
RTOL, ATOL = 1e-4, 1e-5
# 1, 2, primes, one under / at / over a vector block (16 or 32 lanes), and past several
KEYS = (1, 2, 7, 15, 16, 17, 33, 129)
WIDTH = VECTORS_PER_BLOCK * host_target().vector_lanes_f32
RANGES = {"batch": (1, 4), "seq": (1, 512)}


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(F32)


def compile_once(model: ModelProto, tmp_path: Path) -> tuple[Any, str]:
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2,
                                dump_ir_dir=str(tmp_path))
    assert compiled.plan.dims, "the plan has no run-time dims: they were bound"
    return compiled, dumped(tmp_path, "loop")


def llvm_function(tmp_path: Path, name: str) -> str:
    """The optimised LLVM IR of the kernel functions whose name holds `name`, with the
    functions their parallel loops were outlined into."""
    text = dumped(tmp_path, "llvm")
    found = re.findall(rf"(?ms)^define [^\n]*@\"?k\d+_\w*{name}[\w.]*\"?\(.*?^}}", text)
    assert found, f"no function {name} in the LLVM IR"
    return "\n".join(found)


def reductions_vectorised(fn: str) -> bool:
    """The row's max and sum run in vector lanes (LLVM's vectoriser, over the run-time trip
    count): a vector max reduction and vector reassociable adds."""
    return "vector.reduce.fmax" in fn and re.search(r"fadd reassoc[^\n]*<\d+ x float>",
                                                    fn) is not None


def check(compiled: Any, model: ModelProto, shapes: list[Mapping[str, tuple[int, ...]]],
          feed: Any = None) -> None:
    gen = np.random.default_rng(5)
    for shape in shapes:
        feeds = {name: (feed(name, s, gen) if feed else
                        gen.standard_normal(s).astype(F32) * 2) for name, s in shape.items()}
        got = compiled.run(feeds)
        want = ort_run(model, feeds)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape, shape
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=str(shape))


def functions(loop_ir: str, name: str) -> list[str]:
    """The loop functions whose name holds `name`, as text."""
    parts = re.split(r"(?m)^(?=func @)", loop_ir)
    return [p for p in parts if re.match(rf"func @k\d+_\w*{name}", p)]


def vector_keys(fn: str, dim: str = "seq") -> bool:
    """A main loop over whole blocks of the run-time keys holding a vector loop of the
    block's width, and a tail loop for the rest."""
    blocks = re.findall(rf"for (\S+)\.o in 0\.\.floordiv\(%{dim}, {WIDTH}\)", fn)
    return any(f"for vector {v}.i in 0..{WIDTH}" in fn
               and re.search(rf"for {re.escape(v)}\.t in 0\.\.mod\(%{dim}, {WIDTH}\)", fn)
               for v in blocks)


def in_row_scratch(fn: str, most: int) -> bool:
    """The softmax's exponentials in a row scratch of `most` elements (the key range's
    upper bound), its max and sum in one element each, and no full-size temporary read or
    written (each stage's temporaries are the function's params `%max..`, `%exp..`, ...)."""
    temps = re.findall(r"%((?:max|exp|sum|inv_sum)\d+): float32\[", fn.split("{")[0])
    body = fn.split("{", 1)[1]
    return bool(temps) and f"_row: float32[{most}]" in body \
        and all(f"alloc %{t}_row:" in body and f"%{t}[" not in body for t in temps)


# ---------------------------------------------------------------- softmax


def softmax_model(mask: bool) -> ModelProto:
    """Scores [batch, 3, q, seq] (q static, so only the key axis is run-time), softmax over
    the keys, optionally after adding a [batch, 1, 1, seq] mask."""
    nodes = [helper.make_node("Add", ["s", "m"], ["t"])] if mask else []
    nodes.append(helper.make_node("Softmax", ["t" if mask else "s"], ["y"], axis=-1))
    inputs = {"s": (F32, ["batch", 3, 5, "seq"])}
    if mask:
        inputs["m"] = (F32, ["batch", 1, 1, "seq"])
    return onnx_model(nodes, inputs, {"y": (F32, None)})


@pytest.mark.parametrize("mask", [False, True], ids=["plain", "masked"])
def test_softmax_over_a_run_time_key_row(tmp_path, mask):
    model = softmax_model(mask)
    compiled, loops = compile_once(model, tmp_path)
    fns = functions(loops, "softmax")
    assert len(fns) == 1, "the mask add is not in the softmax's kernel" if mask else ""
    # the exponentials and the quotient over whole vectors + a tail; the max and the sum
    # vectorised by LLVM (see key_vector)
    assert len(re.findall(rf"in 0\.\.floordiv\(%seq, {WIDTH}\)", fns[0])) >= 2
    assert vector_keys(fns[0])
    assert in_row_scratch(fns[0], RANGES["seq"][1])
    assert reductions_vectorised(llvm_function(tmp_path, "softmax"))

    def feed(name: str, s: tuple[int, ...], gen: np.random.Generator) -> np.ndarray:
        if name == "m":  # a padding mask: 0 or -10000, as BERT's
            return np.where(gen.random(s) < 0.3, -10000.0, 0.0).astype(F32)
        return gen.standard_normal(s).astype(F32) * 4

    shapes = [{"s": (b, 3, 5, n), **({"m": (b, 1, 1, n)} if mask else {})}
              for b, n in [(1, n) for n in KEYS] + [(2, 17), (3, 129)]]
    check(compiled, model, shapes, feed)


def test_a_key_row_past_the_range_is_refused_before_the_row_scratch(tmp_path):
    """The scratch holds the range's most keys (512); the call checks the range first, so
    513 keys never reach it."""
    compiled, loops = compile_once(softmax_model(False), tmp_path)
    assert in_row_scratch(functions(loops, "softmax")[0], 512)
    with pytest.raises(InputError, match="seq"):
        compiled.run({"s": np.zeros((1, 3, 5, 513), np.float32)})
    compiled.run({"s": np.zeros((1, 3, 5, 512), np.float32)})  # (the largest: fine)


def test_a_key_row_of_very_different_scores_keeps_its_maximum(tmp_path):
    """Every key counts in the max: the row's largest score placed in the first block, the
    last whole block and the tail in turn (exp overflows otherwise)."""
    model = softmax_model(False)
    compiled, _ = compile_once(model, tmp_path)
    for n in (WIDTH + 3, 2 * WIDTH + 1):
        for where in (0, WIDTH - 1, n - 1):
            s = np.zeros((1, 3, 5, n), np.float32)
            s[..., where] = 200.0
            got = compiled.run({"s": s})[0]
            want = ort_run(model, {"s": s})[0]
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
            assert np.isfinite(got).all()


# ---------------------------------------------------------------- the two contractions


def scores_model() -> ModelProto:
    """Q . K^T scaled, plus a mask: [batch, 2, seq, 32] x [batch, 2, 32, seq]."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["raw"]),
             helper.make_node("Mul", ["raw", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "m"], ["y"])]
    return onnx_model(nodes, {"q": (F32, ["batch", 2, "seq", 32]),
                              "kt": (F32, ["batch", 2, 32, "seq"]),
                              "m": (F32, ["batch", 1, 1, "seq"])},
                      {"y": (F32, None)}, {"scale": np.array(0.125, np.float32)})


def test_scores_over_run_time_keys_in_vector_blocks_of_jammed_rows(tmp_path):
    model = scores_model()
    compiled, loops = compile_once(model, tmp_path)
    (fn,) = functions(loops, "matmul")
    assert vector_keys(fn)
    assert "for unroll" in fn, "the query rows of a key block were not jammed"
    rows = column_rows(host_target().vector_registers)
    # the block's rows jammed inside its key lanes, in the reduction (one K^T vector load
    # feeds every row), and the tile's output lines prefetched before it
    assert re.search(rf"for vector (\S+) in 0\.\.{WIDTH} \{{\n\s*for unroll (\S+) in "
                     rf"0\.\.{rows} \{{", fn), "the rows are not inside the key lanes"
    assert re.search(rf"for (\S+)\.o in 0\.\.floordiv\(%seq, {rows}\)", fn)
    assert re.search(rf"for unroll \S+ in 0\.\.{rows} \{{\n\s*prefetch %", fn)
    # query rows one under / at / over the jammed block, and past two blocks
    sizes = [(1, n) for n in KEYS] + [(2, 33), (4, 5)] \
        + [(1, n) for n in (rows - 1, rows, rows + 1, 2 * rows + 3)]
    check(compiled, model, [{"q": (b, 2, n, 32), "kt": (b, 2, 32, n), "m": (b, 1, 1, n)}
                            for b, n in sizes])


def test_rows_jammed_in_a_key_block_fit_the_registers():
    """Accumulators (2 vectors a row), one broadcast a row and the block's 2 K^T vectors:
    AVX-512's 32 registers hold 8 rows, AVX2's 16 hold 4, 8 registers hold 2."""
    assert [column_rows(n) for n in (32, 16, 8, 4)] == [8, 4, 2, 1]


def test_context_sums_over_run_time_keys_with_jammed_rows(tmp_path):
    """P . V: [batch, 2, seq, seq] x [batch, 2, seq, 32], the sum over the run-time keys."""
    model = onnx_model([helper.make_node("MatMul", ["p", "v"], ["y"])],
                       {"p": (F32, ["batch", 2, "seq", "seq"]),
                        "v": (F32, ["batch", 2, "seq", 32])}, {"y": (F32, None)})
    compiled, loops = compile_once(model, tmp_path)
    (fn,) = functions(loops, "matmul")
    assert re.search(r"for r\w* in 0\.\.%seq", fn)
    assert "for unroll" in fn, "the query rows were not jammed"
    # as many rows as the registers hold, inside the lanes of each step over the keys
    rows = column_rows(host_target().vector_registers)
    assert re.search(rf"for r\w* in 0\.\.%seq \{{\n\s*for vector \S+ in 0\.\.32 \{{\n"
                     rf"\s*for unroll \S+ in 0\.\.{rows} \{{", fn), "V loaded once a row"
    check(compiled, model, [{"p": (b, 2, n, n), "v": (b, 2, n, 32)}
                            for b, n in [(1, n) for n in KEYS] + [(3, 17), (2, 4)]])


# ---------------------------------------------------------------- whole blocks


def attention_model(causal: bool) -> ModelProto:
    """Project, split 4 heads of 16, scores over the keys (a padding mask, or a causal one
    built from the run-time size as GPT-2's exporters do: Range, compare, Where), softmax,
    P . V, merge heads."""
    hidden, heads, width = 64, 4, 16
    nodes = [helper.make_node("MatMul", ["x", f"w{n}"], [n]) for n in "qkv"]
    nodes += [helper.make_node("Reshape", [n, "split"], [f"{n}4"]) for n in "qkv"]
    nodes += [helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qh", "kt"], ["raw"]),
              helper.make_node("Mul", ["raw", "scale"], ["scaled"])]
    inputs = {"x": (F32, ["batch", "seq", hidden])}
    if causal:
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),
                  helper.make_node("Range", ["zero", "n", "step"], ["pos"]),
                  helper.make_node("Unsqueeze", ["pos", "ax1"], ["col"]),
                  helper.make_node("Unsqueeze", ["pos", "ax0"], ["row"]),
                  helper.make_node("Greater", ["row", "col"], ["future"]),
                  helper.make_node("Where", ["future", "neg", "scaled"], ["scores"])]
    else:
        inputs["m"] = (F32, ["batch", 1, 1, "seq"])
        nodes.append(helper.make_node("Add", ["scaled", "m"], ["scores"]))
    nodes += [helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["y"])]
    inits = {f"w{n}": weights(hidden, hidden, seed=3 + k) for k, n in enumerate("qkv")}
    inits |= {"split": np.array([0, 0, heads, width], np.int64),
              "merge": np.array([0, 0, hidden], np.int64),
              "scale": np.array(1 / np.sqrt(width), np.float32)}
    if causal:
        inits |= {"one": np.array(1, np.int64), "zero": np.array(0, np.int64),
                  "step": np.array(1, np.int64), "ax0": np.array([0], np.int64),
                  "ax1": np.array([1], np.int64), "neg": np.array(-1e9, np.float32)}
    return onnx_model(nodes, inputs, {"y": (F32, None)}, inits)


@pytest.mark.parametrize("causal", [False, True], ids=["padding-mask", "causal"])
def test_attention_block_compiled_once(tmp_path, causal):
    model = attention_model(causal)
    compiled, loops = compile_once(model, tmp_path)
    softmax = functions(loops, "softmax")
    assert softmax
    assert all(vector_keys(fn) for fn in softmax)
    assert reductions_vectorised(llvm_function(tmp_path, "softmax"))
    sizes = [(1, n) for n in KEYS] + [(2, 7), (4, 33), (3, 1)]

    def feed(name: str, s: tuple[int, ...], gen: np.random.Generator) -> np.ndarray:
        if name == "m":
            return np.where(gen.random(s) < 0.25, -10000.0, 0.0).astype(F32)
        return gen.standard_normal(s).astype(F32)

    check(compiled, model, [{"x": (b, n, 64), **({} if causal else {"m": (b, 1, 1, n)})}
                            for b, n in sizes], feed)


# ---------------------------------------------------------------- row-by-row stages fused


SOFTMAX_ROWS = """kernel @softmax loc('softmax') {
  input %x: float32[batch,4,seq,seq]
  temp %m: float32[batch,4,seq,1]
  temp %e: float32[batch,4,seq,seq]
  temp %s: float32[batch,4,seq,1]
  output %y: float32[batch,4,seq,seq]
  %m[a, h, i, z] = reduce_max[r<seq](init=-inf:float32, %x[a, h, i, r])
  %e[a, h, i, j] = exp((%x[a, h, i, j] - %m[a, h, i, 0]))
  %s[a, h, i, z] = reduce_sum[r<seq](init=0.0:float32, %e[a, h, i, r])
  %y[a, h, i, j] = (%e[a, h, i, j] / %s[a, h, i, 0])
}"""

# the second stage reads the first one's *next* row (clamped to the buffer's last element
# at the end): fused, row i would read a row that is not written yet
NEXT_ROW = """kernel @next loc('next') {
  input %x: float32[3,seq,8]
  temp %t: float32[3,seq,8]
  output %y: float32[3,seq,8]
  %t[h, i, j] = (%x[h, i, j] * 2.0:float32)
  %y[h, i, j] = %t[h, (i + 1), j]
}"""


def _run_kernel(text: str, sizes: list[dict[str, int]], inputs: Any, want: Any) -> Any:

    kernel = parse_kernel(text)
    fn = lower_kernel(kernel, threads=2)
    run = Compiled(fn, 2)
    gen = np.random.default_rng(2)
    for dims in sizes:
        arrays = inputs(dims, gen)
        arrays |= {b.name: np.full(evaluate(b.numel, dims) + 1, 12345, np.float32)
                   for b in kernel.buffers if b.role != "input"}
        run(arrays, **dims)
        got = arrays["y"][:-1]
        np.testing.assert_allclose(got, want(arrays, dims).ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=str(dims))
        for b in kernel.buffers:
            if b.role != "input":
                assert arrays[b.name][-1] == 12345, f"%{b.name} written past its end"
    return fn


@pytest.mark.parametrize("batch", ["batch", "1"], ids=["run-time-batch", "batch-of-1"])
def test_softmax_stages_fused_into_one_loop_over_rows(batch):
    """Over [batch, 4, seq, seq] and over [1, 4, seq, seq] (GPT-2's export: a row axis of
    one has no loop)."""
    def inputs(dims: dict[str, int], gen: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": gen.standard_normal(
            (dims.get("batch", 1), 4, dims["seq"], dims["seq"])).astype(F32) * 3}

    def want(arrays: dict[str, np.ndarray], dims: dict[str, int]) -> np.ndarray:
        b, n = dims.get("batch", 1), dims["seq"]
        x = arrays["x"].reshape(b, 4, n, n)
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    sizes = [{"seq": n} for n in (1, 2, 17, WIDTH, 2 * WIDTH + 5)]
    if batch == "batch":
        sizes = [{"batch": b, **n} for b in (1, 2) for n in sizes]
    fn = _run_kernel(SOFTMAX_ROWS.replace("[batch,", f"[{batch},"), sizes, inputs, want)
    nests = [s for s in fn.body if isinstance(s, For)]
    assert len(nests) == 1, "the four stages were not fused over their rows"
    assert nests[0].kind == "parallel"
    assert nests[0].extent == 4  # the heads, outermost


def test_fused_softmax_temporaries_in_a_row_scratch_sized_by_the_range():
    """With `seq <= 40` the exponentials take a 40-element scratch, right at sizes up to
    the bound; without a bound (the default range) they stay in their full-size buffer. The
    max and the sum take one element each either way."""
    kernel = parse_kernel(SOFTMAX_ROWS)
    for ranges, scratch in (({dim_var("seq"): (1, 40)}, {"e_row": 40, "m_row": 1, "s_row": 1}),
                            (None, {"m_row": 1, "s_row": 1})):
        fn = lower_kernel(kernel, threads=2, dim_ranges=ranges)
        allocs = {a.buffer: a.size for a in fn.body if isinstance(a, Allocate)}
        assert {b: n for b, n in allocs.items() if b.endswith("_row")} == scratch
        run = Compiled(fn, 2)
        gen = np.random.default_rng(4)
        for b, n in ((1, 1), (2, 2), (1, 17), (2, WIDTH + 1), (1, 40)):
            x = gen.standard_normal((b, 4, n, n)).astype(F32) * 3
            arrays = {"x": x.ravel()}
            arrays |= {t.name: np.full(evaluate(t.numel, {"batch": b, "seq": n}) + 1, 7.0,
                                       np.float32) for t in kernel.buffers if t.role != "input"}
            run(arrays, batch=b, seq=n)
            e = np.exp(x - x.max(-1, keepdims=True))
            np.testing.assert_allclose(arrays["y"][:-1], (e / e.sum(-1, keepdims=True)).ravel(),
                                       rtol=1e-5, atol=1e-6, err_msg=str((b, n)))
            assert arrays["y"][-1] == 7.0
            # (the full-size temporaries in a scratch are never touched)
            assert all((arrays[t[:-4]] == 7.0).all() for t in scratch)
            assert ("e_row" in scratch) != (arrays["e"][:-1] != 7.0).all()
    assert ROW_SCRATCH_MAX >= 512


def test_stages_reading_another_row_are_not_fused():
    def inputs(dims: dict[str, int], gen: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": gen.standard_normal((3, dims["seq"], 8)).astype(F32)}

    def want(arrays: dict[str, np.ndarray], dims: dict[str, int]) -> np.ndarray:
        n = dims["seq"]
        t = arrays["x"].ravel() * 2
        flat = np.arange(3 * n * 8) + 8  # (h, i + 1, j), as a flat index
        return t[np.minimum(flat, t.size - 1)]

    fn = _run_kernel(NEXT_ROW, [{"seq": n} for n in (1, 2, 7, 40)], inputs, want)
    assert len([s for s in fn.body if isinstance(s, For)]) == 2

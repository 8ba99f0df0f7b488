"""Data movement over run-time sizes, compiled once, against ONNX Runtime (rtol 1e-3, atol
1e-4): window attention's (Swin-style, both torch exporters: a cyclic shift, `torch.roll`,
windows partitioned into `[batch*nW, 49, C]` rows and reversed back) at batches 1, 2, 3, 5,
and a GPT-2 from the dynamo exporter with dynamic batch and sequence (its `[batch, seq, C]`
activations viewed as `[batch*seq, C]` rows around every Linear layer).

The reshapes of `[batch*nW, ...]` back into `[batch, ...]` leave `mod(floordiv(i, nW),
%batch)` in every index, and the roll's pieces select between shifted reads. Unless the
bounds relate `i in 0..nW*batch` to `batch` (`ir/symbolic_index_simplify.py`) and the
lowering proves each arm's reads under its select's condition, every element divides by a
run-time value and reads through a clamp that stops the copy from vectorising (Swin-T ran
6.5x its static build; GPT-2's GELU between `[batch*seq]` views 220x). The loop IR is
checked for both, and the LLVM IR for a division by a run-time size that is guarded against
zero per element (the sizes are checked before the call), so a fallback fails here rather
than only in a benchmark.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import strataml
from strataml.ir.dialects.loop import For, LoopFunction, Stmt, print_function
from strataml.ir.expr import Binary, Const, Expr, Unary
from tests.conftest import ort_run
from tests.models.test_dynamic_sizes import _gpt2

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-3, 1e-4
BATCHES = (1, 2, 3, 5)


def _block() -> Any:
    class ShiftedWindows(torch.nn.Module):
        """LayerNorm, roll by -3, 7x7 windows through a Linear layer, windows reversed,
        roll back, residual: the data movement of a Swin block around its attention."""

        def __init__(self, channels: int = 32, window: int = 7, shift: int = 3) -> None:
            super().__init__()
            self.window, self.shift = window, shift
            self.norm = torch.nn.LayerNorm(channels)
            self.mix = torch.nn.Linear(channels, channels)

        def forward(self, x: Any) -> Any:
            b, h, w, c = x.shape
            k = self.window
            y = torch.roll(self.norm(x), (-self.shift, -self.shift), (1, 2))
            y = y.view(b, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5)
            y = self.mix(y.reshape(-1, k * k, c))
            y = y.view(b, h // k, w // k, k, k, c).permute(0, 1, 3, 2, 4, 5)
            return x + torch.roll(y.reshape(b, h, w, c), (self.shift, self.shift), (1, 2))

    torch.manual_seed(0)
    return ShiftedWindows().eval()


def _export(exporter: str, path: Path) -> onnx.ModelProto:
    x = torch.randn(2, 28, 28, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            torch.onnx.export(_block(), (x,), str(path), dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
        else:
            torch.onnx.export(_block(), (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    return onnx.load(str(path))


def _exprs(body: tuple[Stmt, ...]) -> Iterator[Expr]:
    for st in body:
        for f in fields(st):
            value = getattr(st, f.name)
            if isinstance(value, Expr):
                yield from value.walk()
        if isinstance(st, For):
            yield from _exprs(st.body)


def _run_time_divisions(fn: LoopFunction) -> list[str]:
    """Divisions and remainders by a run-time value, and clamps of an index to a run-time
    bound (`min(max(i, 0), 64*%batch - 1)`), in the function's statements."""
    found = []
    for e in _exprs(fn.body):
        if isinstance(e, Binary) and e.op in ("floordiv", "mod") and not isinstance(e.b, Const):
            found.append(f"{e.op} by {e.b}")
        if isinstance(e, Binary) and e.op == "min" and e.dtype == "int64" \
                and isinstance(e.a, Binary) and e.a.op == "max" and not isinstance(e.b, Const):
            found.append(f"clamp to {e.b}")
    return found


@pytest.mark.parametrize("exporter", ["classic", "dynamo"])
def test_shifted_windows_over_a_run_time_batch(exporter: str, tmp_path: Path,
                                               compiles: list[str]) -> None:
    model = _export(exporter, tmp_path / "windows.onnx")
    compiled = strataml.compile(model)
    assert compiled.plan.dims == ("batch",)
    gen = np.random.default_rng(1)
    for n in BATCHES:
        x = gen.standard_normal((n, 28, 28, 32)).astype(np.float32)
        got, = compiled.run({"x": x})
        want, = ort_run(model, {"x": x})
        assert got.shape == want.shape == (n, 28, 28, 32)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"batch {n}")
    assert len(compiles) == 1
    moving = [f for f in compiled.program.loops if f.dims and not any(
        w in f.name for w in ("matmul", "gemm", "normalization"))]
    assert moving, "no data-movement kernel over the run-time batch"
    slow = {f.name: d for f in moving if (d := _run_time_divisions(f))}
    assert not slow, f"run-time divisions or clamps left: {slow}"


def test_gpt2_rows_over_a_run_time_batch_and_sequence(tmp_path: Path,
                                                      compiles: list[str]) -> None:
    model = _gpt2(tmp_path / "gpt2.onnx", dynamic_batch=True)
    compiled = strataml.compile(model)
    assert set(compiled.plan.dims) == {"batch", "seq"}
    gen = np.random.default_rng(2)
    for n, seq in ((1, 8), (2, 13), (3, 5), (1, 64)):
        ids = gen.integers(0, 50, (n, seq)).astype(np.int64)
        got, = compiled.run({"input_ids": ids})
        want, = ort_run(model, {"input_ids": ids})
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{n}x{seq}")
    assert len(compiles) == 1
    assert "atomicrmw" not in compiled.program.llvm_ir  # (no guarded run-time division)
    gelu = [f for f in compiled.program.loops if any(
        isinstance(e, Unary) and e.op == "tanh" for e in _exprs(f.body))]
    assert gelu, "no GELU kernel found"
    slow = {f.name: d for f in gelu if (d := _run_time_divisions(f))}
    assert not slow, f"run-time divisions or clamps left: {slow}"


def test_sequence_first_attention_over_a_run_time_batch(tmp_path: Path,
                                                        compiles: list[str]) -> None:
    """nn.MultiheadAttention's default layout, `[seq, batch, C]` (torchvision's ViT): its
    in-projection's rows are seq x batch, fused into one gemm row axis of `10*batch` (a view:
    no division), and the heads split from `[seq, batch, 3*C]` without dividing by %batch."""

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(32, 4)

        def forward(self, x: Any) -> Any:
            return self.mha(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    path = tmp_path / "attention.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(SelfAttention().eval(), (torch.randn(10, 2, 32),), str(path),
                          dynamo=False, input_names=["x"], dynamic_axes={"x": {1: "batch"}})
    model = onnx.load(str(path))
    compiled = strataml.compile(model)
    assert compiled.plan.dims == ("batch",)
    gen = np.random.default_rng(4)
    for n in BATCHES:
        x = gen.standard_normal((10, n, 32)).astype(np.float32)
        got, = compiled.run({"x": x})
        want, = ort_run(model, {"x": x})
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"batch {n}")
    assert len(compiles) == 1
    projection = print_function(next(f for f in compiled.program.loops if f.dims
                                     and "matmul" in f.name))
    assert "in 0..10 {" not in projection  # (not 10 gemms of `batch` rows)
    heads = [f for f in compiled.program.loops if f.dims and "matmul" not in f.name
             and any(d.endswith("%batch") for d in _run_time_divisions(f))]
    assert len(heads) <= 1, [f.name for f in heads]  # (merging the heads back: one)

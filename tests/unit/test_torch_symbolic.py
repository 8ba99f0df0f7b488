"""The PyTorch frontend keeps torch.export's symbolic dims (issue 17, the torch side of step a).

Modules exported with `torch.export.Dim` on their batch and/or sequence axes import with
`keep_symbolic=True` into graphs whose types name those dims; binding the dims to a size gives
exactly the graph a static import of that size gives (`input_shapes`), and the bound graph's
reference answers match eager PyTorch at that size (rtol 1e-4, atol 1e-5: the reference is
float32 numpy); the symbolic graph verifies and prints and parses back. torch's sympy sizes
convert to ours exactly (checked by evaluating both), and what sizes cannot express is
reported by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
Dim = torch.export.Dim

import sympy  # noqa: E402
from torch.utils._sympy import functions as tf  # noqa: E402

from strataml.errors import UnsupportedOpError  # noqa: E402
from strataml.frontends.torch import import_exported  # noqa: E402
from strataml.frontends.torch.context import Unsupported  # noqa: E402
from strataml.frontends.torch.sym_sizes import SymbolicDims, sympy_size  # noqa: E402
from strataml.ir.dialects.graph import interpret, print_graph, verify_graph  # noqa: E402
from strataml.ir.parse import parse_graph  # noqa: E402
from strataml.options import CompileOptions  # noqa: E402
from strataml.passes.graph.bind_dims import bind_dims, graph_dims  # noqa: E402
from strataml.passes.graph.fold_constants import fold_graph  # noqa: E402
from strataml.sizes import DIM_MAX, Size, dim, evaluate  # noqa: E402
from tests.unit.test_torch_frontend import tiny_bert, tiny_gpt2  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
batch, seq = dim("batch"), dim("seq")


# ------------------------------------------------------------------ models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Attention(nn.Module):
    """Self-attention written with `x.shape` arithmetic, as model code spells it."""

    def __init__(self, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, s, d)
        return self.proj(y)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(y, 1))


def _floats(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def _tokens(*shape: int) -> torch.Tensor:
    return torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(sum(shape)))


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    example: tuple[int, ...]
    axes: dict[int, Any]  # axis -> torch.export.Dim
    input_shape: tuple[Size, ...]
    output_shape: tuple[Size, ...]
    ranges: dict[str, tuple[int, int]]
    sizes: tuple[dict[str, int], ...]
    make: Callable[..., torch.Tensor] = _floats


CASES = {
    "mlp": Case(MLP, (3, 8), {0: Dim("batch", max=64)}, (batch, 8), (batch, 4),
                {"batch": (1, 64)}, ({"batch": 1}, {"batch": 2}, {"batch": 7})),
    "attention": Case(Attention, (2, 5, 16), {0: Dim("batch"), 1: Dim("seq", min=2, max=128)},
                      (batch, seq, 16), (batch, seq, 16),
                      {"batch": (1, DIM_MAX), "seq": (2, 128)},
                      ({"batch": 1, "seq": 2}, {"batch": 3, "seq": 9})),
    "cnn": Case(CNN, (2, 3, 8, 8), {0: Dim("batch", max=32)}, (batch, 3, 8, 8), (batch, 10),
                {"batch": (1, 32)}, ({"batch": 1}, {"batch": 5})),
    "bert": Case(tiny_bert, (2, 6), {0: Dim("batch", max=16), 1: Dim("seq", max=64)},
                 (batch, seq), (batch, seq, 32), {"batch": (1, 16), "seq": (1, 64)},
                 ({"batch": 1, "seq": 3}, {"batch": 3, "seq": 11}), _tokens),
    "gpt2": Case(tiny_gpt2, (1, 6), {1: Dim("seq", max=64)}, (1, seq), (1, seq, 32),
                 {"seq": (1, 64)}, ({"seq": 2}, {"seq": 13}), _tokens),
}


def _randomised(module: nn.Module) -> nn.Module:
    """Random weights and BatchNorm statistics, so that nothing is an identity by chance."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            if p.is_floating_point():
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.1)
    return module.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_symbolic_import_binds_to_the_static_import_and_matches_eager(case: str) -> None:
    c = CASES[case]
    model = _randomised(c.build())
    with torch.no_grad():
        ep = torch.export.export(model, (c.make(*c.example),), dynamic_shapes=(c.axes,))
    tg = import_exported(ep, keep_symbolic=True)
    g = tg.graph
    (name,) = tg.inputs
    assert g.types[name].shape == c.input_shape
    assert g.types[g.outputs[0]].shape == c.output_shape
    assert graph_dims(g) == set(c.ranges)
    assert dict(tg.dim_ranges) == c.ranges
    verify_graph(g)
    weights: dict[str, np.ndarray] = {}
    text = print_graph(g, weights=weights)
    assert print_graph(parse_graph(text, weights), weights={}) == print_graph(g, weights={})
    for values in c.sizes:
        shape = tuple(evaluate(d, values) for d in c.input_shape)
        bound = bind_dims(g, values)
        static = import_exported(ep, CompileOptions(input_shapes={name: shape}))
        assert sorted(print_graph(bound, weights={}).splitlines()) == sorted(
            print_graph(fold_graph(static.graph), weights={}).splitlines()), values
        x = c.make(*shape)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = interpret(bound, tg.feeds([x]))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_static_import_is_unchanged_by_default() -> None:
    """Without keep_symbolic a Dim is taken at its example size, as before."""
    model = _randomised(MLP())
    ep = torch.export.export(model, (_floats(3, 8),), dynamic_shapes=({0: Dim("batch")},))
    tg = import_exported(ep)
    assert tg.graph.types[tg.inputs[0]].shape == (3, 8)
    assert tg.dim_ranges == {}


def test_dim_values_bind_a_dim_at_import() -> None:
    c = CASES["attention"]
    model = _randomised(c.build())
    ep = torch.export.export(model, (_floats(*c.example),), dynamic_shapes=(c.axes,))
    tg = import_exported(ep, CompileOptions(dim_values={"batch": 2}), keep_symbolic=True)
    assert tg.graph.types[tg.inputs[0]].shape == (2, seq, 16)
    assert dict(tg.dim_ranges) == {"seq": (2, 128)}
    both = import_exported(ep, keep_symbolic=True)
    assert sorted(print_graph(bind_dims(tg.graph, {"seq": 7}), weights={}).splitlines()) == \
        sorted(print_graph(bind_dims(both.graph, {"batch": 2, "seq": 7}),
                           weights={}).splitlines())


# ------------------------------------------------------------------ sizes from sympy


S0, S1 = sympy.Symbol("s0", integer=True, positive=True), sympy.Symbol("s1", integer=True,
                                                                       positive=True)
NAMES = SymbolicDims({"s0": "batch", "s1": "seq"})


@pytest.mark.parametrize("expr", [
    S0 * S1 * 12 + 3, S0 - 1, 2 * S1**2, tf.FloorDiv(S1 + 3, 4), tf.CeilDiv(S1, 8),
    tf.Mod(S1, 8), tf.PythonMod(S0 * 3 + 1, 4), tf.Min(S1, 512), tf.Max(1, S1 - 1),
    tf.ModularIndexing(S1, 2, 3), tf.CleanDiv(S0 * 6, 3), tf.PowByNatural(S0, 3),
    tf.Max(tf.Min(S0, 7), S1) * S0, sympy.Rational(1, 2) * S0 * 4,
])
def test_sympy_sizes_evaluate_like_torch(expr: Any) -> None:
    size = NAMES.size(expr, "test")
    for s0, s1 in [(1, 1), (2, 9), (7, 64), (13, 1000)]:
        want = int(expr.subs({S0: s0, S1: s1}))
        assert evaluate(size, {"batch": s0, "seq": s1}) == want, (expr, size)


@pytest.mark.parametrize(("expr", "message"), [
    (sympy.sqrt(S0), "Pow"), (tf.FloorDiv(S1, S0), "divisor"),
    (sympy.Symbol("u0"), "not a dim of the inputs"), (S0 / 3, "Mul"),
])
def test_sizes_that_have_no_expression_are_named(expr: Any, message: str) -> None:
    with pytest.raises(Unsupported, match=message) as info:
        sympy_size(expr, NAMES._dim)
    assert str(expr) in str(info.value) or "u0" in str(info.value)


class _PadBySeq(nn.Module):
    """Pads by a run-time size: Pad's widths are compile-time ints in the graph dialect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, x.shape[1])) * 2


def test_a_run_time_size_an_op_needs_at_compile_time_is_reported() -> None:
    x = _floats(2, 5)
    ep = torch.export.export(_PadBySeq(), (x,), dynamic_shapes=({1: Dim("seq")},))
    with pytest.raises(UnsupportedOpError) as info:
        import_exported(ep, keep_symbolic=True)
    assert info.value.problems == [
        "aten.constant_pad_nd.default node 'constant_pad_nd': aten.constant_pad_nd.default: "
        "argument 'pad' = [0, seq] depends on the run-time size seq, and the op needs it at "
        "compile time"]
    static = import_exported(ep)  # at the example size, as before
    assert static.graph.types[static.inputs[0]].shape == (2, 5)


class _TwoInputs(nn.Module):
    """Two inputs sharing a batch dim and a derived one, with size arithmetic (`//`)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = x[:, : y.shape[0] // 2] + 1
        return head, (x.sum(0)[None] * y[:1]).reshape(-1)


def test_shared_and_derived_dims_keep_their_names() -> None:
    half = Dim("half", min=2, max=32)
    model = _TwoInputs()
    ep = torch.export.export(model, (_floats(3, 8), _floats(8)),
                             dynamic_shapes=({0: Dim("batch"), 1: 2 * half}, {0: 2 * half}))
    tg = import_exported(ep, keep_symbolic=True)
    g = tg.graph
    h = dim("half")
    assert [g.types[i].shape for i in tg.inputs] == [(batch, 2 * h), (2 * h,)]
    assert [g.types[o].shape for o in g.outputs] == [(batch, h), (2 * h,)]
    assert dict(tg.dim_ranges) == {"batch": (1, DIM_MAX), "half": (2, 32)}
    for values in ({"batch": 1, "half": 2}, {"batch": 4, "half": 5}):
        x, y = _floats(values["batch"], 2 * values["half"]), _floats(2 * values["half"])
        bound = bind_dims(g, values)
        static = import_exported(ep, CompileOptions(input_shapes={
            tg.inputs[0]: tuple(x.shape), tg.inputs[1]: tuple(y.shape)}))
        assert sorted(print_graph(bound, weights={}).splitlines()) == sorted(
            print_graph(fold_graph(static.graph), weights={}).splitlines()), values
        for got, want in zip(interpret(bound, tg.feeds([x, y])), model(x, y), strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=RTOL, atol=ATOL)


def test_dims_without_a_name_are_named_after_torchs_symbols() -> None:
    ep = torch.export.export(MLP(), (_floats(3, 8),), dynamic_shapes=({0: Dim.DYNAMIC},))
    tg = import_exported(ep, keep_symbolic=True)
    (d, width) = tg.graph.types[tg.inputs[0]].shape
    (symbol,) = ep.range_constraints
    assert (str(d), width) == (str(symbol), 8)
    assert dict(tg.dim_ranges) == {str(symbol): (2, DIM_MAX)}  # torch keeps 0 and 1 apart


def test_module_compiled_with_dynamic_shapes_runs_at_every_size() -> None:
    """`strataml.compile(module, example_inputs, dynamic_shapes)`: one
    build from torch.export's dims (their ranges taken from torch) runs a BERT at batch and
    sequence sizes it never saw, matching eager PyTorch."""
    import strataml

    module = tiny_bert().eval()
    example = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    shapes = ({0: Dim("batch", max=8), 1: Dim("seq", max=64)},)
    model = strataml.compile(module, example_inputs=(example,), dynamic_shapes=shapes,
                             num_threads=2)
    assert model.compiled.plan.dims == ("batch", "seq")
    for batch, seq in [(1, 1), (3, 5), (2, 17), (8, 64)]:
        ids = torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(seq))
        with torch.no_grad():
            want = module(ids)
        np.testing.assert_allclose(model(ids).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)

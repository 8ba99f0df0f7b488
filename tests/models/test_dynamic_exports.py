"""Models exported with dynamic axes, by both torch exporters, import with their dims kept
symbolic (issue 17, step a): every shape computation the exporter wrote (Shape, Gather,
Concat, Slice of a position table, Range, Expand) folds to sizes over the dims, binding the
dims gives exactly the graph a static import of that size gives, and the symbolic graph's
reference answers match ONNX Runtime running the dynamic model at several sizes (rtol 1e-4,
atol 1e-5: the reference is float32 numpy)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import strataml
from strataml.frontends.onnx.importer import import_model
from strataml.ir.dialects.graph import interpret, print_graph
from strataml.options import CompileOptions
from strataml.passes.graph.bind_dims import bind_dims, graph_dims
from strataml.passes.graph.fold_constants import fold_graph
from strataml.passes.manager import PassManager, parse_pipeline
from strataml.passes.pipelines import CPU_GRAPH_PIPELINE
from strataml.sizes import bind_input_dims, evaluate
from tests.conftest import ort_run
from tests.unit.test_torch_frontend import tiny_bert, tiny_gpt2

torch = pytest.importorskip("torch")
nn = torch.nn


class SmallCNN(nn.Module):
    """A 3-channel stem and a 7x7 map with 16 channels (both go channels-last), a residual
    add, global pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        y = torch.relu(y + self.conv2(y))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


# name -> (builder, example input, dynamic axes {axis: dim}, sizes to check, exporters)
TOKENS = (torch.zeros(2, 6, dtype=torch.int64) + 3)
CASES: dict[str, tuple[Callable[[], nn.Module], Any, dict[int, str], list[dict[str, int]],
                       tuple[str, ...]]] = {
    "bert": (tiny_bert, TOKENS, {0: "batch", 1: "seq"},
             [{"batch": 1, "seq": 1}, {"batch": 3, "seq": 11}], ("classic", "dynamo")),
    # the classic exporter cannot export transformers 5's GPT-2 (aten::diff)
    "gpt2": (tiny_gpt2, TOKENS[:1], {1: "seq"}, [{"seq": 1}, {"seq": 13}], ("dynamo",)),
    "cnn": (SmallCNN, torch.zeros(2, 3, 14, 14), {0: "batch"}, [{"batch": 1}, {"batch": 5}],
            ("classic", "dynamo")),
}


def _export(module: nn.Module, x: Any, axes: dict[int, str], exporter: str, path: Path
            ) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            dims = {a: torch.export.Dim(n, min=1, max=64) for a, n in axes.items()}
            torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"],
                              dynamic_shapes=({a: d for a, d in dims.items()},))
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": axes})
    return onnx.load(str(path))


def _randomised(module: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


@pytest.mark.parametrize("exporter", ["classic", "dynamo"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dynamic_export_imports_symbolically(case: str, exporter: str, tmp_path: Path) -> None:
    build, x, axes, sizes, exporters = CASES[case]
    if exporter not in exporters:
        pytest.skip(f"the {exporter} exporter cannot export {case}")
    torch.manual_seed(0)
    with torch.no_grad():
        model = _export(_randomised(build()), x, axes, exporter, tmp_path / "m.onnx")
    g = import_model(model, keep_symbolic=True)
    declared = {name: g.types[name].shape for name in g.inputs}
    assert graph_dims(g) == set(sizes[0]), declared
    assert not g.types[g.outputs[0]].is_static
    rng = np.random.default_rng(1)
    for values in sizes:
        bound = bind_dims(g, values)
        static = fold_graph(import_model(model, CompileOptions(dim_values=values)))
        assert sorted(print_graph(bound, weights={}).splitlines()) == sorted(
            print_graph(static, weights={}).splitlines()), values
        shapes = {n: tuple(evaluate(d, values) for d in dims) for n, dims in declared.items()}
        assert bind_input_dims(declared, shapes) == values
        feeds = {n: (rng.integers(0, 50, s) if g.types[n].dtype == "int64"
                     else rng.standard_normal(s).astype(np.float32))
                 for n, s in shapes.items()}
        got = interpret(bound, feeds)
        for out, ref in zip(got, ort_run(model, feeds), strict=True):
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["classic", "dynamo"])
def test_graph_pipeline_decides_alike_with_a_symbolic_batch(exporter: str, tmp_path: Path
                                                            ) -> None:
    """Layouts and fusion are decided from the channels and the map, never the batch: the
    CPU graph pipeline run on the symbolic graph, then bound, is the pipeline run on the
    static import of that batch (channels-last stem and 7x7 convs, fused groups and all)."""
    build, x, axes, sizes, _ = CASES["cnn"]
    torch.manual_seed(0)
    with torch.no_grad():
        model = _export(_randomised(build()), x, axes, exporter, tmp_path / "m.onnx")
    symbolic = PassManager(parse_pipeline(CPU_GRAPH_PIPELINE)).run(
        import_model(model, keep_symbolic=True))
    assert any(n.op == "fused" for n in symbolic.nodes)
    assert "ConvChannelsLast" in print_graph(symbolic, weights={})
    for values in sizes:
        static = PassManager(parse_pipeline(CPU_GRAPH_PIPELINE)).run(
            import_model(model, CompileOptions(dim_values=values)))
        assert sorted(print_graph(bind_dims(symbolic, values), weights={}).splitlines()) == \
            sorted(print_graph(static, weights={}).splitlines()), values


@pytest.mark.parametrize(("case", "exporter"), [("bert", "classic"), ("bert", "dynamo"),
                                                ("gpt2", "dynamo")])
def test_transformer_compiles_once_and_runs_at_every_size(case: str, exporter: str,
                                                          tmp_path: Path) -> None:
    """A transformer exported with a dynamic sequence (and batch) compiles once with its
    dims kept (`dynamic_dims`, sequence bounded by the position table) and matches ONNX
    Runtime at sizes it was never built for: shape values read as data (a Range over
    `seq`), a position table sliced to `seq`, attention over a run-time key axis."""
    build, x, axes, _, _ = CASES[case]
    torch.manual_seed(0)
    with torch.no_grad():
        model = _export(_randomised(build()), x, axes, exporter, tmp_path / "m.onnx")
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 8), "seq": (1, 64)})
    assert compiled.plan.dims
    rng = np.random.default_rng(3)
    for batch, seq in [(1, 1), (2, 5), (3, 17), (1, 64)]:
        shape = (batch if 0 in axes else x.shape[0], seq)
        feeds = {compiled.input_names[0]: rng.integers(0, 50, shape)}
        for got, want in zip(compiled.run(feeds), ort_run(model, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

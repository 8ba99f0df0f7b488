"""Small builders for graph-dialect graphs and ONNX models used across the unit tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from strataml.ir.dialects.graph import Graph, Node, make_attrs
from strataml.ir.types import Dim, TensorType
from strataml.passes.graph.infer_shapes import infer_types
from strataml.target import Target


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] | str, name: str = "",
         **attrs: Any) -> Node:
    outs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    return Node(op, tuple(inputs), outs, make_attrs(attrs), name or f"{op.lower()}_{outs[0]}")


def graph(inputs: Mapping[str, tuple[str, tuple[Dim, ...]]], nodes: Iterable[Node],
          outputs: Sequence[str], constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """A typed graph: input types given, every other type from the shape rules."""
    constants = dict(constants or {})
    types = {k: TensorType(dt, tuple(shape)) for k, (dt, shape) in inputs.items()}
    types.update({k: TensorType.of(np.asarray(v)) for k, v in constants.items()})
    g = Graph("test", tuple(inputs), tuple(outputs), tuple(nodes), types, constants)
    return infer_types(g)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


ONNX_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
               "int64": TensorProto.INT64, "int32": TensorProto.INT32,
               "bool": TensorProto.BOOL}


def onnx_model(nodes: Sequence[Any], inputs: Mapping[str, tuple[str, Sequence[Any]]],
               outputs: Mapping[str, tuple[str, Sequence[Any] | None]],
               initializers: Mapping[str, np.ndarray] | None = None, opset: int = 17
               ) -> ModelProto:
    """An ONNX model from helper.make_node nodes; shapes may hold symbolic names."""
    g = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(k, ONNX_DTYPES[dt], list(s))
         for k, (dt, s) in inputs.items()],
        [helper.make_tensor_value_info(k, ONNX_DTYPES[dt], None if s is None else list(s))
         for k, (dt, s) in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def avx512_target(l2_bytes: int = 1 << 20) -> Target:
    """A fixed AVX-512 machine (48 KiB L1, like the developers' host) for tests that pin the
    schedule rules' choices: they must not move with the machine the tests run on."""
    return Target("cpu", "x86_64-unknown-linux-gnu", "sapphirerapids", "+avx512f", 512, 32,
                  48 << 10, l2_bytes, 32 << 20, 64, 2)


def dumped(directory: Path, level: str) -> str:
    """The IR that `--dump-ir` wrote after the last pass leaving `level` (graph, kernel,
    schedule, loop, plan, llvm)."""
    files = sorted(p for p in Path(directory).iterdir() if f"-{level}-after-" in p.name)
    assert files, f"no {level} IR in {directory}"
    return files[-1].read_text()

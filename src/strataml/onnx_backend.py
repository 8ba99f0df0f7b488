"""strataml behind ONNX's backend convention (`onnx.backend.base`).

This is what lets ONNX's own conformance suite (and any tool written against the backend API)
drive the compiler: `prepare` compiles a model, `BackendRep.run` takes inputs positionally
(in the order of the graph's non-initializer inputs) or by name and returns outputs in
graph-output order.

Models compile for static shapes. A model whose inputs have symbolic dims is compiled
again for each distinct set of input shapes it is run with (kept in a small cache), so the
backend accepts whatever shapes the caller feeds. Likewise, a graph input that feeds an
operand the compiler needs as a constant (Reshape's shape, a reduction's axes, Pad's pads:
`converters.SHAPE_OPERANDS`) is bound to its run-time value and the model is specialised on
it, as the compiled code is specialised on shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from strataml.api import CompiledModel
from strataml.api import compile as compile_model
from strataml.errors import InputError, UnsupportedOpError
from strataml.frontends.onnx.converters import SHAPE_OPERANDS
from strataml.ir.types import DTYPES

_MAX_SHAPE_VARIANTS = 8


def _input_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that the caller feeds: those without an initializer."""
    inits = {init.name for init in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def _has_static_inputs(model: onnx.ModelProto, names: Sequence[str]) -> bool:
    by_name = {vi.name: vi for vi in model.graph.input}
    for name in names:
        tt = by_name[name].type.tensor_type
        if not tt.HasField("shape"):
            return False
        if any(not d.HasField("dim_value") for d in tt.shape.dim):
            return False
    return True


def _check_tensor_inputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    by_name = {vi.name: vi for vi in model.graph.input}
    problems = [f"input '{n}': only tensor inputs are supported (got "
                f"{by_name[n].type.WhichOneof('value')})"
                for n in names if by_name[n].type.WhichOneof("value") != "tensor_type"]
    if problems:
        raise UnsupportedOpError(problems)
    # Inputs bound to constants compile only at run time; reject their element types now.
    for n in names:
        elem = by_name[n].type.tensor_type.elem_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
        except Exception:  # noqa: BLE001 - an ONNX type without a numpy twin
            dtype = onnx.TensorProto.DataType.Name(elem).lower()
        if dtype not in DTYPES:
            problems.append(f"input '{n}': element type {dtype} is not supported")
    if problems:
        raise UnsupportedOpError(problems)


def _shape_operand_inputs(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """Graph inputs that feed operands the compiler needs as constants."""
    feeds = set(names)
    out: list[str] = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        for pos in SHAPE_OPERANDS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in feeds \
                    and node.input[pos] not in out:
                out.append(node.input[pos])
    return out


def _bind_inputs(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose inputs in `values` are initializers with those values."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    kept = [vi for vi in bound.graph.input if vi.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    for name, value in values.items():
        bound.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return bound


class StrataBackendRep(BackendRep):
    """A prepared model: compiled once per input-shape (and shape-operand) signature."""

    def __init__(self, model: onnx.ModelProto, options: Mapping[str, Any]) -> None:
        self.model = model
        self.options = dict(options)
        self.input_names = _input_names(model)
        self.output_names = [o.name for o in model.graph.output]
        _check_tensor_inputs(model, self.input_names)
        self._compiled: dict[tuple[Any, ...], CompiledModel] = {}
        self._bound = _shape_operand_inputs(model, self.input_names)
        self._static = not self._bound and _has_static_inputs(model, self.input_names)
        if self._static:
            # Compile now so unsupported ops surface from prepare(), as the convention expects.
            self._compiled[()] = compile_model(model, **self.options)

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return {k: np.asarray(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        values = list(inputs)
        if any(isinstance(v, list | tuple) for v in values):
            raise UnsupportedOpError(["sequence inputs are not supported"])
        if len(values) != len(self.input_names):
            raise InputError(f"the model takes {len(self.input_names)} input(s) "
                             f"{self.input_names}, got {len(values)}")
        return {name: np.asarray(v) for name, v in zip(self.input_names, values, strict=True)}

    def _model_for(self, feeds: Mapping[str, np.ndarray]) -> CompiledModel:
        if self._static:
            return self._compiled[()]
        missing = [n for n in self._bound if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        bound = {n: feeds[n] for n in self._bound}
        key = (tuple(tuple(feeds[n].shape) if n in feeds else () for n in self.input_names),
               tuple((v.dtype.str, v.shape, v.tobytes()) for v in bound.values()))
        compiled = self._compiled.get(key)
        if compiled is None:
            shapes = {n: tuple(feeds[n].shape) for n in self.input_names
                      if n in feeds and n not in bound}
            options = dict(self.options)
            options["input_shapes"] = {**options.get("input_shapes", {}), **shapes}
            model = _bind_inputs(self.model, bound) if bound else self.model
            compiled = compile_model(model, **options)
            if len(self._compiled) >= _MAX_SHAPE_VARIANTS:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = compiled
        return compiled

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Outputs in graph-output order, as a namedtuple-like dict (ONNX's convention)."""
        del kwargs
        feeds = self._feeds(inputs)
        compiled = self._model_for(feeds)
        if self._bound:
            feeds = {k: v for k, v in feeds.items() if k not in self._bound}
        outputs = compiled.run(feeds)
        return namedtupledict("Outputs", self.output_names)(*outputs)


class StrataBackend(Backend):
    """ONNX backend API over `strataml.compile` for the host CPU."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU",
                **kwargs: Any) -> StrataBackendRep:
        """Compile `model`; keyword arguments are CompileOptions fields."""
        if not cls.supports_device(device):
            raise NotImplementedError(f"device {device!r} is not supported (CPU only)")
        return StrataBackendRep(model, kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[Any, Any]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node by wrapping it in a model typed from the given inputs."""
        opset = kwargs.pop("opset_version", None) or onnx.defs.onnx_opset_version()
        values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
        names = list(inputs) if isinstance(inputs, Mapping) else [
            n for n in node.input if n][:len(values)]
        graph_inputs = [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
            for name, v in zip(names, values, strict=True)]
        graph_outputs = []
        for i, name in enumerate(o for o in node.output if o):
            if outputs_info is not None and i < len(outputs_info):
                dtype, shape = outputs_info[i]
                elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
                graph_outputs.append(onnx.helper.make_tensor_value_info(name, elem, shape))
            else:
                graph_outputs.append(onnx.helper.make_empty_tensor_value_info(name))
        graph = onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        model = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        return cls.run_model(model, dict(zip(names, values, strict=True)), device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU


prepare = StrataBackend.prepare
run_model = StrataBackend.run_model
run_node = StrataBackend.run_node
supports_device = StrataBackend.supports_device
is_compatible = StrataBackend.is_compatible

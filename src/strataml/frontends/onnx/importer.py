"""ONNX ModelProto -> graph dialect.

The importer checks the model, binds symbolic dims (from CompileOptions, else 1), converts
node by node through `converters.CONVERTERS`, infers types as it goes and folds nodes
whose inputs are all constants, so shape computations are resolved before the converters
that need them (Reshape's target shape, Slice's starts...). Every unsupported op or
attribute is collected and reported together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from strataml.errors import ModelLoadError, ShapeError, StrataError, UnsupportedOpError
from strataml.frontends.admit import admit_node
from strataml.frontends.onnx.converters import (
    CONVERTERS,
    ConvertContext,
    OnnxNode,
    Unsupported,
    onnx_dtype,
)
from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.types import DTYPES, Dim, TensorType
from strataml.options import CompileOptions
from strataml.sizes import (
    Size,
    assumed_range,
    assumed_ranges,
    dim,
    least_dim_value,
    noted_positive,
)

MIN_OPSET = 7


def load_model_proto(model: Any) -> Any:
    """Accept a path, bytes or a ModelProto; check it with ONNX's checker."""
    import onnx

    if isinstance(model, str | Path):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such model file")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise ModelLoadError(f"{path}: not a readable ONNX model ({exc})") from None
    elif isinstance(model, bytes | bytearray):
        try:
            model = onnx.load_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"bytes are not a readable ONNX model ({exc})") from None
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"expected a path, bytes or onnx.ModelProto, got "
                             f"{type(model).__name__}")
    _check(model)
    opset = _default_opset(model)
    # A model that imports no default-domain opset (ai.onnx.ml only, say) has nothing to
    # upgrade; its other-domain ops are reported as unsupported by the importer.
    has_default = any(imp.domain in ("", "ai.onnx") for imp in model.opset_import)
    if opset < MIN_OPSET and has_default:
        try:
            from onnx import version_converter

            model = version_converter.convert_version(model, 9)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"opset {opset} is older than {MIN_OPSET} and could not "
                                 f"be upgraded: {exc}") from None
    return model


def _check(model: Any) -> None:
    """ONNX's checker, minus one complaint: values declared without a shape are common in
    exported models and ONNX Runtime accepts them (strataml infers every shape itself). The
    checker stops at its first complaint, so those values get an empty shape while it runs
    (restored afterwards) and every other check still happens."""
    import onnx

    g = model.graph
    shapeless = [vi.type.tensor_type for vi in (*g.input, *g.output, *g.value_info)
                 if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    for tt in shapeless:
        tt.shape.SetInParent()
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - ValidationError and protobuf errors
        raise ModelLoadError(f"the model fails ONNX's checker: {exc}") from None
    finally:
        for tt in shapeless:
            tt.ClearField("shape")


def _default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _dtype(elem_type: int, where: str) -> str:
    try:
        name = onnx_dtype(elem_type, "elem_type")
    except Unsupported:
        name = f"ONNX type {elem_type}"
    if name not in DTYPES:
        raise UnsupportedOpError([f"{where}: element type {name} is not supported"])
    return name


def _attr_value(attr: Any) -> Any:
    from onnx import AttributeProto, helper, numpy_helper

    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise Unsupported(f"attribute {attr.name} holds a subgraph (control flow)")
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.type == AttributeProto.SPARSE_TENSOR:
        raise Unsupported(f"sparse tensor attribute {attr.name}")
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return tuple(v.decode() if isinstance(v, bytes) else v for v in value)
    return value


def _read_attr(attr: Any, where: str) -> Any:
    """`_attr_value`, with a malformed attribute (bytes that are not UTF-8 text, a value
    that does not match its declared type) named instead of escaping as a bare error."""
    try:
        return _attr_value(attr)
    except Unsupported:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # UnicodeDecodeError included
        raise ModelLoadError(f"{where}: attribute '{attr.name}' is malformed "
                             f"({type(exc).__name__}: {exc})") from None


def _constant_value(n: OnnxNode) -> np.ndarray:
    a = n.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.array(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], dtype=np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], dtype=np.int64)
    raise Unsupported(f"Constant with attributes {sorted(a)}")


class _Importer:
    def __init__(self, model: Any, options: CompileOptions, keep_symbolic: bool = False
                 ) -> None:
        self.model = model
        self.options = options
        self.keep_symbolic = keep_symbolic
        self.dim_names: dict[str, str] = {}  # the model's dim_param -> our identifier
        self.opset = _default_opset(model)
        self.types: dict[str, TensorType] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self.problems: list[str] = []
        self.unknown: set[str] = set()  # values downstream of an unsupported node
        self._fresh = 0

    def fresh(self, hint: str) -> str:
        self._fresh += 1
        return f"{hint}__{self._fresh}"

    def run(self) -> Graph:
        from onnx import numpy_helper

        g = self.model.graph
        for imp in self.model.opset_import:
            if imp.domain not in ("", "ai.onnx"):
                used = [n for n in g.node if n.domain == imp.domain]
                if used:
                    self.problems.extend(
                        f"{n.op_type} node '{n.name}': domain '{n.domain}' is not supported"
                        for n in used)
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype.name not in DTYPES:
                self._check_dtype(arr.dtype, f"initializer '{init.name}'")
                continue
            self.constants[init.name] = arr
            self.types[init.name] = TensorType.of(arr)
        names = {vi.name for vi in g.input}
        unknown = sorted(set(self.options.input_shapes) - names)
        if unknown:
            raise ShapeError(f"input_shapes names {unknown}, which are not inputs of the "
                             f"model (its inputs: {sorted(names - set(self.constants))})")
        inputs = []
        for vi in g.input:
            if vi.name in self.constants:
                continue  # an initializer listed as an input (IR < 4 style): a constant
            self.types[vi.name] = self._input_type(vi)
            inputs.append(vi.name)
        with noted_positive() as positive, ExitStack() as assumed:
            seen = 0
            for index, proto in enumerate(g.node):
                self._convert(proto, index)
                if len(positive) > seen:
                    assumed.enter_context(assumed_ranges(_raised_lows(positive[seen:])))
                    seen = len(positive)
        if self.problems:
            raise UnsupportedOpError(self.problems)
        outputs = tuple(o.name for o in g.output)
        for o in outputs:
            if o not in self.types:
                raise ModelLoadError(f"graph output '{o}' is never produced")
        return Graph(g.name or "main", tuple(inputs), outputs, tuple(self.nodes), self.types,
                     self.constants)

    def _check_dtype(self, dtype: np.dtype, where: str) -> None:
        if dtype.name not in DTYPES:
            self.problems.append(f"{where}: element type {dtype.name} is not supported")

    def _input_type(self, vi: Any) -> TensorType:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedOpError([f"input '{vi.name}': only tensor inputs are supported"])
        dtype = _dtype(tt.elem_type, f"input '{vi.name}'")
        override = self.options.input_shapes.get(vi.name)
        if override is not None:
            return TensorType(dtype, tuple(int(d) for d in override))
        if not tt.HasField("shape"):
            raise ShapeError(f"input '{vi.name}' has no shape; pass input_shapes="
                             f"{{'{vi.name}': (...)}} to compile()")
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.dim_param in self.options.dim_values or not self.keep_symbolic:
                # Symbolic dims are bound at compile time: from options, else 1.
                dims.append(int(self.options.dim_values.get(d.dim_param, 1)))
            else:
                dims.append(dim(self.dim_name(d.dim_param)))
        return TensorType(dtype, tuple(dims))

    def dim_name(self, param: str) -> str:
        """An identifier for the model's dim name (which ONNX lets be any text; an unnamed
        dim gets a fresh one): sizes print and parse as expressions over identifiers."""
        key = param or f"?{len(self.dim_names)}"
        if key not in self.dim_names:
            base = re.sub(r"\W", "_", param) or "dim"
            if base[0].isdigit():
                base = f"d_{base}"
            name, k = base, 1
            while name in self.dim_names.values():
                k += 1
                name = f"{base}_{k}"
            self.dim_names[key] = name
        return self.dim_names[key]

    def _convert(self, proto: Any, index: int) -> None:
        name = proto.name or f"{proto.op_type}_{index}"
        where = f"{proto.op_type} node '{name}'"
        inputs = tuple(proto.input)
        outputs = tuple(proto.output)
        while len(outputs) > 1 and not outputs[-1]:
            outputs = outputs[:-1]
        if proto.domain not in ("", "ai.onnx"):
            self.unknown.update(outputs)
            return  # reported with the domain check
        if any(i and i in self.unknown for i in inputs):
            self.unknown.update(outputs)
            if proto.op_type not in CONVERTERS and proto.op_type != "Constant":
                self.problems.append(f"{where}: op {proto.op_type} is not supported")
            return
        try:
            attrs = {a.name: _read_attr(a, where) for a in proto.attribute}
            n = OnnxNode(proto.op_type, inputs, outputs, attrs, name)
            for i in inputs:
                if i and i not in self.types:
                    raise ModelLoadError(f"{where}: input '{i}' is not defined")
            if proto.op_type == "Constant":
                value = _constant_value(n)
                self._check_dtype(value.dtype, where)
                self.constants[outputs[0]] = value
                self.types[outputs[0]] = TensorType.of(value)
                return
            conv = CONVERTERS.get(proto.op_type)
            if conv is None:
                raise Unsupported(f"op {proto.op_type} is not supported")
            ctx = ConvertContext(self.opset, self.types, self.constants, self.fresh)
            for node in conv(ctx, n):
                self._add(node)
        except Unsupported as exc:
            self.problems.append(f"{where}: {exc}")
            self.unknown.update(outputs)
        except UnsupportedOpError as exc:
            self.problems.extend(exc.problems)
            self.unknown.update(outputs)
        except StrataError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{where}: cannot import ({type(exc).__name__}: {exc})"
                                 ) from exc

    def _add(self, node: Node) -> None:
        admit_node(node, self.types, self.constants, self.nodes)


def _raised_lows(positive: list[Size]) -> dict[str, tuple[int, int]]:
    """The dims whose least size the sizes a shape rule needs positive raise above the
    assumed range (a convolution's window: samples >= 400), for the rest of the import:
    the dynamo exporter spells a frame count after it as `max(0, frames - 1)`, which is
    `frames - 1` only once the frames are known to be at least 1, and reshapes by it."""
    out: dict[str, tuple[int, int]] = {}
    for x in positive:
        least = least_dim_value(x)
        if least is None:
            continue
        name, low = least
        lo, hi = out.get(name, assumed_range(name))
        if lo < low <= hi:
            out[name] = (low, hi)
    return out


def import_model(model: Any, options: CompileOptions | None = None,
                 keep_symbolic: bool = False,
                 dim_ranges: Mapping[str, tuple[int, int]] | None = None) -> Graph:
    """The model as a graph. Symbolic dims are bound (`options.dim_values`, else 1) unless
    `keep_symbolic`: then the ones not given a value stay `SizeExpr`s through every shape
    rule (see docs/dynamic-shapes.md), simplified under `dim_ranges` (by the model's dim
    names, which the graph keeps where they are identifiers)."""
    proto = load_model_proto(model)
    importer = _Importer(proto, options or CompileOptions(), keep_symbolic)
    ranges = {importer.dim_name(k): v for k, v in (dim_ranges or {}).items()}
    with assumed_ranges(ranges):
        return importer.run()

"""Graph dialect: a typed SSA graph of tensor ops (ONNX-like op set, attributes normalised).

An op is declared once (`declare_op` -> `OpDef`): its attribute schema with defaults, shape
rule, numpy reference semantics and lowering rule; the declarations live in `strataml.ops`,
one module per op family. Reference semantics power constant folding and the interpreter that
is the test oracle for every level.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, cast

import numpy as np

from strataml.errors import ShapeError, UnsupportedOpError, VerifyError
from strataml.ir.types import TensorType
from strataml.sizes import SizeExpr

AttrValue = Any  # int | float | str | tuple[...] | np.ndarray | tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Node:
    """One op application. `name` is the source location (the ONNX node name)."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    name: str = ""

    def attr(self, key: str) -> AttrValue:
        """The attribute's value, or its declared default (declared once, so no reader
        writes it again); a key the op does not declare is an error: a misspelt name must
        not read as a silent default."""
        for k, v in self.attrs:
            if k == key:
                return v
        return attr_default(self.op, key)

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    def with_attrs(self, **updates: AttrValue) -> Node:
        merged = dict(self.attrs)
        merged.update(updates)
        return replace(self, attrs=make_attrs(merged))

    @property
    def where(self) -> str:
        return f"{self.op} node '{self.name or self.outputs[0]}'"

    @property
    def body(self) -> tuple[Node, ...]:
        """The nodes of a fused group (empty for ordinary ops)."""
        return self.attr("body") if self.op == "fused" else ()

    def cse_key(self) -> tuple[Any, ...]:
        return (self.op, self.inputs, tuple((k, _hashable(v)) for k, v in self.attrs))


def _hashable(v: AttrValue) -> Any:
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, Node):
        return (*v.cse_key(), v.outputs)
    return v


def make_attrs(attrs: Mapping[str, AttrValue]) -> tuple[tuple[str, AttrValue], ...]:
    out = []
    for k in sorted(attrs):
        v = attrs[k]
        if isinstance(v, list):
            v = tuple(v)
        out.append((k, v))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Graph:
    """A whole model at the graph level. Constants are values with data, not nodes."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    types: Mapping[str, TensorType]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)

    def with_nodes(self, nodes: Iterable[Node], **changes: Any) -> Graph:
        return replace(self, nodes=tuple(nodes), **changes)

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def __str__(self) -> str:
        return print_graph(self)


# ---------------------------------------------------------------- op registry

InferFn = Callable[[Node, list[TensorType], list["np.ndarray | None"]], list[TensorType]]
ReferenceFn = Callable[[Node, list[np.ndarray]], list[np.ndarray]]
# (ctx, node, input refs) -> output refs: the kernel-level types live above this module, in
# `strataml.ops.lowering`, so they are spelt loosely here.
LowerFn = Callable[[Any, Node, list[Any]], list[Any]]

OP_KINDS = ("elementwise", "reduction", "contraction", "window", "movement", "opaque")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # an attribute the frontend must always set


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_float(v: object) -> bool:
    return _is_int(v) or isinstance(v, float | np.floating)


_ATTR_CHECKS: dict[str, Callable[[object], bool]] = {
    "int": _is_int,
    "float": _is_float,
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, tuple) and all(_is_int(x) for x in v),
    # a shape-like list whose entries may be run-time sizes (a Reshape's target)
    "sizes": lambda v: isinstance(v, tuple) and all(_is_int(x) or isinstance(x, SizeExpr)
                                                    for x in v),
    "floats": lambda v: isinstance(v, tuple) and all(_is_float(x) for x in v),
    "strs": lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
    "tensor": lambda v: isinstance(v, np.ndarray),
    "nodes": lambda v: isinstance(v, tuple) and all(isinstance(x, Node) for x in v),
}


@dataclass(frozen=True)
class Attr:
    """One declared attribute: its kind (a key of `_ATTR_CHECKS`) and its default. REQUIRED:
    the frontend always sets it; None: optional, absent means "not given"."""

    kind: str
    default: AttrValue = REQUIRED
    # A decision the default rules make when the attribute is absent (a convolution's
    # algorithm, its layout): the values that may pin it, which a tuner enumerates.
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _ATTR_CHECKS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")

    def accepts(self, value: AttrValue) -> bool:
        if value is None and self.default is None:
            return True
        return _ATTR_CHECKS[self.kind](value) and (not self.choices or value in self.choices)


@dataclass(frozen=True)
class OpDef:
    """What an op is, in one place: its structural kind (used by fusion), attribute schema,
    shape rule, numpy semantics and lowering rule (None: the op always folds away)."""

    name: str
    kind: str
    infer: InferFn
    reference: ReferenceFn
    inputs: tuple[int, int] = (1, 1)  # min, max number of inputs (-1: unbounded)
    outputs: int = 1
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    lower: LowerFn | None = None


OPS: dict[str, OpDef] = {}
# The fused group is a graph-dialect construct, not an op: its one attribute is its body.
_FUSED_ATTRS: Mapping[str, Attr] = MappingProxyType({"body": Attr("nodes", ())})


def declare_op(name: str, kind: str, *, infer: InferFn, reference: ReferenceFn,
               lower: LowerFn | None, attrs: Mapping[str, Attr] | None = None,
               inputs: tuple[int, int] = (1, 1), outputs: int = 1) -> OpDef:
    """Declare op `name` once: everything the levels below need to know about it."""
    if kind not in OP_KINDS:
        raise ValueError(f"op {name}: kind {kind!r} is not one of {OP_KINDS}")
    if name in OPS:
        raise ValueError(f"op {name} declared twice")
    opdef = OpDef(name, kind, infer, reference, inputs, outputs,
                  MappingProxyType(dict(attrs or {})), lower)
    OPS[name] = opdef
    return opdef


def _schema(op: str) -> Mapping[str, Attr] | None:
    """The op's attribute schema; None for an op the dialect does not define (reported as
    such by the verifier and the lowering, not here)."""
    if op == "fused":
        return _FUSED_ATTRS
    _load_op_families()
    opdef = OPS.get(op)
    return None if opdef is None else opdef.attrs


def attr_default(op: str, key: str) -> AttrValue:
    schema = _schema(op)
    if schema is None:
        raise UnsupportedOpError([f"op {op} is not defined in the graph dialect"])
    spec = schema.get(key)
    if spec is None:
        raise VerifyError(f"op {op} declares no attribute {key!r} (it has: "
                          f"{', '.join(sorted(schema)) or 'none'})")
    if spec.default is REQUIRED:
        raise VerifyError(f"op {op}: required attribute {key!r} is missing")
    return spec.default


def attr_problems(node: Node) -> list[str]:
    """What is wrong with the node's attributes against its op's schema (unknown names,
    values of the wrong kind, required ones missing), as messages naming each."""
    schema = _schema(node.op)
    if schema is None:
        return []
    problems = []
    for key, value in node.attrs:
        spec = schema.get(key)
        if spec is None:
            problems.append(f"{node.where}: unknown attribute {key!r} (declared: "
                            f"{', '.join(sorted(schema)) or 'none'})")
        elif not spec.accepts(value):
            wanted = (f"one of {', '.join(spec.choices)}" if spec.choices
                      else f"of kind {spec.kind}")
            problems.append(f"{node.where}: attribute {key!r} = {value!r:.60} is not "
                            f"{wanted}")
    given = {k for k, _ in node.attrs}
    problems += [f"{node.where}: required attribute {key!r} is missing"
                 for key, spec in schema.items() if spec.default is REQUIRED and key not in given]
    return problems


def get_op(name: str) -> OpDef:
    _load_op_families()
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedOpError([f"op {name} is not defined in the graph dialect"]) from None


def _load_op_families() -> None:
    # Imported lazily: the families import this module to declare themselves.
    import strataml.ops  # noqa: F401


def infer_node(node: Node, in_types: Sequence[TensorType | None],
               in_values: list[np.ndarray | None]) -> list[TensorType]:
    """Run an op's shape rule, turning any failure into a ShapeError naming the node. An
    omitted optional input arrives as None; the rules check for it where it may be."""
    opdef = get_op(node.op)
    try:
        return opdef.infer(node, cast(list[TensorType], list(in_types)), in_values)
    except (ShapeError, UnsupportedOpError):
        raise
    except Exception as exc:
        shapes = ", ".join(str(t) for t in in_types)
        raise ShapeError(f"{node.where}: {exc} (inputs: {shapes})") from exc


def evaluate_node(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """The node's numpy reference (omitted optional inputs as None, as in `infer_node`)."""
    if node.op == "fused":
        env = dict(zip(node.inputs, inputs, strict=True))
        for inner in node.body:
            for name, value in zip(inner.outputs, evaluate_node(
                    inner, [env[i] if i else None for i in inner.inputs]), strict=True):
                env[name] = value
        return [np.asarray(env[o]) for o in node.outputs]
    return get_op(node.op).reference(node, cast(list[np.ndarray], list(inputs)))


def interpret(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The numpy reference interpreter: the oracle every level is tested against."""
    env: dict[str, np.ndarray | None] = {k: np.asarray(v) for k, v in graph.constants.items()}
    env.update({k: np.asarray(v) for k, v in feeds.items()})
    for node in graph.nodes:
        outs = evaluate_node(node, [env[i] if i else None for i in node.inputs])
        env.update(zip(node.outputs, outs, strict=True))
    return [np.asarray(env[o]) for o in graph.outputs]


# ---------------------------------------------------------------- verifier


def verify_graph(graph: Graph) -> None:
    """SSA, types and shape rules; raises VerifyError naming the node and the bad value."""
    defined: set[str] = set(graph.inputs) | set(graph.constants)
    for name in defined:
        if name not in graph.types:
            raise VerifyError(f"value %{name} has no type")
    for name, arr in graph.constants.items():
        t = graph.types[name]
        if TensorType.of(np.asarray(arr)) != t:
            raise VerifyError(f"constant %{name}: data is {TensorType.of(arr)} but typed {t}")

    def check(nodes: Iterable[Node], scope: set[str]) -> None:
        for node in nodes:
            problems = attr_problems(node)
            if problems:
                raise VerifyError("; ".join(problems))
            for i in node.inputs:
                if i and i not in scope:
                    raise VerifyError(f"{node.where}: input %{i} is used before it is defined")
            for o in node.outputs:
                if o in scope:
                    raise VerifyError(f"{node.where}: value %{o} is defined twice")
                if o not in graph.types:
                    raise VerifyError(f"{node.where}: output %{o} has no type")
            if node.op == "fused":
                inner_scope = set(node.inputs) | set(graph.constants)
                check(node.body, inner_scope)
                missing = set(node.outputs) - inner_scope
                if missing:
                    raise VerifyError(f"{node.where}: body does not define {sorted(missing)}")
            else:
                in_types = [graph.types[i] if i else None for i in node.inputs]
                values = [graph.constants.get(i) if i else None for i in node.inputs]
                expected = infer_node(node, in_types, values)
                got = [graph.types[o] for o in node.outputs]
                if expected != got:
                    raise VerifyError(f"{node.where}: outputs typed {[str(t) for t in got]} "
                                      f"but the shape rule gives {[str(t) for t in expected]}")
            scope.update(node.outputs)

    check(graph.nodes, defined)
    for o in graph.outputs:
        if o not in defined:
            raise VerifyError(f"graph output %{o} is never defined")


# ---------------------------------------------------------------- text form

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# Constants and tensor attributes up to this many elements print inline, in full; larger ones
# print as a reference into a weights store (`weights=`: key -> array) so that the text stays
# short and still parses back to the same graph.
INLINE_ELEMENTS = 16


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def value_ref(name: str) -> str:
    if not name:
        return "%none"
    return f"%{name}" if _IDENT.match(name) else f"%{quoted(name)}"


def weight_key(name: str, value: np.ndarray) -> str:
    """A store key naming both the value and its bytes (a pass may rebind a name)."""
    digest = hashlib.sha1(np.ascontiguousarray(value).view(np.uint8).tobytes()).hexdigest()
    return f"{name}#{digest[:12]}"


def _elements(v: np.ndarray, name: str, weights: dict[str, np.ndarray] | None) -> str:
    if v.dtype == object:  # a shape value: sizes, printed as attributes print them
        return format_attr(tuple(v.ravel().tolist()))
    if v.size <= INLINE_ELEMENTS:
        return repr(v.ravel().tolist())
    key = weight_key(name, v)
    if weights is not None:
        weights[key] = v
    return f"@{quoted(key)}"


def format_attr(v: AttrValue, name: str = "attr",
                weights: dict[str, np.ndarray] | None = None) -> str:
    if isinstance(v, np.ndarray):
        return f"tensor<{TensorType.of(v)}>{_elements(v, name, weights)}"
    if isinstance(v, tuple):
        return "[" + ", ".join(format_attr(x, name, weights) for x in v) + "]"
    if isinstance(v, SizeExpr):
        return f"<{v}>"
    return repr(v)


def print_graph(graph: Graph, indent: str = "",
                weights: dict[str, np.ndarray] | None = None) -> str:
    """The graph as text that `strataml.ir.parse.parse_graph` reads back; constants of
    more than INLINE_ELEMENTS elements are written into `weights` (when given) and printed
    by their key."""
    name = graph.name if _IDENT.match(graph.name) else quoted(graph.name)
    args = ", ".join(f"{value_ref(i)}: {graph.types[i]}" for i in graph.inputs)
    outs = ", ".join(value_ref(o) for o in graph.outputs)
    lines = [f"{indent}graph @{name}({args}) -> ({outs}) {{"]
    for value, arr in graph.constants.items():
        lines.append(f"{indent}  {value_ref(value)}: {graph.types[value]} = constant "
                     f"{_elements(np.asarray(arr), value, weights)}")
    lines.extend(_print_nodes(graph, graph.nodes, indent + "  ", weights))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _print_nodes(graph: Graph, nodes: Iterable[Node], indent: str,
                 weights: dict[str, np.ndarray] | None = None) -> list[str]:
    lines = []
    for node in nodes:
        results = ", ".join(f"{value_ref(o)}: {graph.types.get(o, '?')}" for o in node.outputs)
        operands = ", ".join(value_ref(i) for i in node.inputs)
        attrs = {k: v for k, v in node.attrs if k != "body"}
        attr_text = (" {" + ", ".join(f"{k}={format_attr(v, f'{node.outputs[0]}.{k}', weights)}"
                                      for k, v in attrs.items()) + "}" if attrs else "")
        loc = f" loc({quoted(node.name)})" if node.name else ""
        if node.op == "fused":
            lines.append(f"{indent}{results} = fused({operands}){attr_text}{loc} {{")
            lines.extend(_print_nodes(graph, node.body, indent + "  ", weights))
            lines.append(f"{indent}}}")
        else:
            lines.append(f"{indent}{results} = {node.op}({operands}){attr_text}{loc}")
    return lines

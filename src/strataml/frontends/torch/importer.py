"""torch.fx GraphModule at the ATen level -> graph dialect.

The graph is what `torch.export.export(m, args).run_decompositions().module()` gives (or a
partition cut out of one, as torch.compile hands a backend): `placeholder` nodes are the
inputs, typed from the tensors torch traced with (`node.meta["val"]`), `get_attr` nodes the
weights, `call_function` nodes ATen ops converted through `aten.ATEN`, and the `output`
node a flat list of results. By default shapes are static: a size torch traced symbolically
is taken at its hint (the example input's size) unless `CompileOptions.input_shapes` names
the input. With `keep_symbolic` (`sym_sizes.SymbolicDims`) it stays a `SizeExpr` over named
dims instead, through every size computation, converter and shape rule
(docs/dynamic-shapes.md).
As in the ONNX importer, types are inferred node by node, nodes whose inputs are all
constants fold, and every unsupported op is collected and reported together.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx

from strataml.errors import ModelLoadError, ShapeError, StrataError, UnsupportedOpError
from strataml.frontends.admit import admit_node
from strataml.frontends.torch.aten import ATEN
from strataml.frontends.torch.context import (
    ConvertContext,
    Unsupported,
    Value,
    numpy_dtype,
    static_dim,
    tensor_type,
)
from strataml.frontends.torch.sym_sizes import SymbolicDims, exported_dims
from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.types import TensorType
from strataml.options import CompileOptions
from strataml.sizes import (
    Range,
    Size,
    SizeExpr,
    SymbolicSizeError,
    format_size,
    is_symbolic,
    numel,
    simplify_within,
    size_max,
    size_min,
)


@dataclass(frozen=True)
class TorchGraph:
    """An imported FX graph and how torch's tensors map onto it.

    `inputs`: the graph's input values, one per tensor placeholder, in placeholder order.
    `outputs`: one entry per result of the FX graph (its output list, flattened), in order:
    the graph output that holds it, or None where the FX graph returns None. The graph's
    own outputs are the entries that are not None, each a distinct value made by a node.
    `dim_ranges`: with `keep_symbolic`, each run-time dim's inclusive range as torch.export
    recorded it (its `range_constraints`, within [1, DIM_MAX]); empty for a static graph.
    `size_args`: with dims, the placeholders that are sizes (`SymInt`s) rather than tensors:
    not inputs (the tensors' shapes give their dims), left out of `inputs`.
    """

    graph: Graph
    inputs: tuple[str, ...]
    outputs: tuple[str | None, ...]
    dim_ranges: Mapping[str, Range] = field(default_factory=dict)
    size_args: tuple[str, ...] = ()

    def feeds(self, args: Sequence[Any]) -> dict[str, np.ndarray]:
        """The run() feeds for the FX graph's positional arguments (tensors or arrays)."""
        if len(args) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(args)}")
        return {name: a.detach().cpu().numpy() if isinstance(a, torch.Tensor)
                else np.asarray(a) for name, a in zip(self.inputs, args, strict=True)}

    def results(self, values: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The FX graph's results from the graph's outputs (None where it returns None)."""
        it = iter(values)
        return [None if o is None else next(it) for o in self.outputs]


def _side_effect_ops() -> frozenset[Any]:
    """Checks torch.export inserts for its own guards: nothing to compute."""
    from strataml.frontends.torch.aten import _overload

    names = ("_assert_tensor_metadata.default", "_assert_scalar.default",
             "_assert_async.default", "_assert_async.msg", "sym_constrain_range.default",
             "sym_constrain_range_for_size.default", "_functional_assert_scalar.default",
             "_functional_assert_async.msg", "_print.default")
    return frozenset(op for op in map(_overload, names) if op is not None)


SIDE_EFFECT_OPS = _side_effect_ops()
# Arithmetic on sizes (ints once shapes are static), as dynamic-shape graphs spell it.
_SIZE_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv,
                    operator.truediv, operator.mod, operator.neg, operator.pow, torch.sym_max,
                    torch.sym_min}


def _size_ops() -> frozenset[Any]:
    return frozenset({torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default})


def _leaves(x: Any) -> Iterator[Any]:
    if isinstance(x, list | tuple):
        for item in x:
            yield from _leaves(item)
    else:
        yield x


def _result_count(node: torch.fx.Node) -> int:
    """How many results a call has: from the values torch traced, else from the schema."""
    val = node.meta.get("val")
    if isinstance(val, list | tuple):
        return len(val)
    if val is None:
        schema = getattr(node.target, "_schema", None)
        if schema is not None and len(schema.returns) > 1:
            return len(schema.returns)
    return 1


def _result_names(node: torch.fx.Node) -> list[str]:
    # FX names are Python identifiers; a '.' keeps the results' names off every other's.
    count = _result_count(node)
    return [node.name] if count == 1 and not isinstance(node.meta.get("val"), list | tuple) \
        else [f"{node.name}.{i}" for i in range(count)]


def _where(node: torch.fx.Node) -> str:
    return f"{node.target} node '{node.name}'"


class _Importer:
    def __init__(self, gm: torch.fx.GraphModule, options: CompileOptions, name: str,
                 dims: SymbolicDims | None) -> None:
        self.gm = gm
        self.options = options
        self.name = name
        self.dims = dims
        self.values: dict[torch.fx.Node, Value] = {}
        self.types: dict[str, TensorType] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.size_args: list[str] = []  # placeholders that are sizes (with dims), not inputs
        self.problems: list[str] = []
        self.unknown: set[torch.fx.Node] = set()  # downstream of an unsupported node
        # Results are checked against torch's traced types unless shapes were overridden.
        self.check_types = not options.input_shapes
        self._fresh = 0

    def fresh(self, hint: str) -> str:
        while True:
            self._fresh += 1
            name = f"{hint}.{self._fresh}"
            if name not in self.types:
                return name

    def run(self) -> TorchGraph:
        placeholders = [n.name for n in self.gm.graph.nodes if n.op == "placeholder"]
        unknown = sorted(set(self.options.input_shapes) - set(placeholders))
        if unknown:
            raise ShapeError(f"input_shapes names {unknown}, which are not inputs of the "
                             f"graph (its inputs: {placeholders})")
        slots: tuple[str | None, ...] = ()
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "get_attr":
                self._get_attr(node)
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                slots = self._outputs(node)
            elif node.op == "call_module" and node.target == "_guards_fn":
                continue  # torch.export's input checks (the runtime checks inputs)
            else:
                self.problems.append(f"{node.op} node '{node.name}' ({node.target}): not "
                                     "an ATen op (only ATen graphs are supported)")
                self.unknown.add(node)
        if self.problems:
            raise UnsupportedOpError(self.problems)
        graph = Graph(self.name, tuple(self.inputs), tuple(o for o in slots if o is not None),
                      tuple(self.nodes), self.types, self.constants)
        ranges = dict(self.dims.ranges) if self.dims is not None else {}
        return TorchGraph(graph, tuple(self.inputs), slots, ranges, tuple(self.size_args))

    # ------------------------------------------------------------ inputs and weights

    def _placeholder(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val", node.meta.get("example_value"))
        where = f"input '{node.name}'"
        if isinstance(val, torch.SymInt) and self.dims is not None:
            # A size handed in (a partition reading a size computed outside it): the size
            # over the dims, which the tensor inputs bind; not an input of the graph.
            try:
                self.values[node] = self.dims.size(val, where)
            except Unsupported as exc:
                self.problems.append(str(exc))
                self.unknown.add(node)
            self.size_args.append(node.name)
            return
        try:
            t = tensor_type(val, where, self.dims)
        except Unsupported as exc:
            tensor = isinstance(val, torch.Tensor)
            self.problems.append(str(exc) if tensor else
                                 f"{exc} (only tensor inputs are supported)")
            self.unknown.add(node)
            return
        override = self.options.input_shapes.get(node.name)
        if override is not None:
            if len(override) != t.rank:
                raise ShapeError(f"{where}: input_shapes gives {list(override)}, torch traced "
                                 f"rank {t.rank}")
            t = TensorType(t.dtype, tuple(int(d) for d in override))
        self.types[node.name] = t
        self.values[node] = node.name
        self.inputs.append(node.name)

    def _get_attr(self, node: torch.fx.Node) -> None:
        obj: Any = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        where = f"get_attr node '{node.name}' ({node.target})"
        if isinstance(obj, int | float | bool):
            self.values[node] = obj
            return
        if not isinstance(obj, torch.Tensor):
            self.problems.append(f"{where}: a {type(obj).__name__} is not a tensor")
            self.unknown.add(node)
            return
        try:
            numpy_dtype(obj.dtype, f"{where}: element type")
            # A copy: the compiled model keeps the weights as they are now.
            arr = np.array(obj.detach().cpu().numpy(), copy=True)
        except Unsupported as exc:
            self.problems.append(str(exc))
            self.unknown.add(node)
            return
        except (RuntimeError, TypeError) as exc:  # a fake or meta tensor has no data
            self.problems.append(f"{where}: its data is not available ({exc})")
            self.unknown.add(node)
            return
        self.constants[node.name] = arr
        self.types[node.name] = TensorType.of(arr)
        self.values[node] = node.name

    # ------------------------------------------------------------ calls

    def _call(self, node: torch.fx.Node) -> None:
        target = node.target
        if any(a in self.unknown for a in node.all_input_nodes):
            self.unknown.add(node)
            if not _structural(target) and target not in ATEN:
                self.problems.append(f"{_where(node)}: op is not supported")
            return
        try:
            if target in SIDE_EFFECT_OPS:
                self.values[node] = None
            elif target is operator.getitem:
                self._getitem(node)
            elif target in _size_ops() or target in _SIZE_ARITHMETIC:
                self.values[node] = self._size(node)
            else:
                self._convert(node)
        except Unsupported as exc:
            self.problems.append(f"{_where(node)}: {exc}")
            self.unknown.add(node)
        except UnsupportedOpError as exc:
            self.problems.extend(f"{_where(node)}: {p}" for p in exc.problems)
            self.unknown.add(node)
        except SymbolicSizeError as exc:  # a question only the run-time sizes answer
            self.problems.append(f"{_where(node)}: {exc}")
            self.unknown.add(node)
        except StrataError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{_where(node)}: cannot import ({type(exc).__name__}: "
                                 f"{exc})") from exc

    def _getitem(self, node: torch.fx.Node) -> None:
        source, index = node.args[0], node.args[1]
        assert isinstance(source, torch.fx.Node)
        value = self.values.get(source)
        if not isinstance(value, tuple) or not isinstance(index, int):
            raise Unsupported(f"indexing {source.name} (not a tuple of results)")
        picked = value[index]
        if picked is None:
            raise Unsupported(f"result {index} of {_where(source)} is not supported")
        self.values[node] = picked

    def _size(self, node: torch.fx.Node) -> Size | float:
        """A size (sym_size, sym_numel) or arithmetic on sizes: a number, or a `Size` over
        the dims where shapes are kept symbolic."""
        if node.target in _size_ops():
            value = self.values.get(node.args[0])  # type: ignore[arg-type]
            if not isinstance(value, str):
                raise Unsupported(f"the size of {node.args[0]} (not a tensor)")
            shape = self.types[value].shape
            if node.target is torch.ops.aten.sym_numel.default:
                return numel(shape)
            axis = node.args[1]
            if not isinstance(axis, int):
                raise Unsupported(f"the size of {node.args[0]} along {axis} (not a constant)")
            return shape[axis]
        args = [self.values.get(a) if isinstance(a, torch.fx.Node) else a for a in node.args]
        if not all(isinstance(a, int | float | SizeExpr) for a in args):
            raise Unsupported(f"{node.target} on non-numbers")
        if any(is_symbolic(a) for a in args):
            return _size_arithmetic(node.target, args)
        result: int | float = node.target(*args)  # type: ignore[operator]
        return result

    def _convert(self, node: torch.fx.Node) -> None:
        conv = ATEN.get(node.target)
        if conv is None:
            raise Unsupported("op is not supported")
        outs = _result_names(node)
        ctx = ConvertContext(node, self.values, self.types, self.constants, self.fresh, outs,
                             self.dims)
        made = conv(ctx, node)
        for g in made:
            self._add(g)
        produced = [o if o in self.types else None for o in outs]
        if produced[0] is None and len(outs) == 1:
            raise ModelLoadError(f"{_where(node)}: its converter made no result")
        if self.check_types:
            self._check_traced(node, produced)
        is_tuple = isinstance(node.meta.get("val"), list | tuple) or len(outs) > 1
        self.values[node] = tuple(produced) if is_tuple else produced[0]

    def _check_traced(self, node: torch.fx.Node, produced: list[str | None]) -> None:
        """Each result's type must be the one torch traced: a converter bug otherwise."""
        val = node.meta.get("val")
        traced = list(val) if isinstance(val, list | tuple) else [val]
        for name, v in zip(produced, traced, strict=False):
            if name is None or not isinstance(v, torch.Tensor):
                continue
            expected = tensor_type(v, f"result of {node.name}", self.dims)
            if self.types[name] != expected and not self._agree(self.types[name], expected):
                raise ModelLoadError(f"{_where(node)}: converted to {self.types[name]} but "
                                     f"torch traced {expected} (a converter bug)")

    def _agree(self, ours: TensorType, traced: TensorType) -> bool:
        """Whether two symbolic types are equal over the dims' ranges, which torch uses to
        simplify (a position table sliced to `seq` <= 64 of its 512 rows is `seq` to torch,
        `min(512, seq)` to the shape rules)."""
        ranges = self.dims.ranges if self.dims is not None else {}
        return ours.dtype == traced.dtype and ours.rank == traced.rank and all(
            simplify_within(a, ranges) == simplify_within(b, ranges)
            for a, b in zip(ours.shape, traced.shape, strict=True))

    def _add(self, node: Node) -> None:
        admit_node(node, self.types, self.constants, self.nodes)

    # ------------------------------------------------------------ outputs

    def _outputs(self, node: torch.fx.Node) -> tuple[str | None, ...]:
        """One slot per result; a value returned twice, an input returned as it is or a
        constant gets an Identity, so each graph output is a distinct value a node makes."""
        slots: list[str | None] = []
        seen: set[str] = set()
        for leaf in _leaves(node.args[0]):
            if leaf is None:
                slots.append(None)
                continue
            value = self.values.get(leaf) if isinstance(leaf, torch.fx.Node) else None
            if isinstance(leaf, torch.fx.Node) and leaf in self.unknown:
                slots.append(None)  # already reported
                continue
            if not isinstance(value, str):
                self.problems.append(f"output: result {leaf} is not a tensor (only tensor "
                                     "results are supported)")
                slots.append(None)
                continue
            if value in seen or value in self.inputs or value in self.constants:
                alias = self.fresh(f"{leaf.name}.out")
                self.types[alias] = self.types[value]
                self.nodes.append(Node("Identity", (value,), (alias,), (), leaf.name))
                value = alias
            seen.add(value)
            slots.append(value)
        return tuple(slots)


def _size_arithmetic(target: Any, args: list[Any]) -> Size:
    """Arithmetic on sizes where one is a run-time size: what sizes can express (+, -, *,
    negation, // and % by constants, natural powers, min and max), else Unsupported."""
    if target is torch.sym_max or target is torch.sym_min:
        return (size_max if target is torch.sym_max else size_min)(args[0], args[1])
    if target is operator.pow:
        base, exponent = args
        if not isinstance(exponent, int) or isinstance(exponent, bool) or exponent < 0:
            raise Unsupported(f"{format_size(base)} ** {exponent} (not a natural power)")
        return numel([base] * exponent)
    if any(isinstance(a, float) for a in args) or target is operator.truediv:
        shown = ", ".join(map(str, args))
        raise Unsupported(f"{target.__name__}({shown}): true division or a float on a "
                          "run-time size (sizes stay integers)")
    result: Size = target(*args)
    return result


def _structural(target: Any) -> bool:
    return (target in SIDE_EFFECT_OPS or target is operator.getitem
            or target in _size_ops() or target in _SIZE_ARITHMETIC)


def import_fx(gm: torch.fx.GraphModule, options: CompileOptions | None = None,
              name: str = "torch", dims: SymbolicDims | None = None) -> TorchGraph:
    """An ATen-level FX graph (see the module docstring) as a graph-dialect graph; with
    `dims`, torch's symbolic sizes stay symbolic as those dims."""
    return _Importer(gm, options or CompileOptions(), name, dims).run()


def _decompositions() -> Any:
    """torch.export's default table less attention, which stays one op: the converter spells
    it as two matmuls around a softmax, while torch's decomposition of it gives its output
    strides that a later `view` rejects under fake tensors (transformers' GPT-2 with SDPA
    fails to re-trace)."""
    table = torch.export.default_decompositions()
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    if sdpa in table:
        del table[sdpa]
    return table


def import_exported(ep: torch.export.ExportedProgram, options: CompileOptions | None = None,
                    name: str = "torch", *, keep_symbolic: bool = False) -> TorchGraph:
    """A torch.export program, lowered to core ATen by the default decompositions, with
    its parameters and buffers as constants. Sizes torch traced symbolically are taken at
    their hints unless `keep_symbolic`: then each stays a dim (named after its
    `torch.export.Dim`, see `sym_sizes.exported_dims`) unless `options.dim_values` binds it,
    and `TorchGraph.dim_ranges` holds the dims' ranges."""
    options = options or CompileOptions()
    decomposed = ep.run_decompositions(_decompositions())
    dims = exported_dims(decomposed, options.dim_values) if keep_symbolic else None
    # Without guards: the graph keeps only ATen calls (checking inputs against the dims'
    # ranges is the runtime's job, `strataml.sizes.bind_input_dims`).
    return import_fx(decomposed.module(check_guards=False), options, name, dims)


def supported(node: torch.fx.Node) -> bool:
    """Whether `import_fx` takes this node: an ATen call with a converter that accepts its
    arguments (checked by converting it alone, on the types torch traced for its inputs),
    or a node that only moves sizes and tuples around."""
    if node.op != "call_function":
        return False
    if _structural(node.target):
        return True
    conv = ATEN.get(node.target)
    if conv is None:
        return False
    values: dict[torch.fx.Node, Value] = {}
    types: dict[str, TensorType] = {}
    counter = iter(range(1 << 30))
    try:
        for arg in node.all_input_nodes:
            val = arg.meta.get("val", arg.meta.get("example_value"))
            if isinstance(val, torch.Tensor):
                types[arg.name] = tensor_type(val, f"argument {arg.name}")
                values[arg] = arg.name
            elif isinstance(val, int | float | bool | torch.SymInt):
                values[arg] = static_dim(val, arg.name) if not isinstance(val, float) else val
            else:
                return False
        ctx = ConvertContext(node, values, types, {}, lambda h: f"{h}.{next(counter)}",
                             _result_names(node))
        conv(ctx, node)
        if ctx.out not in types:
            return False
        val = node.meta.get("val")
        for v in (val if isinstance(val, list | tuple) else [val]):
            if isinstance(v, torch.Tensor):
                tensor_type(v, node.name)  # an element type the dialect has
    except (Unsupported, StrataError):
        return False
    return True

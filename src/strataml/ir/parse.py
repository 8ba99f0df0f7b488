"""Reading IR text back: the graph level (`print_graph`) and the kernel level
(`print_kernel`), so that parse(print(x)) == x.

Large constants and tensor attributes are read from a weights store (key -> array, the
`weights.npz` that `--dump-ir` writes beside the files). A malformed text is a ParseError at
`file:line:col`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np

from strataml.errors import StrataError
from strataml.ir.dialects.graph import Graph, Node, attr_problems, make_attrs
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    Extent,
    For,
    LoopFunction,
    Param,
    Prefetch,
    Stmt,
    Store,
)
from strataml.ir.expr import (
    BINARY_OPS,
    COMPARE_OPS,
    UNARY_OPS,
    Binary,
    Broadcast,
    Cast,
    Compare,
    Const,
    Expr,
    Load,
    Reduce,
    Select,
    Unary,
    Var,
    format_expr,
)
from strataml.ir.types import Dim, TensorType
from strataml.sizes import Size, is_symbolic, parse_size, shape_value


class ParseError(StrataError):
    """IR text that does not parse, with its file, line and column."""


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<ref>%(?:[A-Za-z_][A-Za-z0-9_.]*|"(?:[^"\\]|\\.)*"))
  | (?P<number>[-+]?(?:\d+(?:\.(?!\.)\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf\b
                   |nan\b))
  | (?P<symbol>->|<=|>=|==|!=|\.\.|@|\(|\)|\{|\}|\[|\]|<|>|,|:|=|\?|\+|-|\*|/|~)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
""", re.VERBOSE)


class _Lexer:
    def __init__(self, text: str, filename: str) -> None:
        self.text, self.filename = text, filename
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, offset)
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                self.pos = len(self.tokens)
                raise self.error(f"unexpected character {text[pos]!r}", pos)
            if m.lastgroup != "space":
                self.tokens.append((m.lastgroup or "", m.group(), pos))
            pos = m.end()
        self.pos = 0

    def error(self, message: str, offset: int | None = None) -> ParseError:
        if offset is None:
            offset = self.tokens[self.pos][2] if self.pos < len(self.tokens) else len(self.text)
        line = self.text.count("\n", 0, offset) + 1
        col = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return ParseError(f"{self.filename}:{line}:{col}: {message}")

    def peek(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            return "eof", ""
        kind, text, _ = self.tokens[self.pos]
        return kind, text

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        got_kind, got = self.peek()
        if (kind and got_kind != kind) or (text is not None and got != text):
            want = repr(text) if text is not None else {"ref": "a value (%name)"}.get(
                kind or "", kind)
            raise self.error(f"expected {want}, found {got!r}" if got else f"expected {want}, "
                             "found the end of the text")
        self.pos += 1
        return got

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.pos += 1
            return True
        return False


def _items(lx: _Lexer, close: str, item: Callable[[], Any]) -> list[Any]:
    """`item` parsed until `close`, comma-separated."""
    out: list[Any] = []
    if lx.accept(close):
        return out
    while True:
        out.append(item())
        if lx.accept(close):
            return out
        if not lx.accept(","):
            raise lx.error(f"expected ',' or {close!r}, found {lx.peek()[1] or 'the end'!r}")


def _ref(token: str) -> str:
    name = token[1:]
    if name.startswith('"'):
        return json.loads(name)
    return "" if name == "none" else name


def _type(lx: _Lexer) -> TensorType | None:
    if lx.accept("?"):
        return None
    dtype = lx.take("word")
    lx.take(text="[")

    def dim() -> Dim:
        return _size_text(lx, (",", "]"))

    return TensorType(dtype, tuple(_items(lx, "]", dim)))


def _size_text(lx: _Lexer, stops: tuple[str, ...]) -> Dim:
    """A size expression running to the next of `stops` outside parentheses (left there)."""
    start, depth = lx.pos, 0
    while lx.pos < len(lx.tokens):
        text = lx.peek()[1]
        if depth == 0 and text in stops:
            break
        depth += {"(": 1, ")": -1}.get(text, 0)
        lx.pos += 1
    if lx.pos == start:
        raise lx.error("expected a size")
    begin = lx.tokens[start][2]
    end = lx.tokens[lx.pos][2] if lx.pos < len(lx.tokens) else len(lx.text)
    try:
        return parse_size(lx.text[begin:end])
    except ValueError as exc:
        raise lx.error(str(exc), begin) from None


def _size_until(lx: _Lexer, close: str) -> Dim:
    lx.take(text="<")
    size = _size_text(lx, (close,))
    lx.take(text=close)
    return size


def _scalar(text: str) -> int | float:
    if text.lstrip("+-") in ("inf", "nan"):
        return float(text)
    return ast.literal_eval(text)


def _value(lx: _Lexer) -> object:
    """A plain value: number, string, True/False/None, or a list of them."""
    kind, text = lx.peek()
    if lx.accept("["):
        return _items(lx, "]", lambda: _value(lx))
    if kind == "symbol" and text == "<":  # a run-time size: <seq*12>
        return _size_until(lx, ">")
    if kind == "number":
        return _scalar(lx.take())
    if kind == "string":
        return ast.literal_eval(lx.take())
    if kind == "word" and text in ("True", "False", "None"):
        return ast.literal_eval(lx.take())
    raise lx.error(f"expected a value, found {text!r}")


def _elements(lx: _Lexer, t: TensorType, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    if lx.accept("@"):
        at = lx.pos
        key = json.loads(lx.take("string"))
        if key not in weights:
            lx.pos = at
            raise lx.error(f"weights store has no {key!r} (the weights.npz beside the file?)")
        return np.asarray(weights[key]).astype(t.dtype, copy=False).reshape(t.static_shape())
    values = _value(lx)
    flat = values if isinstance(values, list) else [values]
    if any(is_symbolic(v) for v in flat):  # a shape value
        return shape_value(cast(list[Dim], flat), scalar=not t.shape).reshape(t.static_shape())
    return np.array(values, dtype=t.dtype).reshape(t.static_shape())


def _attr(lx: _Lexer, weights: Mapping[str, np.ndarray]) -> object:
    if lx.peek() == ("word", "tensor"):
        lx.take()
        lx.take(text="<")
        t = _type(lx)
        lx.take(text=">")
        if t is None:
            raise lx.error("a tensor attribute needs its type")
        return _elements(lx, t, weights)
    if lx.accept("["):
        return tuple(_items(lx, "]", lambda: _attr(lx, weights)))
    value = _value(lx)
    return tuple(value) if isinstance(value, list) else value


def _keyed_attr(lx: _Lexer, weights: Mapping[str, np.ndarray]) -> tuple[str, object]:
    key = lx.take("word")
    lx.take(text="=")
    return key, _attr(lx, weights)


def _nodes(lx: _Lexer, types: dict[str, TensorType], weights: Mapping[str, np.ndarray],
           constants: dict[str, np.ndarray] | None) -> list[Node]:
    nodes: list[Node] = []
    while not lx.accept("}"):
        outputs: list[str] = []
        while True:
            out = _ref(lx.take("ref"))
            lx.take(text=":")
            t = _type(lx)
            if t is not None:
                types[out] = t
            outputs.append(out)
            if not lx.accept(","):
                break
        lx.take(text="=")
        op = lx.take("word")
        if op == "constant":
            if constants is None or len(outputs) != 1 or outputs[0] not in types:
                raise lx.error("a constant belongs at the top of a graph, with its type")
            constants[outputs[0]] = _elements(lx, types[outputs[0]], weights)
            continue
        op_at = lx.tokens[lx.pos - 1][2]
        lx.take(text="(")
        inputs = _items(lx, ")", lambda: _ref(lx.take("ref")))
        attrs: dict[str, object] = {}
        if (lx.peek()[1] == "{" and op != "fused") or (op == "fused" and _attrs_follow(lx)):
            lx.take(text="{")
            attrs = dict(_items(lx, "}", lambda: _keyed_attr(lx, weights)))
        name = ""
        if lx.peek() == ("word", "loc"):
            lx.take()
            lx.take(text="(")
            name = json.loads(lx.take("string"))
            lx.take(text=")")
        if op == "fused":
            lx.take(text="{")
            attrs["body"] = tuple(_nodes(lx, types, weights, None))
        node = Node(op, tuple(inputs), tuple(outputs), make_attrs(attrs), name)
        problems = attr_problems(node)  # (an unknown op is the verifier's to report)
        if problems:
            raise lx.error("; ".join(problems), op_at)
        nodes.append(node)
    return nodes


def _attrs_follow(lx: _Lexer) -> bool:
    """After `fused(...)`: is the `{` an attribute dict (key=...) or the body?"""
    if lx.peek()[1] != "{" or lx.pos + 2 >= len(lx.tokens):
        return False
    return lx.tokens[lx.pos + 1][0] == "word" and lx.tokens[lx.pos + 2][1] == "="


def parse_graph(text: str, weights: Mapping[str, np.ndarray] | None = None,
                filename: str = "<text>") -> Graph:
    """The graph `print_graph` printed (with `weights`, the store its large constants were
    written to)."""
    lx = _Lexer(text, filename)
    weights = weights or {}
    lx.take(text="graph")
    lx.take(text="@")
    kind, name = lx.peek()
    name = json.loads(lx.take()) if kind == "string" else lx.take("word")
    types: dict[str, TensorType] = {}

    def graph_input() -> str:
        value = _ref(lx.take("ref"))
        lx.take(text=":")
        t = _type(lx)
        if t is None:
            raise lx.error(f"graph input %{value} needs its type")
        types[value] = t
        return value

    lx.take(text="(")
    inputs = _items(lx, ")", graph_input)
    lx.take(text="->")
    lx.take(text="(")
    outputs = _items(lx, ")", lambda: _ref(lx.take("ref")))
    lx.take(text="{")
    constants: dict[str, np.ndarray] = {}
    nodes = _nodes(lx, types, weights, constants)
    if lx.peek()[0] != "eof":
        raise lx.error("text after the end of the graph")
    return Graph(name, tuple(inputs), tuple(outputs), tuple(nodes), types, constants)


# ---------------------------------------------------------------- kernel level

_INFIX_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "<": "lt", "<=": "le",
              ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_LOGICAL = ("and", "or", "xor")


def _expr(lx: _Lexer, buffers: Mapping[str, Any], scope: Mapping[str, str] | None = None
          ) -> Expr:
    """An expression of the kernel or loop level (`scope`: the loop level's scalar locals
    and dims (`%n`) with their dtypes; any other name is an int64 axis or loop variable)."""
    kind, _ = lx.peek()

    def sub() -> Expr:
        return _expr(lx, buffers, scope)

    if kind == "number":
        value = _scalar(lx.take())
        if lx.accept(":"):
            return Const(lx.take("word"), value)
        return Const("int64", value)
    if kind == "ref":
        token = lx.take()
        if scope and token in scope and lx.peek()[1] != "[":  # a loop function's dim
            return Var(scope[token], token)
        name = _ref(token)
        if name not in buffers:
            lx.pos -= 1
            raise lx.error(f"unknown buffer %{name}")
        lx.take(text="[")
        indices = tuple(_items(lx, "]", sub))
        dtype = lx.take("word") if lx.accept(":") else buffers[name].dtype
        return Load(dtype, name, indices)
    if lx.accept("("):
        a = sub()
        op = _INFIX_OPS.get(lx.peek()[1])
        if op is None:
            raise lx.error(f"expected an infix operator, found {lx.peek()[1]!r}")
        lx.take()
        b = sub()
        lx.take(text=")")
        return Compare("bool", op, a, b) if op in COMPARE_OPS else Binary(a.dtype, op, a, b)
    word = lx.take("word")
    if word in ("true", "false"):
        return Const("bool", word == "true")
    if word in ("cast", "broadcast"):
        lx.take(text="<")
        dtype = lx.take("word")
        lx.take(text=">")
        lx.take(text="(")
        x = sub()
        lx.take(text=")")
        return Cast(dtype, x) if word == "cast" else Broadcast(dtype, x)
    if word.startswith("reduce_"):
        lx.take(text="[")

        def axis() -> tuple[Var, Size]:
            name = lx.take("word")
            lx.take(text="<")
            return Var("int64", name), _size_text(lx, (",", "]"))

        axes = _items(lx, "]", axis)
        lx.take(text="(")
        lx.take(text="init")
        lx.take(text="=")
        init = sub()
        lx.take(text=",")
        body = sub()
        lx.take(text=")")
        return Reduce(body.dtype, word[len("reduce_"):], tuple(a for a, _ in axes),
                      tuple(n for _, n in axes), body, init)
    if not lx.accept("("):
        return Var((scope or {}).get(word, "int64"), word)
    args = _items(lx, ")", sub)
    if word in ("select", "guarded_select") and len(args) == 3:
        return Select(args[1].dtype, args[0], args[1], args[2], word == "guarded_select")
    if word in UNARY_OPS and len(args) == 1:
        return Unary(args[0].dtype, word, args[0])
    if word in BINARY_OPS and len(args) == 2:
        dtype = "bool" if word in _LOGICAL and args[0].dtype == "bool" else args[0].dtype
        return Binary(dtype, word, args[0], args[1])
    raise lx.error(f"unknown operation {word}/{len(args)}")


def parse_kernel(text: str, filename: str = "<text>") -> Kernel:
    """The kernel `print_kernel` printed."""
    lx = _Lexer(text, filename)
    lx.take(text="kernel")
    lx.take(text="@")
    name = lx.take("word")
    lx.take(text="loc")
    lx.take(text="(")
    source = tuple(_items(lx, ")", lambda: ast.literal_eval(lx.take("string"))))
    lx.take(text="{")
    buffers: dict[str, Buffer] = {}
    stages: list[Stage] = []
    while not lx.accept("}"):
        if lx.peek()[0] == "word":
            role = lx.take("word")
            buffer = _ref(lx.take("ref"))
            lx.take(text=":")
            t = _type(lx)
            if t is None:
                raise lx.error(f"buffer %{buffer} needs a type")
            # (a static shape holds plain ints, as `static_shape` gives them)
            shape = t.static_shape() if t.is_static else tuple(t.shape)
            buffers[buffer] = Buffer(buffer, t.dtype, shape, role)
            continue
        at = lx.pos
        target = _ref(lx.take("ref"))
        if target not in buffers:
            lx.pos = at
            raise lx.error(f"stage writes unknown buffer %{target}")
        lx.take(text="[")
        axes = tuple(_items(lx, "]", lambda: Var("int64", lx.take("word"))))
        lx.take(text="=")
        stages.append(Stage(target, axes, _expr(lx, buffers)))
    if lx.peek()[0] != "eof":
        raise lx.error("text after the end of the kernel")
    return Kernel(name, tuple(buffers.values()), tuple(stages), source)


def parse_kernels(text: str, filename: str = "<text>") -> list[Kernel]:
    """Kernels as a kernel-level dump prints them (blank-line separated)."""
    return [parse_kernel(chunk, filename) for chunk in text.split("\n\n") if chunk.strip()]


# ---------------------------------------------------------------- loop level


def _body(lx: _Lexer, buffers: dict[str, Any], scope: dict[str, str]) -> tuple[Stmt, ...]:
    """Statements up to the closing brace."""
    out: list[Stmt] = []
    while not lx.accept("}"):
        kind, word = lx.peek()
        if kind == "ref":  # %buf[index] = value
            at = lx.pos
            buffer = _ref(lx.take())
            if buffer not in buffers:
                lx.pos = at
                raise lx.error(f"store to unknown buffer %{buffer}")
            lx.take(text="[")
            index = _expr(lx, buffers, scope)
            lx.take(text="]")
            lx.take(text="=")
            out.append(Store(buffer, index, _expr(lx, buffers, scope)))
            continue
        lx.take("word")
        if word == "for":
            loop_kind = "serial"
            if lx.peek()[1] in ("parallel", "vector", "unroll", "rolled"):
                loop_kind = lx.take()
            var = Var("int64", lx.take("word"))
            lx.take(text="in")
            lx.take(text="0")
            lx.take(text="..")
            extent = _extent(lx, buffers, scope)
            lx.take(text="{")
            out.append(For(var, extent, _body(lx, buffers, dict(scope)), loop_kind))
        elif word == "prefetch":
            for_write = True
            if lx.accept("("):
                lx.take(text="read")
                lx.take(text=")")
                for_write = False
            buffer = _ref(lx.take("ref"))
            lx.take(text="[")
            index = _expr(lx, buffers, scope)
            lx.take(text="]")
            out.append(Prefetch(buffer, index, for_write))
        elif word == "var":
            name = lx.take("word")
            lx.take(text=":")
            dtype = lx.take("word")
            lx.take(text="=")
            scope[name] = dtype
            out.append(Declare(Var(dtype, name), _expr(lx, buffers, scope)))
        elif word == "alloc":
            shared = lx.peek() == ("word", "shared") and bool(lx.take())
            buffer, dtype, size = _flat_buffer(lx, buffers, "alloc", scope, constant=True)
            assert isinstance(size, int)  # (_flat_buffer refuses the others)
            out.append(Allocate(buffer, dtype, size, shared))
        elif word in scope:  # name = value, or name +=~ value (a reassociable sum)
            reassociate = lx.accept("+")
            lx.take(text="=")
            if reassociate:
                lx.take(text="~")
            out.append(Assign(Var(scope[word], word), _expr(lx, buffers, scope), reassociate))
        else:
            lx.pos -= 1
            raise lx.error(f"expected a statement, found {word!r}")
    return tuple(out)


def _extent(lx: _Lexer, buffers: Mapping[str, Any], scope: Mapping[str, str]) -> Extent:
    """A loop's trip count or a buffer's element count: a number, or an int64 expression
    over the dims (and enclosing loop variables)."""
    at = lx.pos
    e = _expr(lx, buffers, scope)
    if e.dtype != "int64" or (isinstance(e, Const) and type(e.value) is not int):
        lx.pos = at
        raise lx.error(f"a size must be an int64 expression, not {format_expr(e)}")
    return int(e.value) if isinstance(e, Const) else e


def _flat_buffer(lx: _Lexer, buffers: dict[str, Any], what: str, scope: Mapping[str, str],
                 constant: bool = False) -> tuple[str, str, Extent]:
    """`%name: dtype[size]` (a parameter or an allocation), recorded in `buffers`; the size
    may be an expression over the dims in `scope` unless it must be `constant`."""
    buffer = _ref(lx.take("ref"))
    lx.take(text=":")
    if lx.peek()[0] != "word":
        raise lx.error(f"{what} %{buffer} needs a type dtype[size]")
    dtype = lx.take("word")
    lx.take(text="[")
    at = lx.pos
    size = _extent(lx, buffers, scope)
    if constant and not isinstance(size, int):
        lx.pos = at
        raise lx.error(f"{what} %{buffer} needs a constant size")
    lx.take(text="]")
    # only the dtype is read back (loads name their buffer's element type)
    buffers[buffer] = TensorType(dtype, (size if isinstance(size, int) else 0,))
    return buffer, dtype, size


def parse_function(text: str, filename: str = "<text>") -> LoopFunction:
    """The loop function `print_function` printed."""
    lx = _Lexer(text, filename)
    lx.take(text="func")
    lx.take(text="@")
    name = lx.take("word")
    buffers: dict[str, Any] = {}
    dims: list[Var] = []
    if lx.accept("["):  # run-time sizes: func @f[%n, %m](...)
        dims = _items(lx, "]", lambda: Var("int64", lx.take("ref")))
    scope = {d.name: d.dtype for d in dims}

    def param() -> Param:
        return Param(*_flat_buffer(lx, buffers, "parameter", scope))

    lx.take(text="(")
    params = tuple(_items(lx, ")", param))
    lx.take(text="loc")
    lx.take(text="(")
    source = tuple(_items(lx, ")", lambda: ast.literal_eval(lx.take("string"))))
    aliased: tuple[str, ...] = ()
    if lx.peek() == ("word", "aliased"):
        lx.take()
        lx.take(text="(")
        aliased = tuple(_items(lx, ")", lambda: _ref(lx.take("ref"))))
    lx.take(text="{")
    body = _body(lx, buffers, dict(scope))
    if lx.peek()[0] != "eof":
        raise lx.error("text after the end of the function")
    return LoopFunction(name, params, body, source, aliased, tuple(dims))


def parse_functions(text: str, filename: str = "<text>") -> list[LoopFunction]:
    """Loop functions as a loop-level dump prints them (blank-line separated)."""
    return [parse_function(chunk, filename) for chunk in text.split("\n\n") if chunk.strip()]

"""One declaration per op: every op of the graph dialect has its attribute schema (typed,
with defaults), shape rule, reference and lowering in one `declare_op`; a misspelt attribute
is an error wherever it appears (a model, a pass, a rule's read), never a silent default."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import strataml
from strataml.errors import ModelLoadError, UnsupportedOpError, VerifyError
from strataml.frontends.onnx import import_model
from strataml.ir.dialects.graph import OPS, Attr, declare_op, get_op, verify_graph
from strataml.ir.parse import ParseError, parse_graph
from strataml.options import CompileOptions
from tests.unit.graphs import graph, node, onnx_model

SRC = Path(strataml.__file__).parent
# Ops with no lowering because they never reach a kernel (see test_structure.ALWAYS_FOLDED).
ALWAYS_FOLDED = frozenset({"Shape", "Size"})


def test_every_op_is_declared_whole():
    get_op("Add")  # loads the declarations
    assert len(OPS) > 100
    for name, opdef in OPS.items():
        assert opdef.attrs is not None, f"{name} declares no attribute schema"
        assert (opdef.lower is None) == (name in ALWAYS_FOLDED), name


def test_declarations_live_in_one_package_and_ops_are_declared_once():
    """The only `declare_op` calls are under strataml/ops, and the old registries are gone:
    adding an op touches its converter and its one declaration."""
    callers = set()
    for path in SRC.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "declare_op":
                callers.add(path.relative_to(SRC).parts[0])
    assert callers == {"ops"}
    with pytest.raises(ValueError, match="declared twice"):
        declare_op("Relu", "elementwise", infer=get_op("Relu").infer,
                   reference=get_op("Relu").reference, lower=None)


def test_no_attribute_read_restates_a_default():
    """`node.attr("alpha", 0.01)` would write a default a second time: reads take the key
    only, and the declaration holds the default."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and n.func.attr == "attr" and len(n.args) + len(n.keywords) > 1):
                offenders.append(f"{path.relative_to(SRC)}:{n.lineno}")
    assert not offenders


def test_a_declared_default_is_read_and_a_misspelt_name_is_an_error():
    leaky = node("LeakyRelu", ["x"], "y")
    assert leaky.attr("alpha") == pytest.approx(0.01)
    assert node("LeakyRelu", ["x"], "y", alpha=0.2).attr("alpha") == 0.2
    with pytest.raises(VerifyError, match="LeakyRelu declares no attribute 'alpah'"):
        leaky.attr("alpah")
    with pytest.raises(VerifyError, match="required attribute 'perm'"):
        node("Transpose", ["x"], "y").attr("perm")


@pytest.mark.parametrize(("attrs", "message"), [
    ({"alpah": 0.2}, "unknown attribute 'alpah'"),
    ({"alpha": "big"}, "attribute 'alpha' = 'big' is not of kind float"),
])
def test_the_verifier_checks_attributes_against_the_declaration(attrs, message):
    g = graph({"x": ("float32", (4,))}, [node("LeakyRelu", ["x"], "y")], ["y"])
    bad = g.with_nodes([node("LeakyRelu", ["x"], "y", **attrs)])
    with pytest.raises(VerifyError, match=message):
        verify_graph(bad)


def test_a_missing_required_attribute_fails_verification():
    g = graph({"x": ("float32", (2, 3))}, [node("Transpose", ["x"], "y", perm=(1, 0))], ["y"])
    with pytest.raises(VerifyError, match="required attribute 'perm' is missing"):
        verify_graph(g.with_nodes([node("Transpose", ["x"], "y")]))


def test_a_choice_attribute_takes_only_its_values():
    spec = Attr("str", None, choices=("a", "b"))
    assert spec.accepts("a")
    assert spec.accepts(None)
    assert not spec.accepts("c")


@pytest.mark.parametrize(("attribute", "message"), [
    (helper.make_attribute("alpah", 0.2), "alpah"),
    (helper.make_attribute("alpha", "steep"), "alpha"),
])
def test_a_misspelt_or_malformed_onnx_attribute_names_the_node_and_attribute(attribute,
                                                                            message):
    model = onnx_model([helper.make_node("LeakyRelu", ["x"], ["y"], name="act")],
                       {"x": ("float32", [4])}, {"y": ("float32", [4])})
    model.graph.node[0].attribute.append(attribute)
    with pytest.raises(ModelLoadError, match=rf"(?s){message}.*act|act.*{message}"):
        import_model(model, CompileOptions())


def test_an_attribute_onnx_has_but_the_dialect_does_not_is_reported_not_dropped(monkeypatch):
    """A pass-through op takes exactly the attributes its declaration lists: one the
    dialect lacks (here: a declaration without Gemm's transB) is an unsupported attribute
    naming the node, not a silently ignored one."""
    gemm = get_op("Gemm")
    fewer = {k: v for k, v in gemm.attrs.items() if k != "transB"}
    monkeypatch.setitem(OPS, "Gemm", replace(gemm, attrs=fewer))
    model = onnx_model([helper.make_node("Gemm", ["a", "b"], ["y"], name="fc", transB=1)],
                       {"a": ("float32", [2, 3]), "b": ("float32", [4, 3])},
                       {"y": ("float32", [2, 4])})
    with pytest.raises(UnsupportedOpError, match=r"Gemm node 'fc'.*transB"):
        import_model(model, CompileOptions())


def test_graph_text_with_a_misspelt_attribute_fails_to_parse_at_the_node():
    text = ("graph @g(%x: float32[4]) -> (%y) {\n"
            "  %y: float32[4] = LeakyRelu(%x) {alpah=0.2}\n}")
    with pytest.raises(ParseError, match=r"^m\.mlir:2:20: .*unknown attribute 'alpah'"):
        parse_graph(text, {}, "m.mlir")


def test_a_pass_through_op_keeps_its_onnx_attributes():
    model = onnx_model([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.5, beta=0.25)],
                       {"x": ("float32", [5])}, {"y": ("float32", [5])})
    compiled = strataml.compile(model)
    x = np.linspace(-3, 3, 5, dtype=np.float32)
    (got,) = compiled.run({"x": x})
    np.testing.assert_allclose(got, np.clip(0.5 * x + 0.25, 0, 1), rtol=1e-6)
    assert onnx.checker.check_model(model) is None

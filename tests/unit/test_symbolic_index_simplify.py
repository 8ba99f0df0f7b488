"""Index arithmetic over run-time dims simplified with bounds that are sizes
(`ir/symbolic_index_simplify.py`, `ir/size_bounds.py`): each rewrite is checked to fire where
the bounds prove it and to stay where they do not, and every result is evaluated against the
original expression at many points of its range."""

from __future__ import annotations

import itertools

import pytest

from strataml.ir.expr import (
    Binary,
    Compare,
    Const,
    Expr,
    Select,
    Var,
    binary,
    compare,
    idx,
    maximum,
    minimum,
    select,
)
from strataml.ir.size_bounds import size_bounds
from strataml.ir.symbolic_index_simplify import condition_facts, simplify_sized
from strataml.sizes import dim

ROW = Var("int64", "i")
J = Var("int64", "j")
BATCH = Var("int64", "%batch")
B = dim("batch")


def _value(e: Expr, values: dict[str, int]) -> int | bool:
    """The expression's value by Python arithmetic (an independent reference)."""
    if isinstance(e, Const):
        return e.value  # type: ignore[return-value]
    if isinstance(e, Var):
        return values[e.name]
    if isinstance(e, Select):
        return _value(e.a, values) if _value(e.cond, values) else _value(e.b, values)
    a, b = _value(e.a, values), _value(e.b, values)  # type: ignore[attr-defined]
    ops = {"add": a + b, "sub": a - b, "mul": a * b, "min": min(a, b), "max": max(a, b),
           "and": a and b, "or": a or b}
    if isinstance(e, Compare):
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[e.op]
    assert isinstance(e, Binary)
    if e.op == "floordiv":
        return a // b
    if e.op == "mod":
        return a % b
    return ops[e.op]


def _agrees(before: Expr, after: Expr, batches: tuple[int, ...] = (1, 2, 3, 5)) -> None:
    for n in batches:
        for i, j in itertools.product(range(64 * n), range(56)):
            if i % 7 and j % 5:
                continue  # (a sample of the points: the checks stay fast)
            values = {"i": i, "j": j, "%batch": n}
            assert _value(before, values) == _value(after, values), (n, i, j)


ENV = {ROW: (0, 64 * B - 1), J: (0, 55)}


def test_a_remainder_by_the_batch_of_a_window_row_goes() -> None:
    window = binary("floordiv", ROW, idx(64))
    e = binary("mod", window, BATCH)
    out = simplify_sized(e, ENV)
    assert out == window
    _agrees(e, out)
    assert size_bounds(window, ENV) == (0, B - 1)


def test_a_remainder_the_bounds_cannot_decide_stays() -> None:
    e = binary("mod", binary("floordiv", ROW, idx(32)), BATCH)  # (up to 2*batch - 1)
    assert simplify_sized(e, ENV) == e


def test_clamps_and_comparisons_the_bounds_decide() -> None:
    window = binary("floordiv", ROW, idx(64))
    clamp = minimum(maximum(window, 0), binary("sub", BATCH, 1))
    assert simplify_sized(clamp, ENV) == window
    assert simplify_sized(compare("lt", window, BATCH), ENV) == Const("bool", True)
    undecided = compare("lt", binary("floordiv", ROW, idx(32)), BATCH)
    assert simplify_sized(undecided, ENV) == undecided
    _agrees(clamp, window)


def test_a_select_s_arms_know_its_condition() -> None:
    # a roll by 4 within rows of 7, spelt as two slices: j < 3 wraps
    e = select(compare("lt", J, idx(3)), binary("mod", binary("add", J, idx(4)), idx(7)),
               binary("mod", binary("sub", J, idx(3)), idx(7)))
    out = simplify_sized(e, ENV)
    assert out.a == binary("add", J, idx(4))  # type: ignore[attr-defined]
    assert out.b.op == "mod"  # type: ignore[attr-defined]  (j - 3 reaches 52: it stays)
    _agrees(e, out)


@pytest.mark.parametrize("holds", [True, False])
def test_condition_facts_bound_affine_forms(holds: bool) -> None:
    form = binary("add", binary("mul", binary("mod", ROW, idx(8)), idx(7)), J)
    cond = compare("lt", binary("add", form, idx(3)), idx(56))
    (t, lo, hi), = condition_facts(cond, holds)
    assert _value(t, {"i": 13, "j": 4, "%batch": 1}) == _value(form, {"i": 13, "j": 4,
                                                                       "%batch": 1})
    assert (lo, hi) == ((None, 52) if holds else (53, None))
    # against the run-time size: `i < %batch` gives i <= batch - 1
    (t2, lo2, hi2), = condition_facts(compare("lt", ROW, BATCH), True)
    assert (t2, lo2, hi2) == (ROW, None, B - 1)


SEQ = Var("int64", "%seq")
S = dim("seq")


def test_rows_of_batch_times_seq_split_by_seq_and_flattened_back() -> None:
    """A reshape of `[batch*seq]` rows into (sample, token) and back: the token's remainder
    and the sample's quotient recombine to the row; a multiple of %seq leaves the division."""
    row, d = Var("int64", "r"), Var("int64", "d")
    env = {row: (0, B * S - 1), d: (0, 63)}
    sample = binary("mod", binary("floordiv", row, SEQ), BATCH)
    flat = binary("add", binary("mul", sample, SEQ), binary("mod", row, SEQ))
    assert simplify_sized(flat, env) == row
    assert size_bounds(binary("floordiv", row, SEQ), env) == (0, B - 1)
    # (d*seq + t) // seq is d, and its remainder t, for a token t below seq
    t = Var("int64", "t")
    env2 = {t: (0, S - 1), d: (0, 63)}
    x = binary("add", binary("mul", d, SEQ), t)
    assert simplify_sized(binary("floordiv", x, SEQ), env2) == d
    assert simplify_sized(binary("mod", x, SEQ), env2) == t
    # not below seq: kept
    y = binary("add", binary("mul", d, SEQ), binary("add", t, idx(1)))
    assert simplify_sized(binary("floordiv", y, SEQ), env2).op == "floordiv"  # type: ignore[attr-defined]

"""The first call at a new size is cheap: its layout comes from one compiled program of all
the plan's formulas (`runtime/size_program.py`, built when the model loads, not by its first
call), never from walking the formulas (`sizes.evaluate`), and no arena is allocated within
the ranges (reserved once, its pages faulted in off the call's path, `runtime/prefault.py`,
and kept warm, `runtime/keep_warm.py`). Counted, not timed."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strataml
import strataml.runtime.dims
import strataml.sizes
from strataml.runtime import keep_warm
from strataml.runtime.prefault import populate, warm_heap
from strataml.runtime.size_program import SizeProgram
from strataml.sizes import Size, ceildiv, dim, evaluate, floordiv, mod, size_max, size_min
from tests.conftest import ort_run
from tests.unit.test_dynamic_compile import attention

RTOL, ATOL = 1e-3, 1e-4


def test_a_first_call_at_a_new_size_does_not_re_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    model = attention()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=1,
                                dim_ranges={"batch": (1, 4), "seq": (1, 48)})
    executor = compiled._executor
    binder = executor._dims
    arena = executor._arena
    # (the outputs y [batch, seq, 32] and p [batch, 4, seq, seq] at the ranges' top: the
    # heap warmed at load for them)
    assert binder.largest_outputs_bytes() == (4 * 48 * 32 + 4 * 4 * 48 * 48) * 4
    walks: list[int] = []
    real = strataml.sizes.evaluate

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        walks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(strataml.sizes, "evaluate", counting)
    monkeypatch.setattr(strataml.runtime.dims, "evaluate", counting)
    built: list[int] = []

    class CountingProgram(SizeProgram):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(strataml.runtime.dims, "SizeProgram", CountingProgram)
    gen = np.random.default_rng(3)
    sizes = [(1, 5), (2, 17), (4, 48), (3, 1), (2, 17), (1, 5)]
    for k, (batch, seq) in enumerate(sizes):
        before = binder.layouts_evaluated
        feeds = {"x": gen.standard_normal((batch, seq, 32)).astype(np.float32)}
        got = compiled.run(feeds)
        for g, w in zip(got, ort_run(model, feeds), strict=True):
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
        new = (batch, seq) not in sizes[:k]
        assert binder.layouts_evaluated - before == (1 if new else 0)
        assert executor._arena is arena  # reserved once, at the ranges' upper bounds
    assert walks == []  # every layout from the compiled program
    assert built == []  # (built at load, before the first call)


def _combine(op: str, x: Size, y: Size, c: int) -> Size:
    if op == "+":
        return x + y * c
    if op == "*":
        return x * y
    if op in ("//", "%", "ceil"):
        return {"//": floordiv, "%": mod, "ceil": ceildiv}[op](x, c)
    return (size_min if op == "min" else size_max)(x, y)


def _random_size(draw: st.DrawFn) -> Size:
    a, b = dim("a"), dim("b")
    leaves = st.sampled_from([a, b, a * b, a + 3, 2 * b + 1, a * a])
    x = draw(leaves)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["+", "*", "//", "%", "ceil", "min", "max"]))
        x = _combine(op, x, draw(leaves), draw(st.integers(1, 64)))
    return x


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.composite(_random_size)(), min_size=1, max_size=6),
       a=st.integers(1, 300), b=st.integers(1, 300))
def test_the_size_program_agrees_with_evaluate(sizes: list, a: int, b: int) -> None:
    program = SizeProgram([*sizes, 7], ("a", "b"), bounded=[0, len(sizes)])
    got = program(a, b)
    want = [evaluate(s, {"a": a, "b": b}) for s in sizes] + [7]
    assert list(got[:-2]) == want
    assert got[-2:] == (min(want[0], 7), max(want[0], 7))


def test_a_size_program_refuses_a_dim_it_is_not_given() -> None:
    with pytest.raises(KeyError, match="c"):
        SizeProgram([dim("a") + dim("c")], ("a",))


def test_prefault_populates_without_writing() -> None:
    buffer = np.full(3 << 20, 7, np.uint8)
    populate(buffer)  # (False on a kernel without MADV_POPULATE_WRITE: nothing happens)
    assert (buffer == 7).all()
    warm_heap(1 << 20)  # (best effort: only that it runs)


def _kept(buffer: np.ndarray) -> bool:
    return any(b is buffer for b in keep_warm.registered())


def test_a_dynamic_model_keeps_its_arena_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arena a size will use is touched each pass (read only), so no first call at a
    new size finds a region gone cold at the host; the model dropped, it is forgotten."""
    monkeypatch.setenv("STRATAML_KEEP_WARM", "1")
    compiled = strataml.compile(attention(), dynamic_dims=True, num_threads=1,
                                dim_ranges={"batch": (1, 4), "seq": (1, 512)})
    executor = compiled._executor
    if executor._prefault is not None:
        executor._prefault.join()
    arena = executor._arena
    assert arena.nbytes >= 2 * keep_warm.REGION_BYTES  # (p alone: 4 x 4 x 512 x 512 floats)
    assert _kept(arena)
    assert not _kept(executor._weights)  # (three 32 x 32 matrices: less than a region)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 9, 32)).astype(np.float32)}
    want = compiled.run(feeds)
    before = arena.copy()
    keep_warm.warm_pass()
    np.testing.assert_array_equal(arena, before)  # (read, never written)
    for g, w in zip(compiled.run(feeds), want, strict=True):
        np.testing.assert_array_equal(g, w)
    dropped = weakref.ref(arena)
    del compiled, executor, arena
    gc.collect()
    keep_warm.warm_pass()
    assert dropped() is None  # (the keeper holds no model's memory)


def test_a_pass_reads_a_byte_in_each_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATAML_KEEP_WARM", "1")
    buffer = np.zeros(5 * keep_warm.REGION_BYTES + 3, np.uint8)
    assert keep_warm.keep_warm(buffer)
    assert not keep_warm.keep_warm(np.zeros(keep_warm.REGION_BYTES - 1, np.uint8))
    start = buffer.ctypes.data
    assert list(keep_warm.regions(buffer)) == [start + k * keep_warm.REGION_BYTES
                                               for k in range(6)]
    keep_warm.touch(buffer)
    dropped = weakref.ref(buffer)
    del buffer
    gc.collect()
    assert keep_warm.warm_pass() == len(keep_warm.registered())
    assert dropped() is None


def test_keeping_warm_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATAML_KEEP_WARM", raising=False)
    compiled = strataml.compile(attention(), dynamic_dims=True, num_threads=1,
                                dim_ranges={"batch": (1, 4), "seq": (1, 512)})
    assert not _kept(compiled._executor._arena)

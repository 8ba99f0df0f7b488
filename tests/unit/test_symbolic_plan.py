"""Plans over run-time sizes: the memory plan's offsets as formulas over the dims, an entry
that computes them from the dims table, and the executor that binds the dims from the
inputs' shapes, grows its arena and passes the table. Built by hand from symbolic loop
functions (the kernel lowering does not make them yet), compiled natively, run at several
sizes against numpy, saved and loaded; static plans serialise exactly as before."""

from __future__ import annotations

import ctypes
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from llvmlite import ir

from strataml.codegen.link import host_linker, model_library, runtime_library
from strataml.codegen.llvm import build_module, compile_module
from strataml.codegen.sizes import SizeEmitter
from strataml.errors import ArtifactError, CodegenError, InputError
from strataml.ir.dialects.loop import (
    Assign,
    Declare,
    For,
    LoopFunction,
    Param,
    Store,
    dim,
    verify_function,
)
from strataml.ir.expr import Const, Expr, Load, Var, maximum, var
from strataml.options import host_target
from strataml.passes.lower import memory_plan
from strataml.passes.lower.memory_plan import Interval, SymbolicArenaAllocator, plan_arena
from strataml.runtime import artifact
from strataml.runtime.artifact import load_artifact, save_artifact
from strataml.runtime.devices.cpu import CpuDevice
from strataml.runtime.executor import Executor
from strataml.runtime.hal import (
    Executable,
    ExecutionPlan,
    KernelCall,
    TensorSlot,
    contract_digest,
    required_features,
)
from strataml.sizes import Size, evaluate, is_symbolic, parse_size
from strataml.sizes import dim as size_dim

F32 = "float32"
N, M = dim("n"), dim("m")  # loop-level dims (Var int64 %n)
n, m = size_dim("n"), size_dim("m")  # the same dims as sizes
i, r, c = var("i"), var("r"), var("c")
COLS = 16
EMPTY_SHA = hashlib.sha256(b"").hexdigest()  # (the weights blob of a plan without weights)


# ---------------------------------------------------------------- the model, by hand


def _map(name: str, extent: Expr, dims: tuple[Var, ...], op) -> LoopFunction:
    """b[i] = op(a[i]) for i in 0..extent."""
    store = Store("b", i, op(Load(F32, "a", (i,))))
    return LoopFunction(name, (Param("a", F32, extent), Param("b", F32, extent)),
                        (For(i, extent, (store,)),), (name,), dims=dims)


def _row_sum() -> LoopFunction:
    """s[r] = sum(u[r, :]) + w[r] over %n rows of 16."""
    acc = Var(F32, "acc")
    body = (Declare(acc, Load(F32, "w", (r,))),
            For(c, COLS, (Assign(acc, acc + Load(F32, "u", (r * COLS + c,)), True),)),
            Store("s", r, acc))
    return LoopFunction("row_sum", (Param("u", F32, N * COLS), Param("w", F32, N),
                                    Param("s", F32, N)),
                        (For(r, N, body, "parallel"),), ("row_sum",), dims=(N,))


def functions() -> list[LoopFunction]:
    fns = [_map("scale", N * COLS, (N,), lambda x: x * 2.0),
           _map("relu_add", N * COLS, (N,), lambda x: maximum(x, Const(F32, 0.0)) + 1.0),
           _row_sum(),
           _map("half", N, (N,), lambda x: x * 0.5),
           _map("triple", M, (M,), lambda x: x * 3.0),
           _map("add_one", M, (M,), lambda x: x + 1.0)]
    for fn in fns:
        verify_function(fn)
    return fns


# inputs x [n, 16], w [n], b [m] (io 0-2); outputs y [n], z [m] (io 3, 4) and u [n, 16],
# which stays in the arena and is copied out. Arena buffers: t = 2x and u = relu(t) + 1
# (n*16 floats each), s = rowsum(u) + w (n floats: fits t's bytes once t is dead), p = 3b
# (m floats: no size of n is provably as large, unless the ranges say so).
def intervals() -> list[Interval]:
    return [Interval("t", n * COLS * 4, 0, 1), Interval("u", n * COLS * 4, 1, 5),
            Interval("s", n * 4, 2, 3), Interval("p", m * 4, 4, 5)]


def build_plan(ranges: dict[str, tuple[int, int]] | None = None
               ) -> tuple[ExecutionPlan, dict[str, Size]]:
    offsets, arena = plan_arena(intervals(), 6, ranges)
    dims = ("n", "m")
    n_at, m_at = dims.index("n"), dims.index("m")

    def arena_at(name: str) -> tuple[int, Size]:
        return (0, offsets[name])

    calls = (KernelCall("scale", "scale", ((2, 0), arena_at("t")), (n_at,)),
             KernelCall("relu_add", "relu_add", (arena_at("t"), arena_at("u")), (n_at,)),
             KernelCall("row_sum", "row_sum", (arena_at("u"), (2, 1), arena_at("s")), (n_at,)),
             KernelCall("half", "half", (arena_at("s"), (2, 3)), (n_at,)),
             KernelCall("triple", "triple", ((2, 2), arena_at("p")), (m_at,)),
             KernelCall("add_one", "add_one", (arena_at("p"), (2, 4)), (m_at,)))
    plan = ExecutionPlan(
        entry="strataml_entry", arena_bytes=arena, weights_bytes=0,
        inputs=(TensorSlot("x", F32, (n, COLS), "io", 0), TensorSlot("w", F32, (n,), "io", 1),
                TensorSlot("b", F32, (m,), "io", 2)),
        outputs=(TensorSlot("y", F32, (n,), "io", 3), TensorSlot("z", F32, (m,), "io", 4),
                 TensorSlot("u", F32, (n, COLS), "arena", offsets["u"])),
        weights=(), kernels=tuple(call.kernel for call in calls), calls=calls,
        num_threads=2, dims=dims,
        dim_ranges=tuple((d, lo, hi) for d, (lo, hi) in (ranges or {}).items()))
    return plan, offsets


def compile_plan(plan: ExecutionPlan, shared: bool = False) -> Executable:
    """Object code for the plan, its contract embedded as the compiler embeds it; `shared`:
    linked into a shared library, as `link-shared` does where a C compiler is."""
    triple = host_target().triple
    features = required_features(host_target().features)
    digest = contract_digest(plan, triple, features, EMPTY_SHA)
    module = build_module(functions(), plan.calls, plan.entry, contract=digest,
                          dims=plan.dims)
    obj, _ = compile_module(module, host_target())
    if not shared:
        return Executable("object", triple, obj, features)
    cc = host_linker()
    if cc is None:
        pytest.skip("no C compiler to link a shared library with")
    return Executable("shared-object", triple, model_library(obj, (), cc), features,
                      runtime_library(triple, features, cc))


def feeds(rng: np.random.Generator, rows: int, count: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((rows, COLS)).astype(F32),
            "w": rng.standard_normal(rows).astype(F32),
            "b": rng.standard_normal(count).astype(F32)}


def expected(f: dict[str, np.ndarray]) -> list[np.ndarray]:
    u = np.maximum(f["x"] * 2, 0) + 1
    return [(u.sum(axis=1) + f["w"]) * 0.5, f["b"] * 3 + 1, u]


def check(got: list[np.ndarray], f: dict[str, np.ndarray]) -> None:
    want = expected(f)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def plan() -> ExecutionPlan:
    return build_plan()[0]


@pytest.fixture(scope="module")
def executable(plan) -> Executable:
    return compile_plan(plan)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(5)


# ---------------------------------------------------------------- the memory plan


def test_offsets_are_formulas_and_reuse_only_what_is_proven_large_enough(monkeypatch):
    # (with every dim ranged the plan is made at the upper bounds, below; forced to formulas
    # here to check the proofs of reuse under ranges)
    monkeypatch.setattr(memory_plan, "BOUNDED_PLAN_MAX_BYTES", 0)
    _, offsets = build_plan()
    aligned_s = 64 * ((4 * n + 63) // 64)  # (the planner aligns every buffer to 64 bytes)
    assert offsets == {"t": 0, "u": 64 * n, "s": 0, "p": 128 * n}  # s in t's dead bytes
    plan = build_plan()[0]
    assert plan.arena_bytes == 128 * n + 64 * ((4 * m + 63) // 64)
    assert evaluate(aligned_s, {"n": 17}) == 128
    # n <= 100, m <= 16: 4*m bytes <= 64 <= 64*n, so p takes the dead bytes of t and s too
    _, ranged = build_plan({"n": (1, 100), "m": (1, 16)})
    assert ranged["p"] == 0
    assert build_plan({"n": (1, 100), "m": (1, 16)})[0].arena_bytes == 128 * n
    # ... but not when m may reach 17 (68 bytes > 64 at n = 1)
    assert build_plan({"n": (1, 100), "m": (1, 17)})[1]["p"] == 128 * n


def test_with_every_dim_ranged_the_plan_may_be_static_at_the_upper_bounds(monkeypatch):
    """Formulas are kept where they take at most FORMULA_PLAN_SLACK times the plan at the
    ranges' upper bounds (here 12928 bytes at most against 12800); past it, each buffer gets
    the most bytes it takes over the ranges: integer offsets, the static first-fit's reuse,
    and an arena no larger than the formula plan's at its largest."""
    ranges = {"n": (1, 100), "m": (1, 17)}
    assert is_symbolic(build_plan(ranges)[0].arena_bytes)
    monkeypatch.setattr(memory_plan, "FORMULA_PLAN_SLACK", 1.0)
    plan, offsets = build_plan(ranges)
    assert all(isinstance(o, int) for o in offsets.values())
    # t, u: 64*n bytes each (6400 at n = 100); s (4*n) and then p (4*m <= 68) reuse t's
    assert offsets == {"t": 0, "u": 6400, "s": 0, "p": 0}
    assert plan.arena_bytes == 12800
    formulas = build_plan({"n": (1, 100)})[0].arena_bytes  # m unranged: formulas
    assert is_symbolic(formulas)
    assert plan.arena_bytes <= evaluate(formulas, {"n": 100, "m": 17})


def test_a_static_plan_is_planned_as_before():
    """Integer sizes take the static first-fit (its offsets are ints, its top aligned)."""
    offsets, top = plan_arena([Interval("a", 100, 0, 1), Interval("b", 50, 1, 2),
                               Interval("c", 100, 2, 3)], 4)
    assert (offsets, top) == ({"a": 0, "b": 128, "c": 0}, 192)
    assert all(type(v) is int for v in offsets.values())


def test_symbolic_plan_never_overlaps_live_buffers():
    """Random lifetimes and sizes over two dims, evaluated at many sizes: two buffers live
    at one step never share a byte, and every buffer lies inside the arena."""
    rng = np.random.default_rng(11)
    shapes: list[Size] = [n * 4, n * 64, m * 4, n * m * 4, 100, 4 * n + 8, 2 * m + 3]
    for _ in range(60):
        count = int(rng.integers(1, 9))
        ivs = []
        for k in range(count):
            start = int(rng.integers(0, 6))
            ivs.append(Interval(f"v{k}", shapes[int(rng.integers(len(shapes)))], start,
                                start + int(rng.integers(0, 3))))
        offsets, arena = plan_arena(ivs, 9)
        for values in ({"n": 1, "m": 1}, {"n": 3, "m": 50}, {"n": 97, "m": 2},
                       {"n": 1000, "m": 1000}):
            total = evaluate(arena, values)
            spans = {iv.name: (evaluate(offsets[iv.name], values),
                               evaluate(offsets[iv.name], values)
                               + max(evaluate(iv.size, values), 1)) for iv in ivs}
            for iv in ivs:
                lo, hi = spans[iv.name]
                assert 0 <= lo <= hi <= total
                assert lo % 64 == 0
                for other in ivs:
                    if other is iv or other.start > iv.end or iv.start > other.end:
                        continue
                    olo, ohi = spans[other.name]
                    assert hi <= olo or ohi <= lo, (ivs, values)


def test_the_allocator_merges_freed_neighbours():
    alloc = SymbolicArenaAllocator()
    a, b = alloc.alloc(n * 64), alloc.alloc(m * 64)
    alloc.release(a, n * 64)
    alloc.release(b, m * 64)
    assert alloc.free == [(0, 64 * n + 64 * m)]
    assert alloc.alloc(n * 64 + 4) == 0  # (fits the merged block)


# ---------------------------------------------------------------- running it


@pytest.mark.parametrize("shared", [False, True], ids=["object", "shared-object"])
def test_runs_at_each_size_against_numpy_and_reuses_the_arena(plan, shared, rng):
    executable = compile_plan(plan, shared)
    ex = Executor(plan, executable, {}, CpuDevice(), num_threads=2)
    arenas = []
    for rows, count in [(1, 1), (3, 5), (17, 2), (100, 9), (3, 5)]:
        f = feeds(rng, rows, count)
        check(ex.run(f), f)
        arenas.append(ex._arena)
        assert ex._arena.nbytes >= evaluate(plan.arena_bytes, {"n": rows, "m": count})
    # grown for 3, 17 and 100 rows; the last call (3 rows) reuses the arena of 100
    assert arenas[4] is arenas[3]
    assert arenas[2] is not arenas[1]


def test_out_arrays_at_the_bound_shapes(plan, executable, rng):
    ex = Executor(plan, executable, {}, CpuDevice())
    f = feeds(rng, 7, 4)
    out = [np.empty(7, F32), np.empty(4, F32), np.empty((7, COLS), F32)]
    got = ex.run(f, out=out)
    assert all(g is o for g, o in zip(got, out, strict=True))
    check(got, f)
    with pytest.raises(InputError, match=r"out\[1\] \(output 'z'\) is a float32 array of "
                                         r"shape \[5\], the model writes .* shape \[4\]"):
        ex.run(f, out=[np.empty(7, F32), np.empty(5, F32), np.empty((7, COLS), F32)])


def test_run_async_carries_its_sizes(plan, executable, rng):
    ex = Executor(plan, executable, {}, CpuDevice())
    fs = [feeds(rng, rows, count) for rows, count in [(5, 3), (40, 1), (2, 8)]]
    futures = [ex.run_async(f) for f in fs]
    for future, f in zip(futures, fs, strict=True):
        check(future.result(), f)


@pytest.mark.parametrize(("shapes", "message"), [
    ({"x": (3, COLS), "w": (4,), "b": (2,)},
     r"input 'w': axis 0 \(dim 'n'\) is 4, but input 'x' axis 0 gave n = 3: inputs sharing "
     r"a dim must agree"),
    ({"x": (3, 15), "w": (3,), "b": (2,)}, r"input 'x': axis 1 must be 16, got 15"),
    ({"x": (3, COLS), "w": (3,), "b": (0,)},
     r"input 'b': axis 0 \(dim 'm'\) is 0, outside its range \[1, 2147483647\]"),
    ({"x": (3,), "w": (3,), "b": (2,)},
     r"input 'x' has rank 1 \[3\], the model expects rank 2 \[n, 16\]"),
])
def test_bad_shapes_are_named_before_native_code_runs(plan, executable, shapes, message):
    ex = Executor(plan, executable, {}, CpuDevice())
    bad = {k: np.zeros(s, F32) for k, s in shapes.items()}
    with pytest.raises(InputError, match=message):
        ex.run(bad)
    assert ex._arena.nbytes <= 1  # (nothing was bound, so nothing was allocated)


def test_ranges_are_checked_per_call(rng):
    plan, _ = build_plan({"n": (1, 100), "m": (1, 16)})
    ex = Executor(plan, compile_plan(plan), {}, CpuDevice())
    f = feeds(rng, 100, 16)
    check(ex.run(f), f)
    with pytest.raises(InputError, match=r"input 'x': axis 0 \(dim 'n'\) is 101, outside "
                                         r"its range \[1, 100\]"):
        ex.run(feeds(rng, 101, 16))
    with pytest.raises(InputError, match=r"dim 'm'\) is 17, outside its range \[1, 16\]"):
        ex.run(feeds(rng, 3, 17))


def test_timeline_passes_each_calls_dims(plan, executable, rng):
    ex = Executor(plan, executable, {}, CpuDevice())
    f = feeds(rng, 17, 5)
    spans = ex.timeline(f, repeats=2)
    assert [s[0] for s in spans] == list(plan.kernels) * 2
    # p = 3b lies in the arena at its formula's offset for these sizes
    _, offsets = build_plan()
    at = evaluate(offsets["p"], {"n": 17, "m": 5})
    p = ex._arena[at:at + 5 * 4].view(np.float32)
    np.testing.assert_allclose(p, f["b"] * 3, rtol=1e-6)
    assert [name for name, _ in ex.profile(f, repeats=1)] == list(plan.kernels)


# ---------------------------------------------------------------- the entry


def test_the_entry_computes_symbolic_offsets_from_the_dims_table(plan):
    text = str(build_module(functions(), plan.calls, plan.entry, dims=plan.dims))
    entry = text[text.index(f'define void @"{plan.entry}"'):]
    assert entry.count("i8*") >= 4  # (the fourth argument: the dims table)
    assert "mul i64" in entry  # p at 128*n
    with pytest.raises(CodegenError, match=r"plan step scale: offset .* is a run-time size, "
                                           r"but the plan has no dims table"):
        build_module(functions(), (KernelCall("scale", "scale", ((2, 0), (0, n * 64)),
                                              (0,)),), "e")
    with pytest.raises(CodegenError, match=r"reads dim 'm', which is not in the plan's dims "
                                           r"table \['n'\]"):
        build_module(functions(), (KernelCall("scale", "scale", ((2, 0), (0, m * 64)),
                                              (0,)),), "e", dims=("n",))


FORMULAS: list[Size] = [128 * n + 64 * ((4 * m + 63) // 64), (n - 5) // 4, (n - 5) % 4,
                        parse_size("min(n, 7)"), parse_size("max(2*n, m + 9)"), n * n * m - 3,
                        parse_size("mod(3*n - 20, 8) + (m - 40)//16*n")]


def test_size_formulas_in_code_evaluate_as_the_size_algebra_does():
    """Each atom the entry may meet (floor division and mod of negative values, min, max,
    powers) computed by the emitted code against `evaluate`."""
    module = ir.Module(name="sizes")
    i64p = ir.PointerType(ir.IntType(64))
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64p, i64p]), name="sizes")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    table, out = fn.args
    emit = SizeEmitter(b, lambda name: b.load(b.gep(table, [ir.Constant(ir.IntType(64),
                                                                        ("n", "m").index(name))])))
    for k, size in enumerate(FORMULAS):
        b.store(emit.value(size), b.gep(out, [ir.Constant(ir.IntType(64), k)]))
    b.ret_void()
    obj, _ = compile_module(module, host_target())
    entry = CpuDevice().load(Executable("object", host_target().triple, obj), "sizes")
    run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(
        entry.function_address("sizes"))
    for values in ({"n": 1, "m": 1}, {"n": 2, "m": 40}, {"n": 6, "m": 3}, {"n": 13, "m": 71},
                   {"n": 1000, "m": 7}):
        dims = (ctypes.c_int64 * 2)(values["n"], values["m"])
        got = (ctypes.c_int64 * len(FORMULAS))()
        run(ctypes.addressof(dims), ctypes.addressof(got))
        assert list(got) == [evaluate(f, values) for f in FORMULAS], values


# ---------------------------------------------------------------- JSON and the artifact


def test_plan_json_stores_sizes_as_text(plan):
    d = json.loads(json.dumps(plan.to_json()))
    assert d["dims"] == ["n", "m"]
    assert d["arena_bytes"] == "128*n + 64*((4*m + 63)//64)"
    assert d["inputs"][0]["shape"] == ["n", 16]
    assert d["calls"][1]["args"] == [[0, 0], [0, "64*n"]]
    assert ExecutionPlan.from_json(d) == plan
    ranged = build_plan({"n": (1, 100), "m": (1, 16)})[0]
    assert ExecutionPlan.from_json(json.loads(json.dumps(ranged.to_json()))) == ranged


def test_static_plan_json_and_contract_are_unchanged():
    """The exact text (sorted, as the digest reads it) and digest the tree gave before plans
    had dims: a static plan's manifest and contract must not move."""
    static = ExecutionPlan(
        "strataml_entry", 4096, 128, (TensorSlot("x", F32, (2, 3), "io", 0),),
        (TensorSlot("y", F32, (2, 3), "io", 1), TensorSlot("t", F32, (6,), "arena", 64)),
        (TensorSlot("w", F32, (3,), "weights", 0),), ("k0", "k1"),
        (KernelCall("k0", "f0", ((2, 0), (1, 0), (0, 64))),
         KernelCall("k1", "f1", ((0, 64), (2, 1)))), num_threads=2)
    assert not static.takes_dims
    assert list(static.to_json()) == ["entry", "arena_bytes", "weights_bytes", "inputs",
                                      "outputs", "weights", "kernels", "calls", "num_threads",
                                      "native_libs", "abi_version"]
    assert json.dumps(static.to_json(), sort_keys=True, separators=(",", ":")) == (
        '{"abi_version":3,"arena_bytes":4096,"calls":[{"args":[[2,0],[1,0],[0,64]],'
        '"function":"f0","kernel":"k0"},{"args":[[0,64],[2,1]],"function":"f1","kernel":"k1"}'
        '],"entry":"strataml_entry","inputs":[{"dtype":"float32","name":"x","offset":0,'
        '"region":"io","shape":[2,3]}],"kernels":["k0","k1"],"native_libs":[],"num_threads":2,'
        '"outputs":[{"dtype":"float32","name":"y","offset":1,"region":"io","shape":[2,3]},'
        '{"dtype":"float32","name":"t","offset":64,"region":"arena","shape":[6]}],"weights":['
        '{"dtype":"float32","name":"w","offset":0,"region":"weights","shape":[3]}],'
        '"weights_bytes":128}')
    assert contract_digest(static, "x86_64-unknown-linux-gnu", ("avx2",), "0" * 64).hex() == (
        "93747fe01d2a8e1322c473bf90cae2ab99e011bd3d85ded1f34cc37ced8b4c50")


def test_artifact_round_trip_runs_the_same(plan, executable, rng, tmp_path: Path):
    path = tmp_path / "sym.smod"
    save_artifact(path, plan, executable, {}, {"device": "cpu"})
    loaded, exe, weights, manifest, blob = load_artifact(path)
    assert loaded == plan
    assert manifest["plan"]["outputs"][2]["offset"] == "64*n"
    ex = Executor(loaded, exe, weights, CpuDevice(), weights_region=blob)
    for rows, count in [(3, 2), (64, 7)]:
        f = feeds(rng, rows, count)
        check(ex.run(f), f)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(arena_bytes="128*n + k"), r"arena_bytes reads k, not in the dims"),
    (lambda d: d.update(dims=["n"]), r"reads m, not in the dims table \['n'\]"),
    (lambda d: d.update(dims=["n", "m", "q"]), r"dim 'q': no input has it as an axis"),
    (lambda d: d.update(arena_bytes="n +"), r"plan.arena_bytes 'n \+' is not a size"),
    (lambda d: d["calls"][0]["args"].__setitem__(0, [2, "n"]),
     r"args must be \[region, offset\] pairs"),
    (lambda d: d["outputs"][0].update(offset="n"), r"'y' lies in io at a run-time offset"),
])
def test_an_artifacts_formulas_are_checked(plan, edit, message):
    d = json.loads(json.dumps(plan.to_json()))
    edit(d)
    with pytest.raises(ArtifactError, match=message):
        artifact._check_plan(artifact._plan(d))


def test_a_formula_in_a_plan_without_dims_is_refused(plan):
    d = json.loads(json.dumps(plan.to_json()))
    del d["dims"]
    for call in d["calls"]:
        del call["dims"]
    with pytest.raises(ArtifactError, match=r"not in the dims table \[\]"):
        artifact._check_plan(artifact._plan(d))


def test_per_call_plan_check_catches_an_arena_too_small(plan, executable, rng):
    """A manifest whose arena formula is smaller than its offsets (edited, but consistent
    with its code's contract only if the code was built around it): refused per call."""
    small = ExecutionPlan.from_json({**plan.to_json(), "arena_bytes": "64*n"})
    ex = Executor(small, executable, {}, CpuDevice())
    with pytest.raises(ArtifactError, match=r"plan check at n=3, m=2: output 'u' .* overruns "
                                            r"the arena \(192 bytes\)"):
        ex.run(feeds(rng, 3, 2))


def test_parse_of_the_stored_sizes_is_exact(plan):
    assert parse_size(plan.to_json()["arena_bytes"]) == plan.arena_bytes


# ---------------------------------------------------------------- static-only entry points


def test_c_library_and_wasm_refuse_a_plan_over_run_time_sizes(plan, executable, tmp_path):
    from strataml.deploy.c_library import CLibraryError, emit_c_library
    from strataml.deploy.wasm import WasmError, emit_wasm

    model = SimpleNamespace(plan=plan, executable=executable, weights={})
    with pytest.raises(CLibraryError, match=r"the C library runs plans of fixed sizes only, "
                                            r"and this plan's sizes are run-time dims \(n, m\)"):
        emit_c_library(model, tmp_path)
    with pytest.raises(WasmError, match=r"the wasm loader runs plans of fixed sizes only"):
        emit_wasm(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_moved_to_a_row_scratch_takes_no_arena():
    """A softmax over a run-time row bounded by a range keeps its max, exponentials and sum
    in a row scratch (passes/lower/row_scratch.py): the kernel's temporaries are then never
    touched, and the plan gives them no arena (before: 4*b*s + 8*b bytes of it). Without a
    bound the exponentials stay in their buffer, which the arena holds."""
    from onnx import helper

    import strataml
    from tests.unit.graphs import onnx_model

    model = onnx_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                       {"x": ("float32", ["b", "s"])}, {"y": ("float32", None)}, {})
    bounded = strataml.compile(model, dynamic_dims=True, dim_ranges={"s": (1, 64)})
    assert bounded.plan.arena_bytes == 0
    assert [a for a in bounded.plan.calls[0].args if a[0] == 0] == [(0, 0)] * 3
    unbounded = strataml.compile(model, dynamic_dims=True)
    assert evaluate(unbounded.plan.arena_bytes, {"b": 2, "s": 100}) >= 4 * 2 * 100
    x = np.random.default_rng(2).standard_normal((3, 50)).astype(np.float32)
    want = np.exp(x - x.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    for compiled in (bounded, unbounded):
        np.testing.assert_allclose(compiled.run({"x": x})[0], want, rtol=1e-5, atol=1e-6)

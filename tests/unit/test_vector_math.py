"""The inline float32 exp/tanh/erf against numpy in float64, over the whole float32 range
(subnormals, huge values, +-inf, nan), with the error bounds codegen/vector_math.py states."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper

import strataml
from strataml.options import Target, host_target
from tests.unit.graphs import dumped


def _unary_model(op: str, n: int):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _probe_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    mags = np.logspace(-45, 38.5, 4000)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 88.72, 88.73, -87.3, -103.9,
               -104.0, -150.0, 7.9, 7.91, 4.0, 4.01, 0.0004, -0.0004]
    dense = rng.uniform(-20, 20, 20000)
    return np.concatenate([mags, -mags, special, dense]).astype(np.float32)


def _run(op: str, x: np.ndarray) -> np.ndarray:
    # IEEE subnormals: the probes cover exp's gradual-underflow range
    (y,) = strataml.compile(_unary_model(op, x.size), flush_denormals=False).run({"x": x})
    return y


def _without_avx512() -> Target:
    """The host as a target without AVX-512: the exps for targets with no one-instruction
    ldexp."""
    host = host_target()
    features = ",".join(f for f in host.features.split(",") if not f.startswith("+avx512"))
    return replace(host, features=features + ",-avx512f", vector_bits=min(host.vector_bits, 256))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("flushed", [False, True])
def test_exp_relative_error_below_two_ulp(flushed, scaled, tmp_path):
    """Every exp: < 2 ulp wherever the result is a normal float, inf above, nan for nan.
    Below 2^-126, IEEE kernels give subnormals within one subnormal step (2**-149), and
    kernels that flush denormals give zero. `scaled`: AVX-512's exp (p * 2^n by vscalefps);
    otherwise the exps built from exponent bits (a one-step 2^n scale when flushing)."""
    host_has_scalef = "+avx512f" in host_target().features.split(",")
    if scaled and not host_has_scalef:
        pytest.skip("the host has no AVX-512 to run the vscalefps exp")
    x = _probe_values()
    target = host_target() if scaled else _without_avx512()
    model = strataml.compile(_unary_model("Exp", x.size), target=target,
                             flush_denormals=flushed, dump_ir_dir=str(tmp_path))
    assert ("llvm.ldexp" in dumped(tmp_path, "llvm")) == scaled
    (got,) = model.run({"x": x})
    got = got.astype(np.float64)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
    finite = np.isfinite(want) & (want < np.finfo(np.float32).max)
    normal = finite & (want >= np.finfo(np.float32).tiny)
    ulp = np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[normal] - want[normal]) / ulp) < 2.0
    sub = finite & ~normal
    if flushed:
        assert np.all(got[sub] == 0.0)
    else:
        assert np.max(np.abs(got[sub] - want[sub])) <= 2.0**-149
    assert np.all(np.isinf(got[~finite & ~np.isnan(x)]) == (x[~finite & ~np.isnan(x)] > 0))
    assert np.isnan(got[np.isnan(x)]).all()


@pytest.mark.parametrize(("op", "ref", "bound"), [
    ("Tanh", np.tanh, 3e-7),
    ("Erf", np.vectorize(math.erf), 4e-7),
])
def test_tanh_erf_absolute_error(op, ref, bound):
    x = _probe_values()
    got = _run(op, x).astype(np.float64)
    ok = ~np.isnan(x)
    want = ref(x[ok].astype(np.float64))
    assert np.max(np.abs(got[ok] - want)) < bound
    assert np.isnan(got[~ok]).all()
    # Odd functions, exactly.
    assert np.array_equal(_run(op, -x[ok]), -_run(op, x[ok]))

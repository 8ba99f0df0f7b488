"""The independent reference for op tests: ONNX Runtime, or ONNX's numpy reference
evaluator where ORT lacks the opset (or when asked for it)."""

from __future__ import annotations

import numpy as np

import strataml


def reference_outputs(model, feeds: dict[str, np.ndarray], reference: str = "auto"
                      ) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    if reference == "onnx":
        return ReferenceEvaluator(model).run(None, feeds)
    try:
        from tests.conftest import ort_run

        return ort_run(model, feeds)
    except Exception:  # noqa: BLE001 - ORT lacks this opset: use ONNX's numpy reference
        return ReferenceEvaluator(model).run(None, feeds)


def assert_matches_reference(model, feeds: dict[str, np.ndarray], rtol: float, atol: float,
                             reference: str = "auto") -> strataml.CompiledModel:
    """strataml's outputs have the reference's dtypes and shapes and are close to them;
    returns the compiled model, for tests that also check how it was lowered."""
    want = reference_outputs(model, feeds, reference)
    compiled = strataml.compile(model)
    got = compiled.run(feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return compiled


def temp_kinds(compiled: strataml.CompiledModel) -> set[str]:
    """Kinds of kernel-local temporaries (their names without the number): they mark the
    lowering path a model took (a plane, a padded copy, a Winograd transform...)."""
    return {buf.name.rstrip("0123456789") for k in compiled.program.kernels
            for buf in k.buffers if buf.role == "temp"}

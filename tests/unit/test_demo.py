"""The bundled demo (`make demo`) runs: its encoder compiles, matches ONNX Runtime and is
timed (a short run: the numbers are the demo's business, the exit status is ours)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_demo_matches_onnx_runtime(capsys) -> None:
    spec = importlib.util.spec_from_file_location("strataml_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--rounds", "1", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out
    assert "strataml / onnxruntime =" in out

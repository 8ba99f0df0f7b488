"""A model for WebAssembly: model.wasm, model.json (its plan), model.weights, strataml.js
(a loader that runs it in a browser page or in Node: `run(inputs) -> outputs`) and run.mjs
(`node DIR/run.mjs IN1.npy ... --out OUTDIR`).

The model's wasm32 object code (SIMD128) is linked by `wasm-ld` (Debian's lld) with a serial
`strataml_parallel_for` (WebAssembly here has one thread), exporting the entry point and
its linear memory. The loader lays out the weights, the arena, the io table and the
inputs and outputs after the module's own data, exactly as the plan says.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm

from strataml.deploy.c_library import static_only_reason, weights_checksum
from strataml.errors import StrataError
from strataml.runtime.hal import ExecutionPlan, TensorSlot, weights_blob

LOADER = Path(__file__).parent / "js" / "strataml.js"
RUNNER = Path(__file__).parent / "js" / "run.mjs"
WASM_LD = ("wasm-ld", "wasm-ld-14", "wasm-ld-15", "wasm-ld-16", "wasm-ld-17")
STACK_BYTES = 1 << 20

# Parallel loops run on the calling thread: the whole extent as one chunk.
_SERIAL_POOL = """
define void @strataml_parallel_for(ptr %f, ptr %ctx, i64 %extent, i32 %threads) {
  call void %f(ptr %ctx, i64 0, i64 %extent)
  ret void
}
"""


class WasmError(StrataError):
    """The WebAssembly module could not be built (no wasm-ld, a link error)."""


@dataclass(frozen=True)
class WasmModule:
    wasm: Path
    plan: Path
    weights: Path
    loader: Path


def _slot(s: TensorSlot) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "bytes": s.nbytes,
            "region": s.region, "offset": s.offset}


def plan_json(plan: ExecutionPlan, checksum: int) -> dict[str, Any]:
    """What the loader needs of the plan: region sizes and every input's and output's place
    (the kernels' own offsets are compiled into the code)."""
    return {"format": "strataml-wasm", "version": 1, "entry": plan.entry,
            "arena_bytes": plan.arena_bytes, "weights_bytes": plan.weights_bytes,
            "weights_checksum": str(checksum),
            "inputs": [_slot(s) for s in plan.inputs],
            "outputs": [_slot(s) for s in plan.outputs]}


def _linker() -> str:
    for name in WASM_LD:
        if shutil.which(name):
            return name
    raise WasmError("no wasm-ld on PATH (Debian: apt-get install lld)")


def emit_wasm(model: Any, out_dir: str | Path, name: str = "model") -> WasmModule:
    """Write {name}.wasm, {name}.json, {name}.weights, strataml.js and run.mjs into `out_dir`
    for a model compiled with `target="wasm32"` (run.mjs loads "model": keep the name)."""
    executable, plan = model.executable, model.plan
    if plan.takes_dims:
        raise WasmError(static_only_reason(plan, "the wasm loader"))
    if not executable.triple.startswith("wasm32"):
        raise WasmError(f"the model was compiled for {executable.triple}; compile it with "
                        "target='wasm32'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    machine = llvm.Target.from_triple(executable.triple).create_target_machine(
        features=",".join(f"+{f}" for f in executable.features), opt=2)
    pool = llvm.parse_assembly(_SERIAL_POOL)
    pool.triple = executable.triple
    wasm = out / f"{name}.wasm"
    with tempfile.TemporaryDirectory(prefix="strataml-wasm-") as tmp:
        work = Path(tmp)
        (work / "kernels.o").write_bytes(executable.data)
        (work / "pool.o").write_bytes(machine.emit_object(pool))
        command = [_linker(), "--no-entry", f"--export={plan.entry}",
                   "--export=strataml_num_threads", "--export=__heap_base",
                   "-z", f"stack-size={STACK_BYTES}", "-o", str(wasm),
                   str(work / "kernels.o"), str(work / "pool.o")]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise WasmError(f"wasm-ld failed linking {wasm.name}:\n{done.stderr.strip()}")
    plan_path = out / f"{name}.json"
    blob = weights_blob(plan, model.weights)
    plan_path.write_text(json.dumps(plan_json(plan, weights_checksum(blob)), indent=1))
    weights = out / f"{name}.weights"
    weights.write_bytes(blob.tobytes())
    loader = out / LOADER.name
    shutil.copyfile(LOADER, loader)
    shutil.copyfile(RUNNER, out / RUNNER.name)
    return WasmModule(wasm, plan_path, weights, loader)

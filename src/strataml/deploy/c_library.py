"""A compiled model as a C library: DIR/libstrataml_model.so, DIR/strataml_model.h (the C
API) and DIR/strataml_model.weights.

The model's object code and strataml's thread pool (its LLVM IR, built for the model's
target) are linked with a small C runtime (deploy/c/strataml_runtime.c) and the plan written
out as C data, so a C program runs the model with libc, libm and pthreads only: no Python,
no LLVM. Building needs a C compiler that targets the model's triple (`cc` for the host).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm
import numpy as np

from strataml.codegen.link import pool_object
from strataml.errors import StrataError
from strataml.runtime.hal import ExecutionPlan, TensorSlot, weights_blob

SOURCES = Path(__file__).parent / "c"
LIBRARY, HEADER, WEIGHTS = "libstrataml_model.so", "strataml_model.h", "strataml_model.weights"
REGION_IDS = {"arena": 0, "weights": 1, "io": 2}
# The C API: everything else in the library (kernels, the pool, the plan) stays local.
API = ("strataml_create", "strataml_create_from_memory", "strataml_destroy",
       "strataml_num_inputs", "strataml_num_outputs", "strataml_input_name",
       "strataml_output_name", "strataml_input_dtype", "strataml_output_dtype",
       "strataml_input_rank", "strataml_output_rank", "strataml_input_shape",
       "strataml_output_shape", "strataml_input_bytes", "strataml_output_bytes",
       "strataml_run", "strataml_set_num_threads", "strataml_version")


class CLibraryError(StrataError):
    """The C library could not be built (no C compiler, a compiler error)."""


@dataclass(frozen=True)
class CLibrary:
    """What `emit_c_library` wrote."""

    library: Path
    header: Path
    weights: Path


def weights_checksum(blob: np.ndarray) -> int:
    """The C runtime's checksum (strataml_runtime.c: `checksum`): the position-weighted sum
    of the blob's little-endian 64-bit words, the tail zero-padded, modulo 2^64."""
    padded = np.zeros(-(-blob.nbytes // 8) * 8, dtype=np.uint8)
    padded[:blob.nbytes] = blob.reshape(-1).view(np.uint8)
    words = padded.view("<u8")
    total = np.uint64(0)
    step = 1 << 22
    with np.errstate(over="ignore"):
        for start in range(0, words.size, step):
            chunk = words[start:start + step]
            weights = np.arange(2 * start + 1, 2 * (start + chunk.size) + 1, 2, dtype=np.uint64)
            total += np.sum(chunk * weights, dtype=np.uint64)
    return int(total)


def _c_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid C string literal for ASCII


def _tensors(array: str, slots: tuple[TensorSlot, ...]) -> list[str]:
    lines = []
    for k, s in enumerate(slots):
        dims = ", ".join(f"{d}LL" for d in s.shape) or "0"
        lines.append(f"static const int64_t {array}_shape_{k}[] = {{{dims}}};")
    lines.append(f"static const strataml_tensor {array}[] = {{")
    for k, s in enumerate(slots):
        name = s.name if s.name.isascii() else s.name.encode("unicode_escape").decode()
        lines.append(f"    {{{_c_string(name)}, {_c_string(s.dtype)}, {len(s.shape)}, "
                     f"{array}_shape_{k}, {s.nbytes}ULL, {REGION_IDS[s.region]}, "
                     f"{s.offset}ULL}},")
    lines.append("    {0}\n};")  # (keeps an empty table legal C)
    return lines


def plan_source(plan: ExecutionPlan, checksum: int, name: str) -> str:
    """The plan as C data (deploy/c/strataml_plan.h)."""
    lines = ['#include "strataml_plan.h"', ""]
    lines += _tensors("inputs", plan.inputs) + _tensors("outputs", plan.outputs)
    lines += ["", "const strataml_plan strataml_plan_data = {",
              f"    {len(plan.inputs)}, {len(plan.outputs)}, inputs, outputs,",
              f"    {plan.arena_bytes}ULL, {plan.weights_bytes}ULL, {checksum}ULL,",
              f"    {plan.num_threads}, {_c_string(name)},", "};", ""]
    return "\n".join(lines)


def object_code(model: Any) -> bytes:
    """The model's relocatable object code: kept by the compiler beside the shared library
    it links for the host (a loaded artifact of that kind has only the library)."""
    program = getattr(model, "program", None)
    if program is not None and program.object_code:
        return bytes(program.object_code)
    if model.executable.format == "object":
        return bytes(model.executable.data)
    raise CLibraryError(f"a C library needs the model's object code; a loaded "
                        f"{model.executable.format!r} artifact has none: compile the model")


def default_compiler(triple: str) -> str:
    """$CC (else cc) for the host's architecture; Debian's cross gcc name for another
    (aarch64-linux-gnu-gcc, riscv64-linux-gnu-gcc)."""
    arch = triple.split("-")[0]
    if arch == llvm.get_process_triple().split("-")[0]:
        return os.environ.get("CC", "cc")
    return f"{arch}-linux-gnu-gcc"


def static_only_reason(plan: ExecutionPlan, what: str) -> str:
    """Why `what` (an entry point of fixed sizes) cannot take a plan over run-time sizes."""
    return (f"{what} runs plans of fixed sizes only, and this plan's sizes are run-time dims "
            f"({', '.join(plan.dims) or 'its kernels take dims'}): its C API has no dims "
            "table to pass yet; compile with dynamic_dims=False (unbound dims bound, 1 or "
            "dim_values) or with fixed input_shapes for it")


def emit_c_library(model: Any, out_dir: str | Path, name: str = "strataml_model",
                   cc: str | None = None) -> CLibrary:
    """Write libstrataml_model.so, strataml_model.h and strataml_model.weights into `out_dir`
    for a compiled model (`strataml.compile(...)`'s result); `name` is the model's name in
    the library's messages.

    The library's soname is its absolute path, so a program linked against it
    (`-LDIR -lstrataml_model`, no rpath) finds it where it was written; a library installed
    elsewhere is relinked (or found through LD_LIBRARY_PATH if built to a relative name)."""
    executable, plan = model.executable, model.plan
    if plan.takes_dims:  # (checked first: nothing is built for a plan it cannot run)
        raise CLibraryError(static_only_reason(plan, "the C library"))
    code = object_code(model)
    compiler = cc or default_compiler(executable.triple)
    if shutil.which(compiler) is None:
        raise CLibraryError(f"no C compiler {compiler!r} on PATH for {executable.triple} "
                            "(pass --cc, or set CC for the host)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    blob = weights_blob(plan, model.weights)
    library = out / LIBRARY
    with tempfile.TemporaryDirectory(prefix="strataml-clib-") as tmp:
        work = Path(tmp)
        (work / "kernels.o").write_bytes(code)
        (work / "pool.o").write_bytes(pool_object(executable.triple, executable.features))
        (work / "plan.c").write_text(plan_source(plan, weights_checksum(blob), name))
        (work / "exports.map").write_text(
            "{\n  global:\n" + "".join(f"    {s};\n" for s in API) + "  local: *;\n};\n")
        command = [compiler, "-shared", "-fPIC", "-O2", "-std=c11", f"-I{SOURCES}",
                   "-o", str(library), str(SOURCES / "strataml_runtime.c"),
                   str(work / "plan.c"), str(work / "kernels.o"), str(work / "pool.o"),
                   f"-Wl,--version-script={work / 'exports.map'}", "-Wl,--no-undefined",
                   f"-Wl,-soname,{library}",
                   *(f"-l{lib}" for lib in plan.native_libs), "-lm", "-lpthread"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise CLibraryError(f"{compiler} failed building {library.name}:\n"
                                f"{done.stderr.strip()}")
    header = out / HEADER
    shutil.copyfile(SOURCES / HEADER, header)
    weights = out / WEIGHTS
    weights.write_bytes(blob.tobytes())
    return CLibrary(library, header, weights)

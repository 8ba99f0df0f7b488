"""Object code linked into shared libraries, for a runtime that needs no LLVM.

A model built for the host is linked into its own shared object, which the runtime opens
with the system's dynamic loader (ctypes): loading needs neither llvmlite nor a compiler.
Its parallel loops call `strataml_parallel_for`, which lives in one more shared library, the
runtime library (strataml's thread pool, `runtime/thread_pool.py`), opened once per process
so that every model shares one pool. Linking uses the system C compiler driver (`cc`); where
there is none, the model stays a relocatable object that the runtime links with LLVM's JIT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import llvmlite.binding as llvm

from strataml.codegen.llvm import with_target_abi
from strataml.errors import CodegenError
from strataml.runtime.thread_pool import pool_ir


def host_linker() -> str | None:
    """The C compiler driver that links for this machine ($CC, else cc), if there is one."""
    cc = os.environ.get("CC", "cc")
    return cc if shutil.which(cc) else None


def pool_object(triple: str, features: tuple[str, ...]) -> bytes:
    """strataml's thread pool compiled for `triple` with the model's features and ABI."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    flags = ",".join(f"+{f}" for f in features)
    module = llvm.parse_assembly(with_target_abi(pool_ir(triple), triple, flags))
    module.triple = triple
    machine = llvm.Target.from_triple(triple).create_target_machine(
        features=flags, opt=2, reloc="pic")
    return machine.emit_object(module)


def _link(cc: str, objects: list[bytes], flags: list[str]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="strataml-link-") as tmp:
        work = Path(tmp)
        paths = []
        for k, data in enumerate(objects):
            paths.append(work / f"part{k}.o")
            paths[-1].write_bytes(data)
        out = work / "lib.so"
        done = subprocess.run([cc, "-shared", "-o", str(out), *map(str, paths), *flags],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise CodegenError(f"linking a shared library with {cc} failed:\n"
                               f"{done.stderr.strip()}")
        return out.read_bytes()


@lru_cache(maxsize=4)
def runtime_library(triple: str, features: tuple[str, ...], cc: str) -> bytes:
    """The thread pool as a shared library (libc and pthreads only)."""
    return _link(cc, [pool_object(triple, features)], ["-Wl,--no-undefined", "-lpthread"])


def model_library(obj: bytes, native_libs: tuple[str, ...], cc: str) -> bytes:
    """A model's object code as a shared library. `strataml_parallel_for` stays undefined:
    the runtime library, opened first with its symbols global, provides it. -Bsymbolic binds
    the model's own symbols inside it, whatever else the process has loaded."""
    return _link(cc, [obj], ["-Wl,-Bsymbolic", *(f"-l{lib}" for lib in native_libs), "-lm"])

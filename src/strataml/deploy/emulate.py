"""Running a model built for another Linux CPU from Python, under qemu-user.

`strataml.compile(model, target="aarch64-linux-gnu").run(feeds)` on an x86 machine: the model
becomes a C library for its architecture (deploy/c_library.py, with Debian's cross gcc), a
small driver (c/emulate_main.c) links against it, and each run hands the inputs over as raw
files, runs the driver under `qemu-{arch}` and reads the outputs back. For checking a cross
build's answers, not its speed: every run starts an emulated process.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from strataml.deploy.c_library import SOURCES, default_compiler, emit_c_library
from strataml.errors import InputError, StrataError

# qemu's CPU options where its default CPU lacks what the code uses.
_QEMU_CPU = {("riscv64", "v"): ["-cpu", "rv64,v=true,vlen=128"]}


def emulator_problems(triple: str) -> list[str]:
    """What is missing to run code for `triple` here (empty: it can be emulated)."""
    arch = triple.split("-")[0]
    problems = [f"no {tool} on PATH" for tool in (f"qemu-{arch}", default_compiler(triple))
                if shutil.which(tool) is None]
    if not Path(f"/usr/{arch}-linux-gnu").is_dir():
        problems.append(f"no /usr/{arch}-linux-gnu (Debian's cross libc)")
    return problems + ([] if "linux" in triple else [f"{triple} is not a Linux target"])


class EmulatedRunner:
    """A compiled model's `run`, for code of another architecture, under qemu-user."""

    def __init__(self, model: Any) -> None:
        executable = model.executable
        missing = emulator_problems(executable.triple)
        if missing:
            raise StrataError(f"cannot emulate {executable.triple} here: {'; '.join(missing)} "
                              "(make cross-tools installs them)")
        self._arch = executable.triple.split("-")[0]
        self._plan = model.plan
        self._dir = Path(tempfile.mkdtemp(prefix="strataml-emulated-"))
        library = emit_c_library(model, self._dir)
        self._driver = self._dir / "emulate_main"
        done = subprocess.run([default_compiler(executable.triple), "-O1",
                               f"-I{self._dir}", str(SOURCES / "emulate_main.c"),
                               f"-L{self._dir}", "-lstrataml_model", "-o", str(self._driver)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise StrataError(f"building the emulation driver failed: {done.stderr.strip()}")
        self._weights = library.weights
        self._qemu = [f"qemu-{self._arch}", *self._cpu(executable.features),
                      "-L", f"/usr/{self._arch}-linux-gnu"]

    def _cpu(self, features: tuple[str, ...]) -> list[str]:
        for (arch, feature), options in _QEMU_CPU.items():
            if arch == self._arch and feature in features:
                return options
        return []

    def run(self, feeds: Mapping[str, np.ndarray],
            out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(dir=self._dir) as tmp:
            work = Path(tmp)
            files = []
            for k, slot in enumerate(self._plan.inputs):
                value = feeds.get(slot.name) if isinstance(feeds, Mapping) else None
                if value is None:
                    raise InputError(f"missing input '{slot.name}'")
                array = np.ascontiguousarray(value)
                if array.dtype != np.dtype(slot.dtype) or array.shape != slot.shape:
                    raise InputError(f"input '{slot.name}' is {array.dtype} "
                                     f"{list(array.shape)}, the model takes {slot.dtype} "
                                     f"{list(slot.shape)}")
                files.append(str(work / f"in_{k}.bin"))
                array.tofile(files[-1])
            done = subprocess.run([*self._qemu, str(self._driver), str(self._weights), *files,
                                   str(work)], capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise StrataError(f"the emulated run failed ({done.returncode}): "
                                  f"{done.stderr.strip()[-500:]}")
            results = [np.fromfile(work / f"out_{k}.bin", slot.dtype).reshape(slot.shape)
                       for k, slot in enumerate(self._plan.outputs)]
        if out is not None:
            for target, result in zip(out, results, strict=True):
                np.copyto(target, result)
            return list(out)
        return results

    def run_async(self, feeds: Mapping[str, np.ndarray],
                  out: Sequence[np.ndarray] | None = None) -> Future[list[np.ndarray]]:
        """Runs now (an emulated process per run); bad inputs raise here, as from `run`, and
        a failed run is the future's exception."""
        future: Future[list[np.ndarray]] = Future()
        try:
            future.set_result(self.run(feeds, out))
        except InputError:
            raise
        except (StrataError, OSError, subprocess.SubprocessError) as exc:
            future.set_exception(exc)
        return future

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)

"""The .smod artifact: a zip holding manifest.json, weights.npz and the object code.

Never pickle: weights load with allow_pickle=False; the manifest is plain JSON.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from strataml.errors import ArtifactError
from strataml.runtime.hal import KERNEL_ABI_VERSION, Executable, ExecutionPlan

FORMAT = "strataml-smod"
FORMAT_VERSION = 1


def save_artifact(path: str | Path, plan: ExecutionPlan, executable: Executable,
                  weights: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "abi_version": KERNEL_ABI_VERSION,
        "plan": plan.to_json(),
        "executable": {"format": executable.format, "triple": executable.triple,
                       "file": "kernels.o"},
        **extra,
    }
    # npz keys must be plain names: store weights by index, names in the manifest.
    names = [s.name for s in plan.weights]
    manifest["weight_keys"] = {f"w{i}": n for i, n in enumerate(names)}
    buf = io.BytesIO()
    arrays: dict[str, Any] = {f"w{i}": weights[n] for i, n in enumerate(names)}
    np.savez(buf, **arrays)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1))
        zf.writestr("weights.npz", buf.getvalue())
        zf.writestr("kernels.o", executable.data)


def load_artifact(path: str | Path) -> tuple[ExecutionPlan, Executable,
                                             dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact")
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path}: not a strataml artifact")
            if manifest.get("abi_version") != KERNEL_ABI_VERSION:
                raise ArtifactError(f"{path}: kernel ABI {manifest.get('abi_version')}, this "
                                    f"runtime speaks {KERNEL_ABI_VERSION}; recompile the model")
            exe_info = manifest["executable"]
            data = zf.read(exe_info["file"])
            with np.load(io.BytesIO(zf.read("weights.npz")), allow_pickle=False) as npz:
                weights = {manifest["weight_keys"][k]: npz[k] for k in npz.files}
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: corrupt or incomplete artifact ({exc})") from None
    plan = ExecutionPlan.from_json(manifest["plan"])
    executable = Executable(exe_info["format"], exe_info["triple"], data)
    return plan, executable, weights, manifest

"""The .smod artifact, format 2 (docs/artifact.md): a zip of stored parts, manifest.json,
code.bin, weights.bin and (for a shared-object executable) runtime.bin, trusted only after
every check passes.

An artifact may come from anywhere, so the loader believes nothing it has not checked:
sizes are bounded before anything is read, every part's SHA-256 is verified, every value of
the plan is checked against the rest of it (offsets and sizes inside their regions), the code
must suit this host (architecture, CPU features), and the plan must be the one the code was
built around (the contract digest embedded in the object). A failed check is an
ArtifactError naming it. Never pickle; the manifest is plain JSON; part names are fixed here,
never read from the manifest, so nothing in an artifact can point outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from strataml.errors import ArtifactError
from strataml.runtime.hal import (
    KERNEL_ABI_VERSION,
    REGIONS,
    Executable,
    ExecutionPlan,
    KernelCall,
    Size,
    TensorSlot,
    aligned_empty,
    contract_digest,
    is_size_formula,
    size_from_json,
    weights_blob,
)

FORMAT = "strataml-smod"
FORMAT_VERSION = 2  # 2: stored parts with SHA-256 digests, raw weights, embedded contract
MANIFEST, CODE, WEIGHTS, RUNTIME = "manifest.json", "code.bin", "weights.bin", "runtime.bin"
PARTS = (MANIFEST, CODE, WEIGHTS)  # always there; RUNTIME where the executable has one
MAX_MANIFEST_BYTES = 64 << 20  # a plan of ~100k kernel calls; larger is not a manifest
MAX_CODE_BYTES = 2 << 30
MAX_REGION_BYTES = 1 << 40  # (a region must also fit in memory: allocation says so)
MAX_RANK = 64
DTYPE_NAMES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                         "uint8", "uint16", "uint32", "uint64", "bool"})
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.$]*")
_LIB = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SIZE_TEXT = 4096  # characters of one size formula (`64*((4*n + 63)//64) + 128*n`)


def _sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(path: str | Path, plan: ExecutionPlan, executable: Executable,
                  weights: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """Write the artifact next to `path` and move it into place, so a crash mid-write never
    leaves a truncated artifact under the final name."""
    blob = weights_blob(plan, weights)
    parts: dict[str, Any] = {CODE: bytes(executable.data), WEIGHTS: blob.data}
    if executable.runtime_lib:
        parts[RUNTIME] = bytes(executable.runtime_lib)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "abi_version": KERNEL_ABI_VERSION,
        "executable": {"format": executable.format, "triple": executable.triple,
                       "features": list(executable.features)},
        "parts": {name: {"bytes": blob.nbytes if name == WEIGHTS else len(data),
                         "sha256": _sha256(data)} for name, data in parts.items()},
        "plan": plan.to_json(),
        "info": info,
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as raw, \
                zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for name, data in parts.items():
                zf.writestr(name, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_artifact(path: str | Path) -> tuple[ExecutionPlan, Executable,
                                             dict[str, np.ndarray], dict[str, Any],
                                             np.ndarray]:
    """Plan, code, weights (views of one blob), manifest and the blob itself (the weights
    region as the code reads it, 64-byte aligned: a host-memory device uses it as it is),
    each checked; see the module docstring. The device the manifest names must accept the
    code."""
    from strataml.runtime.devices import get_device

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact")
    try:
        with zipfile.ZipFile(path) as zf:
            entries = _entries(zf, path.stat().st_size)
            manifest = _read_manifest(zf, entries[MANIFEST])
            plan = _plan(_get(manifest, "plan", dict, "manifest"))
            _check_plan(plan)
            exe = _get(manifest, "executable", dict, "manifest")
            parts = _get(manifest, "parts", dict, "manifest")
            code = _read_part(zf, entries[CODE], parts, MAX_CODE_BYTES, None)
            blob = _read_part(zf, entries[WEIGHTS], parts, MAX_REGION_BYTES, plan.weights_bytes)
            runtime = (_read_part(zf, entries[RUNTIME], parts, MAX_CODE_BYTES, None)
                       if RUNTIME in entries else None)
        features = _get(exe, "features", list, "executable")
        if not all(isinstance(f, str) for f in features):
            raise ArtifactError("manifest check: executable.features must list feature names")
        executable = Executable(_get(exe, "format", str, "executable"),
                                _get(exe, "triple", str, "executable"),
                                bytes(code), tuple(features),
                                bytes(runtime) if runtime is not None else b"")
        if (executable.format == "shared-object") != (runtime is not None):
            raise ArtifactError(f"container check: a {executable.format!r} executable "
                                f"{'needs' if runtime is None else 'takes no'} part {RUNTIME}")
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: container check: not a readable zip archive (truncated "
                            f"or damaged: {exc})") from None
    info = manifest.get("info", {})
    if not isinstance(info, dict) or not isinstance(info.get("device", "cpu"), str):
        raise ArtifactError(f"{path}: manifest info must be an object naming its device")
    try:
        device = get_device(info.get("device", "cpu"))
    except ValueError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    refusals = device.refusals(executable)
    if refusals:
        raise ArtifactError(f"{path}: this host cannot run the code: {'; '.join(refusals)}")
    embedded = device.embedded_contract(executable)
    expected = contract_digest(plan, executable.triple, executable.features,
                               parts[WEIGHTS]["sha256"])
    if embedded is None:
        raise ArtifactError(f"{path}: contract check: the code carries no contract digest")
    if embedded != expected:
        raise ArtifactError(f"{path}: contract check: the manifest's plan, features or weights "
                            "are not those the code was built for (edited apart from the code)")
    weights = {s.name: np.frombuffer(blob, s.dtype, _count(s.shape), s.offset).reshape(s.shape)
               for s in plan.weights}
    return plan, executable, weights, manifest, blob


# ---------------------------------------------------------------- the zip container


def _entries(zf: zipfile.ZipFile, archive_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """The three parts' directory entries, after the container checks: fixed names only,
    stored (no decompression bomb), sizes within the archive."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") \
                or ":" in name:
            raise ArtifactError(f"container check: entry {name!r} points outside the artifact")
        if name not in (*PARTS, RUNTIME):
            raise ArtifactError(f"container check: unexpected entry {name!r} (a format-"
                                f"{FORMAT_VERSION} artifact holds {', '.join(PARTS)} and "
                                f"optionally {RUNTIME})")
        if name in found:
            raise ArtifactError(f"container check: entry {name!r} appears twice")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ArtifactError(f"container check: entry {name!r} is compressed (parts are "
                                "stored as they are)")
        if info.header_offset + info.file_size > archive_bytes:
            raise ArtifactError(f"container check: entry {name!r} claims {info.file_size} "
                                f"bytes, more than the archive holds (truncated?)")
        found[name] = info
    missing = [p for p in PARTS if p not in found]
    if missing:
        raise ArtifactError(f"container check: missing part {', '.join(missing)}")
    return found


def _read_manifest(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, Any]:
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"manifest check: {info.file_size} bytes, over the "
                            f"{MAX_MANIFEST_BYTES >> 20} MiB a manifest may take")
    try:
        manifest = json.loads(zf.read(info))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"manifest check: not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"manifest check: a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"manifest check: format {manifest.get('format')!r}, not a "
                            "strataml artifact")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ArtifactError(f"version check: format version {version!r}, this runtime reads "
                            f"version {FORMAT_VERSION} only; recompile the model")
    abi = manifest.get("abi_version")
    if type(abi) is not int or abi != KERNEL_ABI_VERSION:
        raise ArtifactError(f"version check: kernel ABI {abi!r}, this runtime speaks "
                            f"{KERNEL_ABI_VERSION}; recompile the model")
    return manifest


def _read_part(zf: zipfile.ZipFile, info: zipfile.ZipInfo, parts: dict[str, Any],
               limit: int, expected_bytes: int | None) -> np.ndarray:
    """One part, its size and SHA-256 checked against the manifest before it is used."""
    name = info.filename
    meta = parts.get(name)
    if not isinstance(meta, dict):
        raise ArtifactError(f"manifest check: parts.{name} must be an object")
    size = meta.get("bytes")
    digest = meta.get("sha256")
    if type(size) is not int or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ArtifactError(f"manifest check: parts.{name} needs bytes and a sha256 digest")
    if size != info.file_size or size > limit or \
            (expected_bytes is not None and size != expected_bytes):
        want = expected_bytes if expected_bytes is not None else size
        raise ArtifactError(f"size check: part {name} holds {info.file_size} bytes, the "
                            f"manifest and plan say {want}")
    data = aligned_empty(size)
    got = 0
    with zf.open(info) as f:
        while got < size:  # in chunks, straight into the aligned buffer
            chunk = f.read(min(size - got, 16 << 20))
            if not chunk:
                break
            data[got:got + len(chunk)] = np.frombuffer(chunk, np.uint8)
            got += len(chunk)
        f.read(1)  # (reaching the end checks the zip CRC)
    if got != size:
        raise ArtifactError(f"size check: part {name} ended after {got} of {size} bytes")
    if _sha256(data[:size].data) != digest:
        raise ArtifactError(f"digest check: part {name} does not match its SHA-256 "
                            "(damaged or modified)")
    return data[:size]


# ---------------------------------------------------------------- the plan


def _get(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise ArtifactError(f"manifest check: {where} lacks {key!r}")
    value = d[key]
    if kind is int:
        ok = type(value) is int
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ArtifactError(f"manifest check: {where}.{key} must be a {kind.__name__}, got "
                            f"{type(value).__name__}")
    return value


def _nat(d: dict[str, Any], key: str, where: str, hi: int = MAX_REGION_BYTES) -> int:
    value: int = _get(d, key, int, where)
    if not 0 <= value <= hi:
        raise ArtifactError(f"manifest check: {where}.{key} = {value} is outside [0, {hi}]")
    return value


def _items(d: dict[str, Any], key: str, where: str, parse: Callable[[Any, str], Any]
           ) -> tuple[Any, ...]:
    return tuple(parse(item, f"{where}.{key}[{k}]")
                 for k, item in enumerate(_get(d, key, list, where)))


def _size(value: Any, where: str) -> Size:
    """A byte count, offset or dim: an int in range, or a formula's text (a plan over
    run-time sizes), parsed here and checked against the plan's dims in `_check_plan`."""
    if type(value) is int:
        if not 0 <= value <= MAX_REGION_BYTES:
            raise ArtifactError(f"manifest check: {where} = {value} is outside "
                                f"[0, {MAX_REGION_BYTES}]")
        return value
    if not isinstance(value, str) or len(value) > MAX_SIZE_TEXT:
        raise ArtifactError(f"manifest check: {where} must be a count or a size formula, got "
                            f"{type(value).__name__}")
    try:
        return size_from_json(value)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"manifest check: {where} {value!r} is not a size ({exc})") from None


def _slot(d: Any, where: str) -> TensorSlot:
    if not isinstance(d, dict):
        raise ArtifactError(f"manifest check: {where} must be an object")
    dtype = _get(d, "dtype", str, where)
    if dtype not in DTYPE_NAMES:
        raise ArtifactError(f"manifest check: {where}.dtype {dtype!r} is not a dtype")
    shape = _get(d, "shape", list, where)
    if len(shape) > MAX_RANK or not all((type(n) is int and 0 <= n <= MAX_REGION_BYTES)
                                        or isinstance(n, str) for n in shape):
        raise ArtifactError(f"manifest check: {where}.shape {shape!r} is not a shape")
    dims = tuple(_size(n, f"{where}.shape[{k}]") for k, n in enumerate(shape))
    region = _get(d, "region", str, where)
    if region not in REGIONS:
        raise ArtifactError(f"manifest check: {where}.region {region!r} is not one of "
                            f"{', '.join(REGIONS)}")
    return TensorSlot(_get(d, "name", str, where), dtype, dims, region,
                      _size(_get(d, "offset", object, where), f"{where}.offset"))


def _call(d: Any, where: str) -> KernelCall:
    if not isinstance(d, dict):
        raise ArtifactError(f"manifest check: {where} must be an object")
    args = _get(d, "args", list, where)
    # (an arena offset may be a formula's text: the entry computes it from the dims)
    if not all(isinstance(a, list) and len(a) == 2 and type(a[0]) is int
               and (type(a[1]) is int or (a[0] == 0 and isinstance(a[1], str))) for a in args):
        raise ArtifactError(f"manifest check: {where}.args must be [region, offset] pairs")
    function = _get(d, "function", str, where)
    if not _SYMBOL.fullmatch(function):
        raise ArtifactError(f"manifest check: {where}.function {function!r} is not a symbol")
    dims = d.get("dims", [])  # (absent before calls took run-time sizes)
    if not isinstance(dims, list) or not all(type(k) is int and k >= 0 for k in dims):
        raise ArtifactError(f"manifest check: {where}.dims must be indices into the dims "
                            "table")
    # (a call looped over the batch: absent before calls could repeat)
    repeat = d.get("repeat", 1)
    strides = d.get("strides", [])
    if not (type(repeat) is int or isinstance(repeat, str)) or not isinstance(strides, list) \
            or not all(type(s) is int and 0 <= s <= MAX_REGION_BYTES for s in strides) \
            or ("repeat" in d and len(strides) != len(args)):
        raise ArtifactError(f"manifest check: {where}.repeat must be a size and "
                            f"{where}.strides one byte count per argument")
    return KernelCall(_get(d, "kernel", str, where), function,
                      tuple((a[0], _size(a[1], f"{where}.args[{k}]"))
                            for k, a in enumerate(args)), tuple(dims),
                      _size(repeat, f"{where}.repeat"), tuple(strides))


def _string(d: Any, where: str) -> str:
    if not isinstance(d, str):
        raise ArtifactError(f"manifest check: {where} must be a string")
    return d


def _plan(d: dict[str, Any]) -> ExecutionPlan:
    """The plan with every field's type and range checked (the JSON is untrusted)."""
    where = "plan"
    entry = _get(d, "entry", str, where)
    if not _SYMBOL.fullmatch(entry):
        raise ArtifactError(f"manifest check: plan.entry {entry!r} is not a symbol")
    libs = _items(d, "native_libs", where, _string) if "native_libs" in d else ()
    for lib in libs:
        if not _LIB.fullmatch(lib):
            raise ArtifactError(f"manifest check: plan.native_libs names {lib!r}, not a "
                                "library name")
    dims = _items(d, "dims", where, _string) if "dims" in d else ()
    if not all(_DIM.fullmatch(name) for name in dims):
        raise ArtifactError(f"manifest check: plan.dims {list(dims)!r} must be dim names")
    ranges = _get(d, "dim_ranges", list, where) if "dim_ranges" in d else []
    if not all(isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
               and type(r[1]) is int and type(r[2]) is int for r in ranges):
        raise ArtifactError("manifest check: plan.dim_ranges must be [name, low, high] lists")
    reasons = _get(d, "dim_range_reasons", list, where) if "dim_range_reasons" in d else []
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
               for r in reasons):
        raise ArtifactError("manifest check: plan.dim_range_reasons must be [name, reason] "
                            "lists")
    return ExecutionPlan(
        entry=entry, arena_bytes=(_size(d["arena_bytes"], "plan.arena_bytes")
                                  if isinstance(d.get("arena_bytes"), str)
                                  else _nat(d, "arena_bytes", where)),
        weights_bytes=_nat(d, "weights_bytes", where),
        inputs=_items(d, "inputs", where, _slot), outputs=_items(d, "outputs", where, _slot),
        weights=_items(d, "weights", where, _slot),
        kernels=_items(d, "kernels", where, _string),
        calls=_items(d, "calls", where, _call),
        num_threads=max(1, _nat(d, "num_threads", where, 1 << 16)),
        native_libs=libs, abi_version=_nat(d, "abi_version", where), dims=dims,
        dim_ranges=tuple((r[0], r[1], r[2]) for r in ranges),
        dim_range_reasons=tuple((r[0], r[1]) for r in reasons))


def _count(shape: tuple[Size, ...]) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n


def _symbolic(plan: ExecutionPlan) -> bool:
    """Whether any size of the plan is a formula (the plan must then have the dims)."""
    sizes: list[Size] = [plan.arena_bytes]
    for slots in (plan.inputs, plan.outputs, plan.weights):
        sizes += [d for s in slots for d in (*s.shape, s.offset)]
    sizes += [offset for call in plan.calls for _, offset in call.args]
    sizes += [call.repeat for call in plan.calls]
    return any(is_size_formula(x) for x in sizes)


def _advances_weights(call: KernelCall) -> bool:
    """Whether a repeated call advances a weights buffer (never: weights are per model)."""
    return any(stride and region == 1
               for (region, _), stride in zip(call.args, call.strides, strict=False))


def _check_plan(plan: ExecutionPlan) -> None:
    """Every place the plan points at lies inside its region: the code is built around the
    same numbers, and the contract digest checks they are the ones it was built with. A plan
    over run-time sizes has its formulas checked against its dims here, and every place it
    points at checked inside the arena at each set of sizes a call binds
    (runtime/dims.py), before native code runs."""
    n_io = len(plan.inputs) + len(plan.outputs)
    if plan.takes_dims or _symbolic(plan):
        from strataml.runtime.dims import plan_problems

        problems = plan_problems(plan)
        if problems:
            raise ArtifactError(f"plan check: {'; '.join(problems)}")
    sizes = {"arena": plan.arena_bytes, "weights": plan.weights_bytes}

    def inside(slot: TensorSlot, what: str) -> None:
        if slot.region == "io":  # (an io offset is an int: plan_problems says so)
            if slot.offset >= n_io:
                raise ArtifactError(f"plan check: {what} {slot.name!r} uses io entry "
                                    f"{slot.offset}; the table has {n_io}")
            return
        if slot.symbolic or is_size_formula(sizes[slot.region]):
            return  # (checked per call, at the sizes the inputs bind: runtime/dims.py)
        nbytes = _count(slot.shape) * np.dtype(slot.dtype).itemsize
        if slot.offset + nbytes > sizes[slot.region]:
            raise ArtifactError(f"plan check: {what} {slot.name!r} ({nbytes} bytes at "
                                f"{slot.offset}) overruns the {slot.region} region "
                                f"({sizes[slot.region]} bytes)")

    for k, slot in enumerate(plan.inputs):
        if slot.region != "io" or slot.offset != k:
            raise ArtifactError(f"plan check: input {slot.name!r} must be io entry {k}")
    for slot in plan.outputs:
        inside(slot, "output")
    for slot in plan.weights:
        if slot.region != "weights":
            raise ArtifactError(f"plan check: weight {slot.name!r} lies in {slot.region}")
        inside(slot, "weight")
    for what, slots in (("input", plan.inputs), ("weight", plan.weights)):
        names = [s.name for s in slots]
        if len(set(names)) != len(names):
            raise ArtifactError(f"plan check: two {what}s share a name")
    limits = (plan.arena_bytes, plan.weights_bytes, n_io - 1)
    for call in plan.calls:
        if call.repeated and (not is_size_formula(call.repeat) or _advances_weights(call)):
            # (a call repeats over a run-time batch, and only arena and io buffers advance)
            raise ArtifactError(f"plan check: kernel {call.kernel!r} repeats "
                                f"{call.repeat} times with strides {list(call.strides)}; "
                                "only a run-time count over arena and io buffers may")
        for region, offset in call.args:
            if 0 <= region <= 2 and (is_size_formula(offset) or is_size_formula(limits[region])):
                continue  # (an arena offset over the dims: checked per call)
            if not 0 <= region <= 2 or not 0 <= offset <= limits[region]:
                raise ArtifactError(f"plan check: kernel {call.kernel!r} reads "
                                    f"({region}, {offset}), outside its region")

"""Damaged and tampered .smod artifacts, tried as an attacker would: every one is refused
with an ArtifactError that names the check it failed (never a crash, a hang, a huge read or
a silently wrong answer), and the undamaged artifact still loads and matches."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.errors import ArtifactError
from strataml.options import Target
from strataml.runtime import artifact
from strataml.runtime.object_file import ElfObject, ObjectFileError
from strataml.target import host_target

Files = dict[str, bytes]


def _model() -> onnx.ModelProto:
    """Two weight matrices, an intermediate in the arena, two outputs."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"]),
             helper.make_node("Sigmoid", ["y"], ["z"])]
    graph = helper.make_graph(
        nodes, "trust", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("trust") / "m.smod"
    model = strataml.compile(_model())
    model.save(path)
    return path.read_bytes(), model.run({"x": X})


def _files(data: bytes) -> Files:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _pack(files: Files, compress: dict[str, int] | None = None) -> bytes:
    """A zip with valid CRCs: damage made this way passes the container's own checks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data,
                        compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return buf.getvalue()


def _manifest(files: Files) -> dict[str, Any]:
    return json.loads(files["manifest.json"])


def _with_manifest(files: Files, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    manifest = _manifest(files)
    edit(manifest)
    return _pack({**files, "manifest.json": json.dumps(manifest).encode()})


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at % len(b)] ^= 0x10
    return bytes(b)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of the manifest at a dotted path (list indices as numbers)."""
    def edit(manifest: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = manifest
        for key in head:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = manifest
        for key in head:
            node = node[key]
        del node[last]
    return edit


def _rehash(files: Files, name: str, data: bytes) -> bytes:
    """Replace a part and update its digest and size: damage that survives the digest check
    (it must then fail the contract or the plan check)."""
    manifest = _manifest(files)
    manifest["parts"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return _pack({**files, name: data, "manifest.json": json.dumps(manifest).encode()})


def _missing_host_feature() -> str:
    """An x86 ISA feature LLVM knows that this host lacks."""
    have = llvm.get_host_cpu_features()
    for feature in ("avx512fp16", "amx-fp16", "amx-complex", "avx10.1-512", "avxvnniint16",
                    "sha512", "sm4", "avx512vp2intersect", "usermsr", "prefetchi"):
        if feature in have and not have[feature]:
            return feature
    pytest.skip("this host has every feature tried")


def _weights_4tib(files: Files) -> bytes:
    """An npy-style lie: the part and the plan both declare 4 TiB of weights."""
    manifest = _manifest(files)
    manifest["parts"]["weights.bin"]["bytes"] = 4 << 40
    manifest["plan"]["weights_bytes"] = 4 << 40
    return _pack({**files, "manifest.json": json.dumps(manifest).encode()})


# Each case: a name, a function from the saved artifact's files to damaged bytes, and the
# words the error must contain (the check that failed).
CASES: list[tuple[str, Callable[[Files, bytes], bytes], str]] = [
    ("empty file", lambda f, d: b"", "container check: not a readable zip"),
    ("not a zip", lambda f, d: b"hello" * 100, "container check: not a readable zip"),
    ("truncated to 30 bytes", lambda f, d: d[:30], "container check: not a readable zip"),
    ("truncated to half", lambda f, d: d[:len(d) // 2], "container check: not a readable zip"),
    ("truncated by one byte", lambda f, d: d[:-1], "container check: not a readable zip"),
    ("truncated before the directory", lambda f, d: d[:-22], "container check: not a readable zip"),
    ("bit flip in the code, zip CRC not fixed", lambda f, d: _flip(d, d.find(b"\x7fELF") + 200),
     "container check: not a readable zip"),
    ("bit flip in the code, repacked", lambda f, d: _pack({**f, "code.bin":
                                                           _flip(f["code.bin"], 300)}),
     "digest check: part code.bin"),
    ("bit flip in the ELF header, repacked",
     lambda f, d: _pack({**f, "code.bin": _flip(f["code.bin"], 0x28)}), "digest check"),
    ("bit flip in the weights, repacked",
     lambda f, d: _pack({**f, "weights.bin": _flip(f["weights.bin"], 17)}),
     "digest check: part weights.bin"),
    ("weights changed, digest updated", lambda f, d: _rehash(f, "weights.bin",
                                                              _flip(f["weights.bin"], 5)),
     "contract check"),
    ("code replaced by random bytes, digest updated",
     lambda f, d: _rehash(f, "code.bin", np.random.default_rng(0).bytes(4096)),
     "not a well-formed object"),
    ("code truncated, digest updated",
     lambda f, d: _rehash(f, "code.bin", f["code.bin"][:100]), "not a well-formed object"),
    ("code without its contract section, digest updated",
     lambda f, d: _rehash(f, "code.bin", f["code.bin"].replace(b".strataml.contract",
                                                                 b".strataml.contrakt")),
     "no contract digest"),
    ("format version 0", lambda f, d: _with_manifest(f, _set("format_version", 0)),
     "version check"),
    ("format version 1", lambda f, d: _with_manifest(f, _set("format_version", 1)),
     "version check"),
    ("format version 3", lambda f, d: _with_manifest(f, _set("format_version", 3)),
     "version check"),
    ("format version as a string", lambda f, d: _with_manifest(f, _set("format_version", "2")),
     "version check"),
    ("format version as a float", lambda f, d: _with_manifest(f, _set("format_version", 2.0)),
     "version check"),
    ("another kernel ABI", lambda f, d: _with_manifest(f, _set("abi_version", 2)),
     "version check"),
    ("another format", lambda f, d: _with_manifest(f, _set("format", "other")),
     "not a strataml artifact"),
    ("manifest is a JSON list", lambda f, d: _pack({**f, "manifest.json": b"[1, 2]"}),
     "not an object"),
    ("manifest is not JSON", lambda f, d: _pack({**f, "manifest.json": b"{nope"}), "not JSON"),
    ("manifest is not UTF-8", lambda f, d: _pack({**f, "manifest.json": b"\xff\xfe{"}),
     "not JSON"),
    ("manifest lacks the plan", lambda f, d: _with_manifest(f, _drop("plan")), "lacks 'plan'"),
    ("manifest lacks the parts", lambda f, d: _with_manifest(f, _drop("parts")),
     "lacks 'parts'"),
    ("plan lacks the arena size", lambda f, d: _with_manifest(f, _drop("plan.arena_bytes")),
     "lacks 'arena_bytes'"),
    ("plan lacks its inputs", lambda f, d: _with_manifest(f, _drop("plan.inputs")),
     "lacks 'inputs'"),
    ("dtype float33", lambda f, d: _with_manifest(f, _set("plan.inputs.0.dtype", "float33")),
     "not a dtype"),
    ("shape with a negative dim", lambda f, d: _with_manifest(f, _set("plan.inputs.0.shape",
                                                                      [-3, 8])),
     "not a shape"),
    ("shape as a string", lambda f, d: _with_manifest(f, _set("plan.inputs.0.shape", "3x8")),
     "must be a list"),
    ("region 'disk'", lambda f, d: _with_manifest(f, _set("plan.outputs.0.region", "disk")),
     "not one of"),
    ("changed input dim", lambda f, d: _with_manifest(f, _set("plan.inputs.0.shape", [3, 9])),
     "contract check"),
    ("changed output dim", lambda f, d: _with_manifest(f, _set("plan.outputs.1.shape", [3, 5])),
     "contract check"),
    ("smaller arena", lambda f, d: _with_manifest(f, _set("plan.arena_bytes", 0)),
     "contract check"),
    ("arena of 1 TiB + 1", lambda f, d: _with_manifest(f, _set("plan.arena_bytes",
                                                                (1 << 40) + 1)),
     "outside [0"),
    ("weight offset moved", lambda f, d: _with_manifest(f, _set("plan.weights.0.offset", 64)),
     "contract check"),
    ("weight offset outside the blob",
     lambda f, d: _with_manifest(f, _set("plan.weights.0.offset", 1 << 30)), "plan check"),
    ("output io entry out of the table",
     lambda f, d: _with_manifest(f, _set("plan.outputs.0.offset", 99)), "plan check"),
    ("kernel argument in region 7",
     lambda f, d: _with_manifest(f, _set("plan.calls.0.args.0", [7, 0])), "plan check"),
    ("kernel argument past the arena",
     lambda f, d: _with_manifest(f, _set("plan.calls.0.args.0", [0, 1 << 39])), "plan check"),
    ("native library path", lambda f, d: _with_manifest(f, _set("plan.native_libs",
                                                                ["../../tmp/evil"])),
     "not a library name"),
    ("entry symbol injection", lambda f, d: _with_manifest(f, _set("plan.entry", "a; rm")),
     "not a symbol"),
    ("threads negative", lambda f, d: _with_manifest(f, _set("plan.num_threads", -1)),
     "outside [0"),
    ("weights part and plan claim 4 TiB", lambda f, d: _weights_4tib(f), "outside [0"),
    ("unknown device", lambda f, d: _with_manifest(f, _set("info.device", "tpu9")),
     "unknown device"),
    ("info is a list", lambda f, d: _with_manifest(f, _set("info", [])), "info"),
    ("foreign architecture", lambda f, d: _with_manifest(
        f, _set("executable.triple", "aarch64-unknown-linux-gnu")), "this host cannot run"),
    ("CPU feature the host lacks", lambda f, d: _with_manifest(
        f, lambda m: m["executable"]["features"].append(_missing_host_feature())),
     "features this host lacks"),
    ("feature list dropped (contract)", lambda f, d: _with_manifest(
        f, _set("executable.features", [])), "contract check"),
    ("path outside the artifact", lambda f, d: _pack({**f, "../evil.o": b"x"}),
     "points outside"),
    ("absolute path", lambda f, d: _pack({**f, "/etc/evil": b"x"}), "points outside"),
    ("unexpected entry", lambda f, d: _pack({**f, "extra.bin": b"x"}), "unexpected entry"),
    ("missing code part", lambda f, d: _pack({k: v for k, v in f.items() if k != "code.bin"}),
     "missing part code.bin"),
    ("missing weights part",
     lambda f, d: _pack({k: v for k, v in f.items() if k != "weights.bin"}),
     "missing part weights.bin"),
    ("zip-bomb manifest (256 MiB deflated)", lambda f, d: _pack(
        {**f, "manifest.json": b" " * (256 << 20)}, {"manifest.json": zipfile.ZIP_DEFLATED}),
     "compressed"),
    ("weights size differs from the plan", lambda f, d: _rehash(f, "weights.bin",
                                                                 f["weights.bin"] + b"\0" * 64),
     "size check"),
]

@pytest.mark.parametrize(("damage", "expect"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_damaged_artifact_is_refused(saved: tuple[bytes, list[np.ndarray]], tmp_path: Path,
                                     damage: Callable[[Files, bytes], bytes],
                                     expect: str) -> None:
    data, _ = saved
    path = tmp_path / "damaged.smod"
    path.write_bytes(damage(_files(data), data))
    with pytest.raises(ArtifactError) as info:
        strataml.load(path)
    assert expect in str(info.value), str(info.value)
    assert str(path) in str(info.value)


def test_undamaged_artifact_loads_and_matches(saved: tuple[bytes, list[np.ndarray]],
                                              tmp_path: Path) -> None:
    data, expected = saved
    path = tmp_path / "ok.smod"
    path.write_bytes(data)
    for got, want in zip(strataml.load(path).run({"x": X}), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # Repacking alone (new zip, same parts) changes nothing the checks see.
    path.write_bytes(_pack(_files(data)))
    strataml.load(path).run({"x": X})


def test_format_is_documented_by_the_manifest(saved: tuple[bytes, list[np.ndarray]]) -> None:
    manifest = _manifest(_files(saved[0]))
    assert manifest["format"] == artifact.FORMAT
    assert manifest["format_version"] == artifact.FORMAT_VERSION
    for name in ("code.bin", "weights.bin"):
        assert set(manifest["parts"][name]) == {"bytes", "sha256"}
    assert "avx2" in manifest["executable"]["features"] or \
        not host_target().has("avx2")


def test_code_built_for_a_feature_the_host_lacks_is_refused(tmp_path: Path) -> None:
    """A real build (not a manifest edit): the target names a feature this CPU lacks."""
    feature = _missing_host_feature()
    target = host_target()
    target = Target(**{**target.__dict__,
                       "features": target.features.replace(f"-{feature}", f"+{feature}")})
    path = tmp_path / "feature.smod"
    strataml.compile(_model(), target=target).save(path)
    with pytest.raises(ArtifactError, match=f"features this host lacks: .*{feature}"):
        strataml.load(path)


def test_oversized_manifest_is_not_read(saved: tuple[bytes, list[np.ndarray]], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact, "MAX_MANIFEST_BYTES", 1024)
    path = tmp_path / "big.smod"
    path.write_bytes(saved[0])
    with pytest.raises(ArtifactError, match=r"manifest check: .* over the"):
        strataml.load(path)


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "m.smod"
    model = strataml.compile(_model())
    model.save(path)
    model.save(path)  # over an existing artifact
    assert [p.name for p in tmp_path.iterdir()] == ["m.smod"]
    strataml.load(path)


def test_object_parser_survives_fuzzing(saved: tuple[bytes, list[np.ndarray]]) -> None:
    """The bounds-checked ELF reader either reads or refuses: never an IndexError, a struct
    error or a read past the data."""
    code = _files(saved[0])["code.bin"]
    assert ElfObject(code).section(".strataml.contract") is not None
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(3000):
        b = bytearray(code)
        for at in rng.integers(0, len(b), rng.integers(1, 8)):
            b[at] = rng.integers(0, 256)
        if rng.random() < 0.2:
            b = b[:rng.integers(0, len(b))]
        try:
            ElfObject(bytes(b)).section(".strataml.contract")
        except ObjectFileError:
            refused += 1
    assert 0 < refused < 3000

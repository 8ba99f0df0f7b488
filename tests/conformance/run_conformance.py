"""Run ONNX's node conformance cases against strataml and print per-operator results.

The cases are built in memory with `onnx.backend.test.case.node.collect_testcases()` (the
wheel does not ship their data folder). Each case runs in a worker process with a time
limit, so a crash or a hang in generated code costs one case, not the run: a worker that
dies or overruns is replaced and the case is recorded as an error.

Outputs are compared the way ONNX's own runner does: same count, shape and dtype, then
`assert_allclose` with the case's rtol/atol (1e-3 / 1e-7 by default), NaNs equal.

    python tests/conformance/run_conformance.py [FILTER] [--json PATH] [--jobs N]

FILTER keeps the cases whose operator name (or case name) contains it (case-insensitive).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

STATUSES = ("pass", "fail", "error", "unsupported")
_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


@dataclass
class CaseResult:
    name: str
    op: str
    status: str
    message: str = ""
    seconds: float = 0.0


def collect_cases() -> list[Any]:
    """ONNX's node cases, built in memory (the generators warn on purpose; keep quiet)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return list(collect_testcases(None))


def case_ops(cases: Sequence[Any]) -> dict[str, str]:
    """Operator of each case. Expanded (function-body) cases count under their operator."""
    single = {c.name: c.model.graph.node[0].op_type for c in cases
              if len(c.model.graph.node) == 1}
    out = {}
    for c in cases:
        if c.name in single:
            out[c.name] = single[c.name]
            continue
        base = _EXPANDED.sub("", c.name)
        op = single.get(base)
        if op is None:  # a multi-node case with no single-node twin
            ops = Counter(n.op_type for n in c.model.graph.node)
            op = ops.most_common(1)[0][0] if ops else "?"
        out[c.name] = op
    return out


def assert_similar_outputs(ref_outputs: Sequence[Any], outputs: Sequence[Any], rtol: float,
                           atol: float) -> None:
    """ONNX's comparison (onnx.backend.test.runner.Runner.assert_similar_outputs)."""
    np.testing.assert_equal(len(outputs), len(ref_outputs))
    for i in range(len(outputs)):
        if isinstance(ref_outputs[i], list | tuple):
            if not isinstance(outputs[i], list | tuple):
                raise AssertionError(f"output {i}: expected a sequence, got "
                                     f"{type(outputs[i]).__name__}")
            assert_similar_outputs(ref_outputs[i], outputs[i], rtol, atol)
            continue
        out, ref = np.asarray(outputs[i]), np.asarray(ref_outputs[i])
        np.testing.assert_array_equal(out.shape, ref.shape,
                                      err_msg=f"Output {i} has incorrect shape")
        if ref.dtype == object:
            np.testing.assert_array_equal(out, ref)
            continue
        np.testing.assert_equal(out.dtype, ref.dtype)
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)


def _to_numpy(value: Any) -> Any:
    """Data sets built in memory may hold TensorProtos where the data files hold arrays."""
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list | tuple):
        return [_to_numpy(v) for v in value]
    return value


def run_case(case: Any) -> tuple[str, str]:
    """(status, message) for one case, in this process."""
    from strataml import onnx_backend

    try:
        rep = onnx_backend.prepare(case.model, "CPU")
    except NotImplementedError as exc:
        return "unsupported", _first_line(exc)
    except Exception as exc:  # noqa: BLE001 - every failure is a result, not a crash
        return "error", f"prepare: {type(exc).__name__}: {_first_line(exc)}"
    for raw_inputs, raw_expected in case.data_sets:
        inputs, expected = _to_numpy(raw_inputs), _to_numpy(raw_expected)
        try:
            with np.errstate(all="ignore"):
                outputs = list(rep.run(inputs))
        except NotImplementedError as exc:
            return "unsupported", _first_line(exc)
        except Exception as exc:  # noqa: BLE001
            return "error", f"run: {type(exc).__name__}: {_first_line(exc)}"
        try:
            assert_similar_outputs(expected, outputs, case.rtol, case.atol)
        except AssertionError as exc:
            return "fail", " ".join(str(exc).split())[:300]
    return "pass", ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # UnsupportedOpError lists problems on the following lines: show the first one.
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1].lstrip("- ")[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


# ---------------------------------------------------------------- worker processes

_CASES: list[Any] = []  # set before forking so workers inherit the built cases


def _worker(conn: Connection) -> None:
    while True:
        try:
            index = conn.recv()
        except EOFError:
            return
        if index is None:
            return
        start = time.perf_counter()
        try:
            status, message = run_case(_CASES[index])
        except Exception:  # noqa: BLE001
            status, message = "error", traceback.format_exc().strip().splitlines()[-1]
        conn.send((index, status, message, time.perf_counter() - start))


class _Slot:
    """One worker process and the case it is running."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.started = 0.0

    def submit(self, index: int) -> None:
        self.index, self.started = index, time.perf_counter()
        self.conn.send(index)

    def restart(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self.start()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)


def run_all(indices: list[int], jobs: int, timeout: float, verbose: bool
            ) -> dict[int, tuple[str, str, float]]:
    ctx = mp.get_context("fork")
    slots = [_Slot(ctx) for _ in range(max(1, min(jobs, len(indices))))]
    pending = list(reversed(indices))
    results: dict[int, tuple[str, str, float]] = {}

    def record(index: int, status: str, message: str, seconds: float) -> None:
        results[index] = (status, message, seconds)
        if verbose:
            print(f"[{len(results)}/{len(indices)}] {_CASES[index].name}: {status}"
                  f"{' - ' + message if message else ''}", flush=True)

    for slot in slots:
        if pending:
            slot.submit(pending.pop())
    while any(s.index is not None for s in slots):
        busy = [s for s in slots if s.index is not None]
        ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=0.5)
        now = time.perf_counter()
        for slot in busy:
            index = slot.index
            assert index is not None
            if slot.conn in ready:
                try:
                    _, status, message, seconds = slot.conn.recv()
                except (EOFError, OSError):
                    status, message, seconds = "error", "worker crashed", now - slot.started
                    slot.restart()
                record(index, status, message, seconds)
            elif slot.proc.sentinel in ready or not slot.proc.is_alive():
                code = slot.proc.exitcode
                record(index, "error", f"worker crashed (exit code {code})",
                       now - slot.started)
                slot.restart()
            elif now - slot.started > timeout:
                record(index, "error", f"timed out after {timeout:.0f} s", now - slot.started)
                slot.restart()
            else:
                continue
            slot.index = None
            if pending:
                slot.submit(pending.pop())
    for slot in slots:
        slot.stop()
    return results


# ---------------------------------------------------------------- report


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    per_op: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        per_op[r.op][r.status] += 1
    totals = Counter(r.status for r in results)
    total = len(results)
    return {
        "total": total,
        "counts": {s: totals[s] for s in STATUSES},
        "pass_percent": round(100.0 * totals["pass"] / total, 2) if total else 0.0,
        "per_op": {op: {s: c[s] for s in STATUSES} for op, c in sorted(per_op.items())},
        "cases": [{"name": r.name, "op": r.op, "status": r.status, "message": r.message,
                   "seconds": round(r.seconds, 3)} for r in results],
    }


def print_table(summary: dict[str, Any]) -> None:
    header = f"{'operator':<36} {'pass':>5} {'fail':>5} {'error':>5} {'unsup':>5}"
    print(header)
    print("-" * len(header))
    for op, c in summary["per_op"].items():
        print(f"{op:<36} {c['pass']:>5} {c['fail']:>5} {c['error']:>5} {c['unsupported']:>5}")
    print("-" * len(header))
    c = summary["counts"]
    print(f"{'TOTAL':<36} {c['pass']:>5} {c['fail']:>5} {c['error']:>5} {c['unsupported']:>5}")
    print(f"passed {c['pass']}/{summary['total']} ({summary['pass_percent']:.2f}%)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filter", nargs="?", default="",
                        help="keep cases whose operator or name contains this")
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per case before it counts as an error (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case")
    parser.add_argument("--failures", action="store_true",
                        help="list every case that did not pass, with its message")
    args = parser.parse_args(argv)

    # One thread per worker: the workers are the parallelism.
    os.environ.setdefault("STRATAML_NUM_THREADS", "1")
    start = time.perf_counter()
    cases = collect_cases()
    ops = case_ops(cases)
    needle = args.filter.lower()
    indices = [i for i, c in enumerate(cases)
               if not needle or needle in ops[c.name].lower() or needle in c.name.lower()]
    _CASES[:] = cases
    import strataml.onnx_backend  # noqa: F401  (imported once, inherited by the workers)

    raw = run_all(indices, args.jobs, args.timeout, args.verbose)
    results = [CaseResult(cases[i].name, ops[cases[i].name], *raw[i]) for i in indices]
    summary = summarize(results)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print_table(summary)
    print(f"wall time {summary['seconds']} s with {args.jobs} worker(s)")
    if args.failures:
        for r in results:
            if r.status != "pass":
                print(f"{r.status:<11} {r.name}: {r.message}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A plan step repeated over a run-time count: the entry's loop around one kernel call.

A batch-separable kernel is compiled for one sample (passes/lower/batch_loop.py); the plan
entry calls it once per sample, each buffer advanced by its per-sample stride (0 for one
every sample shares: weights, a temp). The loop lives in the entry, not in the kernel, so the
kernel's code is exactly the static one-sample build's.
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

I64 = ir.IntType(64)


def emit_repeated_call(b: ir.IRBuilder, callee: ir.Function, pointers: Sequence[ir.Value],
                       strides: Sequence[int], extra: Sequence[ir.Value], count: ir.Value
                       ) -> None:
    """`callee(pointers[k] + i * strides[k] ..., *extra)` for i in [0, count), with `b`
    left at the block after the loop. Every operand is computed before the loop (in blocks
    that dominate the one after it), so values cached by the caller stay usable there."""
    types = callee.function_type.args
    pre = b.block
    fn = pre.function
    head = fn.append_basic_block(f"{callee.name}.repeat")
    body = fn.append_basic_block(f"{callee.name}.sample")
    done = fn.append_basic_block(f"{callee.name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name="sample")
    i.add_incoming(ir.Constant(I64, 0), pre)
    b.cbranch(b.icmp_signed("<", i, count), body, done)
    b.position_at_end(body)
    args: list[ir.Value] = []
    for raw, stride, ptype in zip(pointers, strides, types, strict=False):
        if stride:
            raw = b.gep(raw, [b.mul(i, ir.Constant(I64, stride))], inbounds=True)
        args.append(b.bitcast(raw, ptype))
    b.call(callee, [*args, *extra])
    i.add_incoming(b.add(i, ir.Constant(I64, 1)), b.block)
    b.branch(head)
    b.position_at_end(done)

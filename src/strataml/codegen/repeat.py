"""A plan step repeated over a run-time count: the entry's loop around one kernel call.

A batch-separable kernel is compiled for one sample (passes/lower/batch_loop.py); the plan
entry calls it once per sample, each buffer advanced by its per-sample stride (0 for one
every sample shares: weights). The loop lives in the entry, not in the kernel, so the
kernel's code is exactly the static one-sample build's.

Samples on the threads: a static build for a batch of N runs the batch as every stage's
outermost parallel loop, each sample on one thread from its first stage to its last (its
intermediates stay in that core's cache, and a kernel opens one parallel region, not one
per sample and stage). Looping the one-sample kernel, whose parallel loops split each sample
between the threads, lost that: ResNet-18 at batch 4 on 2 threads 1.09x the static build's
kernel time, the same code at 1 thread 1.01x. So where the samples may run side by side
(every buffer they write advances per sample: temps too, see `phases._plan`) and there is
work enough (`min_samples`), the entry hands the samples to the thread pool as one parallel
loop whose chunks call the kernel; the kernel's own parallel loops then run serially on the
calling thread (the pool runs a loop nested in another serially). One sample, or one thread,
takes the plain loop, and the kernel splits the sample between the threads as at batch 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from strataml.ir.dialects.loop import For, LoopFunction, Stmt, Store

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.IntType(8).as_pointer()
WORKER_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64, I64])
# A repeated plan step: (context, sample count); see `step_function`.
STEP_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64])

# The innermost iterations a parallel loop of a static kernel needs before the pool pays
# (the static rules' PARALLEL_MIN_WORK): a one-sample kernel too small for its own parallel
# loop takes the pool once this many samples' work together reach it.
SAMPLES_MIN_WORK = 1 << 15


def min_samples(fn: LoopFunction, strides: Sequence[int]) -> int:
    """The fewest samples for which the entry runs `fn`'s samples on the thread pool: 2
    where the one-sample kernel has a parallel loop (the static rules found one sample
    worth sharing), else as many as make SAMPLES_MIN_WORK innermost iterations; 0 (never)
    where a buffer every sample shares (stride 0) is written, so samples would race on it,
    or the work is not a constant."""
    written = _stored(fn.body)
    for p, stride in zip(fn.params, strides, strict=False):
        if not stride and p.name in written:
            return 0
    if _has_parallel(fn.body):
        return 2
    work = _work(fn.body)
    if not work:
        return 0
    return max(2, -(-SAMPLES_MIN_WORK // work))


def emit_repeated_call(b: ir.IRBuilder, callee: ir.Function, pointers: Sequence[ir.Value],
                       strides: Sequence[int], extra: Sequence[ir.Value], count: ir.Value,
                       step_name: str, threads: ir.GlobalVariable | None = None,
                       pool: ir.Function | None = None, least: int = 0) -> None:
    """`callee(pointers[k] + i * strides[k] ..., *extra)` for i in [0, count), with `b`
    left after the call. The entry fills a context (the pointers, then the extra i64s) and
    calls the step function `step_name(ctx, count)` (`step_function`), which a profile
    calls too: it then times the samples exactly as `run` runs them. Every operand is
    computed before the call, so values cached by the caller stay usable after it."""
    step = step_function(b.module, callee, strides, len(pointers), len(extra), step_name,
                         threads, pool, least)
    ctx = b.alloca(PTR, size=max(1, len(pointers) + len(extra)), name="samples")
    for k, p in enumerate(pointers):
        b.store(b.bitcast(p, PTR), b.gep(ctx, [ir.Constant(I32, k)], inbounds=True))
    for k, v in enumerate(extra):
        b.store(b.inttoptr(v, PTR), b.gep(ctx, [ir.Constant(I32, len(pointers) + k)],
                                          inbounds=True))
    b.call(step, [b.bitcast(ctx, PTR), count])


def step_function(module: ir.Module, callee: ir.Function, strides: Sequence[int],
                  n_pointers: int, n_extra: int, name: str,
                  threads: ir.GlobalVariable | None = None, pool: ir.Function | None = None,
                  least: int = 0) -> ir.Function:
    """`void <name>(ptr ctx, i64 count)`: one repeated plan step, with external linkage so
    `Executor.timeline` can call it. With `threads` and `pool` and `least` >= 2, the
    samples go to the thread pool (`pool(worker, ctx, count, threads)`) when there are at
    least `least` of them and more than one thread; otherwise (and always without a pool)
    they run one after another on the calling thread."""
    step = ir.Function(module, STEP_TYPE, name=name)
    step.attributes.add("nounwind")
    ctx, count = step.args
    worker = _worker(module, callee, strides, n_pointers, n_extra)
    b = ir.IRBuilder(step.append_basic_block("entry"))
    if threads is None or pool is None or least < 2:
        b.call(worker, [ctx, ir.Constant(I64, 0), count])
        b.ret_void()
        return step
    n = b.load(threads)
    shared = b.and_(b.icmp_signed(">", n, ir.Constant(I32, 1)),
                    b.icmp_signed(">=", count, ir.Constant(I64, least)))
    on_pool = step.append_basic_block("samples")
    serial = step.append_basic_block("serial")
    b.cbranch(shared, on_pool, serial)
    b.position_at_end(on_pool)
    b.call(pool, [worker, ctx, count, n])
    b.ret_void()
    b.position_at_end(serial)
    b.call(worker, [ctx, ir.Constant(I64, 0), count])
    b.ret_void()
    return step


def _sample_loop(b: ir.IRBuilder, callee: ir.Function, pointers: Sequence[ir.Value],
                 strides: Sequence[int], extra: Sequence[ir.Value], begin: ir.Value,
                 end: ir.Value) -> None:
    """The samples [begin, end) one after another, `b` left after the loop."""
    types = callee.function_type.args
    pre = b.block
    fn = pre.function
    head = fn.append_basic_block(f"{callee.name}.repeat")
    body = fn.append_basic_block(f"{callee.name}.sample")
    done = fn.append_basic_block(f"{callee.name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name="sample")
    i.add_incoming(begin, pre)
    b.cbranch(b.icmp_signed("<", i, end), body, done)
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


def _worker(module: ir.Module, callee: ir.Function, strides: Sequence[int], n_pointers: int,
            n_extra: int) -> ir.Function:
    """`void <callee>.samples.worker(ptr ctx, i64 begin, i64 end)`: the pool's chunk of
    samples, from the context the entry fills (the pointers, then the extra i64s)."""
    name = f"{callee.name}.samples.worker"
    k = 1
    while name in module.globals:
        k += 1
        name = f"{callee.name}.samples{k}.worker"
    worker = ir.Function(module, WORKER_TYPE, name=name)
    worker.linkage = "internal"
    worker.attributes.add("nounwind")
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    table = b.bitcast(worker.args[0], ir.PointerType(PTR))
    slots = [b.load(b.gep(table, [ir.Constant(I32, k)], inbounds=True))
             for k in range(n_pointers + n_extra)]
    pointers = slots[:n_pointers]
    extra = [b.ptrtoint(v, I64) for v in slots[n_pointers:]]
    _sample_loop(b, callee, pointers, strides, extra, worker.args[1], worker.args[2])
    b.ret_void()
    return worker


def _stored(body: Sequence[Stmt]) -> set[str]:
    """The buffers a body stores to."""
    out: set[str] = set()
    for s in body:
        if isinstance(s, Store):
            out.add(s.buffer)
        elif isinstance(s, For):
            out |= _stored(s.body)
    return out


def _has_parallel(body: Sequence[Stmt]) -> bool:
    return any(isinstance(s, For) and (s.kind == "parallel" or _has_parallel(s.body))
               for s in body)


def _work(body: Sequence[Stmt]) -> int:
    """Innermost iterations of a body (each loop's extent times its body's, a statement
    counting one); 0 where an extent is not a constant."""
    total = 0
    for s in body:
        if isinstance(s, For):
            if not isinstance(s.extent, int):
                return 0
            inner = _work(s.body)
            if not inner:
                return 0
            total += s.extent * inner
        else:
            total += 1
    return total

"""Loop dialect -> LLVM IR (llvmlite) -> optimised object code for a Target.

One LLVM function per kernel (`void k(ptr noalias p0, ..., i64 dim0, ...)`: its buffers,
then its run-time sizes, if any), plus an entry function that runs the static execution
plan: `void entry(ptr arena, ptr weights, ptr io)` calls each kernel with buffer addresses at
fixed offsets into the arena or the weights, or taken from the io table (the caller's input
arrays and result arrays, one pointer each). Where a kernel takes sizes, the entry takes a
fourth argument, `ptr dims`: the model's table of run-time sizes (i64 each), from which each
call passes its own, and arena offsets that are formulas over the dims are computed from it
(codegen/sizes.py); a plan without sizes keeps the three-argument entry.

A `parallel` loop is outlined into `void k.parN(ptr noalias p0, ..., i64 begin, i64 end)`
and a worker `void k.parN.worker(ptr ctx, i64 begin, i64 end)` (ctx: the kernel's buffer
pointers, then the values of the enclosing loop variables and run-time sizes the loop reads,
which the outlined function takes as extra i64 arguments) that runs one chunk of the
iterations; the kernel hands the worker to strataml's thread pool
(`strataml_parallel_for(worker, ctx, extent, threads)`, which the runtime provides:
`runtime/thread_pool.py`; the extent may be a run-time value) with the thread count read
from the module global `strataml_num_threads`, which the runtime sets. With one thread
the loop runs directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import llvmlite.binding as llvm
from llvmlite import ir
from llvmlite.binding import ffi

from strataml.codegen.repeat import emit_repeated_call, min_samples
from strataml.codegen.sizes import SizeEmitter, floor_divide_by_size
from strataml.codegen.vector_math import VECTOR_MATH, MathFunction, vector_math
from strataml.errors import CodegenError
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    Extent,
    For,
    LoopFunction,
    Prefetch,
    Stmt,
    Store,
)
from strataml.ir.expr import (
    Binary,
    Broadcast,
    Cast,
    Compare,
    Const,
    Expr,
    Load,
    Select,
    Unary,
    Var,
    binary,
)
from strataml.ir.size_exprs import expr_to_size
from strataml.ir.types import (
    FLOAT_DTYPES,
    UNSIGNED_DTYPES,
    is_float,
    itemsize,
    scalar_dtype,
    split_vector,
)
from strataml.options import Target
from strataml.runtime.hal import CONTRACT_SECTION, KernelCall, step_function_name
from strataml.sizes import SizeExpr, size_interval

_INT_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64, "uint8": 8, "uint16": 16,
             "uint32": 32, "uint64": 64}
_LIBM_UNARY = {"tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
               "atanh", "erf"}
_INTRINSIC_UNARY = {"exp": "llvm.exp", "log": "llvm.log", "sqrt": "llvm.sqrt",
                    "sin": "llvm.sin", "cos": "llvm.cos", "floor": "llvm.floor",
                    "ceil": "llvm.ceil", "trunc": "llvm.trunc", "round": "llvm.roundeven",
                    "abs": "llvm.fabs"}
_FLOAT_SUFFIX = {"float32": "f32", "float64": "f64", "float16": "f16"}
_FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
I64 = ir.IntType(64)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
PTR = ir.PointerType(ir.IntType(8))
NUM_THREADS_GLOBAL = "strataml_num_threads"
FAULT_GLOBAL = "strataml_fault"  # FAULT_DIVIDE_BY_ZERO when an integer division met a zero
FAULT_DIVIDE_BY_ZERO = 1
CONTRACT_SYMBOL = "strataml_contract"
WORKER_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64, I64])
POOL_ENTRY = "strataml_parallel_for"  # runtime/thread_pool.py defines it


def value_type(dtype: str) -> ir.Type:
    """Register type: bool is i1."""
    base, lanes = split_vector(dtype)
    if lanes > 1:
        return ir.VectorType(value_type(base), lanes)
    if dtype == "bool":
        return ir.IntType(1)
    return memory_type(dtype)


def memory_type(dtype: str) -> ir.Type:
    base, lanes = split_vector(dtype)
    if lanes > 1:
        return ir.VectorType(memory_type(base), lanes)
    if dtype == "float32":
        return ir.FloatType()
    if dtype == "float64":
        return ir.DoubleType()
    if dtype == "float16":
        return ir.HalfType()
    if dtype == "bool":
        return ir.IntType(8)
    return ir.IntType(_INT_BITS[dtype])


class _FunctionEmitter:
    """Emits one loop function (or one outlined parallel worker of it)."""

    def __init__(self, module: ir.Module, fn: LoopFunction,
                 worker_of: _FunctionEmitter | None = None,
                 captured: Sequence[Var] = (), flush_denormals: bool = False,
                 math: Mapping[str, MathFunction] = VECTOR_MATH) -> None:
        self.module = module
        self.loop_fn = fn
        self.flush_denormals = flush_denormals
        self.math = math
        self.params: dict[str, ir.Value] = {}
        self.workers = 0
        arg_types: list[ir.Type] = [ir.PointerType(memory_type(p.dtype)) for p in fn.params]
        shared = _shared_scratch(fn)
        if worker_of is None:
            self.fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
                *arg_types, *(I64 for _ in fn.dims)]), name=fn.name)
        else:
            # An outlined parallel loop: the buffers, the values of enclosing loop variables
            # it reads, and its [begin, end) iteration range.
            worker_of.workers += 1
            self.fn = ir.Function(
                module, ir.FunctionType(ir.VoidType(), [
                    *arg_types, *(ir.PointerType(memory_type(s.dtype)) for s in shared),
                    *(I64 for _ in captured), I64, I64]),
                name=f"{worker_of.fn.name}.par{worker_of.workers}")
            self.fn.linkage = "internal"
        self.fn.attributes.add("nounwind")
        entry = self.fn.append_basic_block("entry")
        self.alloca_builder = ir.IRBuilder(entry)
        body = self.fn.append_basic_block("body")
        self.builder = ir.IRBuilder(body)
        self.vars: dict[Var, ir.Value] = {}
        self.no_wrap = False  # emitting an index of loop variables and constants only
        # The caller's floating-point mode, restored on return (a kernel or a parallel chunk).
        self.saved_fp_mode = _flush_denormals(self.alloca_builder) \
            if flush_denormals and worker_of is None else None
        for arg, p in zip(self.fn.args, fn.params, strict=False):
            arg.name = p.name if p.name.isidentifier() else f"p{len(self.params)}"
            if p.name not in fn.aliased:
                arg.add_attribute("noalias")
            self.params[p.name] = arg
        if worker_of is None:
            # (a worker receives the dims it reads among its captured values)
            for d, arg in zip(fn.dims, self.fn.args[len(fn.params):], strict=True):
                arg.name = d.name.lstrip("%")
                self.builder.store(arg, self.slot(d))
        else:
            for s in fn.body:  # scratch rows are per thread
                if isinstance(s, Allocate) and not s.shared:
                    self.stmts([s])
            rest = self.fn.args[len(fn.params):]
            for s, arg in zip(shared, rest, strict=False):
                self.params[s.buffer] = arg
            for v, arg in zip(captured, rest[len(shared):], strict=False):
                self.builder.store(arg, self.slot(v))

    def emit(self) -> None:
        self.stmts(self.loop_fn.body)
        self.finish()

    def finish(self) -> None:
        if self.saved_fp_mode is not None:
            _restore_fp_mode(self.builder, self.saved_fp_mode)
        self.builder.ret_void()
        self.alloca_builder.branch(self.fn.basic_blocks[1])

    def slot(self, v: Var) -> ir.Value:
        if v not in self.vars:
            self.vars[v] = self.alloca_builder.alloca(value_type(v.dtype),
                                                      name=v.name.lstrip("%"))
        return self.vars[v]

    # ------------------------------------------------------------ statements

    def stmts(self, body: Sequence[Stmt]) -> None:
        for s in body:
            if isinstance(s, For) and s.kind == "parallel":
                self.parallel_loop(s)
            elif isinstance(s, For):
                self.loop(s)
            elif isinstance(s, Store):
                self.store(s)
            elif isinstance(s, Prefetch):
                self.prefetch(s)
            elif isinstance(s, Declare):
                self.builder.store(self.expr(s.init), self.slot(s.var))
            elif isinstance(s, Assign):
                self.builder.store(self.accumulate(s) if s.reassociate else self.expr(s.value),
                                   self.slot(s.var))
            elif isinstance(s, Allocate):
                array = self.alloca_builder.alloca(memory_type(s.dtype), size=s.size,
                                                   name=s.buffer)
                array.align = 64
                self.params[s.buffer] = array
            else:
                raise CodegenError(f"unknown statement {type(s).__name__}")

    def parallel_loop(self, s: For) -> None:
        """Outline the loop, and run it on the thread pool through a worker trampoline."""
        captured = _free_index_vars(s)
        for v in captured:
            if v not in self.vars or v.dtype != "int64":
                raise CodegenError(f"{self.loop_fn.name}: parallel loop {s.var.name} reads "
                                   f"{v.name}, which is not an enclosing loop index")
        body = _FunctionEmitter(self.module, self.loop_fn, worker_of=self, captured=captured,
                                 flush_denormals=self.flush_denormals, math=self.math)
        body.loop(s, body.fn.args[-2], body.fn.args[-1])
        body.finish()
        # Pointers passed to the workers: the buffers, then the shared scratch buffers.
        pointers = [p.name for p in self.loop_fn.params]
        pointers += [a.buffer for a in _shared_scratch(self.loop_fn)]
        n = len(pointers)
        extent = self.extent(s.extent)

        worker = ir.Function(self.module, WORKER_TYPE, name=f"{body.fn.name}.worker")
        worker.linkage = "internal"
        wb = ir.IRBuilder(worker.append_basic_block("entry"))
        table = wb.bitcast(worker.args[0], ir.PointerType(PTR))
        ptrs = [wb.bitcast(wb.load(wb.gep(table, [ir.Constant(I32, k)], inbounds=True)), t)
                for k, t in enumerate(body.fn.function_type.args[:n])]
        ptrs += [wb.ptrtoint(wb.load(wb.gep(table, [ir.Constant(I32, n + k)], inbounds=True)),
                             I64) for k in range(len(captured))]
        saved = _flush_denormals(wb) if self.flush_denormals else None
        wb.call(body.fn, [*ptrs, worker.args[1], worker.args[2]])
        if saved is not None:
            _restore_fp_mode(wb, saved)
        wb.ret_void()

        b = self.builder
        ctx = self.alloca_builder.alloca(PTR, size=n + len(captured), name="ctx")
        for k, name in enumerate(pointers):
            b.store(b.bitcast(self.params[name], PTR),
                    b.gep(ctx, [ir.Constant(I32, k)], inbounds=True))
        values = [b.load(self.slot(v)) for v in captured]
        for k, value in enumerate(values):
            b.store(b.inttoptr(value, PTR), b.gep(ctx, [ir.Constant(I32, n + k)], inbounds=True))
        ctx_ptr = b.bitcast(ctx, PTR)
        threads = b.load(_threads_global(self.module))
        many = b.icmp_signed(">", threads, ir.Constant(I32, 1))
        work = _run_time_work(s) if self.loop_fn.dims else None
        if work is not None:  # (over run-time sizes: the pool only for enough work)
            many = b.and_(many, b.icmp_signed(">=", self.expr(work),
                                              ir.Constant(I64, RUN_TIME_PARALLEL_MIN_WORK)))
        with b.if_else(many) as (pool, inline):
            with pool:
                pool = _declare(self.module, POOL_ENTRY, ir.VoidType(),
                                [ir.PointerType(WORKER_TYPE), PTR, I64, I32])
                b.call(pool, [worker, ctx_ptr, extent, threads])
            with inline:
                args = [self.params[name] for name in pointers]
                b.call(body.fn, [*args, *values, ir.Constant(I64, 0), extent])

    def loop(self, s: For, begin: ir.Value | None = None, end: ir.Value | None = None) -> None:
        b = self.builder
        # (a symbolic trip count is computed once, before the loop)
        limit = end if end is not None else self.extent(s.extent)
        iv = self.slot(s.var)
        b.store(begin if begin is not None else ir.Constant(I64, 0), iv)
        cond_bb = self.fn.append_basic_block(f"{s.var.name}.cond")
        body_bb = self.fn.append_basic_block(f"{s.var.name}.body")
        exit_bb = self.fn.append_basic_block(f"{s.var.name}.exit")
        b.branch(cond_bb)
        b.position_at_end(cond_bb)
        cur = b.load(iv)
        b.cbranch(b.icmp_signed("<", cur, limit), body_bb, exit_bb)
        b.position_at_end(body_bb)
        self.stmts(s.body)
        b.store(b.add(b.load(iv), ir.Constant(I64, 1), flags=["nsw"]), iv)
        back = b.branch(cond_bb)
        hint = "around-vector" if s.kind in ("serial", "parallel") and _holds_vector_loop(
            s.body) else s.kind
        if hint in _LOOP_HINTS:
            back.set_metadata("llvm.loop", _loop_marker(self.module, hint))
        b.position_at_end(exit_bb)

    def extent(self, n: Extent) -> ir.Value:
        return ir.Constant(I64, n) if isinstance(n, int) else self.expr(n)

    def address(self, buffer: str, index: Expr, dtype: str) -> ir.Value:
        """An index built from loop variables and constants cannot overflow (its terms are
        bounded by the loop extents), so its arithmetic is marked `nsw`: that is what lets
        LLVM see consecutive addresses and load vectors instead of gathering. An index that
        reads data (a gather's indices) keeps wrapping arithmetic, so its clamp stays sound."""
        self.no_wrap = not any(isinstance(x, Load) for x in index.walk())
        try:
            offset = self.expr(index)
        finally:
            self.no_wrap = False
        ptr = self.builder.gep(self.params[buffer], [offset], inbounds=True)
        if split_vector(dtype)[1] > 1:  # a vector access of consecutive elements
            ptr = self.builder.bitcast(ptr, ir.PointerType(memory_type(dtype)))
        return ptr

    def store(self, s: Store) -> None:
        value = self.expr(s.value)
        if s.value.dtype == "bool":
            value = self.builder.zext(value, ir.IntType(8))
        st = self.builder.store(value, self.address(s.buffer, s.index, s.value.dtype))
        st.align = itemsize(scalar_dtype(s.value.dtype))

    def prefetch(self, s: Prefetch) -> None:
        """`llvm.prefetch(ptr, write, L1 locality, data)`, or (read) L2 locality."""
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = _declare(self.module, "llvm.prefetch.p0", ir.VoidType(), [i8p, i32, i32, i32])
        # (a scalar dtype: the element address, whatever the buffer's type)
        ptr = self.builder.bitcast(self.address(s.buffer, s.index, "int8"), i8p)
        write, locality = (1, 3) if s.for_write else (0, 2)
        self.builder.call(fn, [ptr, ir.Constant(i32, write), ir.Constant(i32, locality),
                               ir.Constant(i32, 1)])

    def guarded_select(self, e: Select) -> ir.Value:
        """Branches, so the first arm runs only where the condition holds (its loads may
        be out of bounds elsewhere); LLVM's vectoriser turns them into masked loads."""
        b = self.builder
        cond = self.expr(e.cond)
        taken = self.fn.append_basic_block("guard.then")
        other = self.fn.append_basic_block("guard.else")
        merge = self.fn.append_basic_block("guard.end")
        b.cbranch(cond, taken, other)
        b.position_at_end(taken)
        a = self.expr(e.a)
        taken_end = b.block
        b.branch(merge)
        b.position_at_end(other)
        c = self.expr(e.b)
        other_end = b.block
        b.branch(merge)
        b.position_at_end(merge)
        phi = b.phi(a.type)
        phi.add_incoming(a, taken_end)
        phi.add_incoming(c, other_end)
        return phi

    # ------------------------------------------------------------ expressions

    def expr(self, e: Expr) -> ir.Value:
        b = self.builder
        if isinstance(e, Const):
            return self.const(e)
        if isinstance(e, Var):
            return b.load(self.slot(e))
        if isinstance(e, Load):
            v = b.load(self.address(e.buffer, e.indices[0], e.dtype),
                       align=itemsize(scalar_dtype(e.dtype)))
            return b.icmp_unsigned("!=", v, ir.Constant(ir.IntType(8), 0)) \
                if e.dtype == "bool" else v
        if isinstance(e, Unary):
            return self.unary(e.op, e.x.dtype, self.expr(e.x))
        if isinstance(e, Binary):
            if e.op in ("floordiv", "mod") and _positive_size(e.b):
                return floor_divide_by_size(b, e.op, self.expr(e.a), self.expr(e.b))
            return self.binary(e.op, e.a.dtype, self.expr(e.a), self.expr(e.b))
        if isinstance(e, Compare):
            a, c = self.expr(e.a), self.expr(e.b)
            if is_float(e.a.dtype):
                if e.op == "ne":
                    return b.fcmp_unordered("!=", a, c)
                return b.fcmp_ordered(_FCMP[e.op], a, c)
            if e.a.dtype in UNSIGNED_DTYPES or e.a.dtype == "bool":
                return b.icmp_unsigned(_FCMP[e.op], a, c)
            return b.icmp_signed(_FCMP[e.op], a, c)
        if isinstance(e, Select) and e.guarded:
            return self.guarded_select(e)
        if isinstance(e, Select):
            return b.select(self.expr(e.cond), self.expr(e.a), self.expr(e.b))
        if isinstance(e, Cast):
            return self.cast(self.expr(e.x), e.x.dtype, e.dtype)
        if isinstance(e, Broadcast):
            t = value_type(e.dtype)
            one = b.insert_element(ir.Constant(t, ir.Undefined), self.expr(e.x),
                                   ir.Constant(I32, 0))
            return b.shuffle_vector(one, ir.Constant(t, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, t.count), [0] * t.count))
        raise CodegenError(f"{self.loop_fn.name}: cannot generate code for {type(e).__name__}")

    def accumulate(self, s: Assign) -> ir.Value:
        """acc + x (or acc * x) with `reassoc`: LLVM may keep several partial sums, which
        is what lets it vectorise a reduction loop."""
        v = s.value
        if isinstance(v, Binary) and v.op in ("add", "mul") and is_float(v.dtype):
            fn = self.builder.fadd if v.op == "add" else self.builder.fmul
            return fn(self.expr(v.a), self.expr(v.b), flags=["reassoc", "contract"])
        return self.expr(v)

    def const(self, c: Const) -> ir.Value:
        base, lanes = split_vector(c.dtype)
        if lanes > 1:
            scalar = self.const(Const(base, c.value))
            return ir.Constant(value_type(c.dtype), [scalar.constant] * lanes)
        t = value_type(c.dtype)
        if c.dtype == "bool":
            return ir.Constant(t, int(bool(c.value)))
        if c.dtype in FLOAT_DTYPES:
            return ir.Constant(t, float(c.value))
        bits = _INT_BITS[c.dtype]
        return ir.Constant(t, int(c.value) & ((1 << bits) - 1))

    def intrinsic(self, name: str, dtype: str, args: list[ir.Value],
                  fastmath: tuple[str, ...] = ()) -> ir.Value:
        t = value_type(dtype)
        scalar, lanes = split_vector(dtype)
        suffix = _FLOAT_SUFFIX.get(scalar) or f"i{value_type(scalar).width}"
        full = f"{name}.{suffix}" if lanes == 1 else f"{name}.v{lanes}{suffix}"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(t, [t] * len(args)), name=full)
        return self.builder.call(fn, args, fastmath=fastmath)

    def libm(self, name: str, dtype: str, args: list[ir.Value]) -> ir.Value:
        if dtype == "float16":
            wide = [self.builder.fpext(a, ir.FloatType()) for a in args]
            return self.builder.fptrunc(self.libm(name, "float32", wide), ir.HalfType())
        full = name + ("f" if dtype == "float32" else "")
        t = value_type(dtype)
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(t, [t] * len(args)), name=full)
        return self.builder.call(fn, args)

    def unary(self, op: str, dtype: str, x: ir.Value) -> ir.Value:
        b = self.builder
        if op == "neg":
            return b.fneg(x) if is_float(dtype) else b.neg(x)
        if op == "not":
            return b.not_(x)
        if dtype == "float32" and op in self.math:
            return self.math[op](b, x)
        if is_float(dtype):
            if op in _INTRINSIC_UNARY:
                return self.intrinsic(_INTRINSIC_UNARY[op], dtype, [x])
            if op in _LIBM_UNARY:
                return self.libm(op, dtype, [x])
        elif op == "abs":
            if dtype in UNSIGNED_DTYPES:
                return x
            return b.select(b.icmp_signed("<", x, ir.Constant(x.type, 0)), b.neg(x), x)
        elif op in ("floor", "ceil", "round", "trunc"):
            return x
        raise CodegenError(f"{self.loop_fn.name}: unary {op} on {dtype} is not supported")

    def binary(self, op: str, dtype: str, a: ir.Value, c: ir.Value) -> ir.Value:
        b = self.builder
        if is_float(dtype):
            if op in ("add", "sub", "mul"):
                # `contract` lets LLVM fuse a*b+c into one FMA (one rounding instead of two).
                fn = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul}[op]
                return fn(a, c, flags=["contract"])
            simple = {"div": b.fdiv, "fmod": b.frem}
            if op in simple:
                return simple[op](a, c)
            if op in ("min", "max"):
                # NaN in, NaN out (ONNX Min/Max, a max-reduction over a NaN); the sign of a
                # zero result is left open (`nsz`): x86 then needs vmaxps, a NaN test and a
                # masked move a vector (3 instructions) instead of also ordering -0 below +0
                # (8): a softmax's max pass, 16 lanes at a time, stops being compute-bound.
                name = "llvm.minimum" if op == "min" else "llvm.maximum"
                return self.intrinsic(name, dtype, [a, c], fastmath=("nsz",))
            if op == "pow":
                return self.intrinsic("llvm.pow", dtype, [a, c])
            if op == "mod":  # Python-style: result takes the divisor's sign
                r = b.frem(a, c)
                zero = ir.Constant(a.type, 0.0)
                fix = b.and_(b.fcmp_ordered("!=", r, zero),
                             b.xor(b.fcmp_ordered("<", r, zero), b.fcmp_ordered("<", c, zero)))
                return b.select(fix, b.fadd(r, c), r)
            raise CodegenError(f"{self.loop_fn.name}: binary {op} on {dtype} is not supported")
        unsigned = dtype in UNSIGNED_DTYPES or dtype == "bool"
        if self.no_wrap and op in ("add", "sub", "mul"):
            return {"add": b.add, "sub": b.sub, "mul": b.mul}[op](a, c, flags=["nsw"])
        simple = {"add": b.add, "sub": b.sub, "mul": b.mul, "and": b.and_, "or": b.or_,
                  "xor": b.xor, "shl": b.shl}
        if op in simple:
            return simple[op](a, c)
        if op == "shr":
            return b.lshr(a, c) if unsigned else b.ashr(a, c)
        if op in ("min", "max"):
            cmp = "<" if op == "min" else ">"
            test = b.icmp_unsigned(cmp, a, c) if unsigned else b.icmp_signed(cmp, a, c)
            return b.select(test, a, c)
        if op in ("div", "truncdiv", "floordiv", "mod", "fmod"):
            return self.integer_divide(op, unsigned, a, c)
        if op == "pow":
            fa, fc = (b.sitofp(v, ir.DoubleType()) for v in (a, c))
            return b.fptosi(self.intrinsic("llvm.pow", "float64", [fa, fc]), a.type)
        raise CodegenError(f"{self.loop_fn.name}: binary {op} on {dtype} is not supported")

    def note_fault(self, is_zero: ir.Value) -> None:
        """Sets the model's fault word where any lane divides by zero (the runtime raises)."""
        b = self.builder
        if isinstance(is_zero.type, ir.VectorType):
            reduce = _declare(self.module, f"llvm.vector.reduce.or.v{is_zero.type.count}i1",
                              ir.IntType(1), [is_zero.type])
            is_zero = b.call(reduce, [is_zero])
        flag = b.zext(is_zero, I32)
        b.atomic_rmw("or", _fault_global(self.module),
                     b.mul(flag, ir.Constant(I32, FAULT_DIVIDE_BY_ZERO)), "monotonic")

    def integer_divide(self, op: str, unsigned: bool, a: ir.Value, c: ir.Value) -> ir.Value:
        """An integer quotient or remainder that cannot trap.

        x86's div/idiv fault on a zero divisor and idiv also on INT_MIN / -1 (LLVM leaves
        both undefined), so neither reaches the instruction. A zero divisor divides by one
        (quotient the dividend, remainder 0) and sets the model's fault word, so the run
        raises as ONNX Runtime's does; a signed -1 divisor negates instead, wrapping INT_MIN to
        INT_MIN as ONNX Runtime's Div does, remainder 0. A constant divisor that is neither
        needs no guard."""
        b = self.builder
        zero, one = ir.Constant(a.type, 0), ir.Constant(a.type, 1)
        is_minus_one: ir.Value | None = None
        if isinstance(c, ir.Constant) and isinstance(c.constant, int) and _divides_safely(
                c.constant, a.type.width, unsigned):
            safe = c
        elif unsigned:
            is_zero = b.icmp_unsigned("==", c, zero)
            self.note_fault(is_zero)
            safe = b.select(is_zero, one, c)
        else:
            is_zero = b.icmp_unsigned("==", c, zero)
            self.note_fault(is_zero)
            is_minus_one = b.icmp_signed("==", c, ir.Constant(a.type, -1))
            safe = b.select(b.or_(is_zero, is_minus_one), one, c)
        if unsigned:
            return b.urem(a, safe) if op in ("mod", "fmod") else b.udiv(a, safe)
        if op == "fmod":
            return b.srem(a, safe)
        quotient = b.sdiv(a, safe)
        if is_minus_one is not None:
            quotient = b.select(is_minus_one, b.neg(a), quotient)
        if op in ("div", "truncdiv"):
            return quotient
        r = b.srem(a, safe)
        adjust = b.and_(b.icmp_signed("!=", r, zero),
                        b.xor(b.icmp_signed("<", r, zero), b.icmp_signed("<", safe, zero)))
        if op == "mod":
            return b.select(adjust, b.add(r, safe), r)
        return b.select(adjust, b.sub(quotient, one), quotient)

    def cast(self, x: ir.Value, src: str, dst: str) -> ir.Value:
        b = self.builder
        t = value_type(dst)
        if src == dst:
            return x
        if dst == "bool":
            if is_float(src):
                return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
            return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
        if is_float(src) and is_float(dst):
            return b.fpext(x, t) if itemsize(dst) > itemsize(src) else b.fptrunc(x, t)
        if is_float(dst):
            return b.uitofp(x, t) if src in UNSIGNED_DTYPES or src == "bool" else b.sitofp(x, t)
        if is_float(src):
            # Saturating conversion: NaN and out-of-range values give defined results.
            name = "llvm.fptoui.sat" if dst in UNSIGNED_DTYPES else "llvm.fptosi.sat"
            full = f"{name}.i{t.width}.{_FLOAT_SUFFIX[src]}"
            fn = self.module.globals.get(full) or ir.Function(
                self.module, ir.FunctionType(t, [x.type]), name=full)
            return b.call(fn, [x])
        if t.width < x.type.width:
            return b.trunc(x, t)
        if t.width > x.type.width:
            return b.zext(x, t) if src in UNSIGNED_DTYPES or src == "bool" else b.sext(x, t)
        return x


def _positive_size(e: Expr) -> bool:
    """A divisor computed from the run-time dims alone and at least 1 for all of them."""
    size = expr_to_size(e)
    return isinstance(size, SizeExpr) and size_interval(size)[0] >= 1


def _divides_safely(divisor: int, width: int, unsigned: bool) -> bool:
    """Whether a constant divisor can neither fault nor overflow: not 0, nor a signed -1."""
    bits = divisor & ((1 << width) - 1)
    return bits != 0 and (unsigned or bits != (1 << width) - 1)


def _shared_scratch(fn: LoopFunction) -> list[Allocate]:
    return [s for s in fn.body if isinstance(s, Allocate) and s.shared]


# A parallel loop of a function over run-time sizes runs on the pool only when its body does
# at least this many innermost iterations (the static rules' PARALLEL_MIN_WORK, decided by
# the schedule from constant sizes): at BERT's 1 x 8 tokens every stage of every kernel
# opened a parallel region, 7 ms a call on 2 threads against 3 ms on one.
RUN_TIME_PARALLEL_MIN_WORK = 1 << 15


def _run_time_work(loop: For) -> Expr | None:
    """The innermost iterations `loop` runs (each loop's extent times its body's, summed
    over a body's statements, a store counting one) as an int64 expression over the dims,
    or None where an extent reads a loop variable or the count is a constant."""
    def count(body: Sequence[Stmt]) -> Expr | None:
        total: Expr = Const("int64", 0)
        for st in body:
            if isinstance(st, For):
                inner = count(st.body)
                if inner is None or (not isinstance(st.extent, int) and any(
                        isinstance(x, Var) and not x.name.startswith("%")
                        for x in st.extent.walk())):
                    return None
                n = st.extent if not isinstance(st.extent, int) \
                    else Const("int64", st.extent)
                total = binary("add", total, binary("mul", n, inner))
            else:
                total = binary("add", total, Const("int64", 1))
        return total

    found = count((loop,))
    return None if found is None or isinstance(found, Const) else found


def _free_index_vars(loop: For) -> list[Var]:
    """Variables a loop reads that it does not bind itself (in a stable order)."""
    bound: set[Var] = set()
    used: dict[Var, None] = {}

    def visit(stmts: Sequence[Stmt]) -> None:
        for s in stmts:
            exprs: list[Expr] = []
            if isinstance(s, For):
                bound.add(s.var)
                if not isinstance(s.extent, int):  # (a tail's extent reads outer loops)
                    exprs = [s.extent]
                visit(s.body)
            elif isinstance(s, Store):
                exprs = [s.index, s.value]
            elif isinstance(s, Prefetch):
                exprs = [s.index]
            elif isinstance(s, Declare):
                bound.add(s.var)
                exprs = [s.init]
            elif isinstance(s, Assign):
                exprs = [s.value]
            for e in exprs:
                for x in e.walk():
                    if isinstance(x, Var):
                        used.setdefault(x, None)

    bound.add(loop.var)
    visit(loop.body)
    return [v for v in used if v not in bound]


# What each loop kind asks of LLVM's loop passes. "rolled" keeps a hand-unrolled micro-kernel
# body rolled; "unroll" is the schedule primitive of that name. A "vector" loop is left to
# LLVM's vectorisers (forcing it would warn wherever they cannot), and the loops around it
# are kept scalar, so the vector lanes run along it.
_LOOP_HINTS = {
    "rolled": ('!"llvm.loop.unroll.disable"',),
    "unroll": ('!"llvm.loop.unroll.full"',),
    # The loops around a vector loop: if LLVM fully unrolled a short vector loop first, it
    # would otherwise vectorise the loop around it instead, gathering across rows.
    "around-vector": ('!"llvm.loop.vectorize.enable", i1 false',),
}
_MARKER = "strataml.loop."


def _holds_vector_loop(body: Sequence[Stmt]) -> bool:
    return any(isinstance(s, For) and (s.kind == "vector" or _holds_vector_loop(s.body))
               for s in body)


def _loop_marker(module: ir.Module, kind: str) -> ir.MDValue:
    """A placeholder loop id; `_loop_metadata` rewrites it into LLVM's distinct,
    self-referencing loop node with the kind's hints (llvmlite cannot build those)."""
    marker = getattr(module, "_loop_count", 0)
    module._loop_count = marker + 1  # type: ignore[attr-defined]
    return module.add_metadata([ir.MetaDataString(module, f"{_MARKER}{kind}.{marker}")])


def _loop_metadata(text: str) -> str:
    pattern = re.compile(r'^(![0-9]+) = !\{ ?!"' + re.escape(_MARKER)
                         + r'([a-z-]+)\.[0-9]+" ?\}$', re.MULTILINE)
    kinds = sorted({kind for _, kind in pattern.findall(text)})
    if not kinds:
        return text
    # One metadata node per property, numbered far above what llvmlite assigns.
    properties = sorted({p for kind in kinds for p in _LOOP_HINTS[kind]})
    node = {p: f"!{9999000 + k}" for k, p in enumerate(properties)}
    text = pattern.sub(lambda m: f"{m.group(1)} = distinct !{{{m.group(1)}, " + ", ".join(
        node[p] for p in _LOOP_HINTS[m.group(2)]) + "}", text)
    return text + "\n" + "\n".join(f"{node[p]} = !{{{p}}}" for p in properties) + "\n"


# MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6): x86 arithmetic on denormal
# floats (below 1.2e-38) takes a microcode assist, ~100x slower. A softmax over large random
# logits feeds them to the next product: Swin's window-attention matmuls ran at 2-8 GFLOP/s
# (17 ms instead of 0.14 for a [192, 49, 49] x [192, 49, 32] product with denormal inputs).
# Inference runtimes flush them (OpenVINO by default, ONNX Runtime and PyTorch on request);
# the answers move by less than 1.2e-38.
_FTZ_DAZ = 0x8040


def _flush_denormals(b: ir.IRBuilder) -> ir.Value:
    """Save the thread's MXCSR and set FTZ and DAZ; returns the slot holding the saved one."""
    i32p = ir.PointerType(I32)
    saved = b.alloca(I32, name="mxcsr.saved")
    mode = b.alloca(I32, name="mxcsr")
    b.call(_declare(b.module, "llvm.x86.sse.stmxcsr", ir.VoidType(), [i32p]), [saved])
    b.store(b.or_(b.load(saved), ir.Constant(I32, _FTZ_DAZ)), mode)
    b.call(_declare(b.module, "llvm.x86.sse.ldmxcsr", ir.VoidType(), [i32p]), [mode])
    return saved


def _restore_fp_mode(b: ir.IRBuilder, saved: ir.Value) -> None:
    b.call(_declare(b.module, "llvm.x86.sse.ldmxcsr", ir.VoidType(), [ir.PointerType(I32)]),
           [saved])


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return fn


def _fault_global(module: ir.Module) -> ir.GlobalVariable:
    """The model's fault word: generated code sets it (a division by zero) rather than trap
    or say nothing; the runtime reads it after each run, raises, and clears it."""
    gv = module.globals.get(FAULT_GLOBAL)
    if gv is None:
        gv = ir.GlobalVariable(module, I32, name=FAULT_GLOBAL)
        gv.initializer = ir.Constant(I32, 0)
    return gv


def _threads_global(module: ir.Module) -> ir.GlobalVariable:
    gv = module.globals.get(NUM_THREADS_GLOBAL)
    if gv is None:
        gv = ir.GlobalVariable(module, I32, name=NUM_THREADS_GLOBAL)
        gv.initializer = ir.Constant(I32, 1)
    return gv


def _contract_global(module: ir.Module, digest: bytes) -> None:
    """The plan's contract digest as a constant in its own section, which the loader reads
    from the object file without linking it (`runtime.hal.contract_digest`)."""
    ty = ir.ArrayType(I8, len(digest))
    gv = ir.GlobalVariable(module, ty, name=CONTRACT_SYMBOL)
    gv.initializer = ir.Constant(ty, bytearray(digest))
    gv.global_constant = True
    gv.section = CONTRACT_SECTION


def build_module(functions: Sequence[LoopFunction], plan: Sequence[KernelCall],
                 entry_name: str = "strataml_entry", flush_denormals: bool = False,
                 scaled_exp: bool = False, contract: bytes = b"",
                 dims: Sequence[str] = ()) -> ir.Module:
    """`flush_denormals` (x86 only): every kernel and parallel chunk runs with FTZ and DAZ
    set, and gives the caller's mode back when it returns. `scaled_exp`: the target's ldexp
    is one instruction (see `vector_math`). `contract`: the plan's digest, embedded. `dims`:
    the plan's dims table (`ExecutionPlan.dims`), by which symbolic arena offsets read their
    dims; given, the entry takes the table (as `ExecutionPlan.takes_dims` says)."""
    math = vector_math(flush_denormals, scaled_exp)
    module = ir.Module(name="strataml")
    _threads_global(module)  # always present, so the runtime can set it
    _fault_global(module)  # ... and read this
    if contract:
        _contract_global(module, contract)
    emitted: dict[str, ir.Function] = {}
    loop_fns = {fn.name: fn for fn in functions}
    for fn in functions:
        emitter = _FunctionEmitter(module, fn, flush_denormals=flush_denormals, math=math)
        emitter.emit()
        emitted[fn.name] = emitter.fn
    # (the dims table only where some call reads it: a static plan's entry, which the C
    # library, wasm and runtime callers declare, keeps its three arguments)
    with_dims = bool(dims) or any(call.dims for call in plan)
    entry = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * (3 + with_dims)),
                        name=entry_name)
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    arena, weights, io = entry.args[:3]
    io_table = b.bitcast(io, ir.PointerType(PTR))
    dims_table = b.bitcast(entry.args[3], ir.PointerType(I64)) if with_dims else None
    sizes = _entry_sizes(b, dims_table, dims)
    for index, call in enumerate(plan):
        callee = emitted[call.function]
        types = callee.function_type.args
        if len(call.args) + len(call.dims) != len(types):
            raise CodegenError(f"plan step {call.kernel}: {call.function} takes "
                               f"{len(types)} arguments, the call passes {len(call.args)} "
                               f"buffers and {len(call.dims)} dims")
        args = []
        raws = []
        for (region, offset), ptype in zip(call.args, types, strict=False):
            if region == 2:
                raw = b.load(b.gep(io_table, [ir.Constant(I64, offset)], inbounds=True))
            elif isinstance(offset, int):
                base = arena if region == 0 else weights
                raw = b.gep(base, [ir.Constant(I64, offset)], inbounds=True)
            elif region == 0 and sizes is not None:
                raw = b.gep(arena, [sizes.value(offset)], inbounds=True)
            else:
                why = ("only arena offsets may be" if sizes is not None
                       else "the plan has no dims table (build_module's dims)")
                raise CodegenError(f"plan step {call.kernel}: offset {offset} in region "
                                   f"{region} is a run-time size, but {why}")
            raws.append(raw)
            args.append(b.bitcast(raw, ptype))
        extra = []
        for k in call.dims:
            assert dims_table is not None
            extra.append(b.load(b.gep(dims_table, [ir.Constant(I64, k)], inbounds=True)))
        if call.repeated:
            if sizes is None:
                raise CodegenError(f"plan step {call.kernel}: repeats {call.repeat} times, "
                                   "but the plan has no dims table (build_module's dims)")
            pool = _declare(module, POOL_ENTRY, ir.VoidType(),
                            [ir.PointerType(WORKER_TYPE), PTR, I64, I32])
            emit_repeated_call(b, callee, raws, call.strides, extra, sizes.value(call.repeat),
                               step_function_name(entry_name, index), _threads_global(module),
                               pool, min_samples(loop_fns[call.function], call.strides))
        else:
            b.call(callee, args + extra)
    b.ret_void()
    return module


def _entry_sizes(b: ir.IRBuilder, table: ir.Value | None, dims: Sequence[str]
                 ) -> SizeEmitter | None:
    """Sizes over the plan's dims, each dim loaded from its slot of the dims table."""
    if table is None or not dims:
        return None
    index = {name: k for k, name in enumerate(dims)}

    def load(name: str) -> ir.Value:
        if name not in index:
            raise CodegenError(f"a plan offset reads dim {name!r}, which is not in the plan's "
                               f"dims table {list(dims)}")
        return b.load(b.gep(table, [ir.Constant(I64, index[name])], inbounds=True))

    return SizeEmitter(b, load)


_options_set = False


def _set_llvm_options() -> None:
    """LLVM's pre-RA machine scheduler is quadratic in basic-block size and spent ~95% of
    code-generation time on the unrolled micro-kernels (3 s for one 1x1 conv); out-of-order
    cores schedule those instructions themselves, so it is turned off."""
    global _options_set
    if not _options_set:
        llvm.set_option("strataml", "-enable-misched=false")
        _options_set = True


def target_machine(target: Target, opt_level: int = 3) -> llvm.TargetMachine:
    llvm.initialize_all_targets()  # (cross targets: aarch64, riscv64, wasm32, ...)
    llvm.initialize_all_asmprinters()
    _set_llvm_options()
    features = target.features
    if "+avx512f" in features.split(","):
        # LLVM's Skylake-and-later tuning prefers 256-bit vectors for auto-vectorised loops
        # (for clock-throttling reasons); the gemm micro-kernels already run 512-bit FMAs, so
        # elementwise loops gain nothing from holding back: exp over 196K floats 0.117 ->
        # 0.080 ms.
        features += ",-prefer-256-bit"
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=features, opt=opt_level, reloc="pic",
        codemodel="default")


def target_abi(triple: str, features: str) -> str | None:
    """The calling convention's name where a triple leaves it open: RISC-V passes floats in
    FP registers only under lp64f / lp64d, which the C compiler's code uses (the linker
    refuses to mix them)."""
    if triple.startswith("riscv64"):
        enabled = set(features.split(","))
        return "lp64d" if "+d" in enabled else "lp64f" if "+f" in enabled else "lp64"
    return None


def with_target_abi(text: str, triple: str, features: str) -> str:
    """LLVM IR text with the target-abi module flag the RISC-V back end reads."""
    abi = target_abi(triple, features)
    if abi is None:
        return text
    return (f'{text}\n!llvm.module.flags = !{{!9000}}\n'
            f'!9000 = !{{i32 1, !"target-abi", !"{abi}"}}\n')


def compile_module(module: ir.Module, target: Target, opt_level: int = 3) -> tuple[bytes, str]:
    """Optimise and emit object code. Returns (object bytes, optimised LLVM IR text)."""
    tm = target_machine(target, opt_level)
    try:
        parsed = llvm.parse_assembly(with_target_abi(_loop_metadata(str(module)),
                                                     target.triple, target.features))
        parsed.triple = tm.triple
        parsed.data_layout = str(tm.target_data)
        parsed.verify()
    except RuntimeError as exc:
        raise CodegenError(f"LLVM rejected the generated module: {exc}") from exc
    pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    pto.loop_vectorization = opt_level >= 2
    pto.slp_vectorization = opt_level >= 2
    pto.loop_unrolling = True  # the micro-kernels are unrolled by construction
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    try:
        mpm.run(parsed, pb)
    finally:
        _free_pass_manager(mpm)
    return tm.emit_object(parsed), str(parsed)


def _free_pass_manager(mpm: llvm.ModulePassManager) -> None:
    """Free the pipeline's passes (~75 KB of native memory a compile). llvmlite 0.45-0.50
    never does: ModulePassManager lists ffi.ObjectRef before NewPassManager among its bases,
    so close() and garbage collection reach ObjectRef's empty _dispose. Detached afterwards,
    so a llvmlite that fixes this does not free it twice."""
    ffi.lib.LLVMPY_DisposeNewModulePassManger(mpm)
    mpm.detach()


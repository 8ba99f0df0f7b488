"""strataml's own thread pool: the parallel loops of generated code run on it.

Why not libgomp (which ran them before): a `GOMP_parallel` region splits its loop statically
and ends in a barrier that every thread of the team must reach. When another process holds one
of the cores, the preempted worker reaches it a scheduler slice late, and every parallel loop
of a model pays that slice: a busy core made small models 2-3x slower than ONNX Runtime under
the same load. Here a loop is cut into chunks that threads claim, and the caller never waits
for a thread that has not started: it claims whatever is left itself, and waits only for
chunks already running elsewhere. A preempted thread costs its one chunk, not a slice per loop.

The protocol (one process-wide pool, `strataml_parallel_for(worker, ctx, extent, threads)`):
- The loop's iterations are cut into `threads` contiguous parts (one per participant, so on a
  quiet machine each thread sweeps its own block, as a static schedule would, and keeps its
  cache) of up to 4 chunks each. Each part has a claim word `job << 32 | end << 16 | next`;
  a thread claims chunks from its own part first, then from the others' (stealing). A claim
  is a compare-and-swap that fails once the job number has moved on, so a late thread never
  runs a chunk of a finished job; the job's descriptor stays put until all its chunks are
  done.
- The caller is participant 0. It publishes the job, takes chunks like everyone else, then
  waits for the count of finished chunks: spinning briefly, then sleeping on a futex that the
  thread finishing the last chunk wakes.
- Idle workers poll for the next job for 100 us, then sleep on the job word's futex; a new
  job wakes sleepers only when there are some. A worker that finds it lost its core for a
  scheduler slice (another process wants it) makes every worker poll only 5 us for the next
  200 ms: a poller uses up its share of a contended core and is then preempted in the middle
  of a chunk, which the caller must wait for, where a sleeper that a job wakes gets the core
  back at once.
- Worker k keeps to the (k+1)-th core the process may use; the caller stays free, so the
  scheduler moves it off a taken core (see `spread_workers`).
- One job at a time: a loop started while another is in flight (a second Python thread running
  another model, or a loop nested in a worker) runs serially on its caller's thread.

The pool is a few hundred lines of LLVM IR compiled once per process for the host (scalar
code: atomics, futex and pthread calls through libc), and its entry point is made visible to
the object code of every model loaded afterwards. Workers start lazily, on the first loop that
asks for them, and sleep on a futex when idle.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from typing import Any

from strataml.config import pin_threads_from_env

POOL_ENTRY = "strataml_parallel_for"
MAX_THREADS = 64  # participants; a larger request is capped (the caller still gets all work)
CHUNKS_PER_PART = 4  # a part is cut into this many chunks: what a thief can take
WORKER_SPIN_NS = 100_000  # an idle worker polls this long for the next job, then sleeps
BUSY_SPIN_NS = 5_000  # ... or this long, for BUSY_WINDOW_NS after one found itself preempted
BUSY_WINDOW_NS = 200_000_000
# A worker that lost the core this long (between two polls, or while it ran its chunks) was
# preempted by another process: a scheduler slice, where a quiet (virtual) machine's own
# hiccups stay near 1 ms (measured: a few a second, 1.1-1.3 ms; under a spinning process
# 3.5-3.9 ms, several a second).
PREEMPTED_GAP_NS = 2_000_000
CALLER_SPIN_NS = 30_000  # the caller polls this long for running chunks, then sleeps

_lock = threading.Lock()
_engine: Any = None  # llvmlite's ExecutionEngine (imported only where a JIT is used)


def _platform_bits(machine: str, linux: bool) -> dict[str, str]:
    """The few things that differ by machine: the spin-wait hint and the futex call."""
    if machine in ("x86_64", "amd64"):
        pause, futex_nr = "call void @llvm.x86.sse2.pause()", 202
        pause_decl = "declare void @llvm.x86.sse2.pause()"
    elif machine in ("aarch64", "arm64"):
        pause, futex_nr = "call void @llvm.aarch64.hint(i32 1)", 98
        pause_decl = "declare void @llvm.aarch64.hint(i32)"
    elif machine == "riscv64":  # the generic syscall table, as aarch64's
        pause, futex_nr, pause_decl = "", 98, ""
    else:
        pause, futex_nr, pause_decl = "", -1, ""
    linux = linux and futex_nr >= 0
    if linux:
        wait = (f"call i64 (i64, ...) @syscall(i64 {futex_nr}, ptr %addr, i64 128, i64 %v, "
                "ptr null, ptr null, i64 0)")
        wake = (f"call i64 (i64, ...) @syscall(i64 {futex_nr}, ptr %addr, i64 129, i64 %n, "
                "ptr null, ptr null, i64 0)")
    else:  # no futex: sleeping is yielding the core in a loop
        wait, wake = "call i32 @sched_yield()", ""
    affinity = ("call i32 @sched_setaffinity(i32 0, i64 128, ptr %mask)",
                "declare i32 @sched_setaffinity(i32, i64, ptr)") if linux else ("", "")
    # A thread starts with its creator's floating-point mode, and workers are created from
    # inside a kernel, which may flush denormals: they clear it (each kernel and chunk sets
    # its own mode; see codegen/llvm.py).
    underflow = ("""%mx = alloca i32
  call void @llvm.x86.sse.stmxcsr(ptr %mx)
  %mxv = load i32, ptr %mx
  %mxc = and i32 %mxv, -32833
  store i32 %mxc, ptr %mx
  call void @llvm.x86.sse.ldmxcsr(ptr %mx)""" if machine in ("x86_64", "amd64") else "")
    if underflow:
        pause_decl += ("\ndeclare void @llvm.x86.sse.stmxcsr(ptr)"
                       "\ndeclare void @llvm.x86.sse.ldmxcsr(ptr)")
    return {"GRADUAL_UNDERFLOW": underflow, "PAUSE": pause, "PAUSE_DECL": pause_decl,
            "FUTEX_WAIT": wait,
            "FUTEX_WAKE": wake, "SET_AFFINITY": affinity[0], "AFFINITY_DECL": affinity[1]}


# Globals each sit on their own cache line (align 64): the claim words are written by every
# thread, and sharing a line with the read-mostly descriptor would make each claim a miss.
_POOL_IR = r"""
%timespec = type { i64, i64 }

@job = internal global i32 0, align 64            ; job number; idle workers sleep on it
@done = internal global i32 0, align 64           ; chunks finished; the caller sleeps on it
@claims = internal global [@@MAX_THREADS@@ x [8 x i64]] zeroinitializer, align 64
@sleepers = internal global i32 0, align 64       ; workers asleep on @job
@caller_waiting = internal global i32 0, align 64 ; the caller asleep on @done
@running = internal global i32 0, align 64        ; a job is in flight
@workers = internal global i32 0, align 64        ; workers started
@fn = internal global ptr null, align 64          ; the job: void fn(ctx, begin, end)
@ctx = internal global ptr null
@extent = internal global i64 0
@chunk = internal global i64 0                    ; iterations per chunk
@nchunks = internal global i64 0
@nparts = internal global i64 0                   ; participants, parts of the loop
@busy_until = internal global i64 0, align 64     ; until then (ns), workers poll briefly
@worker_cpu = internal global [@@MAX_THREADS@@ x i32] zeroinitializer ; 1 + the core a worker
                                                  ; keeps to (0: any)
@trace_buf = internal global ptr null, align 64   ; when set (profiling): each chunk run is
@trace_cap = internal global i64 0                ; recorded as {participant, job, start ns,
@trace_len = internal global i64 0                ; end ns} at the next free slot

declare i64 @syscall(i64, ...)
declare i32 @sched_yield()
declare i32 @clock_gettime(i32, ptr)
declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_detach(i64)
@@AFFINITY_DECL@@
@@PAUSE_DECL@@

define internal i64 @clock_ns(i32 %clock) {
  %ts = alloca %timespec
  call i32 @clock_gettime(i32 %clock, ptr %ts)
  %sp = getelementptr %timespec, ptr %ts, i32 0, i32 0
  %np = getelementptr %timespec, ptr %ts, i32 0, i32 1
  %s = load i64, ptr %sp
  %n = load i64, ptr %np
  %s1 = mul i64 %s, 1000000000
  %t = add i64 %s1, %n
  ret i64 %t
}

define internal i64 @now_ns() {                   ; CLOCK_MONOTONIC
  %t = call i64 @clock_ns(i32 1)
  ret i64 %t
}

define internal i64 @cpu_ns() {                   ; CLOCK_THREAD_CPUTIME_ID
  %t = call i64 @clock_ns(i32 3)
  ret i64 %t
}

define internal void @pause() {
  @@PAUSE@@
  ret void
}

define internal void @futex_wait(ptr %addr, i32 %value) {
  %v = zext i32 %value to i64
  @@FUTEX_WAIT@@
  ret void
}

define internal void @futex_wake(ptr %addr, i32 %count) {
  %n = zext i32 %count to i64
  @@FUTEX_WAKE@@
  ret void
}

; Part p's chunks: [p * nchunks / nparts, (p + 1) * nchunks / nparts).
define internal i64 @part_start(i64 %p, i64 %nchunks, i64 %nparts) {
  %a = mul i64 %p, %nchunks
  %s = udiv i64 %a, %nparts
  ret i64 %s
}

; Claims and runs chunks of job %jobno from part %p until it has none left. The claim word
; carries the part's end beside the next chunk, so a claim is decided by the word alone: a
; thread that read a later job's descriptor can never claim from a finished job's words, and
; a claim that succeeds proves the job unfinished, so the descriptor read before it is its own.
define internal void @drain_part(i32 %jobno, i64 %p, i64 %me) {
entry:
  %word = getelementptr [@@MAX_THREADS@@ x [8 x i64]], ptr @claims, i64 0, i64 %p, i64 0
  br label %loop
loop:
  %c = load atomic i64, ptr %word seq_cst, align 8
  %hi = lshr i64 %c, 32
  %cjob = trunc i64 %hi to i32
  %same = icmp eq i32 %cjob, %jobno
  br i1 %same, label %check, label %exit
check:
  %idx = and i64 %c, 65535
  %end0 = lshr i64 %c, 16
  %end = and i64 %end0, 65535
  %more = icmp ult i64 %idx, %end
  br i1 %more, label %try, label %exit
try:
  %f = load atomic ptr, ptr @fn monotonic, align 8
  %x = load atomic ptr, ptr @ctx monotonic, align 8
  %ext = load atomic i64, ptr @extent monotonic, align 8
  %ch = load atomic i64, ptr @chunk monotonic, align 8
  %nchunks = load atomic i64, ptr @nchunks monotonic, align 8
  %c1 = add i64 %c, 1
  %pair = cmpxchg ptr %word, i64 %c, i64 %c1 seq_cst seq_cst
  %ok = extractvalue { i64, i1 } %pair, 1
  br i1 %ok, label %work, label %loop
work:
  %b = mul i64 %idx, %ch
  %e0 = add i64 %b, %ch
  %lt = icmp slt i64 %e0, %ext
  %e = select i1 %lt, i64 %e0, i64 %ext
  %tbuf = load atomic ptr, ptr @trace_buf monotonic, align 8
  %tracing = icmp ne ptr %tbuf, null
  br i1 %tracing, label %traced, label %plain
plain:
  call void %f(ptr %x, i64 %b, i64 %e)
  br label %finished
traced:
  %t0 = call i64 @now_ns()
  call void %f(ptr %x, i64 %b, i64 %e)
  %t1 = call i64 @now_ns()
  %slot = atomicrmw add ptr @trace_len, i64 1 seq_cst
  %cap = load atomic i64, ptr @trace_cap monotonic, align 8
  %room = icmp ult i64 %slot, %cap
  br i1 %room, label %record, label %finished
record:
  %rec = getelementptr [4 x i64], ptr %tbuf, i64 %slot
  %jz = zext i32 %jobno to i64
  %r1 = getelementptr i64, ptr %rec, i64 1
  %r2 = getelementptr i64, ptr %rec, i64 2
  %r3 = getelementptr i64, ptr %rec, i64 3
  store i64 %me, ptr %rec
  store i64 %jz, ptr %r1
  store i64 %t0, ptr %r2
  store i64 %t1, ptr %r3
  br label %finished
finished:
  %old = atomicrmw add ptr @done, i32 1 seq_cst
  %new = add i32 %old, 1
  %n32 = trunc i64 %nchunks to i32
  %last = icmp eq i32 %new, %n32
  br i1 %last, label %check_waiter, label %loop
check_waiter:
  %w = load atomic i32, ptr @caller_waiting seq_cst, align 4
  %asleep = icmp ne i32 %w, 0
  br i1 %asleep, label %wake, label %loop
wake:
  call void @futex_wake(ptr @done, i32 1)
  br label %loop
exit:
  ret void
}

; Participant %me's share of job %jobno: its own part, then everyone else's in turn.
define internal void @take_part_in(i32 %jobno, i64 %me) {
entry:
  %nparts = load atomic i64, ptr @nparts monotonic, align 8
  br label %loop
loop:
  %k = phi i64 [ 0, %entry ], [ %k1, %body ]
  %more = icmp ult i64 %k, %nparts
  br i1 %more, label %body, label %exit
body:
  %q = add i64 %me, %k
  %p = urem i64 %q, %nparts
  call void @drain_part(i32 %jobno, i64 %p, i64 %me)
  %k1 = add i64 %k, 1
  br label %loop
exit:
  ret void
}

; The core worker %id keeps to, if one was set: one bit in a cpu_set_t for sched_setaffinity.
define internal void @keep_to_core(i64 %id) {
entry:
  %slot = getelementptr [@@MAX_THREADS@@ x i32], ptr @worker_cpu, i64 0, i64 %id
  %cpu1 = load i32, ptr %slot
  %set = icmp sgt i32 %cpu1, 0
  br i1 %set, label %pin, label %exit
pin:
  %mask = alloca [16 x i64], align 8
  store [16 x i64] zeroinitializer, ptr %mask
  %cpu32 = sub i32 %cpu1, 1
  %cpu = zext i32 %cpu32 to i64
  %w = lshr i64 %cpu, 6
  %b = and i64 %cpu, 63
  %bit = shl i64 1, %b
  %wp = getelementptr [16 x i64], ptr %mask, i64 0, i64 %w
  store i64 %bit, ptr %wp
  @@SET_AFFINITY@@
  br label %exit
exit:
  ret void
}

; A forked child has the parent's pool state but none of its worker threads: it starts its
; own (without this it would still be right, the caller taking every chunk, but serial).
define void @strataml_pool_forget_workers() {
  store atomic i32 0, ptr @workers seq_cst, align 4
  store atomic i32 0, ptr @sleepers seq_cst, align 4
  store atomic i32 0, ptr @running seq_cst, align 4
  store atomic i32 0, ptr @caller_waiting seq_cst, align 4
  ret void
}

; Profiling: record every chunk into %buf (room for %cap records of 4 x i64); null stops.
define void @strataml_pool_trace(ptr %buf, i64 %cap) {
  store atomic ptr null, ptr @trace_buf seq_cst, align 8
  store atomic i64 0, ptr @trace_len seq_cst, align 8
  store atomic i64 %cap, ptr @trace_cap seq_cst, align 8
  store atomic ptr %buf, ptr @trace_buf seq_cst, align 8
  ret void
}

; How many chunks were recorded (may exceed the room given: the rest were dropped).
define i64 @strataml_pool_trace_len() {
  %n = load atomic i64, ptr @trace_len seq_cst, align 8
  ret i64 %n
}

; Called before any worker starts (runtime/thread_pool.py): worker %id keeps to core %cpu.
define void @strataml_pool_keep_to_core(i32 %id, i32 %cpu) {
  %i = zext i32 %id to i64
  %slot = getelementptr [@@MAX_THREADS@@ x i32], ptr @worker_cpu, i64 0, i64 %i
  %cpu1 = add i32 %cpu, 1
  store i32 %cpu1, ptr %slot
  ret void
}

; A worker: waits for a job (polling, then asleep on @job), takes part in it, again. While it
; polls it watches the clock: a gap between two polls means it was preempted, so another
; process wants this core: it sleeps at once, and for a while every worker polls only briefly
; (a poller uses up its share of a contended core and is then preempted in the middle of a
; chunk, which the caller waits for; a sleeper that a job wakes gets the core back at once).
define internal ptr @worker_main(ptr %arg) {
entry:
  %seen_p = alloca i32
  %id = ptrtoint ptr %arg to i64
  %me = add i64 %id, 1
  call void @keep_to_core(i64 %id)
  @@GRADUAL_UNDERFLOW@@
  %first = load atomic i32, ptr @job seq_cst, align 4
  store i32 %first, ptr %seen_p
  br label %idle
idle:
  %t0 = call i64 @now_ns()
  %until = load atomic i64, ptr @busy_until monotonic, align 8
  %is_busy = icmp ult i64 %t0, %until
  %budget = select i1 %is_busy, i64 @@BUSY_SPIN_NS@@, i64 @@WORKER_SPIN_NS@@
  br label %poll
poll:
  %prev = phi i64 [ %t0, %idle ], [ %t, %check ]
  %seen = load i32, ptr %seen_p
  %jobno = load atomic i32, ptr @job seq_cst, align 4
  %new = icmp ne i32 %jobno, %seen
  br i1 %new, label %got, label %spin
spin:
  call void @pause()
  %t = call i64 @now_ns()
  %gap = sub i64 %t, %prev
  %preempted = icmp ugt i64 %gap, @@PREEMPTED_GAP_NS@@
  %dt = sub i64 %t, %t0
  %long = icmp ugt i64 %dt, %budget
  br i1 %preempted, label %mark, label %check
mark:
  %until2 = add i64 %t, @@BUSY_WINDOW_NS@@
  store atomic i64 %until2, ptr @busy_until monotonic, align 8
  br label %sleep
check:
  br i1 %long, label %sleep, label %poll
sleep:
  atomicrmw add ptr @sleepers, i32 1 seq_cst
  %seen2 = load i32, ptr %seen_p
  %again = load atomic i32, ptr @job seq_cst, align 4
  %still = icmp eq i32 %again, %seen2
  br i1 %still, label %do_sleep, label %woke
do_sleep:
  call void @futex_wait(ptr @job, i32 %seen2)
  br label %woke
woke:
  atomicrmw sub ptr @sleepers, i32 1 seq_cst
  ; after a wake-up (or a spurious one), look again; back to sleep if nothing came
  %jobno2 = load atomic i32, ptr @job seq_cst, align 4
  %new2 = icmp ne i32 %jobno2, %seen2
  br i1 %new2, label %got2, label %sleep
got2:
  br label %got
got:
  %j = phi i32 [ %jobno, %poll ], [ %jobno2, %got2 ]
  store i32 %j, ptr %seen_p
  %nparts = load atomic i64, ptr @nparts monotonic, align 8
  %in = icmp ult i64 %me, %nparts
  br i1 %in, label %join, label %idle
join:
  ; preempted while it ran its chunks (wall time it did not run): the same sign
  %w0 = call i64 @now_ns()
  %c0 = call i64 @cpu_ns()
  call void @take_part_in(i32 %j, i64 %me)
  %w1 = call i64 @now_ns()
  %c1 = call i64 @cpu_ns()
  %wall = sub i64 %w1, %w0
  %cpu = sub i64 %c1, %c0
  %lost = sub i64 %wall, %cpu
  %lost_long = icmp sgt i64 %lost, @@PREEMPTED_GAP_NS@@
  br i1 %lost_long, label %mark_ran, label %idle
mark_ran:
  %until3 = add i64 %w1, @@BUSY_WINDOW_NS@@
  store atomic i64 %until3, ptr @busy_until monotonic, align 8
  br label %idle
}

define internal void @start_workers(i32 %want) {
entry:
  %tid = alloca i64
  br label %loop
loop:
  %have = load atomic i32, ptr @workers seq_cst, align 4
  %less = icmp slt i32 %have, %want
  br i1 %less, label %start, label %exit
start:
  %id = zext i32 %have to i64
  %arg = inttoptr i64 %id to ptr
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @worker_main, ptr %arg)
  %ok = icmp eq i32 %rc, 0
  br i1 %ok, label %started, label %exit
started:
  %t = load i64, ptr %tid
  call i32 @pthread_detach(i64 %t)
  %have1 = add i32 %have, 1
  store atomic i32 %have1, ptr @workers seq_cst, align 4
  br label %loop
exit:
  ret void
}

; The caller waits until every chunk of the job is done: polls, then sleeps on @done.
define internal void @wait_done(i32 %n) {
entry:
  %t0 = call i64 @now_ns()
  br label %poll
poll:
  %d = load atomic i32, ptr @done seq_cst, align 4
  %finished = icmp eq i32 %d, %n
  br i1 %finished, label %exit, label %spin
spin:
  call void @pause()
  %t = call i64 @now_ns()
  %dt = sub i64 %t, %t0
  %long = icmp ugt i64 %dt, @@CALLER_SPIN_NS@@
  br i1 %long, label %sleep, label %poll
sleep:
  store atomic i32 1, ptr @caller_waiting seq_cst, align 4
  %d2 = load atomic i32, ptr @done seq_cst, align 4
  %finished2 = icmp eq i32 %d2, %n
  br i1 %finished2, label %awake, label %do_sleep
do_sleep:
  call void @futex_wait(ptr @done, i32 %d2)
  store atomic i32 0, ptr @caller_waiting seq_cst, align 4
  br label %sleep
awake:
  store atomic i32 0, ptr @caller_waiting seq_cst, align 4
  br label %exit
exit:
  ret void
}

define void @strataml_parallel_for(ptr %f, ptr %x, i64 %extent, i32 %threads) {
entry:
  %few = icmp slt i32 %threads, 2
  %short = icmp slt i64 %extent, 2
  %inline = or i1 %few, %short
  br i1 %inline, label %serial, label %lock
lock:
  %pair = cmpxchg ptr @running, i32 0, i32 1 seq_cst seq_cst
  %ok = extractvalue { i32, i1 } %pair, 1
  br i1 %ok, label %locked, label %serial
serial:
  call void %f(ptr %x, i64 0, i64 %extent)
  ret void
locked:
  %capped = call i32 @llvm.smin.i32(i32 %threads, i32 @@MAX_THREADS@@)
  %want = sub i32 %capped, 1
  call void @start_workers(i32 %want)
  %have = load atomic i32, ptr @workers seq_cst, align 4
  %have1 = add i32 %have, 1
  %np32 = call i32 @llvm.smin.i32(i32 %capped, i32 %have1)
  %np = zext i32 %np32 to i64
  ; chunk = ceil(extent / (nparts * @@CHUNKS_PER_PART@@)), nchunks = ceil(extent / chunk)
  %pieces = mul i64 %np, @@CHUNKS_PER_PART@@
  %pm1 = sub i64 %pieces, 1
  %ext_up = add i64 %extent, %pm1
  %chunk = udiv i64 %ext_up, %pieces
  %cm1 = sub i64 %chunk, 1
  %ext_up2 = add i64 %extent, %cm1
  %nchunks = udiv i64 %ext_up2, %chunk
  store atomic ptr %f, ptr @fn monotonic, align 8
  store atomic ptr %x, ptr @ctx monotonic, align 8
  store atomic i64 %extent, ptr @extent monotonic, align 8
  store atomic i64 %chunk, ptr @chunk monotonic, align 8
  store atomic i64 %nchunks, ptr @nchunks monotonic, align 8
  store atomic i64 %np, ptr @nparts monotonic, align 8
  store atomic i32 0, ptr @done seq_cst, align 4
  %old = load atomic i32, ptr @job seq_cst, align 4
  %jobno = add i32 %old, 1
  %jobhi0 = zext i32 %jobno to i64
  %jobhi = shl i64 %jobhi0, 32
  br label %publish
publish:
  ; the claim words first, then the job number: a worker that sees the job finds its claims
  %p = phi i64 [ 0, %locked ], [ %p1, %publish ]
  %start = call i64 @part_start(i64 %p, i64 %nchunks, i64 %np)
  %p1 = add i64 %p, 1
  %stop = call i64 @part_start(i64 %p1, i64 %nchunks, i64 %np)
  %stop_hi = shl i64 %stop, 16
  %claim0 = or i64 %jobhi, %stop_hi
  %claim = or i64 %claim0, %start
  %word = getelementptr [@@MAX_THREADS@@ x [8 x i64]], ptr @claims, i64 0, i64 %p, i64 0
  store atomic i64 %claim, ptr %word seq_cst, align 8
  %more = icmp ult i64 %p1, %np
  br i1 %more, label %publish, label %announce
announce:
  store atomic i32 %jobno, ptr @job seq_cst, align 4
  %s = load atomic i32, ptr @sleepers seq_cst, align 4
  %any = icmp sgt i32 %s, 0
  br i1 %any, label %wake, label %work
wake:
  call void @futex_wake(ptr @job, i32 2147483647)
  br label %work
work:
  call void @take_part_in(i32 %jobno, i64 0)
  %n32 = trunc i64 %nchunks to i32
  call void @wait_done(i32 %n32)
  store atomic i32 0, ptr @running seq_cst, align 4
  ret void
}

declare i32 @llvm.smin.i32(i32, i32)
"""


def pool_ir(triple: str | None = None) -> str:
    """The pool's LLVM IR for this machine, or for a Linux `triple` (a C library built for
    another machine)."""
    if triple is None:
        bits = _platform_bits(platform.machine().lower(), sys.platform.startswith("linux"))
    else:
        bits = _platform_bits(triple.split("-")[0], "linux" in triple)
    text = _POOL_IR
    for key, value in {**bits, "MAX_THREADS": str(MAX_THREADS),
                       "CHUNKS_PER_PART": str(CHUNKS_PER_PART),
                       "WORKER_SPIN_NS": str(WORKER_SPIN_NS),
                       "BUSY_SPIN_NS": str(BUSY_SPIN_NS), "BUSY_WINDOW_NS": str(BUSY_WINDOW_NS),
                       "PREEMPTED_GAP_NS": str(PREEMPTED_GAP_NS),
                       "CALLER_SPIN_NS": str(CALLER_SPIN_NS)}.items():
        text = text.replace(f"@@{key}@@", value)
    return text


def spread_workers(setter_address: int) -> None:
    """Worker k keeps to the (k+1)-th core this process may use (round robin), the caller
    to none. Left free, a woken worker tends to be queued on its waker's core: where another
    process holds the other core, both threads then share one (a 64x1024 MLP under a
    spinning process: 2.9 ms; with the worker kept to its own core 1.6 ms, as on a quiet
    machine). The caller stays free, so the scheduler still moves it off a taken core."""
    if not pin_threads_from_env() or not hasattr(os, "sched_getaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return
    setter = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32)(setter_address)
    for k in range(MAX_THREADS - 1):
        setter(k, cores[(k + 1) % len(cores)])


def ensure_thread_pool() -> int:
    """Compile the pool once per process and make `strataml_parallel_for` visible to the
    object code loaded after it; returns the entry's address."""
    import llvmlite.binding as llvm

    global _engine
    with _lock:
        if _engine is None:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            module = llvm.parse_assembly(pool_ir())
            module.verify()
            tm = llvm.Target.from_default_triple().create_target_machine(opt=2, reloc="pic")
            engine = llvm.create_mcjit_compiler(module, tm)
            engine.finalize_object()
            forget = ctypes.CFUNCTYPE(None)(
                engine.get_function_address("strataml_pool_forget_workers"))
            if hasattr(os, "register_at_fork"):  # a child forked from Python starts its own
                os.register_at_fork(after_in_child=forget)
            spread_workers(engine.get_function_address("strataml_pool_keep_to_core"))
            llvm.add_symbol(POOL_ENTRY, engine.get_function_address(POOL_ENTRY))
            _engine = engine
        return _engine.get_function_address(POOL_ENTRY)


def pool_function(name: str) -> int:
    """The address of one of the JIT-compiled pool's functions (the pool compiled first)."""
    ensure_thread_pool()
    assert _engine is not None
    return int(_engine.get_function_address(name))

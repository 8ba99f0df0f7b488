"""Vector lanes along a run-time innermost axis: a main loop of whole vectors, then a tail.

Attention over a run-time sequence has the key axis, a run-time size, innermost. Two
shapes of loop over it are rewritten here:

- a *column* of a contraction with a short static reduction inside (`Q . K^T`: per key,
  `acc = 0; for r in 0..32 { acc += q[r] * kt[r, key] }; out[key] = acc * s + mask[key]`),
  which LLVM leaves as one scalar dot product per key read down K^T's rows (~2-3x the
  static gemm at 128 keys);
- a *map* over the keys (`exp(x - max)`, `e * inv_sum`, a transpose's copy): stores only.

Each becomes `split_with_tail`'s main loop over `n // W` blocks of W lanes (W a constant: a
loop of kind "vector", which LLVM vectorises at its known width) plus the original body for
the `n % W` keys past the last block, so nothing is computed into padding and every index
stays the one the bound proofs saw (main-loop keys are `< (n // W) * W <= n`). In the
column, the lane loop moves inside the static reduction loops (as the row trace does for a
static N), each scalar local a row of W lanes in a stack scratch, so each step of the
reduction loads a vector of K^T's row and multiply-adds into W accumulators; the key
blocks then go outside the query rows around them, which are jammed (`row_jam`).

A softmax's max and sum over the keys are left to LLVM's vectoriser: W partial results in
a scratch, folded per row, measured 25-35% slower at 32-128 keys than LLVM's own
vectorised reduction over the run-time trip count (`reassoc` sums, `fmaximum`).
"""

from __future__ import annotations

from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    For,
    Prefetch,
    Stmt,
    Store,
    statement_exprs,
)
from strataml.ir.expr import Binary, Expr, Load, Var, idx, rewrite, substitute
from strataml.ir.index_simplify import linear_in
from strataml.passes.lower.row_jam import jam_rows, rows_in_registers
from strataml.passes.lower.tail_split import split_with_tail

# Lanes per block: two vectors (Q . K^T: two accumulators a row, as the row trace's tile).
VECTORS_PER_BLOCK = 2
# A jammed tile prefetches the output lines it will store before its reduction.
PREFETCH_TILE_OUTPUT = True


def _reads(e: Expr, v: Var) -> bool:
    return any(x == v for x in e.walk())


def _names(body: tuple[Stmt, ...]) -> set[str]:
    names = {x.name for e in statement_exprs(body) for x in e.walk() if isinstance(x, Var)}
    stack = list(body)
    while stack:
        s = stack.pop()
        if isinstance(s, For):
            names.add(s.var.name)
            stack.extend(s.body)
        elif isinstance(s, Declare):
            names.add(s.var.name)
    return names


def column_rows(registers: int) -> int:
    """Query rows jammed around a block of keys: as many as the accumulators
    (`VECTORS_PER_BLOCK` a row), a broadcast a row and the block's K^T vectors fit in
    `registers` (`row_jam.rows_in_registers`)."""
    return rows_in_registers(registers, VECTORS_PER_BLOCK)


class _Vectorizer:
    def __init__(self, body: tuple[Stmt, ...], scratch: list[Allocate], lanes: int,
                 registers: int) -> None:
        self.lanes = lanes
        self.width = VECTORS_PER_BLOCK * lanes
        self.rows = column_rows(registers)
        self.scratch = scratch
        self.taken = _names(body) | {a.buffer for a in scratch}
        self.fired = 0

    def fresh(self, name: str) -> str:
        k, out = 1, name
        while out in self.taken:
            k += 1
            out = f"{name}{k}"
        self.taken.add(out)
        return out

    def lanes_buffer(self, dtype: str) -> str:
        name = self.fresh("lanes")
        self.scratch.append(Allocate(name, dtype, self.width))
        return name

    # ------------------------------------------------------------ the walk

    def visit(self, body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        out: list[Stmt] = []
        for s in body:
            if not isinstance(s, For):
                out.append(s)
                continue
            if s.kind == "serial" and len(s.body) == 1 and isinstance(c := s.body[0], For) \
                    and c.kind == "serial" and not isinstance(c.extent, int) \
                    and not _clamped(c.body) and _is_column(c):
                self.fired += 1
                out.extend(self.columns_of_rows(s, c))
                continue
            if s.kind == "serial" and not isinstance(s.extent, int):
                done = self.loop(s)
                if done is not None:
                    self.fired += 1
                    out.extend(done)
                    continue
            out.append(For(s.var, s.extent, self.visit(s.body), s.kind))
        return tuple(out)

    def loop(self, s: For) -> tuple[Stmt, ...] | None:
        if _clamped(s.body):
            return None  # (an index the proofs could not bound: left as it is)
        if _is_map(s):
            return split_with_tail(s, self.width, "vector")
        if _is_column(s):
            return self.column(s)
        return None

    # ------------------------------------------------------------ columns

    def column(self, s: For) -> tuple[Stmt, ...]:
        """`for key { var acc..; for r (static) { acc = .. }; out[key] = f(acc) }` with the
        lane loop moved inside the static loops and each scalar local a row of W lanes."""
        main, *tail = split_with_tail(s, self.width, "vector")
        assert isinstance(main, For)
        assert isinstance(main.body[0], For)
        inner = main.body[0]
        lanes = inner.var
        locals_ = {st.var: Load(st.var.dtype, self.lanes_buffer(st.var.dtype), (lanes,))
                   for st in inner.body if isinstance(st, Declare)}

        def local(e: Expr) -> Expr | None:
            return locals_.get(e) if isinstance(e, Var) else None

        def lane_loop(stmts: tuple[Stmt, ...]) -> Stmt:
            return For(lanes, self.width, stmts, "vector")

        def place(st: Stmt) -> Stmt:
            if isinstance(st, For):
                return For(st.var, st.extent, tuple(place(c) for c in st.body), st.kind)
            if isinstance(st, Assign):
                slot = locals_[st.var]
                assert isinstance(slot, Load)
                return lane_loop((Store(slot.buffer, lanes, rewrite(st.value, local)),))
            assert isinstance(st, Store)
            return lane_loop((Store(st.buffer, rewrite(st.index, local),
                                    rewrite(st.value, local)),))

        body: list[Stmt] = []
        for st in inner.body:
            if isinstance(st, Declare):
                slot = locals_[st.var]
                assert isinstance(slot, Load)
                body.append(lane_loop((Store(slot.buffer, lanes, rewrite(st.init, local)),)))
            else:
                body.append(place(st))
        return (For(main.var, main.extent, tuple(body), main.kind), *tail)


    def columns_of_rows(self, rows: For, cols: For) -> tuple[Stmt, ...]:
        """`for row { for key {..} }` (Q . K^T) as the column blocks outermost, then each
        block's rows jammed (`row_jam`: each K^T vector loaded feeds `JAM_ROWS` rows), then
        the tail keys of every row."""
        main, *tail = self.column(cols)
        assert isinstance(main, For)
        inner = For(rows.var, rows.extent, main.body, rows.kind)
        jammed, self.scratch = jam_rows((inner,), self.scratch, self.rows, into_vector=True)
        if PREFETCH_TILE_OUTPUT:
            jammed = tuple(_with_output_prefetch(s, self.width, self.lanes) for s in jammed)
        out: list[Stmt] = [For(main.var, main.extent, jammed, main.kind)]
        if tail:
            out.append(For(rows.var, rows.extent, tuple(tail), rows.kind))
        return tuple(out)


def _with_output_prefetch(s: Stmt, width: int, lanes: int) -> Stmt:
    """A jammed tile (`for rows.o { init; reduction; stores }`) with the lines its stores
    will write prefetched before its reduction, as the static gemm's tiles do: the rows
    are a key row apart, too many streams for the hardware prefetcher."""
    if not isinstance(s, For) or not s.body:
        return s
    last = s.body[-1]
    if not (isinstance(last, For) and last.kind == "unroll" and len(last.body) == 1
            and isinstance(vec := last.body[0], For) and vec.kind == "vector"
            and all(isinstance(st, Store) for st in vec.body)):
        return s
    fetches = tuple(Prefetch(st.buffer, substitute(st.index, {vec.var: idx(c)}))
                    for st in vec.body if isinstance(st, Store)
                    for c in range(0, width, lanes))
    return For(s.var, s.extent, (For(last.var, last.extent, fetches, "unroll"), *s.body),
               s.kind)


def _clamped(body: tuple[Stmt, ...]) -> bool:
    """Some load or store index holds a min or max: a clamp where no proof held."""
    def clamp(index: Expr) -> bool:
        return any(isinstance(x, Binary) and x.op in ("min", "max") for x in index.walk())

    for s in body:
        if isinstance(s, For) and _clamped(s.body):
            return True
        if isinstance(s, Store) and clamp(s.index):
            return True
    return any(isinstance(x, Load) and any(clamp(i) for i in x.indices)
               for e in statement_exprs(body) for x in e.walk())


def _unit_stride(index: Expr, v: Var) -> bool:
    """Consecutive elements along `v`."""
    found = linear_in(index, [v])
    return found is not None and found[0][v] == 1


def _is_map(s: For) -> bool:
    """Stores only, each to consecutive elements along the loop (unit stride)."""
    return bool(s.body) and all(isinstance(st, Store) and _unit_stride(st.index, s.var)
                                for st in s.body)


def _is_column(s: For) -> bool:
    """Declares, then static loops holding only assignments to them (nested static loops
    allowed), then stores at unit stride along the loop, one per buffer: each iteration of
    `s` computes outputs of its own from locals of its own, and nothing it reads is what
    the stores write (so the lanes may run interleaved, and blocks of keys may move
    outside the rows around them)."""
    declared: set[Var] = set()
    stored: set[str] = set()
    k = 0
    body = s.body
    while k < len(body) and isinstance(body[k], Declare):
        decl = body[k]
        assert isinstance(decl, Declare)
        if not decl.var.dtype.startswith("float") or _reads_any(decl.init, declared):
            return False
        declared.add(decl.var)
        k += 1
    loops = []
    while k < len(body) and isinstance(body[k], For):
        loops.append(body[k])
        k += 1
    stores = body[k:]
    if not declared or not loops or not stores:
        return False
    if not all(isinstance(st, Store) and _unit_stride(st.index, s.var) for st in stores):
        return False
    stored = {st.buffer for st in stores if isinstance(st, Store)}
    if len(stored) != len(stores):
        return False  # (two stores into one buffer: their order across lanes would change)

    def reads_stored(e: Expr) -> bool:
        return any(isinstance(x, Load) and x.buffer in stored for x in e.walk())

    if any(isinstance(st, Store) and reads_stored(st.value) for st in stores) \
            or any(isinstance(d, Declare) and reads_stored(d.init) for d in body):
        return False
    return all(_only_assigns(lp, declared, stored) for lp in loops)


def _reads_any(e: Expr, vs: set[Var]) -> bool:
    return any(x in vs for x in e.walk() if isinstance(x, Var))


def _only_assigns(st: Stmt, declared: set[Var], stored: set[str]) -> bool:
    if isinstance(st, For):
        return isinstance(st.extent, int) and st.kind in ("serial", "unroll") \
            and bool(st.body) and all(_only_assigns(c, declared, stored) for c in st.body)
    if isinstance(st, Assign):
        return st.var in declared and not any(
            isinstance(x, Load) and x.buffer in stored for x in st.value.walk())
    return False


def vectorize_key_loops(body: tuple[Stmt, ...], scratch: list[Allocate], lanes: int,
                        registers: int = 16
                        ) -> tuple[tuple[Stmt, ...], list[Allocate], int]:
    """`body` with each innermost run-time serial loop of the two shapes above split into
    whole vectors of `VECTORS_PER_BLOCK * lanes` plus a tail (`registers`: the target's
    vector registers, which bound the rows jammed in a column); the scratch it needs
    appended to `scratch`; and how many loops it rewrote."""
    vec = _Vectorizer(body, list(scratch), lanes, registers)
    out = vec.visit(body)
    return out, vec.scratch, vec.fired


"""Register blocking over a run-time row loop: unroll-and-jam with a tail.

A schedule cannot split a loop over a run-time size (`Split` needs a dividing factor), so a
contraction over run-time rows takes the row trace (`schedule.symbolic.symbolic_default_schedule`):
per row, a vector accumulator row (a stack scratch) through the whole reduction. Each step
then loads a B vector for one multiply-add. Here, on loop statements, the innermost run-time
row loop

    for j in 0..n { acc[..] = init; for k { acc[..] += A[j, k] * B[k, ..] }; out[j, ..] = acc[..] }

becomes `rows` rows at a time, their accumulators side by side in one scratch `rows` times
as long, the row loop moved inside every static loop of the body and unrolled (so each B
vector loaded feeds `rows` multiply-adds), then the rows past the last whole block as they
were (`split_with_tail`'s split):

    for j.o in 0..n // rows {
      for j.i in 0..rows (unroll) { acc[j.i * w + ..] = init }
      for k { for j.i in 0..rows (unroll) { acc[j.i * w + ..] += A[j.o*rows + j.i, k] * .. } }
      for j.i in 0..rows (unroll) { out[j.o*rows + j.i, ..] = acc[j.i * w + ..] }
    }
    for j.t in 0..n % rows { the body at row (n // rows) * rows + j.t }

Valid because the row loop's iterations are independent (each writes its own output row and,
once moved, its own accumulator row); only loops of that shape (loops and stores, the
accumulators read and written at indices free of the row, nothing else run-time inside) are
touched.
"""

from __future__ import annotations

from strataml.ir.dialects.loop import Allocate, For, Stmt, Store, statement_exprs, substitute_stmts
from strataml.ir.expr import Expr, Load, Var, binary, rewrite

# Rows per block: with a 2-vector accumulator row (TILE_ROW_VECTORS), 8 accumulators, 2 B
# vectors and a broadcast in registers, which even AVX2's 16 hold.
JAM_ROWS = 4
# Rows per block where the registers are known (`rows_in_registers`), most preferred first.
JAM_ROW_CHOICES = (8, 4, 2)


def rows_in_registers(registers: int, vectors: int) -> int:
    """Rows to jam whose accumulators (`vectors` a row), one broadcast of A a row (with the
    rows inside the vector loop, LLVM loads them all before the multiply-adds) and a row
    of B vectors fit `registers` vector registers: 8 on AVX-512 (32) and 4 on AVX2 (16)
    for 2-vector rows."""
    return next((r for r in JAM_ROW_CHOICES if (vectors + 1) * r + vectors <= registers), 1)


def _shape_ok(body: tuple[Stmt, ...], row: Var, accs: dict[str, int]) -> bool:
    """Only loops and stores, with a vector loop somewhere; a loop over a run-time size
    only where it sums into the accumulators alone over a trip count free of the row
    (P . V's sum over the keys), so an outer row loop (a batch) is never the one jammed."""
    vector = False
    for s in body:
        if isinstance(s, For):
            if not _fixed_trips(s, row, accs) or not _shape_ok_inner(s.body, row, accs):
                return False
            vector = vector or s.kind == "vector" or _has_vector(s.body)
        else:
            return False
    return vector


def _fixed_trips(s: For, row: Var, accs: dict[str, int]) -> bool:
    return isinstance(s.extent, int) or (
        s.kind == "serial" and not _reads(s.extent, row)
        and all(st.buffer in accs for st in _stores(s.body)))


def _shape_ok_inner(body: tuple[Stmt, ...], row: Var, accs: dict[str, int]) -> bool:
    return all((isinstance(s, For) and _fixed_trips(s, row, accs)
                and _shape_ok_inner(s.body, row, accs))
               or isinstance(s, Store) for s in body)


def _has_vector(body: tuple[Stmt, ...]) -> bool:
    return any(isinstance(s, For) and (s.kind == "vector" or _has_vector(s.body))
               for s in body)


def _reads(e: Expr, v: Var) -> bool:
    return any(x == v for x in e.walk())


def _stores(body: tuple[Stmt, ...]) -> list[Store]:
    out: list[Store] = []
    for s in body:
        if isinstance(s, For):
            out += _stores(s.body)
        elif isinstance(s, Store):
            out.append(s)
    return out


def _shift(body: tuple[Stmt, ...], accs: dict[str, int], lane: Var) -> tuple[Stmt, ...]:
    """Every access of an accumulator moved to row `lane`'s copy."""
    def load(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer in accs:
            (index,) = e.indices
            return Load(e.dtype, e.buffer,
                        (binary("add", rewrite(index, load), binary("mul", lane,
                                                                    accs[e.buffer])),))
        return None

    out: list[Stmt] = []
    for s in body:
        if isinstance(s, For):
            out.append(For(s.var, s.extent, _shift(s.body, accs, lane), s.kind))
        elif isinstance(s, Store):
            index = rewrite(s.index, load)
            if s.buffer in accs:
                index = binary("add", index, binary("mul", lane, accs[s.buffer]))
            out.append(Store(s.buffer, index, rewrite(s.value, load)))
    return tuple(out)


def _push(s: Stmt, lane: Var, rows: int, accs: dict[str, int], into_vector: bool,
          nested: bool = False) -> Stmt:
    """The unrolled row loop moved inside `s`'s serial loops, around what they hold (and,
    `into_vector`, inside a vector loop within such a loop too)."""
    if isinstance(s, For) and s.kind == "serial" and all(isinstance(c, For) for c in s.body):
        return For(s.var, s.extent, tuple(_push(c, lane, rows, accs, into_vector, True)
                                          for c in s.body), s.kind)
    if isinstance(s, For) and into_vector and nested and s.kind == "vector":
        return For(s.var, s.extent, (For(lane, rows, _shift(s.body, accs, lane), "unroll"),),
                   s.kind)
    return For(lane, rows, _shift((s,), accs, lane), "unroll")


def _jam(loop: For, accs: dict[str, int], rows: int, taken: set[str], into_vector: bool
         ) -> tuple[Stmt, ...]:
    def fresh(name: str) -> Var:
        k, out = 1, name
        while out in taken:
            k += 1
            out = f"{name}{k}"
        taken.add(out)
        return Var("int64", out)

    outer, lane, tail = (fresh(f"{loop.var.name}.{s}") for s in ("o", "i", "t"))
    n = loop.extent
    assert not isinstance(n, int)
    row = binary("add", binary("mul", outer, rows), lane)
    main = tuple(_push(s, lane, rows, accs, into_vector)
                 for s in substitute_stmts(loop.body, {loop.var: row}))
    start = binary("mul", binary("floordiv", n, rows), rows)
    rest = substitute_stmts(loop.body, {loop.var: binary("add", start, tail)})
    return (For(outer, binary("floordiv", n, rows), main, loop.kind),
            For(tail, binary("mod", n, rows), rest, "serial"))


def jam_rows(body: tuple[Stmt, ...], scratch: list[Allocate], rows: int = JAM_ROWS,
             into_vector: bool = False, registers: tuple[int, int] | None = None
             ) -> tuple[tuple[Stmt, ...], list[Allocate]]:
    """`body` with each innermost run-time row loop of the shape above jammed `rows` rows at
    a time, and `scratch` (the function's allocations) with those accumulators lengthened.
    `into_vector`: the unrolled rows go inside the vector loops of the loops they are moved
    into (a reduction step: each B vector loaded once for every row; LLVM vectorises each
    row's lanes on its own otherwise, loading B again per row), not inside the first and
    last ones (setting and storing the accumulators, which LLVM then left scalar).
    `registers` (the target's vector registers, float lanes): the rows of each loop from
    `rows_in_registers` for its accumulators' vectors instead, where more than one fits."""
    sizes = {s.buffer: s.size for s in scratch if not s.shared}
    grown: dict[str, int] = {}  # (each accumulator jammed: its rows)
    taken = {str(v.name) for e in statement_exprs(body, declares=False) for v in e.walk()
             if isinstance(v, Var)}

    def visit(stmts: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        out: list[Stmt] = []
        for s in stmts:
            if not isinstance(s, For):
                out.append(s)
                continue
            taken.add(s.var.name)
            accs = {st.buffer: sizes[st.buffer] for st in _stores(s.body)
                    if st.buffer in sizes}
            if not isinstance(s.extent, int) and s.kind == "serial" and accs \
                    and not (accs.keys() & grown.keys()) and _shape_ok(s.body, s.var, accs) \
                    and _accs_free_of(s.body, accs, s.var) \
                    and _is_row_loop(s.body, accs, s.var):
                count = rows
                if registers is not None:
                    regs, lanes = registers
                    fit = rows_in_registers(regs, -(-sum(accs.values()) // lanes))
                    count = fit if fit > 1 else rows  # (wide rows: B reused from L1 still)
                grown.update(dict.fromkeys(accs, count))
                out.extend(_jam(s, accs, count, taken, into_vector))
            else:
                out.append(For(s.var, s.extent, visit(s.body), s.kind))
        return tuple(out)

    new_body = visit(body)
    new_scratch = [Allocate(s.buffer, s.dtype, s.size * grown[s.buffer], s.shared)
                   if s.buffer in grown else s for s in scratch]
    return new_body, new_scratch


def _accs_free_of(body: tuple[Stmt, ...], accs: dict[str, int], v: Var) -> bool:
    """Every access of an accumulator is one index that does not read the row `v`."""
    for e in statement_exprs(body, declares=False):
        for x in e.walk():
            if isinstance(x, Load) and x.buffer in accs and (
                    len(x.indices) != 1 or _reads(x.indices[0], v)):
                return False
    return not any(st.buffer in accs and _reads(st.index, v) for st in _stores(body))




def _is_row_loop(body: tuple[Stmt, ...], accs: dict[str, int], v: Var) -> bool:
    """`v` runs over output rows, not a reduction: the body writes some other buffer at an
    index that reads `v`, writes nothing else without it, and sets each accumulator (a
    store reading no accumulator) before anything reads it."""
    stores = _stores(body)
    others = [st for st in stores if st.buffer not in accs]
    if not others or any(not _reads(st.index, v) for st in others):
        return False
    ready: set[str] = set()
    for st in stores:  # (in program order)
        read = {x.buffer for x in (*st.value.walk(), *st.index.walk())
                if isinstance(x, Load) and x.buffer in accs}
        if read - ready:
            return False
        if st.buffer in accs:
            ready.add(st.buffer)
    return ready == accs.keys()

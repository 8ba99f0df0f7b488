"""Which inputs a kernel may overwrite with its output, as its schedule runs it.

A kernel may write its output over an input of the same shape when no element of the input
is read after the output element stored over it: then the memory plan can give the output
the input's bytes when the input dies at this kernel. Stores then land on lines the kernel
has just read, instead of fetching each output line from memory first: a softmax over 54 MB
of attention scores moves two thirds of the bytes (ONNX Runtime runs it in place too).

The rule, checked on the prepared kernel and its schedule:
- the last stage writes the output and does not read the input. (Reading it at its own
  point, `out[i] = f(in[i])`, would be safe too, but LLVM vectorises such a loop behind a
  run-time check that the two pointers do not overlap, which in place they do: the loop
  would run scalar. A softmax's last stage reads the row's exponentials from a scratch.)
- every earlier stage is finished before the last stage starts (computed at the root), or
  is computed at the last stage's loop over rows and reads the input only within the row
  (a softmax's max and exponentials): that row is complete before the last stage writes it;
- no stage is a gemm (its tiles store partial sums in the output) and no earlier stage
  reads the output.
"""

from __future__ import annotations

from strataml.ir.dialects.kernel import Kernel
from strataml.ir.expr import Load
from strataml.schedule.primitives import ComputeAt
from strataml.schedule.schedule import Schedule


def in_place_pairs(kernel: Kernel, schedule: Schedule) -> tuple[tuple[str, str], ...]:
    """(output, input) buffer pairs the kernel may run with in the same memory."""
    if not kernel.stages or any(s.strategy != "loops" for s in schedule.stages):
        return ()
    final = kernel.stages[-1]
    out = kernel.buffer(final.buffer)
    if out.role != "output" or sum(b.role == "output" for b in kernel.buffers) != 1:
        return ()
    earlier = kernel.stages[:-1]
    if any(isinstance(e, Load) and e.buffer == out.name for st in kernel.stages
           for e in st.body.walk()):
        return ()
    lead = len(final.axes) - 1
    pairs: list[tuple[str, str]] = []
    for buf in kernel.buffers:
        if buf.role != "input" or buf.shape != out.shape or buf.dtype != out.dtype:
            continue
        if any(isinstance(e, Load) and e.buffer == buf.name for e in final.body.walk()):
            continue
        ok = True
        for st, how in zip(earlier, schedule.stages[:-1], strict=True):
            reads = [e for e in st.body.walk() if isinstance(e, Load) and e.buffer == buf.name]
            if not reads or not any(isinstance(p, ComputeAt) for p in how.steps):
                continue  # computed at the root: finished before the last stage starts
            shape = kernel.buffer(st.buffer).shape
            if shape[:-1] != out.shape[:-1] or any(
                    e.indices[:lead] != st.axes[:lead] for e in reads):
                ok = False
                break
        if ok and _rows_at_final(kernel, schedule):
            pairs.append((out.name, buf.name))
    return tuple(pairs)


def _rows_at_final(kernel: Kernel, schedule: Schedule) -> bool:
    """Every computed-at stage sits at the last stage's loop just outside its last axis, or
    at such a stage's (the placement `schedule._rows_computed_at_final` makes), so its row is
    the last stage's current row."""
    final = kernel.stages[-1]
    row_loop = final.axes[-2].name if len(final.axes) >= 2 else None
    placed = {st.buffer: next((p for p in how.steps if isinstance(p, ComputeAt)), None)
              for st, how in zip(kernel.stages, schedule.stages, strict=True)}
    at_final = {final.buffer}
    for st in kernel.stages[-2::-1]:
        step = placed[st.buffer]
        if step is None:
            continue
        consumer = next(s for s in kernel.stages if s.buffer == step.consumer)
        if step.consumer not in at_final or step.at != consumer.axes[-2].name \
                or (step.consumer == final.buffer and step.at != row_loop):
            return False
        lead = len(st.axes) - 1
        if any(e.indices[:lead] != reader.axes[:lead] for reader in kernel.stages
               for e in reader.body.walk() if isinstance(e, Load) and e.buffer == st.buffer):
            return False  # its box would span other rows than the current one
        at_final.add(st.buffer)
    return True

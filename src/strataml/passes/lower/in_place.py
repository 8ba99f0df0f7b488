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
from strataml.schedule.primitives import ComputeAt
from strataml.schedule.schedule import Schedule, reads, reads_within_rows


def in_place_pairs(kernel: Kernel, schedule: Schedule) -> tuple[tuple[str, str], ...]:
    """(output, input) buffer pairs the kernel may run with in the same memory."""
    if not kernel.stages or any(s.strategy != "loops" for s in schedule.stages):
        return ()
    final = kernel.stages[-1]
    out = kernel.buffer(final.buffer)
    if out.role != "output" or sum(b.role == "output" for b in kernel.buffers) != 1 \
            or any(reads(st, out.name) for st in kernel.stages) \
            or not _rows_at_final(kernel, schedule):
        return ()
    # Stages computed at the last one's row loop; the others finish before it starts.
    in_rows = [st for st, how in zip(kernel.stages[:-1], schedule.stages[:-1], strict=True)
               if any(isinstance(p, ComputeAt) for p in how.steps)]
    return tuple((out.name, buf.name) for buf in kernel.buffers
                 if buf.role == "input" and buf.shape == out.shape and buf.dtype == out.dtype
                 and not reads(final, buf.name)
                 and all(reads_within_rows(kernel, buf.name, st) for st in in_rows))


def _rows_at_final(kernel: Kernel, schedule: Schedule) -> bool:
    """Every computed-at stage sits at the last stage's loop just outside its last axis, or
    at such a stage's (the placement `schedule._rows_computed_at_final` makes), and is read
    only within rows, so its box is the last stage's current row."""
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
                or (step.consumer == final.buffer and step.at != row_loop) \
                or not all(reads_within_rows(kernel, st.buffer, reader)
                           for reader in kernel.stages if reads(reader, st.buffer)):
            return False
        at_final.add(st.buffer)
    return True

"""Which stages over run-time dims take the gemm strategy: a Linear layer with run-time rows.

A contraction `[.., rows, K] x [K, N]` whose rows (tokens, batch x tokens) are known only at
run time but whose K and N are static (N at least a vector; the columns past its last whole
vector go row by row), with B a static buffer (weights, packed into panels
at compile time as in the static build), gets the static micro-kernel: register tiles of
`mr` rows over the run-time row count's whole tiles, then its tail in smaller tiles
(`passes.lower.dynamic_gemm`). Tile sizes are the static rules' for `REPRESENTATIVE_ROWS`
rows. Attention's products (B with run-time dims) are not taken here.
"""

from __future__ import annotations

from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.schedule.contraction import Contraction, match_contraction

# The row count the tile sizes are chosen for (a typical sequence; the static rules pick an
# 8-row tile there on AVX-512, which divides it).
REPRESENTATIVE_ROWS = 128
# Many rows (four sequences of 128, one of 512), whose static rules' tiles and blocks the
# run-time gemm takes from the row count where the rules settle on them, looked for in
# steps of SWITCH_STEP_ROWS (`symbolic.run_time_gemm_schedule`).
TALL_ROWS = 512
SWITCH_STEP_ROWS = 64
# Static rows fewer than this keep the row trace (the static rules' MIN_GEMM_ROWS).
MIN_STATIC_ROWS = 4


def run_time_contraction(kernel: Kernel, stage: Stage, lanes: int) -> Contraction | str:
    """The contraction of `stage` (a kernel over run-time dims) when the run-time-rows gemm
    can lower it with vectors of `lanes`, else the reason it cannot."""
    if not kernel.dims:
        return "the kernel has no run-time dims"
    shape = kernel.buffer(stage.buffer).shape
    if len(shape) < 2:
        return "rank < 2"
    found = match_contraction(kernel, stage)
    if isinstance(found, str):
        return found
    width, rows = shape[-1], shape[found.i_axis]
    if not isinstance(width, int) or width < lanes:
        return f"the output's last axis ({width}) is narrower than {lanes} lanes"
    if isinstance(rows, int) and rows < MIN_STATIC_ROWS:
        return f"{rows} rows"
    return found

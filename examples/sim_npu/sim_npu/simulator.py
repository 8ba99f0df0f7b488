"""The NPU and its cycle model (stated, simple, and the same for every kernel):

- a matrix engine that multiplies a 16x16 tile of A by a 16x16 tile of B into a 16x16
  accumulator tile in `tile_cycles` cycles (one 16x16x16 multiply-accumulate);
- a scratchpad of `scratchpad_bytes` holding the A, B and C blocks being worked on;
- DMA between host memory and the scratchpad at `dma_bytes_per_cycle`;
- an elementwise unit applying one op to 16 values a cycle (the epilogue, on the C block
  while it is in the scratchpad).

A product [M, K] x [K, N] runs in blocks of its output: the largest block of whole tiles
whose C tiles, with one k-step of A and B tiles, fit in the scratchpad. For each block the
A and B tiles stream in a k-step at a time and C goes out once; compute and DMA do not
overlap (so the scratchpad size shows up in the cycles directly).
"""

from __future__ import annotations

from dataclasses import dataclass

TILE = 16
FLOAT = 4  # bytes: the engine computes in fp32


@dataclass(frozen=True)
class NpuConfig:
    scratchpad_bytes: int = 256 << 10
    dma_bytes_per_cycle: int = 64
    tile_cycles: int = 16
    elementwise_per_cycle: int = 16


@dataclass
class Counts:
    compute: int = 0
    dma: int = 0
    elementwise: int = 0

    @property
    def total(self) -> int:
        return self.compute + self.dma + self.elementwise


def _tiles(n: int) -> int:
    return -(-n // TILE)


class Simulator:
    def __init__(self, config: NpuConfig) -> None:
        self.config = config

    def block_tiles(self, m: int, n: int) -> tuple[int, int]:
        """Tiles per block along M and N: grown in turn while the block's C tiles and one
        k-step of its A and B tiles fit in the scratchpad."""
        bm = bn = 1
        cap = self.config.scratchpad_bytes // (TILE * TILE * FLOAT)  # tiles that fit
        grew = True
        while grew:
            grew = False
            for dm, dn in ((1, 0), (0, 1)):
                tm, tn = bm + dm, bn + dn
                if tm <= _tiles(m) and tn <= _tiles(n) and tm + tn + tm * tn <= cap:
                    bm, bn, grew = tm, tn, True
        return bm, bn

    def matmul_cycles(self, m: int, k: int, n: int, epilogue_ops: int = 0) -> Counts:
        c = self.config
        tm, tk, tn = _tiles(m), _tiles(k), _tiles(n)
        bm, bn = self.block_tiles(m, n)
        # each C block stays in the scratchpad while A's rows and B's columns for it stream
        # through, a k-step at a time: all of A is read once per column block, all of B
        # once per row block, and C written once
        tiles_moved = tm * tk * -(-tn // bn) + tk * tn * -(-tm // bm) + tm * tn
        dma_bytes = tiles_moved * TILE * TILE * FLOAT
        return Counts(compute=tm * tk * tn * c.tile_cycles,
                      dma=-(-dma_bytes // c.dma_bytes_per_cycle),
                      elementwise=epilogue_ops * -(-m * n // c.elementwise_per_cycle))

graph @golden(%x: float32[2,3,4]) -> (%y) {
  %t: float32[3,2,4] = Transpose(%x) {perm=[1, 0, 2]} loc("Transpose_0")
  %u: float32[2,3,4] = Transpose(%t) {perm=[1, 0, 2]} loc("Transpose_1")
  %y: float32[2,3,4] = Identity(%u) loc("Identity_2")
}

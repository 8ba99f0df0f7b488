graph @golden(%x: float32[2,3,4]) -> (%y) {
  %y: float32[2,12] = Reshape(%x) {shape=[2, 12]} loc("Reshape_4")
}

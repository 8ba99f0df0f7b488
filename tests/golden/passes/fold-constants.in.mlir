graph @golden(%x: float32[2,3,4]) -> (%y) {
  %i: int64[] = constant [0]
  %z: int64[1] = constant [0]
  %m1: int64[1] = constant [-1]
  %s: int64[3] = constant [2, 3, 4]
  %g: int64[] = constant [2]
  %u: int64[1] = constant [2]
  %shape: int64[2] = constant [2, -1]
  %y: float32[2,12] = Reshape(%x) {shape=[2, 12]} loc("Reshape_4")
}

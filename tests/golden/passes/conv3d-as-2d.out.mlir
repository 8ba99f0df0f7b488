graph @golden(%x: float32[1,4,3,6,6]) -> (%y) {
  %w_t0__4: float32[8,4,3,3] = constant @"w_t0__4#e6f637b895ce"
  %frames__1: float32[1,3,4,6,6] = Transpose(%x) {perm=[0, 2, 1, 3, 4]} loc("Conv_0")
  %tap__2: float32[1,3,4,6,6] = Slice(%frames__1) {axes=[1], ends=[3], starts=[0], steps=[1]} loc("Conv_0")
  %tap__3: float32[3,4,6,6] = Reshape(%tap__2) {shape=[3, 4, 6, 6]} loc("Conv_0")
  %tap_conv__5: float32[3,8,6,6] = Conv(%tap__3, %w_t0__4) {dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} loc("Conv_0")
  %frames_out__6: float32[1,3,8,6,6] = Reshape(%tap_conv__5) {shape=[1, 3, 8, 6, 6]} loc("Conv_0")
  %y: float32[1,8,3,6,6] = Transpose(%frames_out__6) {perm=[0, 2, 1, 3, 4]} loc("Conv_0")
}

graph @golden(%x: float32[1,16,14,14]) -> (%y) {
  %w: float32[16,16,3,3] = constant @"w#cc74510cdfc6"
  %y: float32[1,16,14,14] = Conv(%x, %w) {dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} loc("Conv_0")
}

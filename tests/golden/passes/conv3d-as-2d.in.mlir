graph @golden(%x: float32[1,4,3,6,6]) -> (%y) {
  %w: float32[8,4,1,3,3] = constant @"w#e6f637b895ce"
  %y: float32[1,8,3,6,6] = Conv(%x, %w) {dilations=[1, 1, 1], group=1, kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1], strides=[1, 1, 1]} loc("Conv_0")
}

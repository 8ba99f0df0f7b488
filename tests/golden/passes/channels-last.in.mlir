graph @golden(%x: float32[1,8,7,7]) -> (%y) {
  %w: float32[16,8,3,3] = constant @"w#15e8950baf38"
  %w2: float32[16,16,3,3] = constant @"w2#985cdf79493d"
  %c: float32[1,16,7,7] = Conv(%x, %w) {dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} loc("Conv_0")
  %r: float32[1,16,7,7] = Relu(%c) loc("Relu_1")
  %y: float32[1,16,7,7] = Conv(%r, %w2) {dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} loc("Conv_2")
}

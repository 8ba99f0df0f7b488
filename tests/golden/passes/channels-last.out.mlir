graph @golden(%x: float32[1,8,7,7]) -> (%y) {
  %w: float32[16,8,3,3] = constant @"w#15e8950baf38"
  %w2: float32[16,16,3,3] = constant @"w2#985cdf79493d"
  %c_channels_last__1: float32[1,49,16] = ConvChannelsLast(%x, %w) {channels_last_input=0, dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], spatial=[7, 7], strides=[1, 1]} loc("Conv_0")
  %r_channels_last__1: float32[1,49,16] = Relu(%c_channels_last__1) loc("Relu_1")
  %y_channels_last__1: float32[1,49,16] = ConvChannelsLast(%r_channels_last__1, %w2) {channels_last_input=1, dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], spatial=[7, 7], strides=[1, 1]} loc("Conv_2")
  %y: float32[1,16,7,7] = ChannelsLastToFirst(%y_channels_last__1) {spatial=[7, 7]} loc("Conv_2/to_channels_first")
}

kernel @k0_convchannelslast_relu loc('Conv_0', 'Relu_1') {
  input %in0: float32[1,8,7,7]
  input %in2: float32[72,16]
  temp %padded0: float32[1,8,9,9]
  output %out4: float32[1,49,16]
  %padded0[i1, i2, i3, i4] = select(and(and(and(((i3 - 1) >= 0), ((i3 - 1) < 7)), ((i4 - 1) >= 0)), ((i4 - 1) < 7)), %in0[i1, i2, (i3 - 1), (i4 - 1)], 0.0:float32)
  %out4[i5, i6, i7] = max(reduce_sum[r8<8, r9<3, r10<3](init=0.0:float32, (%padded0[i5, r8, (floordiv(i6, 7) + r9), (mod(i6, 7) + r10)] * %in2[((((r8 * 3) + r9) * 3) + r10), i7])), 0.0:float32)
}

kernel @k1_convchannelslast loc('Conv_2') {
  input %in0: float32[1,49,16]
  input %in2: float32[144,16]
  temp %padded0: float32[1,9,9,32]
  output %out4: float32[1,49,16]
  %padded0[i1, i2, i3, i4] = select((i4 < 16), select(and(and(and(((i2 - 1) >= 0), ((i2 - 1) < 7)), ((i3 - 1) >= 0)), ((i3 - 1) < 7)), %in0[i1, (((i2 - 1) * 7) + (i3 - 1)), i4], 0.0:float32), 0.0:float32)
  %out4[i5, i6, i7] = reduce_sum[r8<16, r9<3, r10<3](init=0.0:float32, (%padded0[i5, (floordiv(i6, 7) + r9), (mod(i6, 7) + r10), r8] * %in2[((((r8 * 3) + r9) * 3) + r10), i7]))
}

kernel @k2_channelslasttofirst loc('Conv_2/to_channels_first') {
  input %in0: float32[1,49,16]
  output %out1: float32[1,16,7,7]
  %out1[i0, i1, i2, i3] = %in0[i0, ((i2 * 7) + i3), i1]
}

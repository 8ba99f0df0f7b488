kernel @k0_conv loc('Conv_0') {
  input %in0: float32[1,16,14,14]
  temp %plane0: float32[1,16,1,1,38,16]
  input %in3: float32[6,6]
  temp %winograd_in7: float32[1,6,16,9,16]
  input %in5: float32[6,16,48]
  temp %winograd_mid14: float32[1,6,16,64]
  input %in7: float32[4,6]
  output %out8: float32[1,16,14,14]
  %plane0[i1, i2, i3, i4, i5, i6] = select(and(and(and((((i5 + i3) - 1) >= 0), (((i5 + i3) - 1) < 14)), (((i6 + i4) - 1) >= 0)), (((i6 + i4) - 1) < 14)), %in0[i1, i2, ((i5 + i3) - 1), ((i6 + i4) - 1)], 0.0:float32)
  %winograd_in7[i8, i9, i10, i11, i12] = reduce_sum[r13<6](init=0.0:float32, (%in3[i9, r13] * %plane0[i8, i10, 0, 0, ((i11 * 4) + r13), i12]))
  %winograd_mid14[i15, i16, i17, i18] = reduce_sum[r19<16, r20<3](init=0.0:float32, (%in5[i16, i17, ((r19 * 3) + r20)] * %winograd_in7[i15, i16, r19, 0, (r20 + i18)]))
  %out8[i21, i22, i23, i24] = reduce_sum[r25<6](init=0.0:float32, (%in7[mod(i23, 4), r25] * %winograd_mid14[i21, r25, i22, ((floordiv(i23, 4) * 16) + i24)]))
}

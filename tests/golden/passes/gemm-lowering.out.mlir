func @k0_matmul_relu(%in0: float32[1024], %in1.panels32: float32[4096], %out2: float32[1024]) loc('MatMul_0', 'Relu_1') {
  alloc %tile1: float32[256]
  for jb2 in 0..2 {
    for ib3 in 0..2 {
      var acc0_0_6: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc0_1_7: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc1_0_8: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc1_1_9: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc2_0_10: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc2_1_11: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc3_0_12: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc3_1_13: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc4_0_14: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc4_1_15: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc5_0_16: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc5_1_17: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc6_0_18: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc6_1_19: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc7_0_20: float32x16 = broadcast<float32x16>(0.0:float32)
      var acc7_1_21: float32x16 = broadcast<float32x16>(0.0:float32)
      prefetch %out2[((jb2 * 32) + ((ib3 * 8) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + ((ib3 * 8) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 1) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 1) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 2) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 2) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 3) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 3) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 4) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 4) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 5) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 5) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 6) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 6) * 64))]
      prefetch %out2[((jb2 * 32) + (((ib3 * 8) + 7) * 64))]
      prefetch %out2[(((jb2 * 32) + 16) + (((ib3 * 8) + 7) * 64))]
      for rolled r5 in 0..64 {
        var b0_22: float32x16 = %in1.panels32[((mod((jb2 * 32), 32) + (r5 * 32)) + (floordiv((jb2 * 32), 32) * 2048))]:float32x16
        var b1_23: float32x16 = %in1.panels32[((mod(((jb2 * 32) + 16), 32) + (r5 * 32)) + (floordiv(((jb2 * 32) + 16), 32) * 2048))]:float32x16
        var a0_24: float32x16 = broadcast<float32x16>(%in0[(r5 + ((ib3 * 8) * 64))])
        acc0_0_6 = (acc0_0_6 + (a0_24 * b0_22))
        acc0_1_7 = (acc0_1_7 + (a0_24 * b1_23))
        var a1_25: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 1) * 64))])
        acc1_0_8 = (acc1_0_8 + (a1_25 * b0_22))
        acc1_1_9 = (acc1_1_9 + (a1_25 * b1_23))
        var a2_26: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 2) * 64))])
        acc2_0_10 = (acc2_0_10 + (a2_26 * b0_22))
        acc2_1_11 = (acc2_1_11 + (a2_26 * b1_23))
        var a3_27: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 3) * 64))])
        acc3_0_12 = (acc3_0_12 + (a3_27 * b0_22))
        acc3_1_13 = (acc3_1_13 + (a3_27 * b1_23))
        var a4_28: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 4) * 64))])
        acc4_0_14 = (acc4_0_14 + (a4_28 * b0_22))
        acc4_1_15 = (acc4_1_15 + (a4_28 * b1_23))
        var a5_29: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 5) * 64))])
        acc5_0_16 = (acc5_0_16 + (a5_29 * b0_22))
        acc5_1_17 = (acc5_1_17 + (a5_29 * b1_23))
        var a6_30: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 6) * 64))])
        acc6_0_18 = (acc6_0_18 + (a6_30 * b0_22))
        acc6_1_19 = (acc6_1_19 + (a6_30 * b1_23))
        var a7_31: float32x16 = broadcast<float32x16>(%in0[(r5 + (((ib3 * 8) + 7) * 64))])
        acc7_0_20 = (acc7_0_20 + (a7_31 * b0_22))
        acc7_1_21 = (acc7_1_21 + (a7_31 * b1_23))
      }
      %out2[((jb2 * 32) + (ib3 * 512))] = max(acc0_0_6, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 16)] = max(acc0_1_7, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 64)] = max(acc1_0_8, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 80)] = max(acc1_1_9, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 128)] = max(acc2_0_10, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 144)] = max(acc2_1_11, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 192)] = max(acc3_0_12, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 208)] = max(acc3_1_13, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 256)] = max(acc4_0_14, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 272)] = max(acc4_1_15, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 320)] = max(acc5_0_16, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 336)] = max(acc5_1_17, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 384)] = max(acc6_0_18, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 400)] = max(acc6_1_19, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 448)] = max(acc7_0_20, broadcast<float32x16>(0.0:float32))
      %out2[(((jb2 * 32) + (ib3 * 512)) + 464)] = max(acc7_1_21, broadcast<float32x16>(0.0:float32))
    }
  }
}

func @k0_matmul_add_relu(%in0: float32[256], %in1: float32[512], %in2: float32[16], %out3: float32[128]) loc('MatMul_0', 'Add_1', 'Relu_2') {
  alloc %acc1: float32[16]
  for i0_0 in 0..8 {
    for vector i1_2 in 0..16 {
      %acc1[i1_2] = 0.0:float32
    }
    for r2_1 in 0..32 {
      for vector i1_2 in 0..16 {
        %acc1[i1_2] = (%acc1[i1_2] + (%in0[(r2_1 + (i0_0 * 32))] * %in1[(i1_2 + (r2_1 * 16))]))
      }
    }
    for vector i1_2 in 0..16 {
      %out3[(i1_2 + (i0_0 * 16))] = max((%acc1[i1_2] + %in2[i1_2]), 0.0:float32)
    }
  }
}

kernel @k0_matmul_add_relu loc('MatMul_0', 'Add_1', 'Relu_2') {
  input %in0: float32[8,32]
  input %in1: float32[32,16]
  input %in2: float32[16]
  output %out3: float32[8,16]
  %out3[i0, i1] = max((reduce_sum[r2<32](init=0.0:float32, (%in0[i0, r2] * %in1[r2, i1])) + %in2[i1]), 0.0:float32)
}

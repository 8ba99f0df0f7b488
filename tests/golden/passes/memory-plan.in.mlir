graph @golden(%x: float32[16,64]) -> (%y) {
  %w1: float32[64,64] = constant @"w1#a9983933ef98"
  %w2: float32[64,64] = constant @"w2#d8fc30fd4e04"
  %r: float32[16,64] = fused(%x, %w1) loc("MatMul_0") {
    %h: float32[16,64] = MatMul(%x, %w1) loc("MatMul_0")
    %r: float32[16,64] = Relu(%h) loc("Relu_1")
  }
  %y: float32[16,64] = fused(%r, %w2) loc("MatMul_2") {
    %m: float32[16,64] = MatMul(%r, %w2) loc("MatMul_2")
    %y: float32[16,64] = Relu(%m) loc("Relu_3")
  }
}

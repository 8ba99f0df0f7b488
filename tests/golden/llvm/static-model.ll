; ModuleID = "strataml"
target triple = "unknown-unknown-unknown"
target datalayout = ""

@"strataml_num_threads" = global i32 1
@"strataml_fault" = global i32 0
define void @"k0_mul_relu"(float* noalias %"in0", float* noalias %"in1", float* noalias %"out2") nounwind
{
entry:
  %"ctx" = alloca i8*, i32 3
  br label %"body"
body:
  %".5" = bitcast float* %"in0" to i8*
  %".6" = getelementptr inbounds i8*, i8** %"ctx", i32 0
  store i8* %".5", i8** %".6"
  %".8" = bitcast float* %"in1" to i8*
  %".9" = getelementptr inbounds i8*, i8** %"ctx", i32 1
  store i8* %".8", i8** %".9"
  %".11" = bitcast float* %"out2" to i8*
  %".12" = getelementptr inbounds i8*, i8** %"ctx", i32 2
  store i8* %".11", i8** %".12"
  %".14" = bitcast i8** %"ctx" to i8*
  %".15" = load i32, i32* @"strataml_num_threads"
  %".16" = icmp sgt i32 %".15", 1
  br i1 %".16", label %"body.if", label %"body.else"
body.if:
  call void @"strataml_parallel_for"(void (i8*, i64, i64)* @"k0_mul_relu.par1.worker", i8* %".14", i64 1024, i32 %".15")
  br label %"body.endif"
body.else:
  call void @"k0_mul_relu.par1"(float* %"in0", float* %"in1", float* %"out2", i64 0, i64 1024)
  br label %"body.endif"
body.endif:
  ret void
}

define internal void @"k0_mul_relu.par1"(float* noalias %"in0", float* noalias %"in1", float* noalias %"out2", i64 %".4", i64 %".5") nounwind
{
entry:
  %"i0_0" = alloca i64
  %"i1_1" = alloca i64
  br label %"body"
body:
  store i64 %".4", i64* %"i0_0"
  br label %"i0_0.cond"
i0_0.cond:
  %".9" = load i64, i64* %"i0_0"
  %".10" = icmp slt i64 %".9", %".5"
  br i1 %".10", label %"i0_0.body", label %"i0_0.exit"
i0_0.body:
  store i64 0, i64* %"i1_1"
  br label %"i1_1.cond"
i0_0.exit:
  ret void
i1_1.cond:
  %".14" = load i64, i64* %"i1_1"
  %".15" = icmp slt i64 %".14", 256
  br i1 %".15", label %"i1_1.body", label %"i1_1.exit"
i1_1.body:
  %".17" = load i64, i64* %"i1_1"
  %".18" = load i64, i64* %"i0_0"
  %".19" = mul nsw i64 %".18", 256
  %".20" = add nsw i64 %".17", %".19"
  %".21" = getelementptr inbounds float, float* %"in0", i64 %".20"
  %".22" = load float, float* %".21", align 4
  %".23" = load i64, i64* %"i1_1"
  %".24" = getelementptr inbounds float, float* %"in1", i64 %".23"
  %".25" = load float, float* %".24", align 4
  %".26" = fmul contract float %".22", %".25"
  %".27" = call nsz float @"llvm.maximum.f32"(float %".26", float              0x0)
  %".28" = load i64, i64* %"i1_1"
  %".29" = load i64, i64* %"i0_0"
  %".30" = mul nsw i64 %".29", 256
  %".31" = add nsw i64 %".28", %".30"
  %".32" = getelementptr inbounds float, float* %"out2", i64 %".31"
  store float %".27", float* %".32", align 4
  %".34" = load i64, i64* %"i1_1"
  %".35" = add nsw i64 %".34", 1
  store i64 %".35", i64* %"i1_1"
  br label %"i1_1.cond"
i1_1.exit:
  %".38" = load i64, i64* %"i0_0"
  %".39" = add nsw i64 %".38", 1
  store i64 %".39", i64* %"i0_0"
  br label %"i0_0.cond"
}

declare float @"llvm.maximum.f32"(float %".1", float %".2")

define internal void @"k0_mul_relu.par1.worker"(i8* %".1", i64 %".2", i64 %".3")
{
entry:
  %".5" = bitcast i8* %".1" to i8**
  %".6" = getelementptr inbounds i8*, i8** %".5", i32 0
  %".7" = load i8*, i8** %".6"
  %".8" = bitcast i8* %".7" to float*
  %".9" = getelementptr inbounds i8*, i8** %".5", i32 1
  %".10" = load i8*, i8** %".9"
  %".11" = bitcast i8* %".10" to float*
  %".12" = getelementptr inbounds i8*, i8** %".5", i32 2
  %".13" = load i8*, i8** %".12"
  %".14" = bitcast i8* %".13" to float*
  call void @"k0_mul_relu.par1"(float* %".8", float* %".11", float* %".14", i64 %".2", i64 %".3")
  ret void
}

declare void @"strataml_parallel_for"(void (i8*, i64, i64)* %".1", i8* %".2", i64 %".3", i32 %".4")

define void @"k1_softmax"(float* %"in0", float* %"out4", float* noalias %"max0", float* noalias %"exp4", float* noalias %"inv_sum7") nounwind
{
entry:
  %"box1" = alloca float, i32 256, align 64
  %"box2" = alloca float, i32 1, align 64
  %"box3" = alloca float, i32 1, align 64
  %"ctx" = alloca i8*, i32 5
  br label %"body"
body:
  %".7" = bitcast float* %"in0" to i8*
  %".8" = getelementptr inbounds i8*, i8** %"ctx", i32 0
  store i8* %".7", i8** %".8"
  %".10" = bitcast float* %"out4" to i8*
  %".11" = getelementptr inbounds i8*, i8** %"ctx", i32 1
  store i8* %".10", i8** %".11"
  %".13" = bitcast float* %"max0" to i8*
  %".14" = getelementptr inbounds i8*, i8** %"ctx", i32 2
  store i8* %".13", i8** %".14"
  %".16" = bitcast float* %"exp4" to i8*
  %".17" = getelementptr inbounds i8*, i8** %"ctx", i32 3
  store i8* %".16", i8** %".17"
  %".19" = bitcast float* %"inv_sum7" to i8*
  %".20" = getelementptr inbounds i8*, i8** %"ctx", i32 4
  store i8* %".19", i8** %".20"
  %".22" = bitcast i8** %"ctx" to i8*
  %".23" = load i32, i32* @"strataml_num_threads"
  %".24" = icmp sgt i32 %".23", 1
  br i1 %".24", label %"body.if", label %"body.else"
body.if:
  call void @"strataml_parallel_for"(void (i8*, i64, i64)* @"k1_softmax.par1.worker", i8* %".22", i64 1024, i32 %".23")
  br label %"body.endif"
body.else:
  call void @"k1_softmax.par1"(float* %"in0", float* %"out4", float* %"max0", float* %"exp4", float* %"inv_sum7", i64 0, i64 1024)
  br label %"body.endif"
body.endif:
  ret void
}

define internal void @"k1_softmax.par1"(float* %"in0", float* %"out4", float* noalias %"max0", float* noalias %"exp4", float* noalias %"inv_sum7", i64 %".6", i64 %".7") nounwind
{
entry:
  %"box1" = alloca float, i32 256, align 64
  %"box2" = alloca float, i32 1, align 64
  %"box3" = alloca float, i32 1, align 64
  %"i11_0" = alloca i64
  %"acc4" = alloca float
  %"r3_3" = alloca i64
  %"i6_2" = alloca i64
  %"acc6" = alloca float
  %"r10_5" = alloca i64
  %"i12_1" = alloca i64
  br label %"body"
body:
  store i64 %".6", i64* %"i11_0"
  br label %"i11_0.cond"
i11_0.cond:
  %".11" = load i64, i64* %"i11_0"
  %".12" = icmp slt i64 %".11", %".7"
  br i1 %".12", label %"i11_0.body", label %"i11_0.exit"
i11_0.body:
  store float 0xfff0000000000000, float* %"acc4"
  store i64 0, i64* %"r3_3"
  br label %"r3_3.cond"
i11_0.exit:
  ret void
r3_3.cond:
  %".17" = load i64, i64* %"r3_3"
  %".18" = icmp slt i64 %".17", 256
  br i1 %".18", label %"r3_3.body", label %"r3_3.exit"
r3_3.body:
  %".20" = load float, float* %"acc4"
  %".21" = load i64, i64* %"r3_3"
  %".22" = load i64, i64* %"i11_0"
  %".23" = mul nsw i64 %".22", 256
  %".24" = add nsw i64 %".21", %".23"
  %".25" = getelementptr inbounds float, float* %"in0", i64 %".24"
  %".26" = load float, float* %".25", align 4
  %".27" = call nsz float @"llvm.maximum.f32"(float %".20", float %".26")
  store float %".27", float* %"acc4"
  %".29" = load i64, i64* %"r3_3"
  %".30" = add nsw i64 %".29", 1
  store i64 %".30", i64* %"r3_3"
  br label %"r3_3.cond"
r3_3.exit:
  %".33" = load float, float* %"acc4"
  %".34" = getelementptr inbounds float, float* %"box2", i64 0
  store float %".33", float* %".34", align 4
  store i64 0, i64* %"i6_2"
  br label %"i6_2.cond"
i6_2.cond:
  %".38" = load i64, i64* %"i6_2"
  %".39" = icmp slt i64 %".38", 256
  br i1 %".39", label %"i6_2.body", label %"i6_2.exit"
i6_2.body:
  %".41" = load i64, i64* %"i6_2"
  %".42" = load i64, i64* %"i11_0"
  %".43" = mul nsw i64 %".42", 256
  %".44" = add nsw i64 %".41", %".43"
  %".45" = getelementptr inbounds float, float* %"in0", i64 %".44"
  %".46" = load float, float* %".45", align 4
  %".47" = getelementptr inbounds float, float* %"box2", i64 0
  %".48" = load float, float* %".47", align 4
  %".49" = fsub contract float %".46", %".48"
  %".50" = fcmp olt float %".49", 0xc05a000000000000
  %".51" = select  i1 %".50", float 0xc05a000000000000, float %".49"
  %".52" = fcmp ogt float %".51", 0x40562e4300000000
  %".53" = select  i1 %".52", float 0x40562e4300000000, float %".51"
  %".54" = fmul float %".53", 0x3ff7154760000000
  %".55" = call float @"llvm.roundeven.f32"(float %".54")
  %".56" = fmul contract float %".55", 0xbfe6300000000000
  %".57" = fadd contract float %".56", %".53"
  %".58" = fmul contract float %".55", 0x3f2bd01060000000
  %".59" = fadd contract float %".58", %".57"
  %".60" = fmul contract float 0x3f2a0d2ce0000000, %".59"
  %".61" = fadd contract float %".60", 0x3f56e879c0000000
  %".62" = fmul contract float %".61", %".59"
  %".63" = fadd contract float %".62", 0x3f81112100000000
  %".64" = fmul contract float %".63", %".59"
  %".65" = fadd contract float %".64", 0x3fa5553820000000
  %".66" = fmul contract float %".65", %".59"
  %".67" = fadd contract float %".66", 0x3fc5555540000000
  %".68" = fmul contract float %".67", %".59"
  %".69" = fadd contract float %".68", 0x3fe0000000000000
  %".70" = fmul float %".59", %".59"
  %".71" = fmul float %".69", %".70"
  %".72" = fadd float %".59", 0x3ff0000000000000
  %".73" = fmul contract float %".71", 0x3ff0000000000000
  %".74" = fadd contract float %".73", %".72"
  %".75" = fmul float %".55", 0x3fe0000000000000
  %".76" = call float @"llvm.floor.f32"(float %".75")
  %".77" = fptosi float %".76" to i32
  %".78" = add i32 %".77", 127
  %".79" = shl i32 %".78", 23
  %".80" = bitcast i32 %".79" to float
  %".81" = fmul float %".74", %".80"
  %".82" = fsub float %".55", %".76"
  %".83" = fptosi float %".82" to i32
  %".84" = add i32 %".83", 127
  %".85" = shl i32 %".84", 23
  %".86" = bitcast i32 %".85" to float
  %".87" = fmul float %".81", %".86"
  %".88" = fcmp ogt float %".49", 0x40562e4300000000
  %".89" = fcmp olt float %".49", 0xc05a000000000000
  %".90" = select  i1 %".88", float 0x7ff0000000000000, float %".87"
  %".91" = select  i1 %".89", float              0x0, float %".90"
  %".92" = load i64, i64* %"i6_2"
  %".93" = getelementptr inbounds float, float* %"box1", i64 %".92"
  store float %".91", float* %".93", align 4
  %".95" = load i64, i64* %"i6_2"
  %".96" = add nsw i64 %".95", 1
  store i64 %".96", i64* %"i6_2"
  br label %"i6_2.cond"
i6_2.exit:
  store float              0x0, float* %"acc6"
  store i64 0, i64* %"r10_5"
  br label %"r10_5.cond"
r10_5.cond:
  %".102" = load i64, i64* %"r10_5"
  %".103" = icmp slt i64 %".102", 256
  br i1 %".103", label %"r10_5.body", label %"r10_5.exit"
r10_5.body:
  %".105" = load float, float* %"acc6"
  %".106" = load i64, i64* %"r10_5"
  %".107" = getelementptr inbounds float, float* %"box1", i64 %".106"
  %".108" = load float, float* %".107", align 4
  %".109" = fadd reassoc contract float %".105", %".108"
  store float %".109", float* %"acc6"
  %".111" = load i64, i64* %"r10_5"
  %".112" = add nsw i64 %".111", 1
  store i64 %".112", i64* %"r10_5"
  br label %"r10_5.cond"
r10_5.exit:
  %".115" = load float, float* %"acc6"
  %".116" = fdiv float 0x3ff0000000000000, %".115"
  %".117" = getelementptr inbounds float, float* %"box3", i64 0
  store float %".116", float* %".117", align 4
  store i64 0, i64* %"i12_1"
  br label %"i12_1.cond"
i12_1.cond:
  %".121" = load i64, i64* %"i12_1"
  %".122" = icmp slt i64 %".121", 256
  br i1 %".122", label %"i12_1.body", label %"i12_1.exit"
i12_1.body:
  %".124" = load i64, i64* %"i12_1"
  %".125" = getelementptr inbounds float, float* %"box1", i64 %".124"
  %".126" = load float, float* %".125", align 4
  %".127" = getelementptr inbounds float, float* %"box3", i64 0
  %".128" = load float, float* %".127", align 4
  %".129" = fmul contract float %".126", %".128"
  %".130" = load i64, i64* %"i12_1"
  %".131" = load i64, i64* %"i11_0"
  %".132" = mul nsw i64 %".131", 256
  %".133" = add nsw i64 %".130", %".132"
  %".134" = getelementptr inbounds float, float* %"out4", i64 %".133"
  store float %".129", float* %".134", align 4
  %".136" = load i64, i64* %"i12_1"
  %".137" = add nsw i64 %".136", 1
  store i64 %".137", i64* %"i12_1"
  br label %"i12_1.cond"
i12_1.exit:
  %".140" = load i64, i64* %"i11_0"
  %".141" = add nsw i64 %".140", 1
  store i64 %".141", i64* %"i11_0"
  br label %"i11_0.cond"
}

declare float @"llvm.roundeven.f32"(float %".1")

declare float @"llvm.floor.f32"(float %".1")

define internal void @"k1_softmax.par1.worker"(i8* %".1", i64 %".2", i64 %".3")
{
entry:
  %".5" = bitcast i8* %".1" to i8**
  %".6" = getelementptr inbounds i8*, i8** %".5", i32 0
  %".7" = load i8*, i8** %".6"
  %".8" = bitcast i8* %".7" to float*
  %".9" = getelementptr inbounds i8*, i8** %".5", i32 1
  %".10" = load i8*, i8** %".9"
  %".11" = bitcast i8* %".10" to float*
  %".12" = getelementptr inbounds i8*, i8** %".5", i32 2
  %".13" = load i8*, i8** %".12"
  %".14" = bitcast i8* %".13" to float*
  %".15" = getelementptr inbounds i8*, i8** %".5", i32 3
  %".16" = load i8*, i8** %".15"
  %".17" = bitcast i8* %".16" to float*
  %".18" = getelementptr inbounds i8*, i8** %".5", i32 4
  %".19" = load i8*, i8** %".18"
  %".20" = bitcast i8* %".19" to float*
  call void @"k1_softmax.par1"(float* %".8", float* %".11", float* %".14", float* %".17", float* %".20", i64 %".2", i64 %".3")
  ret void
}

define void @"k2_transpose"(float* noalias %"in0", float* noalias %"out1") nounwind
{
entry:
  %"ctx" = alloca i8*, i32 2
  br label %"body"
body:
  %".4" = bitcast float* %"in0" to i8*
  %".5" = getelementptr inbounds i8*, i8** %"ctx", i32 0
  store i8* %".4", i8** %".5"
  %".7" = bitcast float* %"out1" to i8*
  %".8" = getelementptr inbounds i8*, i8** %"ctx", i32 1
  store i8* %".7", i8** %".8"
  %".10" = bitcast i8** %"ctx" to i8*
  %".11" = load i32, i32* @"strataml_num_threads"
  %".12" = icmp sgt i32 %".11", 1
  br i1 %".12", label %"body.if", label %"body.else"
body.if:
  call void @"strataml_parallel_for"(void (i8*, i64, i64)* @"k2_transpose.par1.worker", i8* %".10", i64 4, i32 %".11")
  br label %"body.endif"
body.else:
  call void @"k2_transpose.par1"(float* %"in0", float* %"out1", i64 0, i64 4)
  br label %"body.endif"
body.endif:
  ret void
}

define internal void @"k2_transpose.par1"(float* noalias %"in0", float* noalias %"out1", i64 %".3", i64 %".4") nounwind
{
entry:
  %"i1o_0" = alloca i64
  %"i0_1" = alloca i64
  %"i1i_2" = alloca i64
  br label %"body"
body:
  store i64 %".3", i64* %"i1o_0"
  br label %"i1o_0.cond"
i1o_0.cond:
  %".8" = load i64, i64* %"i1o_0"
  %".9" = icmp slt i64 %".8", %".4"
  br i1 %".9", label %"i1o_0.body", label %"i1o_0.exit"
i1o_0.body:
  store i64 0, i64* %"i0_1"
  br label %"i0_1.cond"
i1o_0.exit:
  ret void
i0_1.cond:
  %".13" = load i64, i64* %"i0_1"
  %".14" = icmp slt i64 %".13", 256
  br i1 %".14", label %"i0_1.body", label %"i0_1.exit"
i0_1.body:
  store i64 0, i64* %"i1i_2"
  br label %"i1i_2.cond"
i0_1.exit:
  %".47" = load i64, i64* %"i1o_0"
  %".48" = add nsw i64 %".47", 1
  store i64 %".48", i64* %"i1o_0"
  br label %"i1o_0.cond", !llvm.loop !1
i1i_2.cond:
  %".18" = load i64, i64* %"i1i_2"
  %".19" = icmp slt i64 %".18", 256
  br i1 %".19", label %"i1i_2.body", label %"i1i_2.exit"
i1i_2.body:
  %".21" = load i64, i64* %"i0_1"
  %".22" = load i64, i64* %"i1o_0"
  %".23" = mul nsw i64 %".22", 256
  %".24" = load i64, i64* %"i1i_2"
  %".25" = add nsw i64 %".23", %".24"
  %".26" = mul nsw i64 %".25", 256
  %".27" = add nsw i64 %".21", %".26"
  %".28" = getelementptr inbounds float, float* %"in0", i64 %".27"
  %".29" = load float, float* %".28", align 4
  %".30" = load i64, i64* %"i1o_0"
  %".31" = mul nsw i64 %".30", 256
  %".32" = load i64, i64* %"i1i_2"
  %".33" = add nsw i64 %".31", %".32"
  %".34" = load i64, i64* %"i0_1"
  %".35" = mul nsw i64 %".34", 1024
  %".36" = add nsw i64 %".33", %".35"
  %".37" = getelementptr inbounds float, float* %"out1", i64 %".36"
  store float %".29", float* %".37", align 4
  %".39" = load i64, i64* %"i1i_2"
  %".40" = add nsw i64 %".39", 1
  store i64 %".40", i64* %"i1i_2"
  br label %"i1i_2.cond"
i1i_2.exit:
  %".43" = load i64, i64* %"i0_1"
  %".44" = add nsw i64 %".43", 1
  store i64 %".44", i64* %"i0_1"
  br label %"i0_1.cond", !llvm.loop !0
}

define internal void @"k2_transpose.par1.worker"(i8* %".1", i64 %".2", i64 %".3")
{
entry:
  %".5" = bitcast i8* %".1" to i8**
  %".6" = getelementptr inbounds i8*, i8** %".5", i32 0
  %".7" = load i8*, i8** %".6"
  %".8" = bitcast i8* %".7" to float*
  %".9" = getelementptr inbounds i8*, i8** %".5", i32 1
  %".10" = load i8*, i8** %".9"
  %".11" = bitcast i8* %".10" to float*
  call void @"k2_transpose.par1"(float* %".8", float* %".11", i64 %".2", i64 %".3")
  ret void
}

define void @"model_entry"(i8* %".1", i8* %".2", i8* %".3")
{
entry:
  %".5" = bitcast i8* %".3" to i8**
  %".6" = getelementptr inbounds i8*, i8** %".5", i64 0
  %".7" = load i8*, i8** %".6"
  %".8" = bitcast i8* %".7" to float*
  %".9" = getelementptr inbounds i8, i8* %".2", i64 0
  %".10" = bitcast i8* %".9" to float*
  %".11" = getelementptr inbounds i8, i8* %".1", i64 0
  %".12" = bitcast i8* %".11" to float*
  call void @"k0_mul_relu"(float* %".8", float* %".10", float* %".12")
  %".14" = getelementptr inbounds i8, i8* %".1", i64 0
  %".15" = bitcast i8* %".14" to float*
  %".16" = getelementptr inbounds i8, i8* %".1", i64 0
  %".17" = bitcast i8* %".16" to float*
  %".18" = getelementptr inbounds i8, i8* %".1", i64 0
  %".19" = bitcast i8* %".18" to float*
  %".20" = getelementptr inbounds i8, i8* %".1", i64 0
  %".21" = bitcast i8* %".20" to float*
  %".22" = getelementptr inbounds i8, i8* %".1", i64 0
  %".23" = bitcast i8* %".22" to float*
  call void @"k1_softmax"(float* %".15", float* %".17", float* %".19", float* %".21", float* %".23")
  %".25" = getelementptr inbounds i8, i8* %".1", i64 0
  %".26" = bitcast i8* %".25" to float*
  %".27" = getelementptr inbounds i8*, i8** %".5", i64 1
  %".28" = load i8*, i8** %".27"
  %".29" = bitcast i8* %".28" to float*
  call void @"k2_transpose"(float* %".26", float* %".29")
  ret void
}

!0 = !{ !"strataml.loop.around-vector.0" }
!1 = !{ !"strataml.loop.around-vector.1" }
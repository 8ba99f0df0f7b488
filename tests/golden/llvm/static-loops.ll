; ModuleID = "strataml"
target triple = "unknown-unknown-unknown"
target datalayout = ""

@"strataml_num_threads" = global i32 1
@"strataml_fault" = global i32 0
define void @"copy"(float* noalias %"a", float* noalias %"b") nounwind
{
entry:
  %"mxcsr.saved" = alloca i32
  %"mxcsr" = alloca i32
  call void @"llvm.x86.sse.stmxcsr"(i32* %"mxcsr.saved")
  %".5" = load i32, i32* %"mxcsr.saved"
  %".6" = or i32 %".5", 32832
  store i32 %".6", i32* %"mxcsr"
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr")
  %"ctx" = alloca i8*, i32 2
  br label %"body"
body:
  %".9" = bitcast float* %"a" to i8*
  %".10" = getelementptr inbounds i8*, i8** %"ctx", i32 0
  store i8* %".9", i8** %".10"
  %".12" = bitcast float* %"b" to i8*
  %".13" = getelementptr inbounds i8*, i8** %"ctx", i32 1
  store i8* %".12", i8** %".13"
  %".15" = bitcast i8** %"ctx" to i8*
  %".16" = load i32, i32* @"strataml_num_threads"
  %".17" = icmp sgt i32 %".16", 1
  br i1 %".17", label %"body.if", label %"body.else"
body.if:
  call void @"strataml_parallel_for"(void (i8*, i64, i64)* @"copy.par1.worker", i8* %".15", i64 8, i32 %".16")
  br label %"body.endif"
body.else:
  call void @"copy.par1"(float* %"a", float* %"b", i64 0, i64 8)
  br label %"body.endif"
body.endif:
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr.saved")
  ret void
}

declare void @"llvm.x86.sse.stmxcsr"(i32* %".1")

declare void @"llvm.x86.sse.ldmxcsr"(i32* %".1")

define internal void @"copy.par1"(float* noalias %"a", float* noalias %"b", i64 %".3", i64 %".4") nounwind
{
entry:
  %"i" = alloca i64
  %"j" = alloca i64
  br label %"body"
body:
  store i64 %".3", i64* %"i"
  br label %"i.cond"
i.cond:
  %".8" = load i64, i64* %"i"
  %".9" = icmp slt i64 %".8", %".4"
  br i1 %".9", label %"i.body", label %"i.exit"
i.body:
  store i64 0, i64* %"j"
  br label %"j.cond"
i.exit:
  ret void
j.cond:
  %".13" = load i64, i64* %"j"
  %".14" = icmp slt i64 %".13", 8
  br i1 %".14", label %"j.body", label %"j.exit"
j.body:
  %".16" = load i64, i64* %"i"
  %".17" = mul nsw i64 %".16", 8
  %".18" = load i64, i64* %"j"
  %".19" = add nsw i64 %".17", %".18"
  %".20" = getelementptr inbounds float, float* %"a", i64 %".19"
  %".21" = load float, float* %".20", align 4
  %".22" = fmul contract float %".21", 0x4000000000000000
  %".23" = load i64, i64* %"i"
  %".24" = mul nsw i64 %".23", 8
  %".25" = load i64, i64* %"j"
  %".26" = add nsw i64 %".24", %".25"
  %".27" = getelementptr inbounds float, float* %"b", i64 %".26"
  store float %".22", float* %".27", align 4
  %".29" = load i64, i64* %"j"
  %".30" = add nsw i64 %".29", 1
  store i64 %".30", i64* %"j"
  br label %"j.cond"
j.exit:
  %".33" = load i64, i64* %"i"
  %".34" = add nsw i64 %".33", 1
  store i64 %".34", i64* %"i"
  br label %"i.cond", !llvm.loop !0
}

define internal void @"copy.par1.worker"(i8* %".1", i64 %".2", i64 %".3")
{
entry:
  %".5" = bitcast i8* %".1" to i8**
  %".6" = getelementptr inbounds i8*, i8** %".5", i32 0
  %".7" = load i8*, i8** %".6"
  %".8" = bitcast i8* %".7" to float*
  %".9" = getelementptr inbounds i8*, i8** %".5", i32 1
  %".10" = load i8*, i8** %".9"
  %".11" = bitcast i8* %".10" to float*
  %"mxcsr.saved" = alloca i32
  %"mxcsr" = alloca i32
  call void @"llvm.x86.sse.stmxcsr"(i32* %"mxcsr.saved")
  %".13" = load i32, i32* %"mxcsr.saved"
  %".14" = or i32 %".13", 32832
  store i32 %".14", i32* %"mxcsr"
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr")
  call void @"copy.par1"(float* %".8", float* %".11", i64 %".2", i64 %".3")
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr.saved")
  ret void
}

declare void @"strataml_parallel_for"(void (i8*, i64, i64)* %".1", i8* %".2", i64 %".3", i32 %".4")

define void @"rows"(float* %"x", float* noalias %"y") nounwind
{
entry:
  %"mxcsr.saved" = alloca i32
  %"mxcsr" = alloca i32
  call void @"llvm.x86.sse.stmxcsr"(i32* %"mxcsr.saved")
  %".5" = load i32, i32* %"mxcsr.saved"
  %".6" = or i32 %".5", 32832
  store i32 %".6", i32* %"mxcsr"
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr")
  %"t" = alloca float, i32 8, align 64
  %"r" = alloca i64
  %"ctx" = alloca i8*, i32 3
  br label %"body"
body:
  store i64 0, i64* %"r"
  br label %"r.cond"
r.cond:
  %".11" = load i64, i64* %"r"
  %".12" = icmp slt i64 %".11", 3
  br i1 %".12", label %"r.body", label %"r.exit"
r.body:
  %".14" = bitcast float* %"x" to i8*
  %".15" = getelementptr inbounds i8*, i8** %"ctx", i32 0
  store i8* %".14", i8** %".15"
  %".17" = bitcast float* %"y" to i8*
  %".18" = getelementptr inbounds i8*, i8** %"ctx", i32 1
  store i8* %".17", i8** %".18"
  %".20" = load i64, i64* %"r"
  %".21" = inttoptr i64 %".20" to i8*
  %".22" = getelementptr inbounds i8*, i8** %"ctx", i32 2
  store i8* %".21", i8** %".22"
  %".24" = bitcast i8** %"ctx" to i8*
  %".25" = load i32, i32* @"strataml_num_threads"
  %".26" = icmp sgt i32 %".25", 1
  br i1 %".26", label %"r.body.if", label %"r.body.else"
r.exit:
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr.saved")
  ret void
r.body.if:
  call void @"strataml_parallel_for"(void (i8*, i64, i64)* @"rows.par1.worker", i8* %".24", i64 4, i32 %".25")
  br label %"r.body.endif"
r.body.else:
  call void @"rows.par1"(float* %"x", float* %"y", i64 %".20", i64 0, i64 4)
  br label %"r.body.endif"
r.body.endif:
  %".32" = load i64, i64* %"r"
  %".33" = add nsw i64 %".32", 1
  store i64 %".33", i64* %"r"
  br label %"r.cond"
}

define internal void @"rows.par1"(float* %"x", float* noalias %"y", i64 %".3", i64 %".4", i64 %".5") nounwind
{
entry:
  %"t" = alloca float, i32 8, align 64
  %"r" = alloca i64
  %"c" = alloca i64
  %"acc" = alloca float
  %"j" = alloca i64
  br label %"body"
body:
  store i64 %".3", i64* %"r"
  store i64 %".4", i64* %"c"
  br label %"c.cond"
c.cond:
  %".10" = load i64, i64* %"c"
  %".11" = icmp slt i64 %".10", %".5"
  br i1 %".11", label %"c.body", label %"c.exit"
c.body:
  store float              0x0, float* %"acc"
  store i64 0, i64* %"j"
  br label %"j.cond"
c.exit:
  ret void
j.cond:
  %".16" = load i64, i64* %"j"
  %".17" = icmp slt i64 %".16", 8
  br i1 %".17", label %"j.body", label %"j.exit"
j.body:
  %".19" = load float, float* %"acc"
  %".20" = load i64, i64* %"r"
  %".21" = mul nsw i64 %".20", 32
  %".22" = load i64, i64* %"c"
  %".23" = mul nsw i64 %".22", 8
  %".24" = add nsw i64 %".21", %".23"
  %".25" = load i64, i64* %"j"
  %".26" = add nsw i64 %".24", %".25"
  %".27" = getelementptr inbounds float, float* %"x", i64 %".26"
  %".28" = load float, float* %".27", align 4
  %".29" = fadd reassoc contract float %".19", %".28"
  store float %".29", float* %"acc"
  %".31" = load i64, i64* %"j"
  %".32" = add nsw i64 %".31", 1
  store i64 %".32", i64* %"j"
  br label %"j.cond", !llvm.loop !1
j.exit:
  %".35" = load float, float* %"acc"
  %".36" = load i64, i64* %"c"
  %".37" = getelementptr inbounds float, float* %"t", i64 %".36"
  store float %".35", float* %".37", align 4
  %".39" = load i64, i64* %"c"
  %".40" = getelementptr inbounds float, float* %"t", i64 %".39"
  %".41" = load float, float* %".40", align 4
  %".42" = load i64, i64* %"r"
  %".43" = mul nsw i64 %".42", 4
  %".44" = load i64, i64* %"c"
  %".45" = add nsw i64 %".43", %".44"
  %".46" = getelementptr inbounds float, float* %"y", i64 %".45"
  store float %".41", float* %".46", align 4
  %".48" = load i64, i64* %"c"
  %".49" = add nsw i64 %".48", 1
  store i64 %".49", i64* %"c"
  br label %"c.cond"
}

define internal void @"rows.par1.worker"(i8* %".1", i64 %".2", i64 %".3")
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
  %".14" = ptrtoint i8* %".13" to i64
  %"mxcsr.saved" = alloca i32
  %"mxcsr" = alloca i32
  call void @"llvm.x86.sse.stmxcsr"(i32* %"mxcsr.saved")
  %".16" = load i32, i32* %"mxcsr.saved"
  %".17" = or i32 %".16", 32832
  store i32 %".17", i32* %"mxcsr"
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr")
  call void @"rows.par1"(float* %".8", float* %".11", i64 %".14", i64 %".2", i64 %".3")
  call void @"llvm.x86.sse.ldmxcsr"(i32* %"mxcsr.saved")
  ret void
}

define void @"static_entry"(i8* %".1", i8* %".2", i8* %".3")
{
entry:
  %".5" = bitcast i8* %".3" to i8**
  %".6" = getelementptr inbounds i8, i8* %".1", i64 0
  %".7" = bitcast i8* %".6" to float*
  %".8" = getelementptr inbounds i8*, i8** %".5", i64 0
  %".9" = load i8*, i8** %".8"
  %".10" = bitcast i8* %".9" to float*
  call void @"copy"(float* %".7", float* %".10")
  %".12" = getelementptr inbounds i8, i8* %".2", i64 64
  %".13" = bitcast i8* %".12" to float*
  %".14" = getelementptr inbounds i8, i8* %".1", i64 256
  %".15" = bitcast i8* %".14" to float*
  call void @"rows"(float* %".13", float* %".15")
  ret void
}

!0 = !{ !"strataml.loop.around-vector.0" }
!1 = !{ !"strataml.loop.unroll.1" }
"""A fast subset of ONNX's node conformance cases, run in-process through onnx_backend.

`tests/conformance/run_conformance.py` runs all ~1,900 cases in isolated workers; this
curated list (cases that pass, across many ops) keeps `make test` exercising the backend
API, the importer's normalisation of each op and the generated code against ONNX's own
expected outputs, compared exactly as ONNX's runner compares them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest

from tests.conformance.run_conformance import collect_cases, run_case

CASES = (
    "test_abs", "test_acos", "test_acosh", "test_add", "test_and2d",
    "test_argmax_default_axis_example", "test_argmin_default_axis_example", "test_asin",
    "test_asinh", "test_atan", "test_atanh", "test_averagepool_1d_default",
    "test_batchnorm_epsilon", "test_bitshift_left_int16", "test_bitwise_and_i16_3d",
    "test_bitwise_not_2d", "test_bitwise_or_i16_4d", "test_bitwise_xor_i16_3d",
    "test_cast_DOUBLE_to_FLOAT", "test_castlike_DOUBLE_to_FLOAT", "test_ceil", "test_celu",
    "test_center_crop_pad_crop", "test_clip", "test_concat_1d_axis_0",
    "test_constantofshape_float_ones", "test_basic_conv_with_padding", "test_convtranspose",
    "test_cos", "test_cosh", "test_cumprod_1d", "test_cumsum_1d", "test_div",
    "test_dropout_default", "test_einsum_batch_diagonal", "test_elu", "test_equal", "test_erf",
    "test_exp", "test_expand_dim_changed", "test_eyelike_populate_off_main_diagonal",
    "test_flatten_axis0", "test_floor", "test_gather_0", "test_gather_elements_0",
    "test_gathernd_example_float32", "test_gelu_default_1", "test_gemm_all_attributes",
    "test_globalaveragepool", "test_globalmaxpool", "test_greater", "test_greater_equal",
    "test_hardsigmoid", "test_hardswish", "test_hardmax_axis_0", "test_identity",
    "test_instancenorm_epsilon", "test_isinf", "test_isnan", "test_lrn",
    "test_layer_normalization_2d_axis0", "test_leakyrelu", "test_less", "test_less_equal",
    "test_log", "test_logsoftmax_axis_0", "test_l1normalization_axis_0", "test_matmul_1d_1d",
    "test_max_example", "test_maxpool_1d_default", "test_mean_example", "test_min_example",
    "test_mish", "test_mod_broadcast", "test_mul", "test_neg", "test_nllloss_NC", "test_not_2d",
    "test_onehot_negative_indices", "test_or2d", "test_prelu_broadcast", "test_constant_pad",
    "test_pow", "test_rms_normalization_2d_axis0", "test_reciprocal",
    "test_reduce_l1_default_axes_keepdims_example",
    "test_reduce_l2_default_axes_keepdims_example", "test_reduce_log_sum_asc_axes",
    "test_reduce_log_sum_exp_default_axes_keepdims_example", "test_reduce_max_bool_inputs",
    "test_reduce_mean_default_axes_keepdims_example", "test_reduce_min_bool_inputs",
    "test_reduce_prod_default_axes_keepdims_example",
    "test_reduce_sum_default_axes_keepdims_example",
    "test_reduce_sum_square_default_axes_keepdims_example", "test_relu",
    "test_reshape_allowzero_reordered", "test_round", "test_scatter_elements_with_axis",
    "test_scatternd", "test_selu", "test_shape", "test_shrink_hard", "test_sigmoid", "test_sign",
    "test_sin", "test_sinh", "test_size", "test_slice", "test_softmax_axis_0",
    "test_sce_NCd1_mean_weight_negative_ii", "test_softplus", "test_softsign",
    "test_split_1d_uneven_split_opset18", "test_sqrt", "test_squeeze", "test_sub",
    "test_sum_example", "test_swish", "test_tan", "test_tanh", "test_thresholdedrelu",
    "test_tile", "test_transpose_all_permutations_0", "test_tril", "test_unsqueeze_axis_0",
    "test_where_example", "test_xor2d", "test_leakyrelu_expanded", "test_softmax_axis_1_expanded",
    "test_maxpool_2d_ceil", "test_averagepool_2d_pads_count_include_pad",
    "test_conv_with_strides_and_asymmetric_padding", "test_convtranspose_pads",
    "test_einsum_transpose", "test_reduce_sum_keepdims_random",
    "test_argmax_keepdims_random_select_last_index",
    "test_attention_4d_gqa_causal_nonpad_decode", "test_attention_3d_with_past_and_present",
    "test_attention_4d_with_qk_matmul_softmax", "test_attention_local_window",
    "test_resize_upsample_scales_linear_align_corners", "test_resize_downsample_scales_cubic",
    "test_resize_upsample_sizes_nearest_floor_align_corners", "test_upsample_nearest",
    "test_resize_tf_crop_and_resize", "test_lstm_with_peepholes", "test_gru_bidirectional",
    "test_simple_rnn_batchwise", "test_lppool_2d_pads", "test_group_normalization_example",
    "test_mvn", "test_depthtospace_crd_mode_example", "test_spacetodepth_example",
    "test_rotary_embedding_interleaved", "test_swiglu", "test_quantizelinear_axis",
    "test_dequantizelinear_blocked", "test_dynamicquantizelinear", "test_matmulinteger",
)


@lru_cache(maxsize=1)
def _cases() -> dict[str, Any]:
    wanted = set(CASES)
    return {c.name: c for c in collect_cases() if c.name in wanted}


def test_subset_names_exist() -> None:
    missing = sorted(set(CASES) - set(_cases()))
    assert not missing, f"cases not in this onnx version: {missing}"


@pytest.mark.parametrize("name", CASES)
def test_node_case(name: str) -> None:
    case = _cases().get(name)
    if case is None:
        pytest.skip(f"{name} is not in this onnx version")
    status, message = run_case(case)
    assert status == "pass", f"{name}: {status}: {message}"

"""RNN, GRU and LSTM, unrolled over a static sequence length into core graph ops.

Registered into `converters.CONVERTERS` on import (see the end of converters.py).
"""

from __future__ import annotations

import numpy as np

from strataml.frontends.onnx.composite import _operand, _output
from strataml.frontends.onnx.converters import (
    ConvertContext,
    OnnxNode,
    Unsupported,
    _Builder,
    _check_attrs,
    converter,
)
from strataml.ir.dialects.graph import Node

_RNN_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_RNN_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                     "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_RNN_ACTS = {"Tanh", "Sigmoid", "Relu", "Softsign", "Softplus", "LeakyRelu", "HardSigmoid",
             "Elu", "ThresholdedRelu"}


@converter("RNN", "GRU", "LSTM")
def convert_recurrent(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """A recurrent layer unrolled over its (static) sequence length.

    The input projection of every time step is one MatMul up front; each step then adds the
    recurrent MatMul and the gate arithmetic. `sequence_lens` masks steps past a sequence's
    end (forward direction), as ONNX specifies: the state is held and Y is zero there.
    """
    _check_attrs(n, {"activation_alpha", "activation_beta", "activations", "clip",
                     "direction", "hidden_size", "layout", "linear_before_reset",
                     "input_forget"})
    a = n.attrs
    x_t = ctx.type(n.inputs[0])
    if not x_t.is_static:
        raise Unsupported("symbolic input shape")
    layout = a.get("layout", 0)
    seq, batch = (x_t.shape[0], x_t.shape[1]) if layout == 0 else (x_t.shape[1], x_t.shape[0])
    seq, batch = int(seq), int(batch)
    hid = a["hidden_size"]
    gates = _RNN_GATES[n.op]
    direction = a.get("direction", "forward")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    nacts = len(_RNN_DEFAULT_ACTS[n.op])
    acts = list(a.get("activations", _RNN_DEFAULT_ACTS[n.op] * len(dirs)))
    alphas = list(a.get("activation_alpha", []))
    betas = list(a.get("activation_beta", []))
    if any(act not in _RNN_ACTS for act in acts):
        raise Unsupported(f"activations {acts}")
    if alphas or betas:
        raise Unsupported("activation_alpha / activation_beta")
    seq_lens = _operand(n, 4)
    if seq_lens and "reverse" in dirs:
        raise Unsupported("sequence_lens with the reverse direction")
    dtype = x_t.dtype
    b = _Builder(ctx, n)
    clip = a.get("clip")

    def act(i: int, v: str) -> str:
        return b.op(acts[i], v)

    def gate_in(v: str) -> str:
        if clip is None:
            return v
        return b.op("Clip", v, b.const(-clip, dtype), b.const(clip, dtype))

    def pick(v: str, d: int) -> str:
        return b.op("Gather", v, b.const(d, "int64"), axis=0)

    def cols(v: str, k: int, count: int = 1) -> str:
        """Gate k (and the next count - 1) of a (batch, gates * hid) value."""
        return b.op("Slice", v, starts=(k * hid,), ends=((k + count) * hid,), axes=(1,),
                    steps=(1,))

    x = n.inputs[0] if layout == 0 else b.op("Transpose", n.inputs[0], perm=(1, 0, 2))
    bias, init_h, init_c, peep = _operand(n, 3), _operand(n, 5), _operand(n, 6), \
        _operand(n, 7)
    if init_h and layout == 1:
        init_h = b.op("Transpose", init_h, perm=(1, 0, 2))
    if init_c and layout == 1:
        init_c = b.op("Transpose", init_c, perm=(1, 0, 2))
    valid: list[str] = []
    if seq_lens:
        lens = b.op("Unsqueeze", b.op("Cast", seq_lens, to="int64"), axes=(1,))
        valid = [b.op("Less", b.const(t, "int64"), lens) for t in range(seq)]
    zeros = b.const(np.zeros((batch, hid)), dtype)
    ys, hs, cs = [], [], []
    for d, dname in enumerate(dirs):
        w, r = pick(n.inputs[1], d), pick(n.inputs[2], d)
        acts_d = list(range(d * nacts, (d + 1) * nacts))
        # Input projections of all steps at once: (seq, batch, gates * hid).
        xw = b.op("MatMul", x, b.op("Transpose", w, perm=(1, 0)))
        wb = rb = None
        if bias:
            bd = pick(bias, d)
            wb = b.op("Slice", bd, starts=(0,), ends=(gates * hid,), axes=(0,), steps=(1,))
            rb = b.op("Slice", bd, starts=(gates * hid,), ends=(2 * gates * hid,), axes=(0,),
                      steps=(1,))
            xw = b.op("Add", xw, wb)
        rt = b.op("Transpose", r, perm=(1, 0))
        h = pick(init_h, d) if init_h else zeros
        # The cell state is LSTM's alone; RNN and GRU carry zeros that no step reads.
        c = pick(init_c, d) if init_c and n.op == "LSTM" else zeros
        p = pick(peep, d) if peep else None
        steps = range(seq) if dname == "forward" else range(seq - 1, -1, -1)
        outs: dict[int, str] = {}
        for t in steps:
            xt = pick(xw, t)
            if n.op == "GRU":
                rz = b.op("Slice", rt, starts=(0,), ends=(2 * hid,), axes=(1,), steps=(1,))
                rh = b.op("Slice", rt, starts=(2 * hid,), ends=(3 * hid,), axes=(1,),
                          steps=(1,))
                hr = b.op("MatMul", h, rz)
                if rb:
                    hr = b.op("Add", hr, b.op("Slice", rb, starts=(0,), ends=(2 * hid,),
                                              axes=(0,), steps=(1,)))
                pre = b.op("Add", cols(xt, 0, 2), hr)
                z = act(acts_d[0], gate_in(cols(pre, 0)))
                rg = act(acts_d[0], gate_in(cols(pre, 1)))
                rbh = b.op("Slice", rb, starts=(2 * hid,), ends=(3 * hid,), axes=(0,),
                           steps=(1,)) if rb else None
                if a.get("linear_before_reset", 0):
                    hh = b.op("MatMul", h, rh)
                    if rbh:
                        hh = b.op("Add", hh, rbh)
                    hh = b.op("Mul", rg, hh)
                else:
                    hh = b.op("MatMul", b.op("Mul", rg, h), rh)
                    if rbh:
                        hh = b.op("Add", hh, rbh)
                cand = act(acts_d[1], gate_in(b.op("Add", cols(xt, 2), hh)))
                one = b.const(1.0, dtype)
                h_new = b.op("Add", b.op("Mul", b.op("Sub", one, z), cand), b.op("Mul", z, h))
                c_new = None
            else:
                pre = b.op("Add", xt, b.op("MatMul", h, rt))
                if rb:
                    pre = b.op("Add", pre, rb)
                if n.op == "RNN":
                    h_new = act(acts_d[0], gate_in(pre))
                    c_new = None
                else:
                    def peephole(v: str, k: int, state: str, p: str | None = p) -> str:
                        if p is None:
                            return v
                        pk = b.op("Slice", p, starts=(k * hid,), ends=((k + 1) * hid,),
                                  axes=(0,), steps=(1,))
                        return b.op("Add", v, b.op("Mul", pk, state))
                    i_g = act(acts_d[0], gate_in(peephole(cols(pre, 0), 0, c)))
                    if a.get("input_forget", 0):
                        f_g = b.op("Sub", b.const(1.0, dtype), i_g)
                    else:
                        f_g = act(acts_d[0], gate_in(peephole(cols(pre, 2), 2, c)))
                    cand = act(acts_d[1], gate_in(cols(pre, 3)))
                    c_new = b.op("Add", b.op("Mul", f_g, c), b.op("Mul", i_g, cand))
                    o_g = act(acts_d[0], gate_in(peephole(cols(pre, 1), 1, c_new)))
                    h_new = b.op("Mul", o_g, act(acts_d[2], c_new))
            if valid:
                outs[t] = b.op("Where", valid[t], h_new, zeros)
                h_new = b.op("Where", valid[t], h_new, h)
                if c_new is not None:
                    c_new = b.op("Where", valid[t], c_new, c)
            else:
                outs[t] = h_new
            h = h_new
            if c_new is not None:
                c = c_new
        ys.append([outs[t] for t in range(seq)])
        hs.append(h)
        cs.append(c)

    def stack(vals: list[str], axis: int) -> str:
        parts = [b.op("Unsqueeze", v, axes=(axis,)) for v in vals]
        return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=axis)

    y_out, h_out = _output(n, 0), _output(n, 1)
    c_out = _output(n, 2) if n.op == "LSTM" else ""
    if y_out:
        y = stack([stack([ys[d][t] for d in range(len(dirs))], 0) for t in range(seq)], 0)
        b.op("Transpose" if layout else "Identity", y, out=y_out,
             **({"perm": (2, 0, 1, 3)} if layout else {}))
    for name, vals in ((h_out, hs), (c_out, cs)):
        if name:
            st = stack(vals, 0)
            b.op("Transpose" if layout else "Identity", st, out=name,
                 **({"perm": (1, 0, 2)} if layout else {}))
    return b.nodes

"""Independent float64 numpy BPTT for d2l's LSTM (d2l 10.1), with an optional peephole from
the cell C_t to the output gate, written out step by step from the equations.

It shares no code with rnnjax (the cross-entropy helper is numpy_gru's).
"""

import numpy as np
from numpy_gru import as_f64, loss_and_dO, sigmoid


def lstm_bptt(p, x, y, loss_at):
    """d2l's LSTM, with the peephole w_co (C_t to the output gate) when p has it: returns
    loss, grad_norm (T,) = ||dL/dH_t||, cell_grad_norm (T,) = ||dL/dC_t|| (total: through H_t,
    the output gate and C_{t+1}), param_grad_norm (T,) = the norm of step t's share of the
    gradient of (W_hi, W_hf, W_ho, W_hc[, w_co]), and those full gradients.
    """
    (W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q) = as_f64(
        p, ["W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o", "W_xc", "W_hc",
            "b_c", "W_hq", "b_q"])
    peep = "w_co" in p
    w_co = np.asarray(p["w_co"], np.float64) if peep else np.zeros_like(b_o)
    B, T = x.shape
    H = W_hi.shape[0]
    h = np.zeros((T + 1, B, H))
    c = np.zeros((T + 1, B, H))
    I, F, O, Ct = (np.zeros((T, B, H)) for _ in range(4))
    for t in range(T):
        X = np.eye(W_xi.shape[0])[x[:, t]]
        I[t] = sigmoid(X @ W_xi + h[t] @ W_hi + b_i)
        F[t] = sigmoid(X @ W_xf + h[t] @ W_hf + b_f)
        Ct[t] = np.tanh(X @ W_xc + h[t] @ W_hc + b_c)
        c[t + 1] = F[t] * c[t] + I[t] * Ct[t]
        O[t] = sigmoid(X @ W_xo + h[t] @ W_ho + c[t + 1] * w_co + b_o)
        h[t + 1] = O[t] * np.tanh(c[t + 1])
    loss, dO = loss_and_dO(h[1:], W_hq, b_q, y, loss_at)
    gn, cgn, pgn = np.zeros(T), np.zeros(T), np.zeros(T)
    names = ["W_hi", "W_hf", "W_ho", "W_hc"] + (["w_co"] * peep)
    dW = dict.fromkeys(names, 0.0)
    nxt_h = np.zeros((B, H))  # dL/dH_t through step t + 1
    nxt_c = np.zeros((B, H))  # dL/dC_t through C_{t+1}
    for t in reversed(range(T)):
        dH = dO[t] @ W_hq.T + nxt_h
        gn[t] = np.linalg.norm(dH)
        tc = np.tanh(c[t + 1])
        da_o = dH * tc * O[t] * (1 - O[t])
        dC = dH * O[t] * (1 - tc**2) + da_o * w_co + nxt_c  # total dL/dC_t
        cgn[t] = np.linalg.norm(dC)
        da_f = dC * c[t] * F[t] * (1 - F[t])
        da_i = dC * Ct[t] * I[t] * (1 - I[t])
        da_c = dC * I[t] * (1 - Ct[t] ** 2)
        hp = h[t]
        share = {"W_hi": hp.T @ da_i, "W_hf": hp.T @ da_f, "W_ho": hp.T @ da_o,
                 "W_hc": hp.T @ da_c}
        if peep:
            share["w_co"] = (da_o * c[t + 1]).sum(axis=0)
        pgn[t] = np.sqrt(sum((g**2).sum() for g in share.values()))
        for k in dW:
            dW[k] = dW[k] + share[k]
        nxt_h = da_i @ W_hi.T + da_f @ W_hf.T + da_o @ W_ho.T + da_c @ W_hc.T
        nxt_c = dC * F[t]
    return loss, gn, cgn, pgn, dW

"""An independent float64 numpy BPTT for the vanilla RNN, written out step by step.

It shares no code with rnnjax: forward with a Python loop, softmax cross-entropy by hand, and
the backward recursion dH_t = dO_t W_hq^T + dA_{t+1} W_hh^T, dA_t = dH_t * phi'(A_t).
"""

import numpy as np

PHI = {
    "tanh": (np.tanh, lambda a, h: 1.0 - h**2),
    "sigmoid": (lambda a: 1.0 / (1.0 + np.exp(-a)), lambda a, h: h * (1.0 - h)),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a, h: (a > 0).astype(np.float64)),
    "linear": (lambda a: a, lambda a, h: np.ones_like(a)),
}


def bptt(p, x, y, activation, loss_at):
    """Returns loss, dH (T, B, H), dA (T, B, H), h_prev (T, B, H), dW_hh (H, H), all float64.

    Args:
      p: dict of W_xh (D, H), W_hh (H, H), b_h (H,), W_hq (H, Q), b_q (Q,).
      x, y: (B, T) integer tokens and targets.
    """
    W_xh, W_hh, b_h, W_hq, b_q = (np.asarray(p[k], np.float64)
                                   for k in ("W_xh", "W_hh", "b_h", "W_hq", "b_q"))
    phi, dphi = PHI[activation]
    B, T = x.shape
    H, Q = W_hh.shape[0], W_hq.shape[1]
    hs = np.zeros((T + 1, B, H))  # hs[0] = H_0 = 0
    As = np.zeros((T, B, H))
    for t in range(T):
        onehot = np.eye(W_xh.shape[0])[x[:, t]]
        As[t] = onehot @ W_xh + hs[t] @ W_hh + b_h
        hs[t + 1] = phi(As[t])
    # loss and dL/dO_t
    steps = range(T) if loss_at == "all" else [T - 1]
    n = B * len(steps)
    loss = 0.0
    dO = np.zeros((T, B, Q))
    for t in steps:
        o = hs[t + 1] @ W_hq + b_q
        o = o - o.max(axis=1, keepdims=True)
        logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
        prob = np.exp(logp)
        loss -= logp[np.arange(B), y[:, t]].sum() / n
        dO[t] = (prob - np.eye(Q)[y[:, t]]) / n
    dH = np.zeros((T, B, H))
    dA = np.zeros((T, B, H))
    nxt = np.zeros((B, H))
    for t in reversed(range(T)):
        dH[t] = dO[t] @ W_hq.T + nxt
        dA[t] = dH[t] * dphi(As[t], hs[t + 1])
        nxt = dA[t] @ W_hh.T
    h_prev = hs[:-1]
    dW_hh = sum(h_prev[t].T @ dA[t] for t in range(T))
    return loss, dH, dA, h_prev, dW_hh

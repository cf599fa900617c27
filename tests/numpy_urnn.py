"""An independent float64 numpy forward pass and BPTT of the uRNN (Arjovsky, Shah & Bengio 2016),
written from the paper's equations with explicit dense complex matrices.

It shares no code with rnnjax: W = D3 R2 F^-1 D2 Pi R1 F D1 is a product of dense n x n matrices
(F the unitary DFT matrix exp(-2 pi i jk / n) / sqrt(n), Pi the permutation matrix of the given
pi), the state is a complex numpy array, and the loss is written out by hand.

Gradients of the real loss L with respect to a complex vector u are written as one complex
vector g = dL/dRe(u) + i dL/dIm(u) (the real view R^2n, packed), so ||g|| is the real gradient's
norm. For a complex-linear map u' = M u this gives g = M^* g', and for modReLU,
h = z (|z| + b) / |z| on the units with |z| + b > 0:

    g_z = c g_h - (b / |z|^3) Re(conj(z) g_h) z,   c = (|z| + b) / |z|   (0 on the other units).

Parameter gradients (summed over the batch), for a phase u' = diag(exp(i theta)) u:
dL/dtheta_j = Re(conj(g'_j) i u'_j); for a reflection u' = u - (2/n) v a, a = v^* u,
n = ||v||^2: dL/dv = -(2/n) conj(a) g' - (2/n) (g'^* v) u + (4/n^2) Re(g'^* v a) v, whose real
and imaginary parts are dL/dv_re and dL/dv_im.
"""

import numpy as np

RECURRENT = ("theta1", "theta2", "theta3", "v1_re", "v1_im", "v2_re", "v2_im")


def dft_matrix(n):
    """The unitary DFT matrix F, F_jk = exp(-2 pi i jk / n) / sqrt(n)."""
    j = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(j, j) / n) / np.sqrt(n)


def permutation_matrix(pi):
    """P with (P u)_j = u_{pi(j)}."""
    n = len(pi)
    P = np.zeros((n, n))
    P[np.arange(n), pi] = 1.0
    return P


def reflection_matrix(v):
    return np.eye(len(v)) - 2.0 * np.outer(v, v.conj()) / np.vdot(v, v).real


def factors(p, pi):
    """The factors of W in the order they act: D1, F, R1, Pi, D2, F^-1, R2, D3 (name, matrix)."""
    n = len(pi)
    F = dft_matrix(n)
    v1 = p["v1_re"] + 1j * p["v1_im"]
    v2 = p["v2_re"] + 1j * p["v2_im"]
    return [("theta1", np.diag(np.exp(1j * p["theta1"]))), ("F", F),
            ("v1", reflection_matrix(v1)), ("Pi", permutation_matrix(pi)),
            ("theta2", np.diag(np.exp(1j * p["theta2"]))), ("Finv", F.conj().T),
            ("v2", reflection_matrix(v2)), ("theta3", np.diag(np.exp(1j * p["theta3"])))]


def dense_W(p, pi):
    """W = D3 R2 F^-1 D2 Pi R1 F D1 as a dense (n, n) complex matrix."""
    W = np.eye(len(pi), dtype=complex)
    for _, M in factors(p, pi):
        W = M @ W
    return W


def as64(p):
    return {k: np.asarray(v, np.float64) for k, v in p.items()}


def forward(p, pi, x):
    """z_t, h_t for t = 1..T and h_0: z (T, B, n), hs (T + 1, B, n) complex.

    x: (B, T) integer tokens or (B, T, D) real inputs.
    """
    p = as64(p)
    W = dense_W(p, pi)
    V = p["V_re"] + 1j * p["V_im"]
    B, T = x.shape[:2]
    n = len(pi)
    hs = np.zeros((T + 1, B, n), complex)
    zs = np.zeros((T, B, n), complex)
    hs[0] = p["h0_re"] + 1j * p["h0_im"]
    for t in range(T):
        vx = V[x[:, t]] if x.ndim == 2 else np.asarray(x[:, t], np.float64) @ V
        zs[t] = hs[t] @ W.T + vx  # each row: W h + V x
        r = np.abs(zs[t])
        on = r + p["b"] > 0
        hs[t + 1] = np.where(on, zs[t] * (r + p["b"]) / np.where(r > 0, r, 1), 0)
    return zs, hs


def loss_and_output_grads(p, hs, y, kind, loss_at):
    """The loss and dL/dh_t from each step's own output: (T, B, n) complex."""
    W_hq, b_q = np.asarray(p["W_hq"], np.float64), np.asarray(p["b_q"], np.float64)
    T, B, n = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    steps = range(T) if loss_at == "all" else [T - 1]
    local = np.zeros((T, B, n), complex)
    loss = 0.0
    for t in steps:
        o = np.concatenate([hs[t + 1].real, hs[t + 1].imag], axis=1) @ W_hq + b_q
        if kind == "tokens":
            Q = W_hq.shape[1]
            m = B * len(steps)
            o = o - o.max(axis=1, keepdims=True)
            logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
            loss -= logp[np.arange(B), y[:, t]].sum() / m
            dO = (np.exp(logp) - np.eye(Q)[y[:, t]]) / m
        else:  # squared error of the single output at the last step, mean over the batch
            err = o[:, 0] - np.asarray(y, np.float64)
            loss += np.mean(err**2)
            dO = np.zeros_like(o)
            dO[:, 0] = 2 * err / B
        d = dO @ W_hq.T  # (B, 2n): dL/dRe h, dL/dIm h
        local[t] = d[:, :n] + 1j * d[:, n:]
    return loss, local


def modrelu_backward(z, b, g):
    """g_z from g_h through h = modReLU(z, b) (see the module docstring)."""
    r = np.abs(z)
    on = r + b > 0
    rs = np.where(r > 0, r, 1)
    c = (r + b) / rs
    return np.where(on, c * g - (b / rs**3) * np.real(z.conj() * g) * z, 0)


def param_grads(p, pi, h_prev, gz):
    """The step's share of dL/d(theta_k, v_k): the cotangent gz = dL/dz_t pulled back through
    z = W h_prev, factor by factor. Returns a dict of (n,) arrays."""
    fs = factors(as64(p), pi)
    us = [h_prev]  # the vectors between the factors, rows
    for _, M in fs:
        us.append(us[-1] @ M.T)
    out = {}
    g = gz
    for k in reversed(range(len(fs))):
        name, M = fs[k]
        u_in, u_out = us[k], us[k + 1]
        if name.startswith("theta"):
            out[name] = np.sum(np.real(g.conj() * 1j * u_out), axis=0)
        elif name in ("v1", "v2"):
            v = p[name + "_re"] + 1j * p[name + "_im"]
            nv = np.vdot(v, v).real
            a = u_in @ v.conj()  # (B,) v^* u
            ghv = g.conj() @ v  # (B,) g^* v
            G = (-(2 / nv) * a.conj()[:, None] * g - (2 / nv) * ghv[:, None] * u_in
                 + (4 / nv**2) * np.real(ghv * a)[:, None] * v)
            out[name + "_re"] = G.sum(0).real
            out[name + "_im"] = G.sum(0).imag
        g = g @ M.conj()  # rows: M^* g
    return out


def bptt(p, pi, x, y, kind, loss_at):
    """Loss, dL/dh_t (T, B, n) complex (total derivative) and each step's share of the
    gradient of the recurrent parameters (a list of T dicts), all float64.

    Args:
      p: dict of the uRNN's parameters (names as in the README), one network.
      pi: (n,) the permutation. x: (B, T) tokens or (B, T, D) reals. y: (B, T) or (B,) targets.
      kind: "tokens" or "regression". loss_at: "all" or "last".
    """
    p = as64(p)
    zs, hs = forward(p, pi, x)
    loss, local = loss_and_output_grads(p, hs, y, kind, loss_at)
    W = dense_W(p, pi)
    T = zs.shape[0]
    dh = np.zeros_like(local)
    shares = [None] * T
    nxt = np.zeros_like(local[0])  # dL/dh_t through z_{t+1}
    for t in reversed(range(T)):
        dh[t] = local[t] + nxt
        gz = modrelu_backward(zs[t], p["b"], dh[t])
        shares[t] = param_grads(p, pi, hs[t], gz)
        nxt = gz @ W.conj()  # rows: W^* g
    return loss, dh, shares


def loss_only(p, pi, x, y, kind, loss_at):
    """The loss alone (for finite differences)."""
    p = as64(p)
    _, hs = forward(p, pi, x)
    return loss_and_output_grads(p, hs, y, kind, loss_at)[0]

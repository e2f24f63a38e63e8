"""pair_bias_attention: q, k, v [B, 64, N, 8] + bias -> out and the logits (performance.md §9.2 K1, K2).

Providers: ``reference`` (eager ``pair_bias_attention_reference``, the ratio's denominator), ``reference_compiled``,
``unimol_tools`` (K-unicore: bmm, in-place += bias, unimol-tools' eager softmax_dropout, bmm), ``sdpa_composite[..]``
(K-sdpa: baddbmm logits + SDPA with the bias, backend pinned) and ``molm_fast:<backend>`` (padded) /
``molm_fast:<backend>[packed]`` (the same molecules with cu_seqlens, no padded pairs). Inputs as Uni-Mol makes them:
q, k, v are [B, N, H, D].transpose(1, 2) views, bias [B, H, N, N] with -inf on the last 10% of keys (uniform
grid) or on each molecule's pad keys (size mix). fp32 on the CPU, bf16 on CUDA. Forward at eval (dropout 0);
forward+backward with dropout 0.1 (training), gradients of q, k, v and the bias.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend

from benchmarks import anchors
from benchmarks import harness as h
from molm_fast.ops import pair_bias_attention, pair_bias_attention_reference, use_backend
from molm_fast.ops.linear import cpu_has_bf16_gemm

OP = "pair_bias_attention"
H, D = 64, 8
SCALE = D**-0.5
GRID = [(N, B) for N, Bs in ((16, (1, 64, 256, 1024)), (32, (1, 64, 256, 1024)), (64, (1, 64, 256, 1024)),
                             (128, (1, 64, 256)), (258, (1, 16, 64))) for B in Bs]  # §9.3
GRID_CPU = [(16, 64), (32, 16), (32, 64), (64, 16), (128, 4), (258, 1)]
GRID_QUICK = [(16, 1), (32, 16)]
MIX_BATCHES, MIX_BATCHES_CPU = (64, 256, 1024), (16,)


def flops(elements: int, backward: bool = False) -> float:
    """2 GEMMs of 2*D FLOP per pair element (q k^T and p v) + ~6 elementwise (scale, bias, max, exp, sum, div);
    backward: 4 GEMM-like products (q k^T again, dO v^T, ds k, ds^T q) + dv + ~8 elementwise."""
    forward = 2 * 2 * D + 6
    return float(elements * (forward + (5 * 2 * D + 8 if backward else 0)))


def bytes_moved(tokens: int, elements: int, itemsize: int, backward: bool = False) -> float:
    """Forward: read q, k, v and the bias, write out and the logits (+ a 4-byte LSE per row). Backward: read q, k,
    v, out, dO, the bias and the LSE, write dq, dk, dv and dbias."""
    rows = tokens * H
    forward = (4 * rows * D + 2 * elements) * itemsize + 4 * rows
    return float(forward + ((8 * rows * D + 2 * elements) * itemsize + 4 * rows if backward else 0))


def _inputs(ns: list[int], N: int, device, dtype, gen: torch.Generator, grad: bool, pad_last: float) -> tuple:
    """(q, k, v, bias padded; q, k, v, bias packed; cu_seqlens, max_seqlen) for molecules of ``ns`` tokens in
    a batch padded to N: pad keys get -inf (and with ``pad_last`` the last 10% of every row's keys)."""
    B = len(ns)
    q, k, v = (torch.randn(B, N, H, D, generator=gen).to(device, dtype) for _ in range(3))  # [B, N, H, D]
    bias = torch.randn(B, H, N, N, generator=gen).to(device, dtype)
    n = torch.tensor(ns, device=device)
    keys = torch.arange(N, device=device)
    masked = keys[None, :] >= (n[:, None] if not pad_last else (n[:, None] * 9 + 9) // 10)  # [B, N]
    bias = bias.masked_fill(masked[:, None, None, :], float("-inf"))
    keep = keys[None, :] < n[:, None]  # [B, N] real tokens
    packed = [t[keep] for t in (q, k, v)]  # [T, H, D]
    pbias = torch.cat([bias[b, :, :m, :m].reshape(-1) for b, m in enumerate(ns)])  # the packed pair tensor
    leaves = [t.transpose(1, 2) for t in (q, k, v)] + [bias] + packed + [pbias]
    leaves = [t.requires_grad_(grad) if grad else t for t in leaves]
    return (*leaves, h.cu_seqlens(ns, device), max(ns))


def _providers(r: h.Run, dropout_p: float, packed: bool, compiled: bool) -> dict:
    def padded(fn):
        return lambda q, k, v, b, *rest: fn(q, k, v, b)

    def reference(q, k, v, b):
        return pair_bias_attention_reference(q, k, v, b, scale=SCALE, dropout_p=dropout_p)

    providers = {"reference": padded(reference)}
    if compiled:
        providers["reference_compiled"] = padded(torch.compile(reference, dynamic=False))
    try:
        anchors._unimol_tools_modules()
        providers["unimol_tools"] = padded(lambda q, k, v, b: anchors.unimol_tools_attention(
            q, k, v, b, scale=SCALE, dropout_p=dropout_p, training=dropout_p > 0))
    except anchors.AnchorUnavailable:
        pass
    if dropout_p == 0:  # SDPA's dropout draws its own mask; K-sdpa is an eval anchor
        sdpa = anchors.default_sdpa_backend(r.device)
        providers[f"sdpa_composite[{sdpa.name.lower()}]"] = padded(
            lambda q, k, v, b: anchors.sdpa_composite(q, k, v, b, scale=SCALE, backend=sdpa))
        if r.is_cuda:
            providers["sdpa_composite[cudnn_attention]"] = padded(lambda q, k, v, b: anchors.sdpa_composite(
                q, k, v, b, scale=SCALE, backend=SDPBackend.CUDNN_ATTENTION))
    for backend in h.molm_backends(OP, r.device):
        def run(*args, backend=backend, **kwargs):
            with use_backend(backend):
                return pair_bias_attention(*args, **kwargs)

        providers[f"molm_fast:{backend}"] = padded(
            lambda q, k, v, b, run=run: run(q, k, v, b, scale=SCALE, dropout_p=dropout_p))
        if packed:
            providers[f"molm_fast:{backend}[packed]"] = lambda q, k, v, b, pq, pk, pv, pb, cu, n, run=run: run(
                pq, pk, pv, pb, scale=SCALE, dropout_p=dropout_p, cu_seqlens=cu, max_seqlen=n)
    return providers


def _measure(r: h.Run, ns: list[int], N: int, size_mix: str, *, backward: bool = False, packed: bool = False,
             compiled: bool = True, headline: bool = False, dtype: torch.dtype | None = None) -> None:
    gen = torch.Generator().manual_seed(len(r.records))
    dtype = dtype or (torch.bfloat16 if r.is_cuda else torch.float32)
    itemsize = torch.finfo(dtype).bits // 8
    B = len(ns)
    inputs = r.rotated(lambda: _inputs(ns, N, r.device, dtype, gen, backward, size_mix == "uniform"),
                       max_sets=8 if r.is_cuda else 2)
    providers = _providers(r, 0.1 if backward else 0.0, packed, compiled)
    if backward:  # dq, dk, dv, dbias: padded leaves 0..3, packed leaves 4..7
        providers = {name: h.with_grad(fn, [4, 5, 6, 7] if name.endswith("[packed]") else [0, 1, 2, 3])
                     for name, fn in providers.items()}
    elements = B * H * N * N
    case = h.Case(OP, {"B": B, "N": N, "H": H, "D": D}, str(dtype).removeprefix("torch."), size_mix,
                  units=h.units(ns), flops=flops(elements, backward),
                  bytes=bytes_moved(B * N, elements, itemsize, backward),
                  pass_="forward+backward" if backward else "forward", headline=headline)
    r.compare(case, providers, inputs)


def run(r: h.Run) -> None:
    """The real size mix first (padded as the reference collates, and packed), then the §9.3 uniform grid."""
    for B in MIX_BATCHES if r.is_cuda else MIX_BATCHES_CPU:
        ns = h.sample_sizes("pubchem324k", B, seed=0)
        _measure(r, ns, max(ns), "pubchem324k", packed=True, headline=True)
        _measure(r, ns, max(ns), "pubchem324k", backward=True, packed=True, compiled=False)
        if not r.is_cuda and cpu_has_bf16_gemm():  # a CPU with bf16 units: bf16 too
            _measure(r, ns, max(ns), "pubchem324k", packed=True, compiled=False, dtype=torch.bfloat16)
    grid = GRID_QUICK if r.quick else (GRID if r.is_cuda else GRID_CPU)
    for N, B in grid:
        _measure(r, [N] * B, N, "uniform", headline=N in (32, 64) and B in (64, 256))
        if r.is_cuda and B >= 64 and N in (32, 64):
            _measure(r, [N] * B, N, "uniform", backward=True, compiled=False)


if __name__ == "__main__":
    h.main(run)

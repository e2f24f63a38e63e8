"""qformer_cross_attention: 8 queries per molecule attend to that molecule's atom states (Q-Former, H = 12, D = 64).

Providers (same inputs; the corrected mask, i.e. attention over the real tokens, so every provider does the work a
key-padding mask implies): ``reference`` (eager LAVIS math, padded keys, additive finfo.min mask),
``reference_compiled``, ``sdpa_composite[efficient]`` (SDPA with a [B, 1, 1, N] additive key-padding mask; the
EFFICIENT_ATTENTION backend pinned on CUDA, performance.md §9.1 Q-sdpa), and per molm_fast backend the padded op
(``molm_fast:<backend>``, key mask) and the varlen op (``molm_fast:<backend>:packed``, cu_seqlens, no pad key
touched). Shapes: PubChem324k size mix at B = 64 / 256 / 1024 padded to the batch maximum (multiple of 8);
forward and forward+backward. Goal (issue 7, H100): the op >= 2x SDPA with a key-padding mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks import harness as h
from molm_fast.ops import qformer_cross_attention, qformer_cross_attention_reference

OP = "qformer_cross_attention"
H, Q, D = 12, 8, 64
MIX_BATCHES, MIX_BATCHES_QUICK = (64, 256, 1024), (64,)


def flops(B: int, N: int) -> float:
    """q k^T and p v over the padded keys: 2 x 2 x B H Q N D."""
    return 4.0 * B * H * Q * N * D


def bytes_moved(B: int, N: int, itemsize: int) -> float:
    """Read q, k, v (padded), write out."""
    return float(itemsize * (2 * B * H * Q * D + 2 * B * H * N * D))


def _inputs(ns: list[int], device: torch.device, dtype: torch.dtype, grad: bool):
    B, N = len(ns), -(-max(ns) // 8) * 8
    q = torch.randn(B, Q, H, D, device=device, dtype=dtype).transpose(1, 2)  # [B, H, Q, D] as BERT's view
    k, v = (torch.randn(B, N, H, D, device=device, dtype=dtype).transpose(1, 2) for _ in range(2))  # [B, H, N, D]
    real = torch.arange(N, device=device)[None, :] < torch.tensor(ns, device=device)[:, None]  # [B, N]
    additive = ((~real).to(dtype) * torch.finfo(dtype).min)[:, None, None, :]  # [B, 1, 1, N]
    k_packed, v_packed = (t.transpose(1, 2)[real].contiguous() for t in (k, v))  # [T, H, D]
    if grad:
        for t in (q, k, v, k_packed, v_packed):
            t.requires_grad_(True)
    return q, k, v, real, additive, k_packed, v_packed, h.cu_seqlens(ns, device), max(ns)


def _sdpa(device: torch.device):
    def sdpa(q, k, v, real, additive, *rest):
        if device.type != "cuda":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    return sdpa


def _providers(device: torch.device) -> dict:
    def reference(q, k, v, real, *rest):
        return qformer_cross_attention_reference(q, k, v, key_mask=real)

    providers = {"reference": reference, "reference_compiled": torch.compile(reference, dynamic=False),
                 "sdpa_composite[efficient]": _sdpa(device)}
    for backend in h.molm_backends(OP, device):
        padded = h.with_backend(lambda q, k, v, real, *rest: qformer_cross_attention(q, k, v, key_mask=real), backend)
        packed = h.with_backend(lambda q, k, v, real, add, kp, vp, cu, n: qformer_cross_attention(
            q, kp, vp, cu_seqlens=cu, max_seqlen=n), backend)
        providers[f"molm_fast:{backend}"] = padded
        providers[f"molm_fast:{backend}:packed"] = packed
    return providers


def _grad_providers(device: torch.device) -> dict:
    """forward+backward: gradients to q and to the k, v each provider actually reads (padded or packed)."""
    out = {}
    for name, fn in _providers(device).items():
        wrt = (0, 5, 6) if name.endswith(":packed") else (0, 1, 2)
        out[name] = h.with_grad(fn, wrt)
    return out


def run(r: h.Run) -> None:
    dtype = torch.bfloat16 if r.is_cuda else torch.float32
    for B in MIX_BATCHES_QUICK if r.quick else MIX_BATCHES:
        ns = h.sample_sizes("pubchem324k", B, seed=0)
        N = -(-max(ns) // 8) * 8
        for pass_, grad in (("forward", False), ("forward+backward", True)):
            case = h.Case(OP, {"B": B, "N": N, "H": H, "Q": Q, "D": D}, str(dtype).removeprefix("torch."),
                          "pubchem324k", units=h.units(ns), flops=flops(B, N) * (3.5 if grad else 1.0),
                          bytes=bytes_moved(B, N, dtype.itemsize) * (2 if grad else 1), pass_=pass_,
                          headline=not grad)
            providers = _grad_providers(r.device) if grad else _providers(r.device)
            if grad and not r.is_cuda and B > 256:
                for name in providers:
                    r.skip(case, name, "CPU: forward+backward at B = 1024 takes minutes per round on 2 cores")
                continue
            inputs = r.rotated(lambda ns=ns, grad=grad: _inputs(ns, r.device, dtype, grad))
            r.compare(case, providers, inputs)


if __name__ == "__main__":
    h.main(run)

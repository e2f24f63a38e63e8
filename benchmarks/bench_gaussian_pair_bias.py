"""gaussian_pair_bias: coordinates + atom types -> the [B, 64, N, N] layer-0 bias (performance.md §9.2 K3).

Providers: ``reference`` (eager ``gaussian_pair_bias_reference``: upstream GaussianLayer + gbf_proj, the ratio's
denominator), ``reference_compiled`` (``torch.compile`` of it), ``molm_fast:<backend>`` for each backend that runs
natively on the device (padded, same layout as the reference) and ``molm_fast:<backend>[packed]`` (the same
molecules packed with cu_seqlens: no padded pairs are computed). Uni-Mol sizes K = C = 128, H = 64; parameters
in fp32 on the CPU, bf16 on CUDA (upstream's bf16 module: Gaussians in fp32, linears in bf16). Shapes: the real
PubChem324k size mix (padded to the batch maximum, the headline; forward and forward+backward) and a uniform-N grid.
"""

from __future__ import annotations

import torch

from benchmarks import harness as h
from molm_fast.ops import gaussian_pair_bias, gaussian_pair_bias_reference
from molm_fast.ops.linear import cpu_has_bf16_gemm

OP = "gaussian_pair_bias"
K, C, H, NUM_TYPES = 128, 128, 64, 31
GRID = [(1, 16), (64, 16), (256, 16), (1, 32), (64, 32), (256, 32), (1, 64), (64, 64), (256, 64), (1, 128),
        (64, 128), (1, 258), (16, 258)]
GRID_CPU = [(1, 16), (64, 16), (16, 32), (4, 64), (1, 128), (1, 258)]  # the CPU reference takes ~3 us a pair
GRID_QUICK = [(1, 16), (16, 32)]
MIX_BATCHES, MIX_BATCHES_CPU = (64, 256), (16,)


def flops(pairs: int, backward: bool = False) -> float:
    """Per pair: the two linears 2KC + 2CH = 49,152, plus ~8 per Gaussian, ~10 per GELU, the biases and the
    distance/affine ~12: ~51.7k (spec K3: 51k N^2). Backward: the forward again plus four GEMMs of the same sizes
    (dW2, d act, dW1, dG) and the elementwise derivatives: ~3x."""
    forward = 2 * K * C + 2 * C * H + 8 * K + 10 * C + C + H + 12
    return float(pairs * (3 * forward if backward else forward))


def bytes_moved(tokens: int, out_elements: int, itemsize: int, param_itemsize: int) -> float:
    """Read coords (fp32) and tokens (int64) once and the parameters once; write the bias once."""
    params = 2 * NUM_TYPES**2 + 2 * K + C * K + C + H * C + H
    return float(tokens * (12 + 8) + params * param_itemsize + out_elements * itemsize)


def _params(device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    E = NUM_TYPES**2
    p = [torch.randn(E, 1, generator=gen) * 0.3 + 1, torch.randn(E, 1, generator=gen) * 0.3,
         torch.rand(1, K, generator=gen) * 3, torch.rand(1, K, generator=gen) * 2.5 + 0.5,
         torch.randn(C, K, generator=gen) / K**0.5, torch.randn(C, generator=gen) * 0.1,
         torch.randn(H, C, generator=gen) / C**0.5, torch.randn(H, generator=gen) * 0.1]
    return [t.to(device=device, dtype=dtype) for t in p]


def _inputs(ns: list[int], device: torch.device, dtype: torch.dtype, gen: torch.Generator, grad: bool) -> tuple:
    """(coords [B, N, 3], tokens [B, N], packed coords [T, 3], packed tokens [T], cu_seqlens, *params):
    BOS = 1, atoms 4..30, EOS = 2, pad 0; the packed form holds the same molecules without the padding."""
    coords = h.padded_coords(ns, device, torch.float32, gen)  # [B, N, 3]
    B, N = coords.shape[:2]
    tokens = torch.randint(4, NUM_TYPES, (B, N), generator=gen)
    n = torch.tensor(ns)[:, None]
    pos = torch.arange(N)[None, :]
    tokens = torch.where(pos == 0, 1, torch.where(pos == n - 1, 2, tokens)).masked_fill(pos >= n, 0).to(device)
    keep = (pos < n).to(device)
    params = [p.requires_grad_(grad) for p in _params(device, dtype, gen)]
    return (coords, tokens, coords[keep], tokens[keep], h.cu_seqlens(ns, device), *params)


def _providers(device: torch.device, packed: bool, compiled: bool) -> dict:
    def padded(fn):
        return lambda c, t, pc, pt, cu, *p: fn(c, t, *p)

    providers = {"reference": padded(gaussian_pair_bias_reference)}
    if compiled:
        providers["reference_compiled"] = padded(torch.compile(gaussian_pair_bias_reference, dynamic=False))
    def packed_call(pc, pt, cu, *p):
        return gaussian_pair_bias(pc, pt, *p, cu_seqlens=cu)

    for backend in h.molm_backends(OP, device):
        providers[f"molm_fast:{backend}"] = padded(h.with_backend(gaussian_pair_bias, backend))
        if packed:
            run = h.with_backend(packed_call, backend)
            providers[f"molm_fast:{backend}[packed]"] = lambda c, t, pc, pt, cu, *p, run=run: run(pc, pt, cu, *p)
    return providers


def _case(r: h.Run, ns: list[int], size_mix: str, backward: bool, headline: bool, dtype: torch.dtype) -> h.Case:
    B, N = len(ns), max(ns)
    itemsize = torch.finfo(dtype).bits // 8
    pairs = B * N * N
    return h.Case(OP, {"B": B, "N": N}, str(dtype).removeprefix("torch."), size_mix,
                  units=h.units(ns, headline="pairs"), flops=flops(pairs, backward),
                  bytes=bytes_moved(B * N, pairs * H, itemsize, itemsize) * (2 if backward else 1),
                  pass_="forward+backward" if backward else "forward", headline=headline)


def _measure(r: h.Run, ns: list[int], size_mix: str, *, backward: bool = False, packed: bool = False,
             compiled: bool = True, headline: bool = False, dtype: torch.dtype | None = None) -> None:
    gen = torch.Generator().manual_seed(len(r.records))
    dtype = dtype or (torch.bfloat16 if r.is_cuda else torch.float32)
    inputs = r.rotated(lambda: _inputs(ns, r.device, dtype, gen, backward), max_sets=2 if not r.is_cuda else 8)
    providers = _providers(r.device, packed, compiled)
    if backward:  # gradients of every parameter (positions 5..12) and of the padded/packed coordinates
        providers = {name: h.with_grad(fn, list(range(5, 13))) for name, fn in providers.items()}
    r.compare(_case(r, ns, size_mix, backward, headline, dtype), providers, inputs)


def run(r: h.Run) -> None:
    """Real size mix first (the headline), forward and forward+backward, then the uniform grid (forward)."""
    for B in MIX_BATCHES if r.is_cuda else MIX_BATCHES_CPU:
        ns = h.sample_sizes("pubchem324k", B, seed=0)
        _measure(r, ns, "pubchem324k", packed=True, headline=True)
        _measure(r, ns, "pubchem324k", backward=True, packed=True, compiled=False)
        if not r.is_cuda and cpu_has_bf16_gemm():  # a CPU with bf16 units: bf16 too
            _measure(r, ns, "pubchem324k", packed=True, compiled=False, dtype=torch.bfloat16)
    grid = GRID_QUICK if r.quick else (GRID if r.is_cuda else GRID_CPU)
    for B, N in grid:
        _measure(r, [N] * B, "uniform")


if __name__ == "__main__":
    h.main(run)

"""Uni-Mol encoder forward (inference) on the PubChem324k size mix (performance.md §9.2 E1; issue 6's CPU goal).

The paper-sized encoder (15 x 512, 64 heads), random weights, eval mode. One timed call encodes M molecules drawn
from the PubChem324k mix (seeded) in batches of B, padded to each batch's largest molecule as the reference collates
(policy (a)) or packed with cu_seqlens (policy (c): the same batches, no padded work). Providers:
- ``unimol_tools``: A-tools, unimol-tools' own Uni-Mol modules, fp32 eager (its inference default);
  ``unimol_tools[bf16-autocast]``; and the same under ``torch.compile(dynamic=False)`` (``unimol_tools[compiled]``,
  ``unimol_tools[compiled,bf16-autocast]``: issue 6's CPU goals are stated against these);
- ``reference``: molm_fast's encoder under ``use_backend("reference")``, padded, fp32 (the ratio's denominator);
- ``molm_fast:<backend>[padded|packed|packed,low-rank]`` in fp32 and, with the whole model cast, bf16 (on CPUs
  with AMX/AVX512-bf16 PyTorch's GEMMs use them).
CPU: the PubChem324k mix at batch 16 (the issue's setting). Quick: M = 16, one batch of 16 per call (one sample of
the mix's padding waste: 2.4x the real FLOPs). Full: M = 128, 8 batches of 16 (padding waste ~3.15x, the mix's
average); one call encodes ONE batch and the calls rotate over the 8 (24 timed calls = 3 passes, interleaved: each
round runs every provider on the same batch), so the records' ``mean_ms`` is the mix's mean per batch of 16 (quote
it for the mix; the median is the middle batch). Every batch is warmed up (and, for the compiled anchors, compiled:
``dynamic=False``, one graph per shape) before timing, so no compile lands in a timed call.
GPU: M = 1,024, B = 64, bf16 for molm_fast and autocast for the anchors, plus ``reference_compiled``.
"""

from __future__ import annotations

import torch

from benchmarks import anchors
from benchmarks import harness as h
from molm_fast.models.config import UniMolConfig
from molm_fast.models.unimol import UniMolEncoder
from molm_fast.ops import use_backend

OP = "encoder"
NUM_TYPES = 31


def flops(ns: list[int]) -> float:
    """performance.md §5.1: 94.4 M N + 91 k N^2 per molecule (linears, attention, elementwise, GBF + MLP)."""
    return float(sum(94.4e6 * n + 91e3 * n * n for n in ns))


def _batches(M: int, B: int, device: torch.device) -> list[dict]:
    """M molecules from the PubChem324k mix in batches of B: padded tensors for both models and the packed form."""
    gen = torch.Generator().manual_seed(0)
    ns_all = h.sample_sizes("pubchem324k", M, seed=0)
    out = []
    for i in range(0, M, B):
        ns = ns_all[i:i + B]
        tokens = anchors.unimol_inputs(ns, torch.device("cpu"), NUM_TYPES, 0, gen)[0]  # [B, N], pads 0
        N = tokens.shape[1]
        keep = torch.arange(N)[None, :] < torch.tensor(ns)[:, None]  # [B, N]
        tokens[:, 0] = 1
        tokens[torch.arange(len(ns)), torch.tensor(ns) - 1] = 2
        coords = h.padded_coords(ns, torch.device("cpu"), generator=gen)  # [B, N, 3]
        dist = torch.cdist(coords, coords)  # [B, N, N], what unimol-tools' featuriser hands its model
        edge = tokens[:, :, None] * NUM_TYPES + tokens[:, None, :]
        out.append({"ns": ns, "tokens": tokens.to(device), "coords": coords.to(device), "dist": dist.to(device),
                    "edge": edge.to(device), "ptokens": tokens[keep].to(device), "pcoords": coords[keep].to(device),
                    "cu": h.cu_seqlens(ns, device), "max": max(ns)})
    return out


def _providers(r: h.Run, batches: list[dict]) -> dict:
    """Each provider takes the batches of one call (a list of batch dicts)."""
    lowp = torch.bfloat16
    model = UniMolEncoder(UniMolConfig()).eval().to(r.device)
    model_lowp = UniMolEncoder(UniMolConfig()).eval().to(r.device, lowp)
    model_lowp.load_state_dict({k: v.to(lowp) for k, v in model.state_dict().items()})
    providers = {}
    try:
        tools = anchors.unimol_tools_encoder(r.device)
        providers["unimol_tools"] = lambda batches: [tools(b["tokens"], b["dist"], b["edge"]) for b in batches]

        def tools_autocast(batches):
            with torch.autocast(r.device.type, dtype=lowp):
                return [tools(b["tokens"], b["dist"], b["edge"]) for b in batches]

        providers["unimol_tools[bf16-autocast]"] = tools_autocast
        # one graph per (shape, autocast state): allow them all, or dynamo would fall back to eager silently
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(batches) + 8)
        tools_compiled = torch.compile(tools, dynamic=False)
        providers["unimol_tools[compiled]"] = lambda batches: [tools_compiled(b["tokens"], b["dist"], b["edge"])
                                                               for b in batches]

        def tools_compiled_autocast(batches):
            with torch.autocast(r.device.type, dtype=lowp):
                return [tools_compiled(b["tokens"], b["dist"], b["edge"]) for b in batches]

        providers["unimol_tools[compiled,bf16-autocast]"] = tools_compiled_autocast
    except anchors.AnchorUnavailable as exc:
        print(f"bench_encoder: unimol_tools anchor unavailable: {exc}")

    def padded(m, backend):
        def run(batches):
            with use_backend(backend):
                return [m(b["tokens"], b["coords"])[0] for b in batches]
        return run

    def packed(m, backend, low_rank):
        def run(batches):
            with use_backend(backend):
                return [m.forward_packed(b["ptokens"], b["pcoords"], b["cu"], b["max"], low_rank=low_rank)
                        for b in batches]
        return run

    providers["reference"] = padded(model, "reference")
    if r.is_cuda:
        compiled = torch.compile(model, dynamic=False)
        providers["reference_compiled"] = padded(compiled, "reference")
    for backend in h.molm_backends("pair_bias_attention", r.device):
        for m, tag in ((model, "fp32"), (model_lowp, "bf16")):
            if r.is_cuda and tag == "fp32":
                continue
            providers[f"molm_fast:{backend}[padded,{tag}]"] = padded(m, backend)
            providers[f"molm_fast:{backend}[packed,{tag}]"] = packed(m, backend, False)
            providers[f"molm_fast:{backend}[packed,low-rank,{tag}]"] = packed(m, backend, True)
    return providers


def run(r: h.Run) -> None:
    M, B = (1024, 64) if r.is_cuda and not r.quick else ((16, 16) if r.quick else (128, 16))
    batches = _batches(M, B, r.device)
    ns = [n for b in batches for n in b["ns"]]
    padded_flops = float(sum(flops([b["max"]] * len(b["ns"])) for b in batches))
    rotate = not r.is_cuda and len(batches) > 1  # CPU full: one batch per call, rotating over the mix
    calls = [([b],) for b in batches] if rotate else [(batches,)]
    per_call = len(batches) if rotate else 1  # work per timed call: the mix divided by this
    case = h.Case(OP, {"M": M, "B": B, "layers": 15, "C": 512, "H": 64}, "float32/bfloat16", "pubchem324k",
                  units={k: v / per_call for k, v in h.units(ns).items()}, flops=flops(ns) / per_call, bytes=None,
                  headline=True)
    notes = (f"{M} molecules (PubChem324k mix) in batches of {B}; "
             + (f"one batch per call, rotating over the {len(batches)} (mean_ms = the mix's mean per batch, "
                f"units and FLOPs per batch on average); " if rotate else f"all {M} per call; ")
             + f"padded FLOPs / real FLOPs = {padded_flops / flops(ns):.2f}")
    with torch.inference_mode():  # every provider once per round, interleaved (the load hits all alike)
        recs = r.compare(case, _providers(r, batches), calls, warmup=len(calls),
                         iters=3 * len(calls) if rotate else 20, notes=notes)
    for rec in recs:  # the mix's throughput: every batch equally often, so units / mean time
        if rec.get("mean_ms"):
            rec["throughput_mix"] = {f"{k}_per_s": v / (rec["mean_ms"] / 1e3) for k, v in case.units.items()}


if __name__ == "__main__":
    h.main(run)

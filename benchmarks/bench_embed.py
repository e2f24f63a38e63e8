"""Encoder + Q-Former embedding throughput: molecules -> 8 x 256 normalized features (issue 7, performance.md Q1).

One call embeds a whole set of M molecules from a packed ``MoleculeStore`` (sizes drawn from the PubChem324k mix,
random geometry: speed does not depend on it), featurisation included. Providers:
- ``reference``: the model under ``use_backend("reference")`` on the reference batching (random order, B = 64,
  padded to the batch maximum, performance.md §9.3 (a));
- ``molm_fast:reference_batches``: molm_fast's kernels on the same reference batches (kernel wins only);
- ``molm_fast``: the embedding engine's path (``inference.embed``: length buckets of <= 16,384 padded tokens,
  >= 1 pad per molecule, molm_fast kernels, fused cross-attention K/V GEMM);
- ``molm_fast:packed[corrected_mask]``: the engine on the same weights with ``corrected_mask`` (other semantics:
  queries read the real tokens), which runs varlen end to end: no pad token in the encoder or the Q-Former.
GPU: the paper-sized stage-1 model (Uni-Mol 15 layers + 12-layer Q-Former), bf16 autocast, M = 2,048; goal
>= 30,000 molecules/s on an H100. CPU: the ``tiny`` config (the paper model runs at a few molecules/s on 2 cores).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import harness as h

OP = "embed"
ELEMENTS = (["C"] * 70) + (["N"] * 12) + (["O"] * 14) + ["S", "Cl", "F", "P"]  # a rough heavy-atom mix


def _store(M: int, seed: int = 0):
    from molm_fast.data import MoleculeStore, atom_tokens

    ns = h.sample_sizes("pubchem324k", M, seed=seed)  # N = atoms + 2
    rng = np.random.default_rng(seed)
    counts = np.array([n - 2 for n in ns], np.int64)
    offsets = np.zeros(M + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    tokens = atom_tokens(list(rng.choice(ELEMENTS, int(offsets[-1]))))
    coords = (rng.standard_normal((int(offsets[-1]), 3)) * 3).astype(np.float32)
    return MoleculeStore(tokens, coords, offsets, np.arange(M), [str(i) for i in range(M)]), ns


def _model(device: torch.device, quick: bool):
    from molm_fast import MoLM
    from molm_fast.models.config import paper, tiny

    torch.manual_seed(0)
    cfg = (paper() if device.type == "cuda" else tiny()).stage1()
    return MoLM(cfg).to(device).eval()


def _reference_batches(M: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(M)
    return [order[i:i + 64] for i in range(0, M, 64)]


def _corrected(model):
    import dataclasses

    from molm_fast import MoLM

    cfg = dataclasses.replace(model.config, qformer=dataclasses.replace(model.config.qformer, corrected_mask=True))
    twin = MoLM(cfg).to(next(model.parameters()).device).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def _providers(model, store, device: torch.device) -> dict:
    from molm_fast.inference.embed import EmbedSettings, _bucket, _embed_molecule_batch
    from molm_fast.ops import use_backend

    engine = EmbedSettings()
    plain = EmbedSettings(ensure_pad=False)
    ref_batches = _reference_batches(len(store))
    lengths = store.token_lengths() + 1  # the engine buckets with its extra pad position
    buckets = _bucket(lengths, engine)

    corrected = _corrected(model)

    def run(batches, settings, backend, net=model):
        def call():
            with use_backend(backend):
                for idx in batches:
                    _embed_molecule_batch(net, store, idx, settings)
        return call

    return {"reference": run(ref_batches, plain, "reference"),
            "molm_fast:reference_batches": run(ref_batches, plain, None),
            "molm_fast": run(buckets, engine, None),
            "molm_fast:packed[corrected_mask]": run(_bucket(store.token_lengths(), engine), engine, None, corrected)}


def run(r: h.Run) -> None:
    M = 64 if r.quick else (2048 if r.is_cuda else 256)
    model = _model(r.device, r.quick)
    store, ns = _store(M)
    dtype = "bfloat16-autocast" if r.is_cuda else "float32"
    config = "paper" if r.is_cuda else "tiny"
    case = h.Case(OP, {"M": M, "config": config}, dtype, "pubchem324k", units=h.units(ns), headline=True,
                  pass_="forward")
    providers = _providers(model, store, r.device)
    r.compare(case, {name: (lambda fn=fn: fn()) for name, fn in providers.items()}, [()], iters=5 if r.quick else 20)


if __name__ == "__main__":
    h.main(run)

"""Random but not degenerate Uni-Mol weights for the parity tests (one recipe for unimol-tools' model and ours).

BERT-like linears (N(0, 0.05)), spread LayerNorms, a per-edge-type affine away from identity, and a trained-like
Gaussian basis over the molecule's distances: means U(0, 8) A, stds U(0.3, 3) A. Upstream's inits are degenerate
for parity: N(0, 0.02) (init_bert_params) or from-scratch U(0, 3) stds put Gaussians at sigma ~0.02 A, where a
1-ulp distance difference moves the bias ~1e-4 relative (unimol-tools' own fp32 misses its fp64 self by 2.9e-5
there) -- conditioning, not the code under test.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def spread_unimol_parameters(model: torch.nn.Module, *, embeddings: bool = True) -> torch.nn.Module:
    """Re-draw ``model``'s Uni-Mol parameters in place (``embeddings=False`` keeps ``embed_tokens``); returns it."""
    for name, p in model.named_parameters():
        if name.endswith("layer_norm.weight"):
            p.uniform_(0.5, 1.5)
        elif name.endswith(".bias") and "gbf." not in name:
            p.normal_(0, 0.05)
        elif "gbf.mul" in name:
            p.uniform_(0.8, 1.2)
        elif "gbf.bias" in name:
            p.normal_(0, 0.1)
        elif "gbf.means" in name:
            p.uniform_(0.0, 8.0)
        elif "gbf.stds" in name:
            p.uniform_(0.3, 3.0)
        elif name.endswith("weight") and p.dim() == 2 and "gbf" not in name and (embeddings or "embed" not in name):
            p.normal_(0, 0.05)
    return model

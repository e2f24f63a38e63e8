"""molm_fast's fused ops: one public function per op, dispatched to CUDA, Triton, C++ or the PyTorch reference.

Every op is also a ``torch.library`` custom op (``torch.ops.molm_fast.<op>``), so ``torch.compile`` traces
around it. ``use_backend`` forces a backend inside a block; ``MOLM_FAST_BACKEND`` forces one globally.
"""

from molm_fast.ops._backend import use_backend
from molm_fast.ops.gaussian_pair_bias import gaussian_pair_bias, gaussian_pair_bias_reference
from molm_fast.ops.linear import linear, linear_reference
from molm_fast.ops.low_rank_pair_attention import low_rank_pair_attention, low_rank_pair_attention_reference
from molm_fast.ops.pair_bias_attention import pair_bias_attention, pair_bias_attention_reference
from molm_fast.ops.pairwise_distance import pairwise_distance, pairwise_distance_reference
from molm_fast.ops.qformer_cross_attention import (
    qformer_cross_attention,
    qformer_cross_attention_reference,
    qformer_cross_kv,
    qformer_key_mask,
)

__all__ = [
    "use_backend",
    "gaussian_pair_bias",
    "gaussian_pair_bias_reference",
    "linear",
    "linear_reference",
    "low_rank_pair_attention",
    "low_rank_pair_attention_reference",
    "pair_bias_attention",
    "pair_bias_attention_reference",
    "pairwise_distance",
    "pairwise_distance_reference",
    "qformer_cross_attention",
    "qformer_cross_attention_reference",
    "qformer_cross_kv",
    "qformer_key_mask",
]

"""pairwise_distance: out[b, i, j] = ||coords[b, i] - coords[b, j]||_2.

Shapes: coords [B, N, 3] float32/float64 -> [B, N, N] same dtype. Saved for backward: coords and the
output. The backward is plain PyTorch (it is one broadcast), dist = 0 pairs get gradient 0. Uni-Mol's
featuriser computes this with scipy's distance_matrix (spec 3d-molm.md §1.2 step 8); molm_fast computes it
on the device from coordinates. The first op through the whole build/dispatch path.
"""

from __future__ import annotations

import torch

from molm_fast.ops import _backend

OP = "pairwise_distance"


def pairwise_distance_reference(coords: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: [B, N, 3] -> [B, N, N]. vector_norm's gradient at d = 0 is 0, as the op's is."""
    diff = coords.unsqueeze(2) - coords.unsqueeze(1)  # [B, N, N, 3]
    return torch.linalg.vector_norm(diff, dim=-1)  # [B, N, N]


# ---- glue per backend ------------------------------------------------------------------------------------
def _forward_cpp(coords: torch.Tensor) -> torch.Tensor:
    B, N, _ = coords.shape
    out = coords.new_empty(B, N, N)
    _backend.load_module("cpp").pairwise_distance_forward_cpu(
        coords.data_ptr(), out.data_ptr(), B, N, *coords.stride(), *out.stride(), _backend.dtype_code(coords)
    )
    return out


def _forward_cuda(coords: torch.Tensor) -> torch.Tensor:
    B, N, _ = coords.shape
    out = coords.new_empty(B, N, N)
    _backend.load_module("cuda").pairwise_distance_forward_cuda(
        coords.data_ptr(), out.data_ptr(), B, N, *coords.stride(), *out.stride(), _backend.dtype_code(coords),
        _backend.cuda_stream(coords.device),
    )
    return out


def _forward_triton(coords: torch.Tensor) -> torch.Tensor:
    from molm_fast.kernels.pairwise_distance import pairwise_distance_forward_triton

    return pairwise_distance_forward_triton(coords)


_FORWARD = {"reference": pairwise_distance_reference, "cpp": _forward_cpp, "cuda": _forward_cuda,
            "triton": _forward_triton}
_backend.register(OP, _FORWARD)


# ---- torch.library registration --------------------------------------------------------------------------
@torch.library.custom_op("molm_fast::pairwise_distance", mutates_args=())
def _pairwise_distance_op(coords: torch.Tensor) -> torch.Tensor:
    if coords.shape[0] * coords.shape[1] == 0:
        return coords.new_zeros(coords.shape[0], coords.shape[1], coords.shape[1])
    return _FORWARD[_backend.pick(OP, coords.device)](coords)


@_pairwise_distance_op.register_fake
def _(coords: torch.Tensor) -> torch.Tensor:
    return coords.new_empty(coords.shape[0], coords.shape[1], coords.shape[1])


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _backward(ctx, grad_out: torch.Tensor):
    coords, dist = ctx.saved_tensors
    diff = coords.unsqueeze(2) - coords.unsqueeze(1)  # [B, N, N, 3]
    w = torch.where(dist > 0, grad_out / dist.clamp_min(torch.finfo(dist.dtype).tiny), 0)  # [B, N, N]
    w = w + w.transpose(1, 2)  # d_ij = d_ji: both entries pull on x_i
    return (w.unsqueeze(-1) * diff).sum(2)  # [B, N, 3]


_pairwise_distance_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function ---------------------------------------------------------------------------------------
def pairwise_distance(coords: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of padded coordinates.

    Args:
        coords: [B, N, 3] float32 or float64 (any strides).
    Returns:
        [B, N, N], same dtype and device. Pad rows are not special: mask them afterwards if needed.
    """
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"{OP}: coords must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dim() != 3 or coords.shape[-1] != 3:
        raise ValueError(f"{OP}: coords must be [B, N, 3], got {list(coords.shape)}")
    if coords.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{OP}: coords must be float32 or float64, got {coords.dtype}")
    return torch.ops.molm_fast.pairwise_distance(coords)

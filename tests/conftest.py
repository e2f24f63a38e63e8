"""Markers, the run's seed, and Triton's CPU interpreter.

Each run draws a fresh seed (printed in the header and in every parity failure); MOLM_FAST_TEST_SEED
replays a run. Every test starts from torch.manual_seed(run seed + hash of its node id).
"""

from __future__ import annotations

import os
import zlib

import pytest

# Before torch loads MKL (as training/cli_common.py does): MKL's AVX2 GEMMs round by buffer alignment unless strict
# CNR is on, and the resume tests compare a resumed CPU run with the uninterrupted one bit for bit.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402

# Triton kernels run on the CPU in the interpreter; must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests import utils  # noqa: E402


def pytest_report_header(config):
    return f"molm_fast test seed: {utils.RUN_SEED} (replay with MOLM_FAST_TEST_SEED={utils.RUN_SEED})"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    seed = (utils.RUN_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**31)
    utils.CURRENT_SEED = seed
    torch.manual_seed(seed)
    yield

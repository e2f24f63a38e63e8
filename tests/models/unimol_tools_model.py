"""Build ``unimol_tools``' pure-PyTorch Uni-Mol (pip ``unimol-tools==0.1.6``) with random weights, no download.

The package's ``__init__`` files import its training stack (pandas, scikit-learn, hydra, numba, ...). The model
module itself needs only torch, numpy, ``addict`` and huggingface_hub, so this loads ``unimol_tools.models.unimol``
with bare parent packages (their ``__init__`` files are not executed) and removes the stand-ins afterwards.
``pretrained_model_path`` points to a saved EMPTY state dict with the 3D-MoLM ``dict.txt`` beside it, so nothing is
downloaded and every weight keeps its random init.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

DICT_TXT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "3d-molm" / "unimol_dict.txt"
_PACKAGES = ("unimol_tools", "unimol_tools.config", "unimol_tools.data", "unimol_tools.utils",
             "unimol_tools.weights", "unimol_tools.models")


def _import_model_module(workdir: Path):
    spec = importlib.util.find_spec("unimol_tools")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("unimol-tools is not installed (pip install --no-deps unimol-tools==0.1.6 addict)")
    if importlib.util.find_spec("addict") is None:
        pytest.skip("addict (needed by unimol_tools.models.unimol) is not installed")
    root = Path(spec.submodule_search_locations[0])
    saved = {name: sys.modules.get(name) for name in _PACKAGES}
    cwd = os.getcwd()
    os.chdir(workdir)  # unimol_tools' logger creates ./logs on import
    try:
        for name in _PACKAGES:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = pkg
        cfg, data, utils, weights = (sys.modules[f"unimol_tools.{n}"] for n in ("config", "data", "utils",
                                                                                "weights"))
        cfg.MODEL_CONFIG = importlib.import_module("unimol_tools.config.model_config").MODEL_CONFIG
        data.Dictionary = importlib.import_module("unimol_tools.data.dictionary").Dictionary
        util = importlib.import_module("unimol_tools.utils.util")
        utils.logger = importlib.import_module("unimol_tools.utils.base_logger").logger
        for fn in ("pad_1d_tokens", "pad_2d", "pad_coords"):
            setattr(utils, fn, getattr(util, fn))
        hub = importlib.import_module("unimol_tools.weights.weighthub")
        weights.get_weight_dir, weights.weight_download = hub.get_weight_dir, hub.weight_download
        return importlib.import_module("unimol_tools.models.unimol")
    finally:
        os.chdir(cwd)
        for name in list(sys.modules):
            if name == "unimol_tools" or name.startswith("unimol_tools."):
                del sys.modules[name]
        for name, mod in saved.items():
            if mod is not None:
                sys.modules[name] = mod


def build_unimol_tools_model(tmp_path: Path) -> torch.nn.Module:
    """The paper-sized unimol_tools ``UniMolModel`` (molecule, no H) with random weights, in eval mode."""
    module = _import_model_module(tmp_path)
    weights = tmp_path / "empty.pt"
    torch.save({}, weights)
    shutil.copy(DICT_TXT, tmp_path / "dict.txt")
    model = module.UniMolModel(output_dim=1, data_type="molecule", pretrained_model_path=str(weights),
                               remove_hs=True)
    # unimol_tools' Dictionary puts [CLS], [UNK], [PAD], [SEP] at 0..3 whatever the file says; 3D-MoLM's unicore
    # dictionary (spec §1.2) has [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3. Tokens are fed in 3D-MoLM's numbering, so the
    # model's pad index (it only drives the padding mask) is set to 3D-MoLM's.
    model.padding_idx = 0
    return model.eval()

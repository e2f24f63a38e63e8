"""Stage 1 (MTC + MTM + MTG). One process, or many with torchrun (DDP, negatives gathered across ranks):

  python training/stage1.py --preset tiny train_data=../shared/data/chebi20/molt5/validation.txt \
      molecules=tests/training/data/chebi20_conformers.npz out_dir=runs/stage1
  torchrun --nproc_per_node 4 training/stage1.py --preset tiny ... [--resume]
"""

from cli_common import parse

from molm_fast.training.stage1 import train_stage1

if __name__ == "__main__":
    cfg, resume = parse((1,), __doc__)
    result = train_stage1(cfg, resume=resume)
    print({k: result[k] for k in ("steps", "checkpoint", "metrics_path", "retrieval")})

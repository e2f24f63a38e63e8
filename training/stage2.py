"""Stage 2 (captioning, LoRA) or stage 3 (--stage 3). One process, or torchrun (distributed=ddp|fsdp2):

  python training/stage2.py --preset tiny init_from=runs/stage1/model train_data=... molecules=... out_dir=runs/stage2
  torchrun --nproc_per_node 4 training/stage2.py --preset paper llm_path=/models/llama-2-7b-hf distributed=fsdp2 ...
"""

from cli_common import parse

from molm_fast.training.stage2 import train_stage2

if __name__ == "__main__":
    cfg, resume = parse((2, 3), __doc__)
    result = train_stage2(cfg, resume=resume)
    print({k: result[k] for k in ("steps", "checkpoint", "metrics_path", "eval_loss_before", "eval_loss_after")})

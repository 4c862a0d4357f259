"""Train a ViT-B-32 FastCLIP recipe; without --config, this model's flagship recipe.

    accelerate launch recipes/fastclip_vitb32.py [--config recipes/configs/<recipe>.yaml] [key=value ...]

The flagship, recipes/configs/fastclip_cc12m_vitb32_2node.yaml: FastCLIP-v3 on CC12M,
global batch 2048 as in the paper, ddp, 2 nodes x 4 GPUs. OpenCLIP-loss recipes run with recipes/run_recipe.py.
"""

from pathlib import Path

from train.cli import exit_process, main

FLAGSHIP = Path(__file__).resolve().parent / "configs" / "fastclip_cc12m_vitb32_2node.yaml"

if __name__ == "__main__":
    exit_process(main(description=__doc__, model_family="ViT-B-32", flagship=FLAGSHIP))

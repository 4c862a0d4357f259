"""Train a ViT-B-16 FastCLIP recipe; without --config, this model's flagship recipe.

    accelerate launch recipes/fastclip_vitb16.py [--config recipes/configs/<recipe>.yaml] [key=value ...]

The flagship, recipes/configs/fastclip_laion315m_vitb16_4node.yaml: FastCLIP-v3 on LAION-315M,
global batch 5120 as in the paper, ddp, 4 nodes x 4 GPUs. OpenCLIP-loss recipes run with recipes/run_recipe.py.
"""

from pathlib import Path

from train.cli import exit_process, main

FLAGSHIP = Path(__file__).resolve().parent / "configs" / "fastclip_laion315m_vitb16_4node.yaml"

if __name__ == "__main__":
    exit_process(main(description=__doc__, model_family="ViT-B-16", flagship=FLAGSHIP))

"""Train a ViT-H-14 FastCLIP recipe; without --config, this model's flagship recipe.

    accelerate launch recipes/fastclip_vith.py [--config recipes/configs/<recipe>.yaml] [key=value ...]

The flagship, recipes/configs/flip50_laion315m_vith14_8node.yaml: FLIP 50% masking + unmasked tuning, FastCLIP-v3,
LAION-315M, DeepSpeed ZeRO-3, 8 nodes x 4 GPUs. OpenCLIP-loss recipes run with recipes/run_recipe.py.
"""

from pathlib import Path

from train.cli import exit_process, main

FLAGSHIP = Path(__file__).resolve().parent / "configs" / "flip50_laion315m_vith14_8node.yaml"

if __name__ == "__main__":
    exit_process(main(description=__doc__, model_family="ViT-H-14", flagship=FLAGSHIP))

"""Train a ViT-L-14 FastCLIP recipe; without --config, this model's flagship recipe.

    accelerate launch recipes/fastclip_vitl.py [--config recipes/configs/<recipe>.yaml] [key=value ...]

The flagship, recipes/configs/flip50_laion315m_vitl14_4node.yaml: FLIP 50% masking + unmasked tuning, FastCLIP-v3,
LAION-315M, fsdp2, 4 nodes x 4 GPUs. OpenCLIP-loss recipes run with recipes/run_recipe.py.
"""

from pathlib import Path

from train.cli import exit_process, main

FLAGSHIP = Path(__file__).resolve().parent / "configs" / "flip50_laion315m_vitl14_4node.yaml"

if __name__ == "__main__":
    exit_process(main(description=__doc__, model_family="ViT-L-14", flagship=FLAGSHIP))

"""Train a ViT-H-14 recipe.

    accelerate launch recipes/fastclip_vith.py --config recipes/configs/<recipe>.yaml [key=value ...]
"""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__, model_family="ViT-H-14"))

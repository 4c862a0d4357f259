"""Train a ViT-L-14 recipe.

    accelerate launch recipes/fastclip_vitl.py --config recipes/configs/<recipe>.yaml [key=value ...]
"""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__, model_family="ViT-L-14"))

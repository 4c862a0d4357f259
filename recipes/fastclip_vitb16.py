"""Train a ViT-B-16 recipe.

    accelerate launch recipes/fastclip_vitb16.py --config recipes/configs/<recipe>.yaml [key=value ...]
"""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__, model_family="ViT-B-16"))

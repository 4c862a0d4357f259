"""Train any recipe, whatever its model or loss (the openclip_* baselines too).

    accelerate launch recipes/run_recipe.py --config recipes/configs/<recipe>.yaml [key=value ...]
"""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main())

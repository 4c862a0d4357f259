"""Train any recipe: `accelerate launch recipes/run_recipe.py --config recipes/configs/X.yaml [key=value ...]`."""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main())

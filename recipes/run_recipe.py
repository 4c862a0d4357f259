"""Train any recipe, whatever its model or loss (the openclip_* baselines too).

accelerate launch recipes/run_recipe.py --config recipes/configs/<recipe>.yaml [key=value ...]
"""

from train.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main())

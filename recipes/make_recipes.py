"""Write the paper-scale recipe YAMLs in recipes/configs/ from the settings tables below.

FastCLIP (arXiv 2407.01445) CC3M / CC12M / LAION-315M settings at 1, 2, 4 and 8 nodes of 4 GPUs with the
per-GPU batch of the paper fixed (so the global batch grows with nodes; warmup is rescaled to the same number
of samples as the paper's), each with an OpenCLIP-loss twin, and SigLIP twins of the CC3M / CC12M ones (the other
small-batch loss: t' = log 10, b = -10 as the SigLIP paper; everything else as the FastCLIP recipe);
FLIP (mask 0.5 / 0.75 + unmasked tuning) recipes for ViT-B/16, ViT-L/14 and ViT-H/14; DRRho-CLIP twins of the
CC12M / LAION-315M FastCLIP recipes and a DRRho fine-tuning recipe (see DRRHO_LOSS). Edit a table and
rerun `python recipes/make_recipes.py` to regenerate; the YAMLs are what users launch (a test checks that
they equal this script's output; copy one without its header to make a variant).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

GPUS_PER_NODE = 4
NODES = (1, 2, 4, 8)

# name: (model, per-GPU batch, epochs, lr, lr_min, warmup steps at the paper's global batch, wd, lr_tau, rho,
#        gamma_min, gamma_epochs, eps, dataset pairs). The per-sample state has one row per pair: the index's
#        dense rows (data.num_samples comes from the index at launch).
FASTCLIP = {
    "cc3m": ("ViT-B-32", 128, 37, 1e-3, 0.0, 10_000, 0.1, 2e-4, 6.5, 0.2, 18, 1e-14, 2_700_000),
    "cc12m": ("ViT-B-32", 256, 33, 4e-4, 0.0, 10_000, 0.1, 1e-4, 8.5, 0.2, 16, 1e-14, 9_100_000),
    "laion315m": ("ViT-B-16", 320, 30, 2e-4, 4e-5, 13_200, 0.2, 5e-5, 16.0, 0.8, 10, 1e-6, 315_000_000),
}

# The paper's global batch per dataset: warmup steps are rescaled to the same number of samples at every scale.
PAPER_GLOBAL_BATCH = {"cc3m": 1024, "cc12m": 2048, "laion315m": 5120}

SIGLIP_DATA = ("cc3m", "cc12m")  # SigLIP twins of these FastCLIP recipes

# FLIP on LAION-315M with FastCLIP-v3: model -> (per-GPU batch, nodes, backend, ds_config)
FLIP = {
    "ViT-B-16": (320, 4, "ddp", ""),
    "ViT-L-14": (256, 4, "fsdp2", ""),
    "ViT-H-14": (128, 8, "deepspeed", "ds_configs/zero3.json"),
}
FLIP_LR_PER_256, FLIP_TUNING_LR_PER_256 = 4e-6, 4e-8  # FLIP paper, AdamW (0.9, 0.95), wd 0.2
FLIP_TUNING_SAMPLES = 128_000_000  # ~0.32 epoch of LAION-400M

# DRRho-CLIP (arXiv 2505.06699; Optimization-AI/DRRho-CLIP README): FastCLIP's loss steered by a frozen reference
# (OpenAI's ViT-B/32, which the user supplies at REFERENCE), fixed temperature 0.01, rho 11, eps 1e-4, and the 2025
# gamma rule min(1, 4.177 E^-0.7265) decayed over all epochs. Twins of these FastCLIP recipes:
DRRHO_DATA = ("cc12m", "laion315m")
REFERENCE = "open_clip:checkpoints/openai_vit_b_32"  # open_clip folder / .pt / .safetensors of OpenAI ViT-B/32
DRRHO_LOSS = {
    "name": "fastclip",
    "version": "v3",
    "tau_grad": "reference",
    "eps": 1e-4,
    "tau_init": 0.01,
    "tau_min": 0.01,
    "lr_tau": 0.0,
    "lr_tau_schedule": "const",
    "rho": 11.0,
    "gamma_schedule": "epochs_rule",
    "reference": REFERENCE,
    "reference_model": "ViT-B-32",
    "reference_overrides": {"quick_gelu": True},  # OpenAI's weights use QuickGELU
}


def fastclip_recipe(data: str, nodes: int, loss: str) -> dict:
    model, batch, epochs, lr, lr_min, warmup, wd, lr_tau, rho, gamma_min, gamma_epochs, eps, pairs = FASTCLIP[data]
    world = nodes * GPUS_PER_NODE
    warmup = round(warmup * PAPER_GLOBAL_BATCH[data] / (batch * world))  # same warmup in samples at every scale
    name = f"{loss}_{data}_{model.lower().replace('-', '')}_{nodes}node"
    loss_section = (
        {"name": "openclip", "lr_tau_schedule": "model"}
        if loss == "openclip"
        else {"name": "siglip", "tau_init": 0.1, "bias_init": -10.0, "lr_tau_schedule": "model"}
        if loss == "siglip"
        else {
            "name": "fastclip",
            "version": "v3",
            "tau_grad": "reference",
            "eps": eps,
            "tau_init": 0.07,
            "lr_tau": lr_tau,
            "rho": rho,
            "gamma_schedule": "cosine",
            "gamma_min": gamma_min,
            "gamma_decay_epochs": gamma_epochs,
        }
    )
    return {
        "run": {"name": name, "output_dir": f"runs/{name}", "seed": 2024, "world_size": world},
        "model": {"name": model},
        "data": {
            "source": "webdataset",
            "path": f"data/{data}/train",
            "batch_size": batch,
            "workers": 6,
            "image_size": 224,
            "seed": 2024,
        },
        "loss": loss_section,
        "optim": {
            "name": "adamw",
            "lr": lr,
            "lr_min": lr_min,
            "warmup_steps": warmup,
            "weight_decay": wd,
            "betas": [0.9, 0.98],
            "eps": 1e-6,
        },
        "backend": {"name": "ddp", "precision": "bf16"},
        "checkpoint": {"every_steps": 2000, "keep_last": 3, "resume": "latest"},
        "logging": {"every_steps": 50},
        "eval": {"every_steps": 0, "zeroshot": "data/imagenet/val", "classnames": "imagenet", "batch_size": 256},
        "epochs": epochs,
        "dataset_samples": pairs,
    }


def drrho_recipe(data: str, nodes: int) -> dict:
    """The FastCLIP recipe with the authors' DRRho loss section (everything else unchanged)."""
    recipe = fastclip_recipe(data, nodes, "fastclip")
    name = recipe["run"]["name"].replace("fastclip_", "drrho_", 1)
    recipe["run"].update({"name": name, "output_dir": f"runs/{name}"})
    recipe["loss"] = dict(DRRHO_LOSS)
    return recipe


def drrho_finetune_recipe() -> dict:
    """Fine-tune OpenAI's ViT-B/32 on new data, steered by the same model as reference (1 node)."""
    recipe = drrho_recipe("cc12m", 1)
    name = "drrho_finetune_vitb32_1node"
    recipe["run"].update({"name": name, "output_dir": f"runs/{name}"})
    recipe["model"] = {"name": "ViT-B-32", "overrides": {"quick_gelu": True}, "init_from": REFERENCE}
    recipe["data"].update({"path": "data/custom/train"})
    recipe["optim"].update({"lr": 1e-5, "lr_min": 0.0, "warmup_steps": 500, "weight_decay": 0.1})
    recipe["epochs"] = 10
    recipe.pop("dataset_samples")  # from the index of the user's data
    return recipe


def flip_recipe(model: str, mask: float) -> dict:
    batch, nodes, backend, ds_config = FLIP[model]
    world = nodes * GPUS_PER_NODE
    global_batch = batch * world
    base = fastclip_recipe("laion315m", nodes, "fastclip")
    name = f"flip{int(mask * 100)}_laion315m_{model.lower().replace('-', '')}_{nodes}node"
    base["run"].update({"name": name, "output_dir": f"runs/{name}"})
    base["model"] = {"name": model, "grad_checkpointing": model != "ViT-B-16"}
    base["data"]["batch_size"] = batch
    warmup = round(FASTCLIP["laion315m"][5] * PAPER_GLOBAL_BATCH["laion315m"] / global_batch)
    base["optim"].update(
        {
            "lr": FLIP_LR_PER_256 * global_batch / 256,
            "lr_min": 0.0,
            "betas": [0.9, 0.95],
            "warmup_steps": warmup,
        }
    )
    base["flip"] = {
        "mask_ratio": mask,
        "tuning_samples": FLIP_TUNING_SAMPLES,
        "tuning_lr": FLIP_TUNING_LR_PER_256 * global_batch / 256,
        "tuning_lr_min": 0.0,
        "tuning_warmup_steps": 500,
    }
    options = {"options": {"ds_config": ds_config}} if ds_config else {}  # backend deepspeed's own option
    base["backend"] = {"name": backend, "precision": "bf16"} | options
    return base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="recipes/configs")
    out = Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = [fastclip_recipe(d, n, loss) for d in FASTCLIP for n in NODES for loss in ("fastclip", "openclip")]
    recipes += [fastclip_recipe(d, n, "siglip") for d in SIGLIP_DATA for n in NODES]
    recipes += [flip_recipe(m, mask) for m in FLIP for mask in (0.5, 0.75)]
    recipes += [drrho_recipe(d, n) for d in DRRHO_DATA for n in NODES] + [drrho_finetune_recipe()]
    for recipe in recipes:
        path = out / f"{recipe['run']['name']}.yaml"
        header = (
            f"# Generated by recipes/make_recipes.py ({recipe['run']['world_size']} GPUs): edit its tables, rerun it\n"
            "# (tests/test_recipes_eval.py checks they agree). For a variant, copy this file without this header.\n"
        )
        path.write_text(header + yaml.safe_dump(recipe, sort_keys=False))
    print(f"wrote {len(recipes)} recipes to {out}")


if __name__ == "__main__":
    main()

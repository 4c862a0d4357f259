"""Class names and prompt templates for zero-shot classification, in a small registry.

ImageNet's class names and OpenAI's 80 templates are read from the installed open_clip at call time
(`open_clip.zero_shot_metadata`) rather than copied here.
"""

from __future__ import annotations

from collections.abc import Callable

Template = str | Callable[[str], str]

# For datasets without curated prompts: short, generic photo captions.
GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
)

# The one Fashion-MNIST class list, in label order: tools/make_shards.py writes it into the shards'
# manifests and captions, so training captions and zero-shot prompts name the classes alike.
FASHION_MNIST_CLASSNAMES: tuple[str, ...] = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

# Fashion-MNIST images are small, grey product shots.
FASHION_MNIST_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a {}, a fashion product.",
)


# Fashion-MNIST mosaics (tools/make_shards.py fashion-mosaic): a 2x2 grid captioned cell by cell, in this
# order; each cell has two wordings so captions vary a little.
MOSAIC_POSITIONS: tuple[tuple[str, str], ...] = (
    ("top left", "upper left"),
    ("top right", "upper right"),
    ("bottom left", "lower left"),
    ("bottom right", "lower right"),
)


def with_article(name: str) -> str:
    """'a bag', 'an ankle boot'."""
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def mosaic_caption(names: tuple[str, str, str, str] | list[str], wording: tuple[int, int, int, int]) -> str:
    """Caption of a 2x2 mosaic: the four cells' class names (row-major) with one wording index per cell."""
    if len(names) != len(MOSAIC_POSITIONS) or len(wording) != len(MOSAIC_POSITIONS):
        raise ValueError(f"a mosaic has {len(MOSAIC_POSITIONS)} cells, got {len(names)} names, {len(wording)} wordings")
    return ", ".join(f"{pos[w]} {with_article(n)}" for pos, w, n in zip(MOSAIC_POSITIONS, wording, names, strict=True))


def _mosaic_template(wording: int) -> Template:
    """Zero-shot prompt for one item shown in all four cells of a mosaic (the single-item test set)."""
    return lambda name: mosaic_caption([name] * len(MOSAIC_POSITIONS), (wording,) * len(MOSAIC_POSITIONS))


FASHION_MOSAIC_TEMPLATES: tuple[Template, ...] = (_mosaic_template(0), _mosaic_template(1))


def _imagenet_classnames() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def _imagenet_templates() -> tuple[Template, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(OPENAI_IMAGENET_TEMPLATES)


_CLASSNAMES: dict[str, Callable[[], tuple[str, ...]]] = {
    "imagenet": _imagenet_classnames,
    "fashion-mnist": lambda: FASHION_MNIST_CLASSNAMES,
    "fashion-mosaic": lambda: FASHION_MNIST_CLASSNAMES,
}

_TEMPLATES: dict[str, Callable[[], tuple[Template, ...]]] = {
    "imagenet": _imagenet_templates,
    "fashion-mnist": lambda: FASHION_MNIST_TEMPLATES,
    "fashion-mosaic": lambda: FASHION_MOSAIC_TEMPLATES,
    "generic": lambda: GENERIC_TEMPLATES,
}


def _lookup(registry: dict[str, Callable[[], tuple]], name: str, what: str) -> tuple:
    key = name.lower().replace("_", "-")
    if key not in registry:
        raise KeyError(f"no {what} for dataset {name!r}; known: {', '.join(sorted(registry))}")
    return registry[key]()


def get_classnames(name: str) -> tuple[str, ...]:
    """Class names of a known dataset (`imagenet`, `fashion-mnist`, `fashion-mosaic`), in label order."""
    return _lookup(_CLASSNAMES, name, "class names")


def get_templates(name: str) -> tuple[Template, ...]:
    """Prompt templates of a known dataset (`imagenet`, `fashion-mnist`, `fashion-mosaic`) or the `generic` set."""
    return _lookup(_TEMPLATES, name, "templates")


def render(template: Template, classname: str) -> str:
    """A prompt from a `str.format` template with one `{}` or from a callable (open_clip's style)."""
    if callable(template):
        return template(classname)
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return template.format(classname)

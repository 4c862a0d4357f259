"""Typed configuration of the contrastive losses (the `loss:` section of a recipe)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from train.losses.gamma import GAMMA_SCHEDULES

NAMES = ("openclip", "siglip", "fastclip", "sogclr", "isogclr")
VERSIONS = ("v0", "v1", "v2", "v3")
TAU_GRADS = ("exact", "reference")
LR_TAU_SCHEDULES = ("model", "const", "step_thresh")
STATE_DTYPES = ("float32", "float64")
STATE_DEVICES = ("auto", "cpu", "features")
REFERENCE_SOURCES = ("open_clip", "hf", "fastflip")
REFERENCE_FEATURES = ("model", "precomputed")
LAYOUTS = ("sharded", "replicated")  # of the per-sample table over ranks (train.losses.sample_state)

# What the aliases mean: (version, gamma schedule).
_ALIASES = {"sogclr": ("v1", "constant"), "isogclr": ("v2", "constant")}
_DEFAULT_LR_TAU_SCHEDULE = {"v0": "model", "v1": "const", "v2": "const", "v3": "step_thresh"}
# Per-loss default tau_init: 0.07 (CLIP); SigLIP starts at t' = log 10, i.e. tau = 0.1 (Zhai et al. 2023).
_DEFAULT_TAU_INIT = {"siglip": 0.1}
_MINI_BATCH = ("openclip", "siglip")  # losses without per-sample state or versions


@dataclass
class LossConfig:
    """Loss choice and its hyper-parameters; fields left None take the per-version default.

    name: openclip (mini-batch InfoNCE), siglip (pairwise sigmoid, learnable tau and bias), fastclip,
      or the aliases sogclr (= fastclip v1 with constant gamma) and isogclr (= fastclip v2 with constant gamma).
    version: v0 global tau learned through the GCL surrogate; v1 constant tau = tau_init;
      v2 per-sample taus (RGCL, per-sample Adam inside the loss); v3 RGCL-g (global tau >=
      tau_min, trained by GlobalTemperature with lr_tau). Default: v3 (v1 / v2 for the aliases).
    tau_grad: exact = gradients of the written objective; reference = the fast_clip code's
      gradients (see `train.losses.fastclip`). Paper-reproducing recipes use reference.
    eps: the epsilon in log(eps + g); 1e-14 (fast_clip default), 1e-6 in the LAION recipe.
    tau_init: initial tau (logit_scale = ln(1/tau_init)); v1's constant tau; v2's initial
      per-sample tau (fast_clip uses 0.03 for v2). None: 0.1 for siglip, 0.07 otherwise.
    bias_init: siglip's initial logit bias b (-10, the SigLIP paper's); trained like the temperature.
    tau_min, tau_max: tau bounds: logit_scale is clamped to [ln(1/tau_max), ln(1/tau_min)]
      after every step (= [0, ln 100] by default); v2's per-sample taus are clamped to them.
      tau_min is the tau0 of RGCL / RGCL-g.
    rho: the RGCL / RGCL-g robustness constant (v2, v3).
    gamma_schedule, gamma_min, gamma_decay_epochs: see `train.losses.gamma` (default cosine; constant
      for the aliases).
    lr_tau, lr_tau_schedule: v0 / v3 / openclip: base lr of the fp32 temperature's Adam (GlobalTemperature)
      (None = the model's lr) and its schedule: model (follow the model lr schedule; v0,
      openclip default), const, step_thresh (lr_tau / 3 while tau <= 0.03; v3 default).
      v2: the per-sample Adam lr (required, const).
    tau_betas, tau_adam_eps, tau_grad_clamp: v2's per-sample Adam (fast_clip uses the model
      optimizer's betas and eps) and the clamp of the per-sample tau gradient.
    state_layout: sharded (rank r stores 1/K of the keys) or replicated (every rank all).
    state_dtype, state_device: per-sample table dtype, and where it lives: auto (the features'
      device when that is CUDA, else cpu), cpu, or features (always the features' device).
    reference: DRRho-CLIP model steering (FastCLIP only; `train.losses.steering`, `train.reference`): a frozen
      model, 'open_clip:PATH', 'hf:PATH' or 'fastflip:CHECKPOINT_DIR' (one of our step_* checkpoints).
    reference_model, reference_overrides: the reference's architecture (a `model.get_model_config` name and its
      overrides) for open_clip: and hf: sources; a fastflip: checkpoint names its own.
    reference_features: model (the reference encodes each batch, unmasked, as the authors do) or precomputed
      (read the embeddings `tools/reference_features.py` wrote into data.webdataset.index: centre crops, cheaper,
      not the authors' exact objective).
    distill_weight, distill_logit_scale: the authors' optional distillation term (`--distill_weight`, teacher
      logit scale `--distill_logit_scale`); 0 = off. Needs a reference; not with v2.
    """

    name: str = "fastclip"
    version: str | None = None
    tau_grad: str = "exact"
    eps: float = 1e-14
    tau_init: float | None = None
    bias_init: float = -10.0
    tau_min: float = 0.01
    tau_max: float = 1.0
    rho: float = 8.0
    gamma_schedule: str | None = None
    gamma_min: float = 0.8
    gamma_decay_epochs: int = 10
    lr_tau: float | None = None
    lr_tau_schedule: str | None = None
    tau_betas: tuple[float, float] = (0.9, 0.999)
    tau_adam_eps: float = 1e-8
    tau_grad_clamp: float = 5.0
    state_layout: str = "sharded"
    state_dtype: str = "float32"
    state_device: str = "auto"
    reference: str | None = None
    reference_model: str | None = None
    reference_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference_features: str = "model"
    distill_weight: float = 0.0
    distill_logit_scale: float = 100.0

    def resolved(self, validate: bool = True) -> LossConfig:
        """A validated copy with aliases and per-version defaults filled in (name openclip, siglip or fastclip);
        a config that is already resolved is returned as it is. train.setup resolves once per run, with
        `validate=False` since train.config.read_config has validated the section."""
        if self.is_resolved:
            return self
        if validate:
            self.validate()
        tau_init = self.tau_init if self.tau_init is not None else _DEFAULT_TAU_INIT.get(self.name, 0.07)
        if self.name in _MINI_BATCH:
            return dataclasses.replace(self, tau_init=tau_init, lr_tau_schedule=self.lr_tau_schedule or "model")
        version, schedule = _ALIASES.get(self.name, ("v3", "cosine"))
        version = self.version or version
        return dataclasses.replace(
            self,
            name="fastclip",
            version=version,
            tau_init=tau_init,
            gamma_schedule=self.gamma_schedule or schedule,
            lr_tau_schedule=self.lr_tau_schedule or _DEFAULT_LR_TAU_SCHEDULE[version],
        )

    @property
    def is_resolved(self) -> bool:
        """Whether `resolved()` made this config (no alias, every per-version default filled in)."""
        if self.tau_init is None:
            return False
        if self.name in _MINI_BATCH:
            return self.lr_tau_schedule is not None
        return self.name == "fastclip" and None not in (self.version, self.gamma_schedule, self.lr_tau_schedule)

    def validate(self) -> None:
        """Raise ValueError naming the first offending field."""
        _choice("name", self.name, NAMES)
        _choice("tau_grad", self.tau_grad, TAU_GRADS)
        _choice("state_layout", self.state_layout, LAYOUTS)
        _choice("state_dtype", self.state_dtype, STATE_DTYPES)
        _choice("state_device", self.state_device, STATE_DEVICES)
        if self.version is not None:
            _choice("version", self.version, VERSIONS)
        if self.gamma_schedule is not None:
            _choice("gamma_schedule", self.gamma_schedule, GAMMA_SCHEDULES)
        if self.lr_tau_schedule is not None:
            _choice("lr_tau_schedule", self.lr_tau_schedule, LR_TAU_SCHEDULES)
        if self.name in _MINI_BATCH and self.version is not None:
            raise ValueError(f"loss.version: {self.name} has no version (FastCLIP only); set loss.version=null")
        if self.name in _ALIASES:
            version, schedule = _ALIASES[self.name]
            if self.version not in (None, version):
                raise ValueError(
                    f"loss.version: {self.name} is FastCLIP {version}, got {self.version!r}; set loss.version=null"
                )
            if self.gamma_schedule not in (None, schedule):
                raise ValueError(
                    f"loss.gamma_schedule: {self.name} uses a {schedule} gamma; set loss.gamma_schedule=null"
                )
        if not self.eps > 0:
            raise ValueError(f"loss.eps must be > 0, got {self.eps}")
        if not 0 < self.tau_min <= self.tau_max:
            raise ValueError(f"loss.tau_min must satisfy 0 < tau_min <= tau_max, got {self.tau_min}")
        if self.tau_init is not None and not self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(f"loss.tau_init must lie in [tau_min, tau_max], got {self.tau_init}")
        if not math.isfinite(self.bias_init):
            raise ValueError(f"loss.bias_init must be a finite number, got {self.bias_init}")
        if self.rho < 0:
            raise ValueError(f"loss.rho must be >= 0, got {self.rho}")
        if not 0 < self.gamma_min <= 1:
            raise ValueError(f"loss.gamma_min must lie in (0, 1], got {self.gamma_min}")
        if self.gamma_decay_epochs < 1:
            raise ValueError(f"loss.gamma_decay_epochs must be >= 1, got {self.gamma_decay_epochs}")
        if self.lr_tau is not None and self.lr_tau < 0:
            raise ValueError(f"loss.lr_tau must be >= 0, got {self.lr_tau}")
        if len(self.tau_betas) != 2 or not all(0 <= b < 1 for b in self.tau_betas):
            raise ValueError(f"loss.tau_betas must be two numbers in [0, 1), got {self.tau_betas}")
        if not self.tau_adam_eps > 0 or not self.tau_grad_clamp > 0:
            raise ValueError("loss.tau_adam_eps and loss.tau_grad_clamp must be > 0")
        if (self.version == "v2" or self.name == "isogclr") and self.lr_tau is None:
            raise ValueError("loss.lr_tau: v2 needs the per-sample tau learning rate (fast_clip: 0.0133)")
        if (self.version == "v2" or self.name == "isogclr") and self.lr_tau_schedule not in (None, "const"):
            raise ValueError("loss.lr_tau_schedule: v2's per-sample tau lr is constant ('const')")
        self._validate_reference()

    def _validate_reference(self) -> None:
        _choice("reference_features", self.reference_features, REFERENCE_FEATURES)
        if self.reference is None:
            if self.distill_weight:
                raise ValueError("loss.distill_weight: distillation needs a reference model (set loss.reference)")
            return
        if self.name in _MINI_BATCH:
            raise ValueError(
                f"loss.reference: model steering (DRRho) needs a FastCLIP loss, not {self.name!r}; "
                "set loss.name: fastclip or remove loss.reference"
            )
        source, sep, path = self.reference.partition(":")
        if not sep or source not in REFERENCE_SOURCES or not path:
            raise ValueError(
                f"loss.reference must be 'open_clip:PATH', 'hf:PATH' or 'fastflip:CHECKPOINT_DIR', "
                f"got {self.reference!r}"
            )
        if source != "fastflip" and not self.reference_model:
            raise ValueError(f"loss.reference_model: name the architecture of {self.reference!r} (e.g. ViT-B-32)")
        if source == "fastflip" and self.reference_model:
            raise ValueError("loss.reference_model: a fastflip: checkpoint names its own architecture; remove it")
        if self.distill_weight < 0 or not self.distill_logit_scale > 0:
            raise ValueError("loss.distill_weight must be >= 0 and distill_logit_scale > 0")
        if self.distill_weight and (self.version == "v2" or self.name == "isogclr"):
            raise ValueError("loss.distill_weight: distillation is offered for v0, v1 and v3, not v2")


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"loss.{field} must be one of {allowed}, got {value!r}")

"""FastCLIP losses v0-v3 over the global batch, with per-sample state (sharded by default).

Objectives on a global batch of n = G = K*B pairs (g as in `train.losses.gcl`; g1 with the
image as anchor, g2 with the text as anchor):

- v0: F = 1/n sum_i [log(eps + g1_i) + log(eps + g2_i)] / 2          (model and global tau)
- v1: the same F with tau fixed to tau_init                          (model only)
- v2: F = 1/n sum_i [tau1_i log(eps + g1_i(tau1_i)) + tau2_i log(eps + g2_i(tau2_i))
                     + rho (tau1_i + tau2_i)] / 2                    (RGCL; model and per-sample taus)
- v3: F = tau/n sum_i [log(eps + g1_i) + log(eps + g2_i)] / 2 + rho tau
      (= RGCL-g / 2; model and global tau >= tau_min)

g_i needs all n columns, so it is estimated by u_i <- (1-gamma) u_i + gamma g_i(batch) (u_i <- g_i
on the first visit) and the stochastic gradient of log(eps + g_i) is grad g_i / (eps + u_i).

Step per rank: ONE all_gather of [image features | text features | keys] without autograd;
fetch the old state rows of the local anchors from their owners; log g of the local anchors
(local rows x all G columns); update u (and v2's taus); all_gather the updated rows and write
them back (`SampleState.update`); then the surrogate

    S_r = [sum_{local anchors i, all j} + sum_{all anchors i, local j}] w_i exp(diff_ij) / (eps + u_i)
          / (2 B (G-1))

where only the LOCAL features carry autograd in each half. Averaged over ranks (what the
backend does to parameter gradients), each pair's anchor side and column side are counted
exactly once, so the average gradient is grad_model of mean_i [w_i (g1_i / (eps + u1_i) +
g2_i / (eps + u2_i))] / 2 without any feature gradient being communicated. v3 returns
sg(tau) * S_r + rho * tau + tau * mean_local[log(eps + u1) + log(eps + u2)] / 2.

`tau_grad` (what the logged objective's gradients are):

- ``exact``: gradients of the objectives above in which g_i, wherever it is not
  differentiated, is replaced by its estimate u_i (autograd of F with g_i -> u_i + g_i - sg(g_i)).
  The model-gradient weight w_i is tau_i in v2, 1 otherwise. For the global tau only the first
  half of S_r carries logit_scale, so the tau gradient counts every pair once.
- ``reference``: what the fast_clip code (src/fast_clip/loss.py) computes. Both halves of S_r
  carry logit_scale, so the g-path term of the tau gradient is counted twice: in v0 the
  logit_scale gradient is 2x the exact one; in v3 it is exact + tau * d/dlogit_scale of
  mean_i [g1_i/(eps+u1_i) + g2_i/(eps+u2_i)] / 2 (so near the tau where the exact gradient
  vanishes, the reference one can have the opposite sign). v2's model gradient omits the tau_i weight (w_i = 1), i.e. it
  is grad of mean_i [g1_i/(eps+u1_i) + g2_i/(eps+u2_i)] / 2, about 1/tau larger and reweighting
  samples by 1/tau_i. Model gradients of v0, v1, v3 and v2's tau gradients are the same in
  both modes. The paper's recipes use ``reference`` because their rho and lr_tau were tuned
  with these gradients (the doubled term moves the tau that v3 settles at); ``exact`` is the
  faithful optimiser of the written objective.

Both modes use log(eps + u) where fast_clip's v3 uses log u, and eps in unscaled units where
fast_clip's v2 adds it to u scaled by exp(-bound); the differences are below eps / u.
v2's per-sample tau update is Adam with per-sample bias correction (`train.losses.temperature`).
u is stored as log u, which also replaces fast_clip's per-sample log-sum-exp bound table.

With `loss.reference` (DRRho-CLIP model steering) every margin diff_ij is shifted by the frozen reference's
margin at the same scale, and `distill_weight` adds their distillation term: see `train.losses.steering`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from train.losses.base import ContrastiveLoss, LossOutput
from train.losses.config import LossConfig
from train.losses.dist_utils import Group, all_gather_rows, world
from train.losses.gamma import gamma_for_epoch
from train.losses.gcl import (
    anchor_positives,
    individual_tau_grad,
    log_eps_plus,
    log_g,
    moving_average_log,
    weighted_exp_sum,
)
from train.losses.sample_state import SampleState
from train.losses.steering import distill_rows, distill_surrogate, reference_similarities
from train.losses.temperature import per_sample_adam

_DISTILL_EXTRAS = ("lq1", "lp1", "lq2", "lp2", "ce1", "ce2")  # see steering.distill_rows
_V2_COLUMNS = {"tau1": None, "tau2": None, "m1": 0.0, "m2": 0.0, "v1": 0.0, "v2": 0.0, "count": 0.0}


class FastCLIPLoss(ContrastiveLoss):
    """FastCLIP v0-v3 (and SogCLR / iSogCLR through the config aliases); see the module doc."""

    def __init__(self, cfg: LossConfig, num_samples: int, group: Group = None) -> None:
        """`cfg`: resolved (LossConfig.resolved(); build_loss and train.setup hand it so), never resolved here."""
        if cfg.name != "fastclip" or not cfg.is_resolved:
            raise ValueError(
                f"FastCLIPLoss needs a resolved fastclip config (LossConfig.resolved()), got name "
                f"{cfg.name!r}, version {cfg.version!r}"
            )
        self.cfg = cfg
        self.version = cfg.version
        columns = {"log_u1": -math.inf, "log_u2": -math.inf}
        if self.version == "v2":
            columns |= {k: cfg.tau_init if v is None else v for k, v in _V2_COLUMNS.items()}
        self.group = group
        self.state = SampleState(
            num_samples, columns, cfg.state_layout, dtype=getattr(torch, cfg.state_dtype), group=group
        )
        self.epoch = 0
        self.gamma = gamma_for_epoch(0, cfg.gamma_schedule, cfg.gamma_min, cfg.gamma_decay_epochs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.gamma = gamma_for_epoch(epoch, self.cfg.gamma_schedule, self.cfg.gamma_min, self.cfg.gamma_decay_epochs)

    def __call__(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        index: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> LossOutput:
        """`reference`: the frozen reference model's local features (r1, r2) [B, d_ref], required exactly when
        the config names `loss.reference`."""
        if (reference is None) != (self.cfg.reference is None):
            raise ValueError(
                "FastCLIPLoss: reference features are needed exactly when loss.reference is set "
                f"(loss.reference is {self.cfg.reference!r})"
            )
        with torch.autocast(image_features.device.type, enabled=False):
            return self._step(image_features, text_features, index, logit_scale, reference)

    def _step(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        index: torch.Tensor,
        logit_scale: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> LossOutput:
        cfg, col = self.cfg, self.state.col
        dtype = torch.promote_types(img.dtype, torch.float32)
        e1, e2 = img.to(dtype), txt.to(dtype)
        if cfg.state_device == "features" or (cfg.state_device == "auto" and e1.is_cuda):
            self.state.to(e1.device)  # no-op after the first step
        refs = [r.to(dtype) for r in reference] if reference is not None else []
        all1, all2, keys, *all_refs = all_gather_rows(
            [e1, e2, index.to(device=e1.device, dtype=torch.int64), *refs], self.group
        )
        batch, n = e1.shape[0], all1.shape[0]
        if n < 2:
            raise ValueError("FastCLIP needs a global batch of at least 2 pairs")
        offset = world(self.group)[0] * batch
        old = self.state.fetch(keys).to(dtype)

        sim12 = e1 @ all2.T  # local images x all texts: autograd into e1 only
        sim21 = e2 @ all1.T  # local texts x all images: autograd into e2 only
        pos = (e1 * e2).sum(dim=1)
        pos_all = (all1 * all2).sum(dim=1)
        anchors = anchor_positives(batch, n, offset, e1.device)

        ls = logit_scale.to(dtype).reshape(())
        if self.version == "v2":
            scale1, scale2 = 1.0 / old[:, col("tau1"), None], 1.0 / old[:, col("tau2"), None]
        elif self.version == "v1":
            scale1 = scale2 = 1.0 / cfg.tau_init
        else:
            scale1 = scale2 = ls.exp()
        margin1, margin2 = sim12 - pos[:, None], sim21 - pos[:, None]  # image / text anchors, local x all
        margin_all1, margin_all2 = sim21.T - pos_all[:, None], sim12.T - pos_all[:, None]  # all x local
        if refs:  # DRRho: the reference's margins at the target's scale
            rsim12, rsim21, rpos, rpos_all = reference_similarities(*refs, *all_refs)
            margin1, margin2 = margin1 - (rsim12 - rpos[:, None]), margin2 - (rsim21 - rpos[:, None])
            margin_all1 = margin_all1 - (rsim21.T - rpos_all[:, None])
            margin_all2 = margin_all2 - (rsim12.T - rpos_all[:, None])
        diff1, diff2 = scale1 * margin1, scale2 * margin2
        rows, extra = self._new_rows(old, diff1.detach(), diff2.detach(), anchors)
        distill = cfg.distill_weight > 0
        if distill:
            student = ls.detach().exp()
            extra = torch.cat(
                [
                    extra,
                    distill_rows(
                        student * sim12.detach(),
                        student * sim21.detach(),
                        cfg.distill_logit_scale * rsim12,
                        cfg.distill_logit_scale * rsim21,
                    ),
                ],
                dim=1,
            )
        post = self.state.update(keys, rows, extra)  # [G, T + E]: updated rows + extras of every anchor
        xcol = self._extra_col

        lden_all1 = log_eps_plus(post[:, col("log_u1")], cfg.eps)
        lden_all2 = log_eps_plus(post[:, col("log_u2")], cfg.eps)
        lden1, lden2 = lden_all1[offset : offset + batch], lden_all2[offset : offset + batch]
        if self.version == "v2":
            tau_all1, tau_all2 = post[:, xcol("old_tau1")], post[:, xcol("old_tau2")]
            scale_all1, scale_all2 = 1.0 / tau_all1[:, None], 1.0 / tau_all2[:, None]
        elif self.version == "v1" or cfg.tau_grad == "reference":
            scale_all1, scale_all2 = scale1, scale2
        else:  # exact global tau: only the local-anchor half carries logit_scale
            scale_all1 = scale_all2 = ls.detach().exp()
        weighted = self.version == "v2" and cfg.tau_grad == "exact"
        w1, w2 = (old[:, col("tau1")], old[:, col("tau2")]) if weighted else (None, None)
        w_all1, w_all2 = (tau_all1, tau_all2) if weighted else (None, None)

        columns = anchors.T  # [G, B]: all anchors x local columns, positives at (offset + b, b)
        total = (
            weighted_exp_sum(diff1, anchors, lden1, w1)
            + weighted_exp_sum(diff2, anchors, lden2, w2)
            + weighted_exp_sum(scale_all1 * margin_all1, columns, lden_all1, w_all1)
            + weighted_exp_sum(scale_all2 * margin_all2, columns, lden_all2, w_all2)
        )
        surrogate = total / (2 * batch * (n - 1))
        if distill:
            lse = [xcol(name) for name in _DISTILL_EXTRAS[:4]]
            kd = distill_surrogate(
                ls.exp(),
                cfg.distill_logit_scale,
                (sim12, sim21),
                (rsim12, rsim21),
                post[offset : offset + batch, lse],
                post[:, lse],
            )
            surrogate = surrogate + cfg.distill_weight / 2 * kd
        if self.version == "v3":
            tau = torch.exp(-ls)
            loss = tau.detach() * surrogate + cfg.rho * tau + tau * (lden1 + lden2).mean() / 2
        else:
            loss = surrogate
        value, stats = self._report(post, ls.detach())
        return LossOutput(loss=loss, value=value, stats=stats)

    def _new_rows(
        self, old: torch.Tensor, diff1: torch.Tensor, diff2: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Updated state rows of the local anchors, and the extra columns loss and logging need."""
        cfg, col = self.cfg, self.state.col
        lg1, lg2 = log_g(diff1, anchors), log_g(diff2, anchors)
        lu1 = moving_average_log(old[:, col("log_u1")], lg1, self.gamma)
        lu2 = moving_average_log(old[:, col("log_u2")], lg2, self.gamma)
        if self.version != "v2":
            return torch.stack([lu1, lu2], dim=1), torch.stack([lg1, lg2], dim=1)
        new = old.clone()
        new[:, col("log_u1")], new[:, col("log_u2")] = lu1, lu2
        for side, diff, lu in (("1", diff1, lu1), ("2", diff2, lu2)):
            grad = individual_tau_grad(diff, anchors, log_eps_plus(lu, cfg.eps), cfg.rho)
            tau, m, v, count = per_sample_adam(
                old[:, col("tau" + side)],
                old[:, col("m" + side)],
                old[:, col("v" + side)],
                old[:, col("count")],
                grad,
                cfg.lr_tau,
                cfg.tau_betas,
                cfg.tau_adam_eps,
                (cfg.tau_min, cfg.tau_max),
                cfg.tau_grad_clamp,
            )
            new[:, col("tau" + side)], new[:, col("m" + side)], new[:, col("v" + side)] = tau, m, v
            new[:, col("count")] = count
        extra = torch.stack([lg1, lg2, old[:, col("tau1")], old[:, col("tau2")]], dim=1)
        return new, extra

    def _extra_col(self, name: str) -> int:
        """Position of an extra column riding along with the gathered state rows (see `_new_rows`)."""
        extras = ("log_g1", "log_g2") + (("old_tau1", "old_tau2") if self.version == "v2" else ())
        extras += _DISTILL_EXTRAS if self.cfg.distill_weight > 0 else ()
        return len(self.state.columns) + extras.index(name)

    def _report(self, post: torch.Tensor, ls: torch.Tensor) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Objective value on the global batch (batch g, not u) and metrics under their final names.

        Identical on all ranks; device tensors, never read here (the trainer reads them on logging steps).
        """
        cfg, col, xcol = self.cfg, self.state.col, self._extra_col
        post = post.detach().to(torch.float64)
        leps1 = log_eps_plus(post[:, xcol("log_g1")], cfg.eps)
        leps2 = log_eps_plus(post[:, xcol("log_g2")], cfg.eps)
        stats: dict[str, float | torch.Tensor] = {"schedule/gamma": self.gamma}
        if self.version == "v2":
            t1, t2 = post[:, xcol("old_tau1")], post[:, xcol("old_tau2")]
            value = (t1 * leps1 + t2 * leps2).mean() / 2 + cfg.rho * (t1 + t2).mean() / 2
            stats["schedule/tau"] = (post[:, col("tau1")].mean() + post[:, col("tau2")].mean()) / 2
            stats["schedule/lr_tau"] = cfg.lr_tau  # the per-sample Adam lr
        else:
            value = (leps1 + leps2).mean() / 2
            if self.cfg.distill_weight > 0:
                kd = (post[:, xcol("ce1")] + post[:, xcol("ce2")]).mean() / 2
                stats["train/distill"] = kd
                value = value + self.cfg.distill_weight / 2 * kd
            if self.version == "v1":
                stats["schedule/tau"] = cfg.tau_init
            if self.version == "v3":
                tau = (-ls).exp().double()
                value = tau * value + cfg.rho * tau
        tracked = ["log_u1", "log_u2"] + (["tau1", "tau2"] if self.version == "v2" else [])
        for name in tracked:
            column = post[:, col(name)]
            stats |= {
                f"state/{name}_mean": column.mean(),
                f"state/{name}_min": column.min(),
                f"state/{name}_max": column.max(),
            }
        return value, stats

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": "fastclip",
            "version": self.version,
            "epoch": self.epoch,
            "gamma": self.gamma,
            "sample_state": self.state.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != "fastclip" or state.get("version") != self.version:
            raise ValueError(
                f"loss state is for {state.get('name')} {state.get('version')}, this run uses fastclip {self.version}"
            )
        self.state.load_state_dict(state["sample_state"])
        self.epoch, self.gamma = state["epoch"], state["gamma"]

"""CLIP text transformer: token + position embeddings, causal pre-LN blocks, EOT pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.configs import TextConfig


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid GELU approximation (needed to load OpenAI weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask through `scaled_dot_product_attention`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class TextBlock(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), act(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Encodes token ids [B, 77] to [B, embed_dim], pooling at the EOT token (the largest id)."""

    def __init__(self, cfg: TextConfig, embed_dim: int, quick_gelu: bool = False) -> None:
        super().__init__()
        act = QuickGELU if quick_gelu else nn.GELU
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(TextBlock(cfg.width, cfg.heads, cfg.mlp_ratio, act) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Linear(cfg.width, embed_dim, bias=False)
        self.grad_checkpointing = False
        self.init_weights(cfg)

    def init_weights(self, cfg: TextConfig) -> None:
        """OpenAI CLIP's initialisation, scaled by depth."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = cfg.width**-0.5 * (2 * cfg.layers) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=cfg.width**-0.5)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.normal_(block.mlp[0].weight, std=(2 * cfg.width) ** -0.5)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
            for linear in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
                nn.init.zeros_(linear.bias)
        nn.init.normal_(self.text_projection.weight, std=cfg.width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context length {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.text_projection(pooled)

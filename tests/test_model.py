"""CLIP models: shapes, normalisation, logit_scale, parameter counts vs open_clip, FLIP masking."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from model import FlipMasking, create_model, get_model_config, num_kept


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("tiny")


def _batch(model: torch.nn.Module, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.config.vision.image_size
    tokens = torch.randint(1, 49406, (n, 77))
    tokens[:, 0] = 49406
    tokens[:, 9] = 49407
    tokens[:, 10:] = 0
    return torch.randn(n, 3, size, size), tokens


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14"])
def test_parameter_count_matches_open_clip(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name)
        theirs = open_clip.create_model(name, device="meta")
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert abs(n_ours / n_theirs - 1) < 1e-3, (name, n_ours, n_theirs)


def test_vit_h_dimensions() -> None:
    cfg = get_model_config("ViT-H-14")
    assert (cfg.embed_dim, cfg.vision.width, cfg.vision.layers, cfg.vision.heads) == (1024, 1280, 32, 16)
    assert (cfg.text.width, cfg.text.heads, cfg.text.layers) == (1024, 16, 24)


def test_forward_shapes_and_normalisation(tiny: torch.nn.Module) -> None:
    images, tokens = _batch(tiny)
    img, txt, scale = tiny(images, tokens)
    assert img.shape == txt.shape == (4, 64)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)
    raw = tiny.encode_image(images)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4))
    assert torch.equal(scale, tiny.logit_scale) and scale.requires_grad


def test_logit_scale_shape_and_init(tiny: torch.nn.Module) -> None:
    assert tiny.logit_scale.shape == (1,)
    assert tiny.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)


def test_text_pools_at_eot_and_is_causal(tiny: torch.nn.Module) -> None:
    tiny.eval()
    _, tokens = _batch(tiny, 2)
    changed = tokens.clone()
    changed[:, 12] = 5  # after EOT: must not influence the EOT token under a causal mask
    torch.testing.assert_close(tiny.encode_text(tokens), tiny.encode_text(changed))
    changed[:, 3] = 7  # before EOT: must influence it
    assert not torch.allclose(tiny.encode_text(tokens), tiny.encode_text(changed))


def test_unknown_model_and_override() -> None:
    with pytest.raises(KeyError, match="ViT-X"):
        create_model("ViT-X")
    with pytest.raises(KeyError, match="vision_bogus"):
        create_model("tiny", vision_bogus=3)
    assert create_model("tiny", vision_layers=1).visual.blocks.__len__() == 1


@pytest.mark.parametrize("ratio,length,kept", [(0.5, 49, 24), (0.75, 196, 49), (0.75, 16, 4), (0.99, 3, 1)])
def test_num_kept(ratio: float, length: int, kept: int) -> None:
    assert num_kept(length, ratio) == kept


def _tokens_with_ids(batch: int, length: int) -> torch.Tensor:
    """Token values encode (sample, position) so kept positions can be read back."""
    ids = torch.arange(length + 1, dtype=torch.float64).repeat(batch, 1)
    return torch.stack([ids, torch.arange(batch, dtype=torch.float64)[:, None].expand(-1, length + 1)], dim=-1)


def test_masking_keeps_cls_and_count_and_differs_per_sample() -> None:
    masking = FlipMasking(num_prefix_tokens=1).train()
    masking.set_ratio(0.5)
    x = _tokens_with_ids(8, 64)
    out = masking(x)
    assert out.shape == (8, 1 + 32, 2)
    assert torch.all(out[:, 0, 0] == 0)  # class token first and kept
    kept = [set(out[b, 1:, 0].long().tolist()) for b in range(8)]
    assert all(len(k) == 32 and 0 not in k for k in kept)  # distinct patches, never the class token
    assert len({frozenset(k) for k in kept}) > 1  # per-sample subsets
    assert torch.all(out[..., 1] == torch.arange(8)[:, None])  # tokens stay with their sample


def test_masking_identity_in_eval_and_at_ratio_zero() -> None:
    masking = FlipMasking()
    x = torch.randn(2, 17, 4)
    masking.set_ratio(0.75)
    masking.eval()
    assert masking(x) is x
    masking.train()
    masking.set_ratio(0.0)
    assert masking(x) is x
    with pytest.raises(ValueError, match="mask ratio"):
        masking.set_ratio(1.0)


def test_masking_reproducible_with_generator(tiny: torch.nn.Module) -> None:
    images, tokens = _batch(tiny)
    tiny.train()
    outs = []
    for _ in range(2):
        tiny.set_mask_ratio(0.5, generator=torch.Generator().manual_seed(7))
        outs.append(tiny.encode_image(images))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    tiny.set_mask_ratio(0.5, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(outs[0], tiny.encode_image(images))
    tiny.set_mask_ratio(0.0)
    tiny.eval()


def test_masked_model_sees_fewer_tokens(tiny: torch.nn.Module) -> None:
    seen: list[int] = []
    hook = tiny.visual.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    images, _ = _batch(tiny)
    tiny.train()
    tiny.set_mask_ratio(0.75)
    tiny.encode_image(images)
    tiny.eval()
    tiny.encode_image(images)
    tiny.set_mask_ratio(0.0)
    hook.remove()
    assert seen == [1 + 4, 1 + 16]


def test_grad_checkpointing_same_gradients(tiny: torch.nn.Module) -> None:
    images, tokens = _batch(tiny)
    tiny.train()
    grads = []
    for enabled in (False, True):
        tiny.zero_grad()
        tiny.set_grad_checkpointing(enabled)
        img, txt, scale = tiny(images, tokens)
        (scale * img @ txt.T).logsumexp(dim=1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in tiny.parameters() if p.grad is not None]))
    tiny.set_grad_checkpointing(False)
    tiny.eval()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)

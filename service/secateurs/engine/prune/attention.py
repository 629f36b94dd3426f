"""Make nn.MultiheadAttention and timm's ViT attention head-prunable.

nn.MultiheadAttention ties its inner width to the residual width (embed_dim), so a
whole head cannot be removed from it; timm's `Attention` reshapes by a fixed `head_dim`
and `attn_dim`, so a pruned qkv no longer fits it. `SelfAttention` computes the same
function with a fused qkv Linear and an output Linear whose inner width may shrink, which
is the layout Torch-Pruning prunes by heads (`TokenAttention`: the same, called as timm's
blocks call theirs). Conversion copies the weights exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Self-attention with separate projections; `num_heads` shrinks as heads are pruned."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, None]:
        # Same call signature as nn.MultiheadAttention (batch_first) for self-attention.
        batch, tokens, _ = query.shape
        head_dim = self.qkv.out_features // (3 * self.num_heads)
        qkv = self.qkv(query).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * head_dim)
        return self.proj(out), None


class TokenAttention(SelfAttention):
    """SelfAttention called as timm's vision-transformer blocks call theirs: tokens in, tokens out."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,  # type: ignore[override]
                is_causal: bool = False) -> torch.Tensor:
        if is_causal:
            raise NotImplementedError("causal attention is not converted")
        return super().forward(x, attn_mask=attn_mask)[0]


def _from_torch(child: nn.Module) -> SelfAttention | None:
    if not isinstance(child, nn.MultiheadAttention):
        return None
    if not (child.batch_first and child._qkv_same_embed_dim and child.in_proj_weight is not None):
        return None  # cross-attention or split projections: left as is, pruned by width only
    bias = child.in_proj_bias is not None
    attention = SelfAttention(child.embed_dim, child.num_heads, bias=bias)
    with torch.no_grad():
        attention.qkv.weight.copy_(child.in_proj_weight)
        attention.proj.weight.copy_(child.out_proj.weight)
        if bias:
            attention.qkv.bias.copy_(child.in_proj_bias)
            attention.proj.bias.copy_(child.out_proj.bias)
    return attention


def _from_timm(child: nn.Module) -> SelfAttention | None:
    """timm's plain ViT attention (no qk-norm, gate or inner norm; qkv and proj biases alike)."""
    if type(child).__name__ != "Attention" or not type(child).__module__.startswith("timm."):
        return None
    qkv, proj = getattr(child, "qkv", None), getattr(child, "proj", None)
    plain = all(isinstance(getattr(child, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and plain
            and getattr(child, "gate", None) is None and qkv.out_features == 3 * qkv.in_features == 3 * proj.in_features
            and proj.out_features == qkv.in_features and (qkv.bias is None) == (proj.bias is None)
            and getattr(child.attn_drop, "p", 0.0) == 0.0):
        return None
    attention = TokenAttention(qkv.in_features, child.num_heads, bias=qkv.bias is not None)
    attention.qkv.load_state_dict(qkv.state_dict())
    attention.proj.load_state_dict(proj.state_dict())
    return attention


def convert_attention(model: nn.Module) -> dict[str, int]:
    """Replace every convertible attention in place; returns {qkv name: heads}."""
    converted: dict[str, int] = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            attention = _from_torch(child) or _from_timm(child)
            if attention is None:
                continue
            attention.train(child.training)
            setattr(parent, child_name, attention)
            prefix = f"{parent_name}.{child_name}" if parent_name else child_name
            converted[f"{prefix}.qkv"] = attention.num_heads
    return converted

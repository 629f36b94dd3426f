"""Make nn.MultiheadAttention head-prunable.

nn.MultiheadAttention ties its inner width to the residual width (embed_dim), so a
whole head cannot be removed from it. `SelfAttention` computes the same function
with a fused qkv Linear and an output Linear whose inner width may shrink, which is
the layout Torch-Pruning prunes by heads. Conversion copies the weights exactly.
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


def convert_attention(model: nn.Module) -> dict[str, int]:
    """Replace every convertible nn.MultiheadAttention in place; returns {qkv name: heads}."""
    converted: dict[str, int] = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.MultiheadAttention):
                continue
            if not (child.batch_first and child._qkv_same_embed_dim and child.in_proj_weight is not None):
                continue  # cross-attention or split projections: left as is, pruned by width only
            bias = child.in_proj_bias is not None
            attention = SelfAttention(child.embed_dim, child.num_heads, bias=bias)
            with torch.no_grad():
                attention.qkv.weight.copy_(child.in_proj_weight)
                attention.proj.weight.copy_(child.out_proj.weight)
                if bias:
                    attention.qkv.bias.copy_(child.in_proj_bias)
                    attention.proj.bias.copy_(child.out_proj.bias)
            attention.train(child.training)
            setattr(parent, child_name, attention)
            prefix = f"{parent_name}.{child_name}" if parent_name else child_name
            converted[f"{prefix}.qkv"] = child.num_heads
    return converted

"""Transformer encoders written so that compression can see and change every part.

Each attention block keeps its query/key/value/output projections as separate ``nn.Linear``
layers and reshapes with ``head_dim`` (never a hard-coded head count), so removing heads
only shrinks those four layers and updates ``num_heads``. The models trace with torch.fx and
export to ONNX. :func:`bert_from_hf` copies a Hugging Face ``BertModel`` (built from a config
or loaded from a local directory) into :class:`BertEncoder`, output for output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BertEncoder", "EncoderLayer", "MultiHeadSelfAttention", "ViTSmall", "bert_from_hf", "mean_pool"]


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention with separate q, k, v, o projections.

    Head pruning keeps whole heads: rows ``h*head_dim:(h+1)*head_dim`` of q, k and v and the
    same columns of o (see :func:`autocompress.compress.prune_heads`).
    """

    def __init__(self, hidden: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or hidden // num_heads
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(hidden, inner)
        self.k = nn.Linear(hidden, inner)
        self.v = nn.Linear(hidden, inner)
        self.o = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, s = x.shape[0], x.shape[1]
        shape = (b, s, -1, self.head_dim)
        q = self.q(x).view(shape).transpose(1, 2)
        k = self.k(x).view(shape).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if mask_bias is not None:
            scores = scores + mask_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o(context.transpose(1, 2).reshape(b, s, -1))


class EncoderLayer(nn.Module):
    """A transformer block: attention and a GELU MLP, each with a residual connection.

    ``pre_norm`` places LayerNorm before each sub-block (ViT); otherwise after (BERT).
    """

    def __init__(self, hidden: int, num_heads: int, mlp_hidden: int, pre_norm: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = MultiHeadSelfAttention(hidden, num_heads)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), mask_bias)
            return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))
        x = self.norm1(x + self.attn(x, mask_bias))
        return self.norm2(x + self.fc2(nn.functional.gelu(self.fc1(x))))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states that the mask keeps (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


class BertEncoder(nn.Module):
    """BERT (post-norm) that returns L2-normalised mean-pooled sentence embeddings.

    Inputs: ``input_ids`` and ``attention_mask``, both int64 ``[batch, tokens]``.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden: int = 384,
        num_layers: int = 6,
        num_heads: int = 12,
        mlp_hidden: int = 1536,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(EncoderLayer(hidden, num_heads, mlp_hidden, eps=eps) for _ in range(num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.ones_like(input_ids).cumsum(dim=1) - 1  # traceable arange over tokens
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(torch.zeros_like(input_ids))
        )
        x = self.embed_norm(x)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return nn.functional.normalize(mean_pool(x, attention_mask), dim=-1)


@torch.no_grad()
def bert_from_hf(hf_model: nn.Module) -> BertEncoder:
    """A :class:`BertEncoder` with the weights of a Hugging Face ``BertModel``."""
    cfg = hf_model.config
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or cfg.hidden_act != "gelu":
        raise ValueError("only BERT models with absolute positions and exact GELU are supported")
    model = BertEncoder(
        cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
        cfg.max_position_embeddings, cfg.type_vocab_size, cfg.layer_norm_eps,
    )
    emb = hf_model.embeddings
    model.word_embeddings.load_state_dict(emb.word_embeddings.state_dict())
    model.position_embeddings.load_state_dict(emb.position_embeddings.state_dict())
    model.token_type_embeddings.load_state_dict(emb.token_type_embeddings.state_dict())
    model.embed_norm.load_state_dict(emb.LayerNorm.state_dict())
    for ours, theirs in zip(model.layers, hf_model.encoder.layer):
        att = theirs.attention
        ours.attn.q.load_state_dict(att.self.query.state_dict())
        ours.attn.k.load_state_dict(att.self.key.state_dict())
        ours.attn.v.load_state_dict(att.self.value.state_dict())
        ours.attn.o.load_state_dict(att.output.dense.state_dict())
        ours.norm1.load_state_dict(att.output.LayerNorm.state_dict())
        ours.fc1.load_state_dict(theirs.intermediate.dense.state_dict())
        ours.fc2.load_state_dict(theirs.output.dense.state_dict())
        ours.norm2.load_state_dict(theirs.output.LayerNorm.state_dict())
    return model.eval()


class ViTSmall(nn.Module):
    """A ViT-style classifier: patch-embedding conv, pre-norm encoder blocks, mean pooling."""

    def __init__(
        self,
        image_size: int = 28,
        patch: int = 4,
        in_channels: int = 1,
        hidden: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_hidden: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, hidden, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, hidden) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(hidden, num_heads, mlp_hidden, pre_norm=True, eps=1e-6) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))

"""Projection heads: an LLM's token hidden states -> a unit vector in the teacher's embedding space.

A head lives in a folder: ``head.safetensors`` (weights) and ``config.json`` (what it was trained for: LLM and
teacher identity, layers, token selection, prompt format, training data and metrics). Loading a head onto another
LLM or teacher is refused with a message naming the field that differs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import HeadFileError
from .files import atomic_folder, check_identity, read_config, reading, verify_folder

HEAD_FORMAT = "native-retriever-head"
ARCHITECTURES = ("linear", "attention", "transformer")
TOKEN_SELECTIONS = ("all", "last_user", "last", "query")
INPUT_MODES = ("context", "query")


@dataclass
class HeadConfig:
    """Architecture and provenance of a head (the JSON half of a head folder)."""

    hidden_size: int
    output_dim: int
    architecture: str = "transformer"
    input_mode: str = "context"  # "context": the conversation; "query": generated search-query tokens
    tokens: str = "all"  # which token states the head reads
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged; -1 = final normed
    max_input_tokens: int = 512  # the most recent tokens read
    pool_window: int = 1  # transformer: mean-pool this many consecutive tokens (counted from the end) first
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    llm: dict = field(default_factory=dict)  # name, hidden_size, num_layers, vocab_size, fingerprint
    teacher: dict = field(default_factory=dict)  # name, dim, fingerprint
    prompt_format: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "architecture": (self.architecture, ARCHITECTURES),
            "tokens": (self.tokens, TOKEN_SELECTIONS),
            "input_mode": (self.input_mode, INPUT_MODES),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"HeadConfig.{name}={value!r}; use one of {', '.join(allowed)}.")
        if self.tokens == "query" and self.input_mode != "query":
            raise ValueError("tokens='query' needs input_mode='query'.")

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict, with the head file's format name and version."""
        return {"format": HEAD_FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        """A config from `to_dict`'s output (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where mask is true: (B, T, H), (B, T) -> (B, H)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class LinearHead(nn.Module):
    """Mean of the selected token states, layer norm, one linear map."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.output_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Project the masked mean of `states` (B, T, H) under `mask` (B, T) to (B, D)."""
        return self.proj(self.norm(masked_mean(states, mask)))


class AttentionPoolHead(nn.Module):
    """Multi-head attention pooling: each head weights the tokens (by content and distance from the end), the
    weighted means are concatenated and mapped linearly. Reads the whole conversation at the cost of a linear head."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.score = nn.Linear(config.hidden_size, config.num_heads)
        self.recency = nn.Embedding(config.max_input_tokens, config.num_heads)
        nn.init.zeros_(self.recency.weight)
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(config.num_heads * config.hidden_size, config.output_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool `states` (B, T, H) under `mask` (B, T) into one (B, D) vector per row."""
        batch, length = mask.shape
        if (
            batch == 1
            and not self.training
            and not torch.is_grad_enabled()
            and length <= self.recency.num_embeddings
            and bool(mask.all())
        ):
            return self._single_row(states[0])
        position = torch.arange(length, device=mask.device).unsqueeze(0)
        distance = (mask.sum(1, keepdim=True) - 1 - position).clamp(0, self.recency.num_embeddings - 1)
        hidden = self.norm(states)
        logits = (self.score(hidden) + self.recency(distance)).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1)  # (B, T, heads), over tokens
        pooled = torch.einsum("bth,btd->bhd", weights, hidden).flatten(1)
        return self.proj(self.dropout(pooled))

    def _single_row(self, states: torch.Tensor) -> torch.Tensor:
        """Inference on one unpadded row (the batch-1 query path): the same function as ``forward``, without module
        calls, masking or materialising the normed states. The layer norm's scale g and shift b are folded into the
        score and output maps (``_folded``). With centred states c_t = x_t - mean(x_t) and r_t = 1/std(x_t), the
        normed state is g*c_t*r_t + b, so the scores are (W_s*g) c_t * r_t + (W_s b + b_s), and since each head's
        weights a_t sum to 1 its pooled state is g * sum_t (a_t r_t) c_t + b, mapped by (W_p*g) and W_p b + b_p:
        pool first, project after.
        """
        length, limit = states.shape[0], self.recency.num_embeddings
        score_w, score_b, proj_w, proj_b, recency_rev = self._folded()
        centred = states - states.mean(-1, keepdim=True)
        scale = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + self.norm.eps)  # (T, 1)
        logits = torch.addcmul(score_b + recency_rev[limit - length :], F.linear(centred, score_w), scale)
        weights = torch.softmax(logits, dim=0).mul_(scale)  # (T, heads): a_t * r_t
        pooled = (weights.t() @ centred).view(1, -1)
        return F.linear(pooled, proj_w, proj_b)

    def _folded(self) -> tuple[torch.Tensor, ...]:
        """Score and output weights with the layer norm's scale and shift folded in, and the recency table reversed
        (row L-1-d holds distance d); recomputed when any weight changes (its version counter or storage)."""
        tensors = (self.norm.weight, self.norm.bias, self.score.weight, self.score.bias, self.proj.weight)
        tensors += (self.proj.bias, self.recency.weight)
        key = tuple((t.data_ptr(), t._version) for t in tensors)  # .to() and in-place updates change these
        cached = self.__dict__.get("_folded_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            gain, shift, score_w, score_b, proj_w, proj_b, recency = (t.detach() for t in tensors)
            per_head = proj_w.view(proj_w.shape[0], score_w.shape[0], -1)  # (D, heads, H)
            folded = (
                (score_w * gain).contiguous(),
                score_w @ shift + score_b,
                (per_head * gain).reshape(proj_w.shape[0], -1).contiguous(),
                proj_b + (per_head * shift).sum((1, 2)),
                recency.flip(0).contiguous(),
            )
        self.__dict__["_folded_cache"] = (key, folded)
        return folded


class TransformerHead(nn.Module):
    """The paper's head: input projection, a small Transformer encoder over the tokens, mean pool, output projection.

    A learned embedding of each position's distance from the end tells the encoder which turn it belongs to. With
    ``pool_window`` w > 1 the encoder runs over means of w consecutive tokens (counted from the end) instead of
    single tokens: w times fewer positions, for CPU training and inference.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.window = config.pool_window
        self.norm = nn.LayerNorm(config.hidden_size)
        self.inp = nn.Linear(config.hidden_size, config.d_model)
        self.recency = nn.Embedding(-(-config.max_input_tokens // self.window), config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.num_heads, 4 * config.d_model, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(config.d_model)
        self.out = nn.Linear(config.d_model, config.output_dim)

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means of ``window`` tokens from the end: (B, C, H) states, (B, C) mask, (B, C) distance from the end."""
        batch, length, hidden = states.shape
        position = torch.arange(length, device=mask.device).unsqueeze(0)
        distance = (mask.sum(1, keepdim=True) - 1 - position).clamp_min(0)  # tokens are left-aligned
        chunk = (distance // self.window).clamp_max(self.recency.num_embeddings - 1)
        count = self.recency.num_embeddings
        weights = mask.to(states.dtype)
        sums = states.new_zeros((batch, count, hidden)).scatter_add_(
            1, chunk.unsqueeze(-1).expand(-1, -1, hidden), states * weights.unsqueeze(-1)
        )
        sizes = weights.new_zeros((batch, count)).scatter_add_(1, chunk, weights)
        used = sizes > 0
        steps = torch.arange(count, device=mask.device).expand(batch, -1)
        return sums / sizes.clamp_min(1).unsqueeze(-1), used, steps

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool `states` (B, T, H) under `mask` (B, T), encode and project to one (B, D) vector per row."""
        pooled, used, distance = self.pool(states, mask)
        hidden = self.inp(self.norm(pooled)) + self.recency(distance)
        hidden = self.encoder(hidden, src_key_padding_mask=~used)
        return self.out(self.out_norm(masked_mean(hidden, used)))


class ProjectionHead(nn.Module):
    """A head with its config; ``forward(states, mask)`` returns L2-normalised vectors."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        bodies = {"linear": LinearHead, "attention": AttentionPoolHead, "transformer": TransformerHead}
        self.body = bodies[config.architecture](config)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit vectors (B, D) in the teacher's space from hidden states (B, T, H) and their mask (B, T)."""
        return F.normalize(self.body(states, mask).float(), dim=-1)

    @property
    def output_dim(self) -> int:
        """Size of the head's output vectors (the teacher's dimension)."""
        return self.config.output_dim

    def save_pretrained(self, folder: str | os.PathLike, extra_files: dict[str, str] | None = None) -> None:
        """Write ``head.safetensors``, ``config.json`` (and ``extra_files``: name -> text) atomically, with a manifest.

        A crash leaves the old folder intact; a folder the package did not write is refused (HeadFileError).
        """
        with atomic_folder(folder, "head") as tmp:
            weights = {name: t.detach().float().cpu().contiguous() for name, t in self.state_dict().items()}
            save_file(weights, str(tmp / "head.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ProjectionHead:
        """Load a head folder; missing, corrupt or altered files (sha256 of its manifest) raise HeadFileError.

        A save into the folder from another thread or process waits until the load has read it.
        """
        with reading(folder, "head") as path:
            return cls._read(path)

    @classmethod
    def _read(cls, folder: Path) -> ProjectionHead:
        config_path, weights_path = folder / "config.json", folder / "head.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise HeadFileError(
                    f"{path} is missing; a head folder holds config.json and head.safetensors "
                    "(train one with `native-retriever train-head`, or omit the head to use the shipped default)."
                )
        data = read_config(config_path, HEAD_FORMAT, "head")
        try:
            config = HeadConfig.from_dict(data)
            head = cls(config)
            head.load_state_dict(load_file(str(weights_path)))
        except Exception as exc:
            raise HeadFileError(
                f"{weights_path} does not match {config_path} or is corrupt ({exc}); restore or retrain the head."
            ) from exc
        verify_folder(folder, "head")  # last, so that the checks above name their own problem first
        return head.eval()

    def check_compatible(self, llm: dict | None = None, teacher: dict | None = None) -> None:
        """Refuse an LLM or teacher other than the ones this head was trained for, naming the field."""
        for side, actual, expected in (
            ("LLM", llm, self.config.llm),
            ("teacher", teacher, self.config.teacher),
        ):
            if not actual or not expected:
                continue
            fix = f"Use the head trained for this {side}, or train one with `native-retriever train-head`."
            check_identity("head", side, actual, expected, fix)

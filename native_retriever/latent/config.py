"""The latent-view adapter's own config (beside peft's adapter files): K, temperature, prompt formats, base LLM."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HeadFileError, LatentConfigError
from ..files import check_identity, read_config

LATENT_FORMAT = "native-retriever-latent"
CONFIG_NAME = "latent_config.json"
# All attention and MLP projections of Llama-style models (SmolLM2, Qwen2, Llama, Mistral).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LatentConfig:
    """How the latent view encodes, what it was trained for, and the LoRA it was trained with."""

    k: int = 3  # steps: the last input token plus k-1 soft thinking tokens
    temperature: float = 1.0  # softmax temperature of the soft tokens (fp32)
    lora_r: int = 64
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    lora_layers: int | None = None  # adapt only the top N decoder layers (None: all layers)
    prompt_format: dict = field(default_factory=dict)  # queries: PromptFormat of the shared formatter
    document_max_tokens: int = 256  # documents: cut to this many tokens (document_format of the formatter)
    llm: dict = field(default_factory=dict)  # name, hidden_size, num_layers, vocab_size, fingerprint
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_k(self.k)
        if not self.temperature > 0:
            raise LatentConfigError(f"LatentConfig.temperature={self.temperature}; use a positive one (default 1).")
        if self.lora_r < 1:
            raise LatentConfigError(f"LatentConfig.lora_r={self.lora_r}; the LoRA rank must be at least 1.")
        if self.lora_layers is not None and self.lora_layers < 1:
            raise LatentConfigError(f"LatentConfig.lora_layers={self.lora_layers}; use None (all) or >= 1.")

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict, with the adapter's format name and version."""
        return {"format": LATENT_FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LatentConfig:
        """A config from `to_dict`'s output (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, folder: str | os.PathLike) -> None:
        """Write the config as JSON into `folder`."""
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LatentConfig:
        """Read ``latent_config.json``; a missing or foreign file raises HeadFileError naming the fix."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise HeadFileError(
                f"{path} is missing; a latent adapter folder holds {CONFIG_NAME}, adapter_config.json and "
                "adapter_model.safetensors (train one with `native-retriever train-latent`)."
            )
        return cls.from_dict(read_config(path, LATENT_FORMAT, "latent adapter"))

    def check_compatible(self, llm: dict) -> None:
        """Refuse an LLM other than the one the adapter was trained on, naming the field that differs."""
        fix = "Load the adapter onto the LLM it was trained on, or train one with `native-retriever train-latent`."
        check_identity("latent adapter", "LLM", llm, self.llm, fix)


def check_k(k: int) -> int:
    """K is the number of latent steps (last input token plus K-1 soft tokens): at least 1."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise LatentConfigError(
            f"K={k!r} latent steps; K counts the last input token plus K-1 soft thinking tokens, so use an "
            "integer of at least 1 (K=1: no soft tokens)."
        )
    return k

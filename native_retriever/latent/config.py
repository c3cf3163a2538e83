"""The latent-view adapter's own config (beside peft's adapter files): K, temperature, prompt formats, base LLM."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HeadFileError, LatentConfigError
from ..files import check_identity, read_config
from ..heads import LLM_KEYS, check_keys, check_prompt_format, check_section, check_version, is_int, is_number

LATENT_FORMAT = "native-retriever-latent"
LATENT_VERSION = 1  #: the latent_config.json version this package writes
LATENT_VERSIONS = (1,)  #: the versions it reads
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
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range; raises LatentConfigError naming the field, its value and the fix.

        ``llm`` may be empty until ``LatentEncoder.create`` records the base LLM; a loaded config must have it.
        """

        def bad(name: str, fix: str) -> LatentConfigError:
            return LatentConfigError(f"LatentConfig.{name}={getattr(self, name)!r}; {fix}.")

        check_k(self.k)
        if not (is_number(self.temperature) and self.temperature > 0):
            raise bad("temperature", "use a positive one (default 1)")
        if not (is_int(self.lora_r) and self.lora_r >= 1):
            raise bad("lora_r", "the LoRA rank must be an int of at least 1")
        if not (is_number(self.lora_alpha) and self.lora_alpha > 0):
            raise bad("lora_alpha", "use a positive number (the LoRA scale is alpha / r)")
        if not (is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise bad("lora_dropout", "use a number in [0, 1)")
        modules = self.target_modules
        if not (isinstance(modules, (list, tuple)) and modules and all(isinstance(m, str) and m for m in modules)):
            raise bad("target_modules", "use a non-empty list of module names (e.g. q_proj, v_proj)")
        if self.lora_layers is not None and not (is_int(self.lora_layers) and self.lora_layers >= 1):
            raise bad("lora_layers", "use None (all) or >= 1")
        if not (is_int(self.document_max_tokens) and self.document_max_tokens > 0):
            raise bad("document_max_tokens", "use a positive int (the document window in LLM tokens)")
        check_prompt_format(LatentConfigError, "LatentConfig", self.prompt_format)
        if self.llm != {}:
            check_section(LatentConfigError, "LatentConfig", "llm", self.llm, LLM_KEYS)
        for name in ("training", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "use a dict (it records provenance)")

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict, with the adapter's format name and version."""
        return {"format": LATENT_FORMAT, "version": LATENT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LatentConfig:
        """A config from `to_dict`'s output; a missing or unknown ``version``, unknown keys, a missing ``llm``
        section or any invalid field raise LatentConfigError."""
        check_version(LatentConfigError, "Latent adapter", data, LATENT_VERSIONS)
        check_keys(LatentConfigError, "LatentConfig", data, set(cls.__dataclass_fields__) | {"format", "version"})
        config = cls(**{key: value for key, value in data.items() if key not in ("format", "version")})
        check_section(LatentConfigError, "LatentConfig", "llm", config.llm, LLM_KEYS)
        return config

    def save(self, folder: str | os.PathLike) -> None:
        """Write the config as JSON into `folder`."""
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LatentConfig:
        """Read and validate ``latent_config.json``; a missing, foreign or invalid file raises HeadFileError naming
        the file, the field and the fix."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise HeadFileError(
                f"{path} is missing; a latent adapter folder holds {CONFIG_NAME}, adapter_config.json and "
                "adapter_model.safetensors (train one with `native-retriever train-latent`)."
            )
        data = read_config(path, LATENT_FORMAT, "latent adapter")
        try:
            return cls.from_dict(data)
        except LatentConfigError as exc:
            raise HeadFileError(
                f"{path}: {exc} Fix that field, or restore the folder or retrain the adapter "
                "(`native-retriever train-latent`)."
            ) from exc

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

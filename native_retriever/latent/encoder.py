"""The latent-view encoder (LaSER): the agent LLM with a LoRA adapter "thinks" K-1 soft tokens, then pools.

For an input (a conversation or a document), one prefill gives the final-layer state of its last token; then K-1
soft tokens are fed autoregressively on the KV cache. Each soft token is the expected input embedding under the LM
head's softmax at the previous position (fp32, temperature ``LatentConfig.temperature``). The embedding is the
L2-normalised mean of the K final-layer states (the last input token and the K-1 soft tokens).

The adapter lives inside the agent's own model object (peft injects LoRA layers; no second copy of the base
weights) and is switched on only inside :meth:`LatentEncoder.adapter_active`, so the agent keeps generating with its
base weights.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..compat import cache_kwargs, output_cache
from ..conversation import PromptFormat, encode_conversation, encode_document
from ..errors import HeadFileError
from ..extras import require
from ..files import atomic_folder, reading, verify_folder
from ..states import pad_token_id
from .config import LatentConfig, check_k

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def decoder_of(model: PreTrainedModel) -> torch.nn.Module:
    """The decoder stack of a causal LM (``model.model`` for Llama-style models), returning final normed states."""
    return getattr(model, model.base_model_prefix)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, T) input ids and attention mask: every sequence ends in the last column."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if len(ids):
            input_ids[row, longest - len(ids) :] = torch.tensor(list(ids))
            mask[row, longest - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def soft_token(model: PreTrainedModel, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The softmax-weighted mean of the input embedding table under the LM head at ``hidden`` (fp32): (B, H)."""
    logits = model.get_output_embeddings()(hidden).float() / temperature
    table = model.get_input_embeddings().weight
    return (torch.softmax(logits, dim=-1) @ table.float()).to(table.dtype)


def latent_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, temperature: float = 1.0
) -> torch.Tensor:
    """Final-layer states of the K latent steps of a left-padded batch, on the KV cache: (B, K, H)."""
    check_k(k)
    decoder = decoder_of(model)
    mask, position = attention_mask, positions(attention_mask)
    out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=k > 1)
    hidden = out.last_hidden_state[:, -1]
    states = [hidden]
    position = position[:, -1:]
    for _ in range(k - 1):
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position = position + 1
        out = decoder(
            inputs_embeds=soft_token(model, hidden, temperature).unsqueeze(1),
            attention_mask=mask,
            position_ids=position,
            **cache_kwargs(decoder, output_cache(out)),
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        states.append(hidden)
    return torch.stack(states, dim=1)


def pool(states: torch.Tensor) -> torch.Tensor:
    """The embedding: L2-normalised mean over the K steps, in fp32: (B, K, H) -> (B, H)."""
    return F.normalize(states.float().mean(dim=1), dim=-1)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` while wrapping a model (a FutureWarning
    from inside peft, about peft's own call): hidden, so wrapping the agent's model prints nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


class LatentEncoder:
    """A LoRA adapter on the agent's LLM that embeds conversations and documents in the latent view.

    Build one with :meth:`create` (a fresh adapter, for training) or :meth:`from_pretrained` (a trained adapter
    folder). The adapter is off except inside :meth:`adapter_active`; :meth:`unload` removes it from the model.
    """

    def __init__(self, peft_model, tokenizer: PreTrainedTokenizerBase, config: LatentConfig) -> None:
        self.peft_model = peft_model
        self.model = peft_model.base_model.model  # the agent's own model object, LoRA layers injected
        self.tokenizer = tokenizer
        self.config = config
        self.prompt_format = PromptFormat.from_dict(config.prompt_format)
        self.pad_id = pad_token_id(tokenizer)
        self.peft_model.base_model.disable_adapter_layers()

    @staticmethod
    def lora_config(config: LatentConfig, num_layers: int):
        """The peft LoraConfig the latent adapter of `config` uses on a model of `num_layers` layers."""
        require("latent", "peft", what="The latent view")
        from peft import LoraConfig

        layers = None
        if config.lora_layers is not None:
            layers = list(range(max(0, num_layers - config.lora_layers), num_layers))
        return LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            layers_to_transform=layers,
            bias="none",
        )

    @classmethod
    def create(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: LatentConfig | None = None,
        seed: int = 0,
    ) -> LatentEncoder:
        """Inject a fresh (identity at start) LoRA adapter into ``model`` and record the base LLM's identity."""
        require("latent", "peft", what="The latent view")
        from peft import get_peft_model

        from ..models import llm_info

        config = config or LatentConfig()
        config.llm = llm_info(model)  # before injection: the base weights' identity
        config.prompt_format = config.prompt_format or PromptFormat().to_dict()
        torch.manual_seed(seed)
        with _quiet_peft():
            peft_model = get_peft_model(model, cls.lora_config(config, model.config.num_hidden_layers))
        return cls(peft_model, tokenizer, config)

    @classmethod
    def from_pretrained(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        folder: str | os.PathLike,
        *,
        check_compatible: bool = True,
    ) -> LatentEncoder:
        """Load a trained adapter folder onto the agent's model; another base LLM is refused naming the field."""
        require("latent", "peft", what="The latent view")
        from peft import PeftModel

        from ..models import llm_info

        with reading(folder, "latent-adapter") as folder:  # a save into the same place waits for this load
            config = LatentConfig.load(folder)
            for name in ADAPTER_FILES:
                if not (folder / name).is_file():
                    raise HeadFileError(
                        f"{folder / name} is missing; a latent adapter folder holds latent_config.json, "
                        "adapter_config.json and adapter_model.safetensors (from `native-retriever train-latent`)."
                    )
            verify_folder(folder, "latent-adapter")
            if check_compatible:
                config.check_compatible(llm_info(model))
            with _quiet_peft():
                peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        return cls(peft_model, tokenizer, config)

    @property
    def dimension(self) -> int:
        """Size of the embeddings (the LLM's hidden size)."""
        return int(self.model.config.hidden_size)

    @contextmanager
    def adapter_active(self) -> Iterator[None]:
        """Switch the LoRA layers on for a retrieval pass (or training), and off again afterwards."""
        self.peft_model.base_model.enable_adapter_layers()
        try:
            yield
        finally:
            self.peft_model.base_model.disable_adapter_layers()

    def unload(self):
        """Remove the LoRA layers from the agent's model (restoring the original modules); returns the model."""
        return self.peft_model.unload()

    # -- inputs ------------------------------------------------------------------------------------------------
    def conversation_ids(self, messages: Sequence) -> list[int]:
        """Token ids of a conversation in the adapter's prompt format (the shared formatter)."""
        return encode_conversation(self.tokenizer, messages, self.prompt_format).input_ids

    def document_ids(self, text: str) -> list[int]:
        """Token ids of a passage in the document format of the shared formatter."""
        return encode_document(self.tokenizer, text, self.config.document_max_tokens)

    # -- encoding ------------------------------------------------------------------------------------------------
    def states(self, sequences: Sequence[Sequence[int]], k: int | None = None) -> torch.Tensor:
        """(B, K, H) latent-step states of token sequences (gradients flow when enabled; adapter as currently set)."""
        device = next(self.model.parameters()).device
        input_ids, mask = left_pad(sequences, self.pad_id, device)
        return latent_states(self.model, input_ids, mask, check_k(k or self.config.k), self.config.temperature)

    def embed_ids(
        self,
        sequences: Sequence[Sequence[int]],
        k: int | None = None,
        batch_size: int = 8,
        show_progress: bool = False,
        desc: str = "Latent embedding",
    ) -> np.ndarray:
        """Unit vectors of token sequences, adapter on, no gradients; batched by length: (N, H) float32."""
        k = check_k(k if k is not None else self.config.k)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        vectors = np.zeros((len(sequences), self.dimension), dtype=np.float32)
        with (
            torch.inference_mode(),
            self.adapter_active(),
            tqdm(total=len(sequences), disable=not show_progress, desc=desc) as bar,
        ):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                vectors[rows] = pool(self.states([sequences[i] for i in rows], k)).cpu().numpy()
                bar.update(len(rows))
        return vectors

    def save_pretrained(self, folder: str | os.PathLike, write_extra: Callable[[Path], None] | None = None) -> None:
        """Write the peft adapter (safetensors), latent_config.json (and what ``write_extra(tmp)`` adds) atomically.

        A folder the package did not write is refused (HeadFileError) before anything is written.
        """
        with atomic_folder(folder, "latent-adapter") as tmp:
            self.peft_model.save_pretrained(str(tmp), safe_serialization=True)
            self.config.save(tmp)
            if write_extra is not None:
                write_extra(tmp)

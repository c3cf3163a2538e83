"""The latent view (LaSER): the agent LLM with a LoRA adapter embeds conversations and documents itself."""

from .config import LatentConfig
from .embedder import LatentEmbedder
from .encoder import LatentEncoder

__all__ = ["LatentConfig", "LatentEmbedder", "LatentEncoder"]

"""native-retriever: retrieval from an LLM agent's own hidden states."""

from .bm25 import Hybrid
from .conversation import PromptFormat
from .embedder import NativeEmbedder
from .heads import HeadConfig, ProjectionHead
from .index import SearchHit, VectorIndex
from .protocols import Embedder
from .teacher import Teacher

__all__ = [
    "Embedder",
    "HeadConfig",
    "Hybrid",
    "NativeEmbedder",
    "PromptFormat",
    "ProjectionHead",
    "SearchHit",
    "Teacher",
    "VectorIndex",
]
__version__ = "0.1.0"

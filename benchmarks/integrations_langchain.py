"""Per-turn retrieval latency in LangChain: generate-then-encode vs native, in the same process.

- ``generate-then-encode``: ``create_history_aware_retriever`` (langchain-classic) with SmolLM2 through
  ``ChatHuggingFace`` rewriting the question (LangChain's contextualize prompt, greedy, at most 32 new tokens), then
  all-MiniLM-L6-v2 (``HuggingFaceEmbeddings``) embedding the rewrite and searching the store. A first turn (no history)
  skips the rewrite, as that function does.
- ``native``: ``NativeRetriever(...).with_history()`` on the same SmolLM2 weights and the same store: one prefill of
  the conversation and the head, no generation, no teacher call.

Both search one ``InMemoryVectorStore`` built with ``HuggingFaceEmbeddings`` (the teacher): the store a user already
has stays as it is. Conversations: the first judged turns of a few coqa-dev stories, each turn with its real history
(earlier questions and gold answers); the corpus holds those stories' passages plus some distractors. Batch 1,
warm-up turns first, the two paths alternate turn by turn. Prints JSON: p50/p95 of wall-clock ms and of the process's
CPU ms per turn (``*_cpu``: less sensitive to other processes on a shared machine; equal to compute time with one
torch thread), and how many turns had a judged passage in the top k.

    OMP_NUM_THREADS=1 python benchmarks/integrations_langchain.py --output docs/integrations-langchain.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from langchain_classic.chains import create_history_aware_retriever
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import ChatHuggingFace, HuggingFaceEmbeddings, HuggingFacePipeline
from tqdm.auto import tqdm
from transformers import pipeline

from native_retriever.data import load_data
from native_retriever.integrations.langchain import NativeRetriever
from native_retriever.models import load_llm, resolve_teacher

# LangChain's own contextualize-question prompt (its RAG tutorial's history-aware retriever).
CONTEXTUALIZE = (
    "Given a chat history and the latest user question which might reference context in the chat history, "
    "formulate a standalone question which can be understood without the chat history. Do NOT answer the question, "
    "just reformulate it if needed and otherwise return it as is."
)


def pick_turns(data, conversations: int, turns: int) -> list[dict]:
    """The first ``turns`` judged turns of the first ``conversations`` stories."""
    stories: dict[str, list[dict]] = {}
    for query in data.queries:
        if len(stories) < conversations or query["story_id"] in stories:
            stories.setdefault(query["story_id"], []).append(query)
    return [query for story in stories.values() for query in story[:turns]]


def to_langchain(messages: list[dict]) -> list:
    return [HumanMessage(m["content"]) if m["role"] == "user" else AIMessage(m["content"]) for m in messages]


def summary(samples: list[float]) -> dict:
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "turns": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coqa-dev")
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=5, help="judged turns per conversation")
    parser.add_argument("--distractors", type=int, default=400, help="other passages in the store")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()

    data = load_data(args.data)
    turns = pick_turns(data, args.conversations, args.turns)
    stories = {q["story_id"] for q in turns}
    own = [d for d in data.corpus if d["id"].split("#")[0] in stories]
    others = [d for d in data.corpus if d["id"].split("#")[0] not in stories][: args.distractors]
    documents = [Document(id=d["id"], page_content=d["text"]) for d in own + others]

    model, tokenizer = load_llm()
    generator = pipeline(
        "text-generation", model=model, tokenizer=tokenizer, max_new_tokens=32, do_sample=False, return_full_text=False
    )
    chat = ChatHuggingFace(
        llm=HuggingFacePipeline(pipeline=generator), tokenizer=tokenizer, model_id=model.name_or_path
    )
    teacher = HuggingFaceEmbeddings(model_name=resolve_teacher(), encode_kwargs={"normalize_embeddings": True})
    store = InMemoryVectorStore(teacher)
    store.add_documents(documents)

    # before: the LLM rewrites the question, the teacher embeds the rewrite
    prompt = ChatPromptTemplate.from_messages(
        [("system", CONTEXTUALIZE), MessagesPlaceholder("chat_history"), ("human", "{input}")]
    )
    systems = {
        "generate-then-encode": create_history_aware_retriever(
            chat, store.as_retriever(search_kwargs={"k": args.k}), prompt
        ),
        # after: the conversation itself, through the same LLM's hidden states and the head
        "native": NativeRetriever.from_llm(chat, store, k=args.k).with_history(),
    }
    parts = ("all", "with_history", "all_cpu", "with_history_cpu")
    times: dict[str, dict[str, list[float]]] = {name: {part: [] for part in parts} for name in systems}
    hits = dict.fromkeys(systems, 0)
    rounds = turns[: args.warmup] + turns
    for number, query in enumerate(tqdm(rounds, desc="Turns")):
        inputs = {"input": query["question"], "chat_history": to_langchain(query["messages"][:-1])}
        order = list(systems) if number % 2 == 0 else list(reversed(systems))
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            docs = systems[name].invoke(inputs)
            elapsed, cpu = 1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start)
            if number >= args.warmup:
                for part in ("all", "with_history") if inputs["chat_history"] else ("all",):
                    times[name][part].append(elapsed)
                    times[name][f"{part}_cpu"].append(cpu)
                hits[name] += any(d.id in data.qrels[query["id"]] for d in docs)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU, torch {torch.__version__}",
        "data": data.name,
        "conversations": len(stories),
        "turns": len(turns),
        "store_passages": len(documents),
        "k": args.k,
        "latency": {name: {part: summary(v) for part, v in parts.items()} for name, parts in times.items()},
        f"turns_with_a_judged_passage_in_top_{args.k}": hits,
    }
    gte, native = (report["latency"][n]["with_history"]["p50_ms"] for n in systems)
    report["p50_ratio_with_history"] = round(gte / native, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()

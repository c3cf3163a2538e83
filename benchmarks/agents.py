"""Whole agent turns in LangChain 1.x and LlamaIndex 0.14: native retrieval in the model call vs generate-then-encode.

Per framework, the same agent on the same SmolLM2 weights answers multi-turn coqa-dev conversations (the stories'
real questions in order; the history is the agent's own answers, kept by the framework: a LangGraph checkpointer
thread, a LlamaIndex ``Memory`` session), every answer exactly ``--answer-tokens`` tokens long (greedy, end token
suppressed until then) so both paths decode the same amount:

- ``native``: the chat model is the retrieval (LangChain ``NativeChatModel`` in ``create_agent``; LlamaIndex
  ``NativeLLM`` in ``FunctionAgent``): one prefill of the conversation gives the head's vector and the KV cache, the
  passages are appended on it, the answer continues; the thread's cache is kept between its turns, so a turn
  prefills only the previous answer, the new question and the passages.
- ``classic``: the same agent and chat model without an index, with a generate-then-encode retrieval in front of the
  model call (a ``create_agent`` middleware; a ``Memory`` block): the same LLM rewrites the conversation into a
  standalone query (at most 32 tokens, greedy), the teacher encodes it, the index is searched, and the passages go in
  the system message, so the prompt is prefilled anew every turn.

Timed per turn (wall clock): the whole turn (``agent.invoke`` / ``agent.run``) and its retrieval part (native: the
head and the search, what retrieval adds to a prefill the answer needs anyway; classic: rewrite, teacher and
search). Tokens: ``prefill_tokens_ratio`` is the tokens the turn ran through the LLM before decoding (the rewrite
prompt too, for classic) over the tokens of its answer prompt; 1.0 means each prompt token once, below 1.0 means the
kept cache saved part of the prompt. Paths alternate turn by turn; warm-up turns are not counted.

    OMP_NUM_THREADS=2 python benchmarks/agents.py --output docs/agents.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from langchain.agents import create_agent
from langgraph.checkpoint.memory import InMemorySaver
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.memory import Memory
from llama_index.core.memory.memory import BaseMemoryBlock
from tqdm.auto import tqdm

from native_retriever import NativeEmbedder, VectorIndex
from native_retriever.agent import numbered_passages
from native_retriever.conversation import rewrite_messages, tokenize_chat
from native_retriever.data import load_data
from native_retriever.generation import generate_query
from native_retriever.integrations.langchain import to_chat_messages
from native_retriever.integrations.langchain_agents import NativeRetrievalMiddleware
from native_retriever.integrations.langchain_chat import NativeChatModel
from native_retriever.integrations.llama_index import to_messages
from native_retriever.integrations.llama_index_llm import NativeLLM

SYSTEM = "Answer the user's last question in one short sentence, using the passages."


def pick_conversations(data, conversations: int, turns: int) -> list[list[dict]]:
    """The first ``turns`` judged queries of the first ``conversations`` stories with at least that many."""
    stories: dict[str, list[dict]] = {}
    for query in data.queries:
        stories.setdefault(query["story_id"], []).append(query)
    return [queries[:turns] for queries in stories.values() if len(queries) >= turns][:conversations]


class Classic:
    """Generate-then-encode on ``embedder``'s LLM and teacher: rewrite, encode, search. Records each step's time."""

    def __init__(self, embedder: NativeEmbedder, index: VectorIndex, k: int) -> None:
        self.embedder, self.index, self.k = embedder, index, k
        self.last: dict[str, Any] = {}

    def search(self, messages: list[dict]) -> list:
        started = time.perf_counter()
        query = generate_query(self.embedder.model, self.embedder.tokenizer, messages, max_new_tokens=32)
        vector = self.embedder.teacher.encode([query or messages[-1]["content"]])
        hits = self.index.search(vector, k=self.k)[0]
        rewrite_tokens = len(tokenize_chat(self.embedder.tokenizer, rewrite_messages(messages)))
        self.last = {
            "retrieval_ms": 1000 * (time.perf_counter() - started),
            "rewrite_tokens": rewrite_tokens,
            "ids": [h.id for h in hits],
        }
        return hits


class ClassicMiddleware(NativeRetrievalMiddleware):
    """``NativeRetrievalMiddleware``'s place for passages (the system message), fed by generate-then-encode."""

    def __init__(self, classic: Classic) -> None:  # noqa: D107
        super(NativeRetrievalMiddleware, self).__init__()
        self.classic, self.prompt = classic, "Passages retrieved for the user's last message:"

    def before_model(self, state, runtime):  # noqa: D102
        if self._question(state["messages"]) is None:
            return None
        hits = self.classic.search(to_chat_messages(state["messages"]))
        return {"retrieved_documents": [{"id": h.id, "page_content": h.text, "metadata": {}} for h in hits]}


class ClassicBlock(BaseMemoryBlock[str]):
    """A ``Memory`` block with generate-then-encode passages for the conversation so far."""

    classic: Any = None

    async def _aget(self, messages=None, **kwargs) -> str:
        conversation = to_messages(messages or [])
        if not conversation or conversation[-1]["role"] != "user":
            return ""
        return numbered_passages(h.text for h in self.classic.search(conversation))

    async def _aput(self, messages) -> None:
        return None


def percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(samples, [50, 95])
    return round(float(p50), 1), round(float(p95), 1)


def langchain_paths(embedder, index, classic, args):
    native_model = NativeChatModel(
        embedder=embedder, index=index, k=args.k, max_new_tokens=args.answer_tokens, min_new_tokens=args.answer_tokens
    )
    plain_model = NativeChatModel(
        embedder=embedder, max_new_tokens=args.answer_tokens, min_new_tokens=args.answer_tokens
    )
    fresh_model = NativeChatModel(
        embedder=embedder,
        index=index,
        k=args.k,
        max_new_tokens=args.answer_tokens,
        min_new_tokens=args.answer_tokens,
        max_conversations=0,
    )
    native = create_agent(native_model, system_prompt=None, checkpointer=InMemorySaver())
    fresh = create_agent(fresh_model, system_prompt=None, checkpointer=InMemorySaver())
    classic_agent = create_agent(
        plain_model, system_prompt=SYSTEM, middleware=[ClassicMiddleware(classic)], checkpointer=InMemorySaver()
    )

    def run_native(thread: str, question: str, agent=native) -> dict:
        state = agent.invoke(
            {"messages": [{"role": "user", "content": question}]}, {"configurable": {"thread_id": thread}}
        )
        meta, usage = state["messages"][-1].response_metadata, state["messages"][-1].usage_metadata
        timings = meta["timings_ms"]
        return {
            "retrieval_ms": timings["head"] + timings["search"],
            "prefilled": meta["prefilled_tokens"],
            "prompt": usage["input_tokens"],
            "ids": [d["id"] for d in meta["retrieved_documents"]],
        }

    def run_fresh(thread: str, question: str) -> dict:
        return run_native(thread, question, fresh)

    def run_classic(thread: str, question: str) -> dict:
        state = classic_agent.invoke(
            {"messages": [{"role": "user", "content": question}]}, {"configurable": {"thread_id": thread}}
        )
        meta, usage = state["messages"][-1].response_metadata, state["messages"][-1].usage_metadata
        return {
            "retrieval_ms": classic.last["retrieval_ms"],
            "prefilled": meta["prefilled_tokens"] + classic.last["rewrite_tokens"],
            "prompt": usage["input_tokens"],
            "ids": classic.last["ids"],
        }

    return {"native": run_native, "native_no_kept_cache": run_fresh, "classic": run_classic}


def llama_index_paths(embedder, index, classic, args):
    native_llm = NativeLLM(
        embedder, index=index, k=args.k, max_new_tokens=args.answer_tokens, min_new_tokens=args.answer_tokens
    )
    plain_llm = NativeLLM(embedder, max_new_tokens=args.answer_tokens, min_new_tokens=args.answer_tokens)
    fresh_llm = NativeLLM(
        embedder,
        index=index,
        k=args.k,
        max_new_tokens=args.answer_tokens,
        min_new_tokens=args.answer_tokens,
        max_conversations=0,
    )
    native = FunctionAgent(llm=native_llm, tools=[], system_prompt=None)
    fresh = FunctionAgent(llm=fresh_llm, tools=[], system_prompt=None)
    classic_agent = FunctionAgent(llm=plain_llm, tools=[], system_prompt=SYSTEM)
    memories: dict[str, Memory] = {}

    def memory(path: str, thread: str) -> Memory:
        key = f"{path}:{thread}"
        if key not in memories:
            blocks = [ClassicBlock(name="passages", classic=classic)] if path == "classic" else []
            memories[key] = Memory.from_defaults(session_id=key, memory_blocks=blocks, token_limit=100_000)
        return memories[key]

    async def run(agent, question, mem):
        return await agent.run(question, memory=mem)

    def run_native(thread: str, question: str, path: str = "native") -> dict:
        agent, llm = (native, native_llm) if path == "native" else (fresh, fresh_llm)
        asyncio.run(run(agent, question, memory(path, thread)))
        call = llm.last_call
        return {
            "retrieval_ms": call["timings_ms"]["head"] + call["timings_ms"]["search"],
            "prefilled": call["prefilled_tokens"],
            "prompt": call["prompt_tokens"],
            "ids": [d["id"] for d in call["retrieved_documents"]],
        }

    def run_classic(thread: str, question: str) -> dict:
        asyncio.run(run(classic_agent, question, memory("classic", thread)))
        call = plain_llm.last_call
        return {
            "retrieval_ms": classic.last["retrieval_ms"],
            "prefilled": call["prefilled_tokens"] + classic.last["rewrite_tokens"],
            "prompt": call["prompt_tokens"],
            "ids": classic.last["ids"],
        }

    return {
        "native": run_native,
        "native_no_kept_cache": lambda thread, question: run_native(thread, question, "fresh"),
        "classic": run_classic,
    }


def measure(name: str, paths: dict, conversations: list[list[dict]], qrels: dict, warmup: int) -> tuple[dict, list]:
    """Each path's turns, the paths in a rotating order turn by turn; the first conversation's first ``warmup``
    questions run once more before, uncounted."""
    samples = {path: {"turn": [], "retrieval": [], "share": [], "ratio": [], "hit": []} for path in paths}
    retrieved: list[list[str]] = []
    rounds = [(f"warmup{c}", q, True) for c, qs in enumerate(conversations[:1]) for q in qs[:warmup]]
    rounds += [(f"c{c}", q, False) for c, qs in enumerate(conversations) for q in qs]
    for number, (thread, query, is_warmup) in enumerate(tqdm(rounds, desc=name)):
        names = list(paths)
        order = names[number % len(names) :] + names[: number % len(names)]
        for path in order:
            started = time.perf_counter()
            out = paths[path](thread, query["question"])
            turn_ms = 1000 * (time.perf_counter() - started)
            if is_warmup:
                continue
            s = samples[path]
            s["turn"].append(turn_ms)
            s["retrieval"].append(out["retrieval_ms"])
            s["share"].append(out["retrieval_ms"] / turn_ms)
            s["ratio"].append(out["prefilled"] / out["prompt"])
            s["hit"].append(any(i in qrels.get(query["id"], ()) for i in out["ids"]))
            if path == "native":
                retrieved.append(out["ids"])
    report: dict[str, Any] = {}
    for path, s in samples.items():
        report[f"{path}_turn_ms_p50"], report[f"{path}_turn_ms_p95"] = percentiles(s["turn"])
        report[f"{path}_retrieval_ms_p50"], report[f"{path}_retrieval_ms_p95"] = percentiles(s["retrieval"])
        report[f"{path}_retrieval_share"] = round(float(np.median(s["share"])), 4)
        report[f"{path}_prefill_tokens_ratio"] = round(float(np.mean(s["ratio"])), 3)
        report[f"{path}_turns_with_a_judged_passage_retrieved"] = int(sum(s["hit"]))
    report["prefill_tokens_ratio"] = report["native_prefill_tokens_ratio"]
    report["native_speedup_p50"] = round(report["classic_turn_ms_p50"] / report["native_turn_ms_p50"], 2)
    report["native_no_kept_cache_speedup_p50"] = round(
        report["classic_turn_ms_p50"] / report["native_no_kept_cache_turn_ms_p50"], 2
    )
    report["turns"] = len(samples["native"]["turn"])
    return report, retrieved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coqa-dev")
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--turns", type=int, default=5, help="questions per conversation")
    parser.add_argument("--distractors", type=int, default=400, help="other passages in the index")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="workflows")  # llama-index-workflows' own pydantic deprecations

    data = load_data(args.data)
    conversations = pick_conversations(data, args.conversations, args.turns)
    stories = {q["story_id"] for c in conversations for q in c}
    own = [d for d in data.corpus if d["id"].split("#")[0] in stories]
    others = [d for d in data.corpus if d["id"].split("#")[0] not in stories][: args.distractors]
    documents = own + others
    embedder = NativeEmbedder.from_pretrained()
    index = VectorIndex(embedder.dimension)
    texts = [d["text"] for d in documents]
    index.add([d["id"] for d in documents], embedder.embed_documents(texts), texts)
    classic = Classic(embedder, index, args.k)

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU, torch {torch.__version__}; "
        "nothing else running",
        "llm": embedder.model.config.name_or_path,
        "data": data.name,
        "conversations": len(conversations),
        "questions_per_conversation": args.turns,
        "index_passages": len(documents),
        "k": args.k,
        "answer_tokens": args.answer_tokens,
    }
    retrieved = {}
    for name, build in (("langchain", langchain_paths), ("llama_index", llama_index_paths)):
        paths = build(embedder, index, classic, args)
        report[name], retrieved[name] = measure(name, paths, conversations, data.qrels, args.warmup)
    report["same_passages_in_both_frameworks"] = retrieved["langchain"] == retrieved["llama_index"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()

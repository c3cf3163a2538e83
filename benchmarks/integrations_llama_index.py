"""Per-turn retrieval latency in LlamaIndex: generate-then-encode vs native, both in one process on the same index.

- before: LlamaIndex's ``CondensePlusContextChatEngine`` as users run it: the agent LLM (SmolLM2-135M-Instruct as a
  ``HuggingFaceLLM``) condenses the chat into a standalone question with LlamaIndex's default condense prompt, and
  the teacher (all-MiniLM-L6-v2, wrapped as a plain ``BaseEmbedding`` like ``HuggingFaceEmbedding``) encodes it for a
  ``VectorStoreIndex`` retriever.
- after: the same engine with ``skip_condense=True`` and ``NativeRetriever``, which embeds the chat memory plus the
  question with the same LLM's hidden states and the shipped head, over the same ``VectorStoreIndex``.

Each turn is timed through the engine's own retrieval step (``_run_c3``: memory, condense, retrieve; no answer is
generated), batch 1, after warm-up, the two systems alternating turn by turn. LlamaIndex instrumentation events split
a turn into condense / embed / search. Recall@k on the same turns is printed beside (a small sample).

    OMP_NUM_THREADS=1 python benchmarks/integrations_llama_index.py --data ../shared/data/coqa-dev --stories 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict

import numpy as np
import torch
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.schema import TextNode
from llama_index.llms.huggingface import HuggingFaceLLM

from native_retriever.data import load_data
from native_retriever.integrations.llama_index import NativeEmbedding, NativeRetriever
from native_retriever.models import load_llm
from native_retriever.states import pad_token_id
from native_retriever.teacher import Teacher


class TeacherEmbedding(BaseEmbedding):
    """The teacher as a plain LlamaIndex embedding (what ``HuggingFaceEmbedding`` would be without a model hub)."""

    _teacher: Teacher = PrivateAttr()

    def __init__(self, teacher: Teacher, **kwargs) -> None:
        super().__init__(model_name=teacher.info.get("name", "teacher"), **kwargs)
        self._teacher = teacher

    @classmethod
    def class_name(cls) -> str:
        return "TeacherEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._teacher.encode([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._teacher.encode([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._teacher.encode(texts).tolist()


class Steps(BaseEventHandler):
    """Timestamps of the instrumentation events of one turn."""

    marks: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Steps"

    def handle(self, event, **kwargs) -> None:
        self.marks.append((event.class_name(), time.perf_counter()))

    def split(self, start: float, end: float) -> dict[str, float]:
        """condense: turn start to the first retrieval; embed: embedding start to end; search: the rest."""
        first = dict(reversed(self.marks))  # the first time each event was seen
        last = dict(self.marks)
        retrieval = first.get("RetrievalStartEvent", start)
        embed = last.get("EmbeddingEndEvent", retrieval) - first.get("EmbeddingStartEvent", retrieval)
        return {
            "condense": 1000 * (retrieval - start),
            "embed": 1000 * embed,
            "search": 1000 * (end - retrieval - embed),
            "total": 1000 * (end - start),
        }


def history_of(messages: list[dict]) -> list[ChatMessage]:
    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages[:-1]]


def percentiles(values: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coqa-dev")
    parser.add_argument("--stories", type=int, default=3, help="conversations (CoQA stories) to replay")
    parser.add_argument("--max-turns", type=int, default=8, help="turns per conversation")
    parser.add_argument("--passages", type=int, default=500, help="index size (the stories' passages + others)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_data(args.data)
    stories: dict[str, list[dict]] = defaultdict(list)
    for query in data.queries:
        if len(stories) < args.stories or query["story_id"] in stories:
            stories[query["story_id"]].append(query)
    turns = [q for queries in stories.values() for q in queries[: args.max_turns]]
    own = [d for d in data.corpus if d["id"].split("#")[0] in stories]
    others = [d for d in data.corpus if d["id"].split("#")[0] not in stories][: max(0, args.passages - len(own))]

    model, tokenizer = load_llm()
    teacher = Teacher.from_pretrained()
    llm = HuggingFaceLLM(
        model=model,
        tokenizer=tokenizer,
        model_name=model.name_or_path,
        tokenizer_name=model.name_or_path,
        context_window=2048,
        max_new_tokens=32,
        is_chat_model=True,
        generate_kwargs={"do_sample": False, "pad_token_id": pad_token_id(tokenizer)},
    )
    teacher_embedding = TeacherEmbedding(teacher, embed_batch_size=64)
    nodes = [TextNode(id_=d["id"], text=d["text"]) for d in own + others]
    index = VectorStoreIndex(nodes, embed_model=teacher_embedding, show_progress=True)

    before = CondensePlusContextChatEngine.from_defaults(
        retriever=index.as_retriever(similarity_top_k=args.k), llm=llm, memory=ChatMemoryBuffer.from_defaults()
    )
    native = NativeRetriever(index, NativeEmbedding(llm=llm, teacher=teacher), similarity_top_k=args.k)
    after = native.as_chat_engine(llm=llm, memory=ChatMemoryBuffer.from_defaults())

    steps = Steps(marks=[])
    get_dispatcher().add_event_handler(steps)
    times = {"before": defaultdict(list), "after": defaultdict(list)}
    hits = {"before": 0, "after": 0}
    for number, query in enumerate(turns[: args.warmup] + turns):
        for name, engine in (("before", before), ("after", after)):
            steps.marks.clear()
            start = time.perf_counter()
            _, _, found = engine._run_c3(query["messages"][-1]["content"], chat_history=history_of(query["messages"]))
            end = time.perf_counter()
            if number < args.warmup:
                continue
            for step, ms in steps.split(start, end).items():
                times[name][step].append(ms)
            hits[name] += any(n.node.node_id in data.qrels[query["id"]] for n in found)

    cpu = platform.processor() or platform.machine()
    print(
        f"\n{len(turns)} turns of {len(stories)} coqa-dev conversations, index of {len(nodes)} passages, k={args.k}; "
        f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}\n"
    )
    print("| per turn (ms) | condense p50 | embed p50 | search p50 | total p50 | total p95 | recall@k |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("before", "generate-then-encode"), ("after", "native (NativeRetriever)")):
        t = times[name]
        p50, p95 = percentiles(t["total"])
        print(
            f"| {label} | {np.median(t['condense']):.0f} | {np.median(t['embed']):.1f} | {np.median(t['search']):.1f} "
            f"| {p50:.0f} | {p95:.0f} | {hits[name] / len(turns):.2f} |"
        )
    ratio = np.median(times["before"]["total"]) / np.median(times["after"]["total"])
    print(f"\nnative is {ratio:.1f}x faster per turn (p50 ratio)")
    summary = {name: {step: percentiles(v) for step, v in t.items()} for name, t in times.items()}
    print(json.dumps({"turns": len(turns), "p50_p95_ms": summary, "hits": hits}))


if __name__ == "__main__":
    main()

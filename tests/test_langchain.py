"""LangChain integration: standard suites from langchain-tests, parity with NativeEmbedder + VectorIndex, chat history,
weight sharing, thread/async safety, bad input, the missing-extra error and the example (slow)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TOPICS, conversations, passage_text
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from native_retriever import VectorIndex
from native_retriever.bm25 import DEFAULT_HYBRID
from native_retriever.conversation import lexical_queries
from native_retriever.errors import ConversationError, DimensionMismatchError
from native_retriever.integrations.langchain import (
    NativeEmbeddings,
    NativeRetriever,
    bind_conversation,
    to_chat_messages,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# langchain-tests has async tests; pytest-asyncio runs them (strict mode), its note on the sync ones is expected.
ASYNC_SUITE = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test .* is marked with '@pytest.mark.asyncio'"),
]
MULTI_TURN = [(qid, messages) for qid, messages, _ in conversations() if len(messages) > 1][:6]


def as_langchain(messages: list[dict]) -> list:
    kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


@pytest.fixture(scope="module")
def embeddings(embedder) -> NativeEmbeddings:
    return NativeEmbeddings(embedder)


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    return [
        Document(id=f"d{i}", page_content=passage_text(topic), metadata={"title": f"{topic[0]} {topic[1]}"})
        for i, topic in enumerate(TOPICS)
    ]


@pytest.fixture(scope="module")
def index(embedder, corpus) -> VectorIndex:
    index = VectorIndex(embedder.dimension)
    texts = [d.page_content for d in corpus]
    index.add([d.id for d in corpus], embedder.embed_documents(texts), texts, [d.metadata for d in corpus])
    return index


@pytest.fixture(scope="module")
def memory_store(embeddings, corpus) -> InMemoryVectorStore:
    store = InMemoryVectorStore(embeddings)
    store.add_documents(corpus)
    return store


# -- LangChain's standard suites ---------------------------------------------------------------------------------
class NativeEmbeddingsSuite:
    """What LangChain's embeddings suites need: the class and its parameters (the module's embedder)."""

    @pytest.fixture(autouse=True)
    def _models(self, embedder):
        self.params = {"embedder": embedder}

    @property
    def embeddings_class(self) -> type[NativeEmbeddings]:
        return NativeEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return self.params


class TestNativeEmbeddingsUnit(NativeEmbeddingsSuite, EmbeddingsUnitTests):
    pass


class TestNativeEmbeddingsIntegration(NativeEmbeddingsSuite, EmbeddingsIntegrationTests):
    pytestmark = ASYNC_SUITE


class NativeRetrieverSuite(RetrieversIntegrationTests):
    """LangChain's retriever suite over ``self.params`` (set by each subclass's fixture)."""

    pytestmark = ASYNC_SUITE
    query = ""

    @property
    def retriever_constructor(self) -> type[NativeRetriever]:
        return NativeRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return self.params

    @property
    def retriever_query_example(self) -> str:
        return self.query


class TestNativeRetrieverOverVectorIndex(NativeRetrieverSuite):
    query = "What can I see at the Zorblat festival?"

    @pytest.fixture(autouse=True)
    def _models(self, embeddings, index):
        self.params = {"embeddings": embeddings, "store": index}


class TestNativeRetrieverOverInMemoryVectorStore(NativeRetrieverSuite):
    query = "Who built the Mirravel river?"

    @pytest.fixture(autouse=True)
    def _models(self, embedder, memory_store):
        self.params = {"embeddings": embedder, "store": memory_store}  # a NativeEmbedder is wrapped


# -- same results as the core API --------------------------------------------------------------------------------
def direct(embedder, index, messages, k=5, hybrid=DEFAULT_HYBRID):
    """The core API's hits for the conversation: the head's vector fused with BM25 on its last user messages."""
    texts = [lexical_queries(messages)] if hybrid else None
    return index.search(embedder.embed_conversation(messages), k=k, texts=texts, hybrid=hybrid)[0]


@pytest.mark.parametrize("qid,messages", MULTI_TURN)
def test_same_ids_and_order_as_the_core_api(embedder, embeddings, index, memory_store, qid, messages):
    expected = direct(embedder, index, messages)
    history, question = as_langchain(messages[:-1]), messages[-1]["content"]
    retriever = NativeRetriever(embeddings=embeddings, store=index, k=5)
    docs = retriever.invoke(question, chat_history=history)
    assert [d.id for d in docs] == [h.id for h in expected]
    np.testing.assert_allclose([d.metadata["score"] for d in docs], [h.score for h in expected], atol=1e-5)
    dense = NativeRetriever(embeddings=embeddings, store=index, k=5, hybrid=None).invoke(question, chat_history=history)
    dense_ids = [h.id for h in direct(embedder, index, messages, hybrid=None)]
    assert [d.id for d in dense] == dense_ids
    assert docs[0].page_content == expected[0].text and docs[0].metadata["title"] == expected[0].metadata["title"]
    # the runnable for create_retrieval_chain, the bound conversation and a LangChain VectorStore (searched by the
    # vector alone) agree
    runnable = retriever.with_history()
    assert [d.id for d in runnable.invoke({"input": question, "chat_history": history})] == [h.id for h in expected]
    over_store = NativeRetriever(embeddings=embeddings, store=memory_store, k=5).invoke(question, chat_history=history)
    assert [d.id for d in over_store] == dense_ids
    with embeddings.conversation(history):
        assert [d.id for d in memory_store.similarity_search(question, k=5)] == dense_ids
        assert [d.id for d in retriever.invoke(question)] == [h.id for h in expected]


def test_the_conversation_changes_the_query_vector(embeddings):
    history = [HumanMessage("Tell me about the Mirravel river."), AIMessage("It has purple reeds.")]
    bare = embeddings.embed_query("When should I visit?")
    with embeddings.conversation(history) as bound:
        in_context = embeddings.embed_query("When should I visit?")
    assert bound == [
        {"role": "user", "content": "Tell me about the Mirravel river."},
        {"role": "assistant", "content": "It has purple reeds."},
    ]
    assert not np.allclose(bare, in_context, atol=1e-3)
    assert embeddings.embed_query("When should I visit?") == bare  # the binding ended with the block


def test_bound_question_is_not_repeated(embeddings, embedder):
    messages = [{"role": "user", "content": "Who built the Tessaline bridge?"}]
    with bind_conversation(messages):
        vector = embeddings.embed_query("Who built the Tessaline bridge?")
    np.testing.assert_allclose(vector, embedder.embed_conversation(messages), atol=1e-6)


def test_create_retrieval_chain_uses_the_native_runnable(embeddings, embedder, index):
    from langchain_classic.chains import create_retrieval_chain

    qid, messages = MULTI_TURN[0]
    answer = RunnableLambda(lambda inputs: f"{len(inputs['context'])} passages for {inputs['input']}")
    chain = create_retrieval_chain(NativeRetriever(embeddings=embeddings, store=index, k=3).with_history(), answer)
    out = chain.invoke({"input": messages[-1]["content"], "chat_history": as_langchain(messages[:-1])})
    assert [d.id for d in out["context"]] == [h.id for h in direct(embedder, index, messages, k=3)]
    assert out["answer"] == f"3 passages for {messages[-1]['content']}"


def test_callbacks_see_the_retriever_run(embeddings, index):
    from langchain_core.callbacks import BaseCallbackHandler

    class Seen(BaseCallbackHandler):
        def __init__(self):
            self.events = []

        def on_retriever_start(self, serialized, query, **kwargs):
            self.events.append(("start", query))

        def on_retriever_end(self, documents, **kwargs):
            self.events.append(("end", len(documents)))

    seen = Seen()
    runnable = NativeRetriever(embeddings=embeddings, store=index, k=2).with_history()
    runnable.invoke(
        {"input": "Who built it?", "chat_history": [("human", "Tell me about Zorblat.")]}, {"callbacks": [seen]}
    )
    assert seen.events == [("start", "Who built it?"), ("end", 2)]


def test_a_latent_embedder_works_unchanged(make_tiny_llm, tiny_tokenizer, corpus):
    from native_retriever.latent import LatentConfig, LatentEmbedder, LatentEncoder

    model = make_tiny_llm(seed=2)  # its own model: the adapter is injected into it
    encoder = LatentEncoder.create(model, tiny_tokenizer, LatentConfig(k=2, lora_r=4, lora_alpha=8))
    latent = LatentEmbedder(model, tiny_tokenizer, encoder)
    embeddings = NativeEmbeddings(latent)
    store = InMemoryVectorStore.from_documents(corpus, embeddings)  # documents through the latent encoder
    index = VectorIndex(latent.dimension)
    texts = [d.page_content for d in corpus]
    index.add([d.id for d in corpus], latent.embed_documents(texts), texts)
    _, messages = MULTI_TURN[1]
    expected = [h.id for h in direct(latent, index, messages, hybrid=None)]
    history, question = as_langchain(messages[:-1]), messages[-1]["content"]
    for source in (index, store):  # by the vector alone, as the store searches
        retriever = NativeRetriever(embeddings=embeddings, store=source, k=5, hybrid=None)
        docs = retriever.invoke(question, chat_history=history)
        assert [d.id for d in docs] == expected


def test_cache_backed_embeddings_cache_documents_and_keep_the_conversation(embeddings, corpus):
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.stores import InMemoryByteStore

    byte_store = InMemoryByteStore()
    cached = CacheBackedEmbeddings.from_bytes_store(embeddings, byte_store, namespace="native", key_encoder="sha256")
    texts = [d.page_content for d in corpus[:3]]
    assert cached.embed_documents(texts) == embeddings.embed_documents(texts)
    assert len(list(byte_store.yield_keys())) == 3
    history = [HumanMessage("Tell me about the Mirravel river."), AIMessage("It has purple reeds.")]
    with embeddings.conversation(history):  # query vectors are not cached (LangChain's default): the binding counts
        assert cached.embed_query("When should I visit?") == embeddings.embed_query("When should I visit?")
    assert cached.embed_query("When should I visit?") != embeddings.embed_conversation(history, "When should I visit?")


# -- messages ---------------------------------------------------------------------------------------------------
# InMemoryChatMessageHistory is deprecated (LangChain 1.6.4) but still what legacy RunnableWithMessageHistory code
# hands over: it must keep converting, and its deprecation notice is LangChain's, not ours
@pytest.mark.filterwarnings("ignore:The class `InMemoryChatMessageHistory` was deprecated")
def test_message_forms_convert_to_the_same_conversation(embeddings):
    want = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about the Zorblat festival."},
        {"role": "assistant", "content": "It has paper lanterns."},
    ]
    forms = [
        [SystemMessage("Be brief."), HumanMessage(want[1]["content"]), AIMessage("It has paper lanterns.")],
        [("system", "Be brief."), ("human", "Tell me about the Zorblat festival."), ("ai", "It has paper lanterns.")],
        want,
        [
            SystemMessage("Be brief."),
            HumanMessage([{"type": "text", "text": "Tell me about the Zorblat festival."}]),
            AIMessage("", tool_calls=[{"name": "search", "args": {}, "id": "1"}]),
            ToolMessage("tool output", tool_call_id="1"),
            AIMessage("It has paper lanterns."),
        ],
    ]
    from langchain_core.chat_history import InMemoryChatMessageHistory

    forms.append(InMemoryChatMessageHistory(messages=forms[0]))  # what RunnableWithMessageHistory keeps
    for form in forms:
        assert to_chat_messages(form) == want
    vectors = [embeddings.embed_conversation(form, "Where is it?") for form in forms]
    assert all(v == vectors[0] for v in vectors)


# -- sharing the agent's weights --------------------------------------------------------------------------------
def test_shares_the_weights_of_chat_hugging_face(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, index):
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import pipeline

    generator = pipeline("text-generation", model=tiny_llm, tokenizer=tiny_tokenizer, max_new_tokens=4)
    chat = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=generator), tokenizer=tiny_tokenizer, model_id="tiny")
    head = tiny_head_factory("attention")
    for llm in (chat, chat.llm):
        retriever = NativeRetriever.from_llm(llm, index, head=head, teacher=teacher, k=2)
        model = retriever.embeddings.embedder.model
        assert model is tiny_llm and retriever.embeddings.embedder.tokenizer is tiny_tokenizer
        pointers = [p.data_ptr() for p in chat.llm.pipeline.model.parameters()]
        assert [p.data_ptr() for p in model.parameters()] == pointers
        assert len(retriever.invoke("What can I see at the Zorblat festival?")) == 2
    with pytest.raises(TypeError, match="local transformers"):
        NativeEmbeddings.from_llm(DeterministicFakeEmbedding(size=4))


# -- threads and asyncio ----------------------------------------------------------------------------------------
def test_threads_and_tasks_give_the_serial_results(embeddings, index, memory_store):
    retriever = NativeRetriever(embeddings=embeddings, store=index, k=5)
    jobs = [(as_langchain(m[:-1]), m[-1]["content"]) for _, m in MULTI_TURN] * 2
    serial = [[d.id for d in retriever.invoke(q, chat_history=h)] for h, q in jobs]
    assert len({tuple(ids) for ids in serial}) > 1  # the jobs really differ

    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: [d.id for d in retriever.invoke(job[1], chat_history=job[0])], jobs))
    assert threaded == serial

    async def bound(history, question):
        with embeddings.conversation(history):  # each task binds its own conversation
            return [d.id for d in await memory_store.asimilarity_search(question, k=5)]

    async def run_all():
        invoked = asyncio.gather(*(retriever.ainvoke(q, chat_history=h) for h, q in jobs))
        return [[d.id for d in docs] for docs in await invoked], await asyncio.gather(*(bound(h, q) for h, q in jobs))

    from_tasks, from_bound_tasks = asyncio.run(run_all())
    dense = NativeRetriever(embeddings=embeddings, store=index, k=5, hybrid=None)  # as the store searches
    assert from_tasks == serial
    assert from_bound_tasks == [[d.id for d in dense.invoke(q, chat_history=h)] for h, q in jobs]


def test_async_embedding_does_not_block_the_event_loop(embedder):
    class Gated:
        """Embeds only once the event loop has run another coroutine (fails if the loop is blocked)."""

        def __init__(self):
            self.open = threading.Event()
            self.dimension = embedder.dimension

        def embed_conversation(self, messages):
            assert self.open.wait(10), "the event loop was blocked while embedding"
            return embedder.embed_conversation(messages)

        def embed_query(self, text):
            assert self.open.wait(10), "the event loop was blocked while embedding"
            return embedder.embed_query(text)

        def embed_documents(self, texts):
            assert self.open.wait(10), "the event loop was blocked while embedding"
            return embedder.embed_documents(texts)

        def embed_conversations(self, conversations):  # the Embedder protocol's batch call (not used here)
            return embedder.embed_conversations(conversations)

    gated = Gated()
    gated_embeddings = NativeEmbeddings(gated)

    async def main():
        history = [HumanMessage("Tell me about the Zorblat festival."), AIMessage("It is in spring.")]
        with gated_embeddings.conversation(history):
            query = asyncio.create_task(gated_embeddings.aembed_query("Where is it?"))
            documents = asyncio.create_task(gated_embeddings.aembed_documents(["The Zorblat festival."]))
            await asyncio.sleep(0.05)
            gated.open.set()
            return await query, await documents

    query, documents = asyncio.run(main())
    expected = embedder.embed_conversation(
        [
            *to_chat_messages([("human", "Tell me about the Zorblat festival."), ("ai", "It is in spring.")]),
            {"role": "user", "content": "Where is it?"},
        ]
    )
    np.testing.assert_allclose(query, expected, atol=1e-6)  # the binding reached the worker thread
    assert len(documents) == 1 and len(documents[0]) == 384


# -- bad input --------------------------------------------------------------------------------------------------
def test_empty_history_and_question(embeddings, index):
    retriever = NativeRetriever(embeddings=embeddings, store=index)
    runnable = retriever.with_history()
    with pytest.raises(ConversationError, match="question is empty and the chat history is empty"):
        runnable.invoke({"input": "", "chat_history": []})
    with pytest.raises(ConversationError, match="question is empty"):
        retriever.invoke("   ", chat_history=[HumanMessage("Tell me about Zorblat.")])
    with pytest.raises(ConversationError, match="question is empty"):
        embeddings.embed_query("")
    with pytest.raises(ConversationError, match="'input'"):
        runnable.invoke({"question": "Who built it?", "chat_history": []})
    with pytest.raises(ConversationError, match="list of messages, not a str"):
        retriever.invoke("Who built it?", chat_history="Tell me about Zorblat.")
    with pytest.raises(ConversationError, match="role 'robot'"):
        retriever.invoke("Who built it?", chat_history=[("robot", "beep")])
    # an empty history is a first turn: the question alone
    assert [d.id for d in runnable.invoke({"input": "Who built it?", "chat_history": []})] == [
        d.id for d in retriever.invoke("Who built it?")
    ]


def test_llama_index_messages_name_the_langchain_types(embeddings, index):
    from llama_index.core.llms import ChatMessage

    history = [ChatMessage(role="user", content="Tell me about Zorblat."), ChatMessage(role="assistant", content="Ok.")]
    retriever = NativeRetriever(embeddings=embeddings, store=index)
    for call in (
        lambda: retriever.invoke("Who built it?", chat_history=history),
        lambda: embeddings.conversation(history).__enter__(),
    ):
        with pytest.raises(ConversationError, match=r"LlamaIndex ChatMessage.*HumanMessage.*integrations\.llama_index"):
            call()


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_k_must_be_positive(embeddings, index, k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        NativeRetriever(embeddings=embeddings, store=index, k=k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        NativeRetriever(embeddings=embeddings, store=index).invoke("Who built it?", k=k)


def test_vector_store_of_another_dimension(embeddings, corpus):
    with pytest.raises(DimensionMismatchError, match="16-d vectors but the head gives 384-d"):
        NativeRetriever(embeddings=embeddings, store=VectorIndex(16))
    other = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    other.add_documents(corpus[:3])
    with pytest.raises(DimensionMismatchError, match="8-d vectors but the head gives 384-d"):
        NativeRetriever(embeddings=embeddings, store=other)
    later = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    retriever = NativeRetriever(embeddings=embeddings, store=later)  # empty: nothing to compare yet
    later.add_documents(corpus[:3])
    with pytest.raises(DimensionMismatchError, match="8-d vectors"):
        retriever.invoke("Who built it?")


def test_store_dimension_reads_each_store_the_integration_checks(corpus):
    from types import SimpleNamespace

    from native_retriever.integrations import store_dimension

    assert store_dimension(VectorIndex(16)) == 16
    memory = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    assert store_dimension(memory) is None  # empty: nothing to read yet
    memory.add_documents(corpus[:3])
    assert store_dimension(memory) == 8
    # langchain_community's FAISS is not installed here: a store holding a faiss index as ``index`` (its layout)
    faiss = pytest.importorskip("faiss")
    assert store_dimension(SimpleNamespace(index=faiss.IndexFlatIP(12))) == 12
    assert store_dimension(SimpleNamespace()) is None


def test_store_and_embedder_types(embeddings):
    with pytest.raises(TypeError, match="VectorIndex or a LangChain VectorStore"):
        NativeRetriever(embeddings=embeddings, store=["not", "a", "store"])
    with pytest.raises(TypeError, match="wraps a NativeEmbedder"):
        NativeEmbeddings(DeterministicFakeEmbedding(size=8))


# -- packaging --------------------------------------------------------------------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)


def test_importing_the_package_does_not_import_langchain():
    code = (
        "import sys, native_retriever, native_retriever.integrations\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0].startswith('langchain')})\n"
        "print(loaded)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_extra_names_the_pip_command():
    code = (
        "import sys\nsys.modules['langchain_core'] = None\n"
        "try:\n    import native_retriever.integrations.langchain\nexcept ImportError as error:\n    print(error)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert 'pip install "native-retriever[langchain]"' in result.stdout


@pytest.mark.slow
def test_example_agent_retrieves_the_right_topic():
    result = subprocess.run(
        [sys.executable, "examples/langchain_agent.py"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    script = json.loads((ROOT / "native_retriever" / "resources" / "demo_conversation.json").read_text())
    turns = result.stdout.split("User: ")[1:]
    assert len(turns) == len(script["turns"]) == 4
    found = 0
    for turn, expected in zip(turns, script["expected_topic_titles"]):
        # every turn of the Marie Curie conversation ("Where was she born?") retrieves Marie Curie passages first
        retrieved = [
            line.split("]", 1)[1].split("  (score")[0].strip() for line in turn.splitlines() if "(score" in line
        ]
        assert len(retrieved) == 3 and retrieved[0].startswith("Marie Curie:"), turn
        found += expected in retrieved
        assert "Assistant: " in turn
    assert found >= 2

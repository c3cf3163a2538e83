"""LlamaIndex conformance tests of our own for the llama_index integration (tiny random Llama + real teacher)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TOPICS, conversations, passage_text
from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.chat_engine import CondensePlusContextChatEngine, ContextChatEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent, EmbeddingStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.storage.kvstore import SimpleKVStore

from native_retriever import NativeEmbedder, VectorIndex
from native_retriever.conversation import lexical_queries
from native_retriever.errors import ConversationError, DimensionMismatchError
from native_retriever.integrations.llama_index import (
    NativeEmbedding,
    NativeRetriever,
    bind_conversation,
    to_messages,
)

ROOT = Path(__file__).resolve().parents[1]
K = 5
CONVERSATIONS = [messages for _, messages, _ in conversations()[:8]]
MULTI_TURN = next(messages for messages in CONVERSATIONS if len(messages) >= 3)


def chat_messages(messages: list[dict]) -> list[ChatMessage]:
    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages]


@pytest.fixture(scope="module")
def embedding(embedder) -> NativeEmbedding:
    return NativeEmbedding(embedder)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [passage_text(topic) for topic in TOPICS]


@pytest.fixture(scope="module")
def vector_index(embedder, texts) -> VectorIndex:
    index = VectorIndex(embedder.dimension)
    ids = [f"d{i}" for i in range(len(texts))]
    index.add(ids, embedder.embed_documents(texts), texts, [{"title": t[0]} for t in TOPICS])
    return index


@pytest.fixture(scope="module")
def store_index(embedding, texts) -> VectorStoreIndex:
    nodes = [TextNode(id_=f"d{i}", text=text) for i, text in enumerate(texts)]
    return VectorStoreIndex(nodes, embed_model=embedding)


def direct(
    embedder: NativeEmbedder, index: VectorIndex, messages: list[dict], k: int = K, hybrid: bool = True
) -> list[tuple[str, float]]:
    """The core API's hits for the conversation: the head's vector fused with BM25 on its last user messages
    (``hybrid``), or the vector alone (as a LlamaIndex vector store searches)."""
    texts = [lexical_queries(messages)] if hybrid else None
    hits = index.search(embedder.embed_conversation(messages), k=k, texts=texts)[0]
    return [(hit.id, hit.score) for hit in hits]


def ids_scores(nodes: list[NodeWithScore]) -> list[tuple[str, float]]:
    return [(n.node.node_id, n.score) for n in nodes]


def assert_same_hits(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


class Recording:
    """An embedder with NativeEmbedder's public API that records calls (and can be slowed down)."""

    def __init__(self, inner: NativeEmbedder, delay: float = 0.0) -> None:
        self.inner, self.delay, self.batches, self.lock = inner, delay, [], threading.Lock()
        self.model, self.tokenizer, self.dimension = inner.model, inner.tokenizer, inner.dimension

    def _wait(self) -> None:
        time.sleep(self.delay)

    def embed_query(self, text):
        self._wait()
        return self.inner.embed_query(text)

    def embed_conversation(self, messages):
        self._wait()
        return self.inner.embed_conversation(messages)

    def embed_conversations(self, conversations, **kwargs):
        return self.inner.embed_conversations(conversations, **kwargs)

    def embed_documents(self, texts, **kwargs):
        self._wait()
        with self.lock:
            self.batches.append(len(texts))
        return self.inner.embed_documents(texts, **kwargs)


# -- the embedding ----------------------------------------------------------------------------------------------
def test_class_hierarchy_and_class_name(embedding, embedder, vector_index):
    assert isinstance(embedding, BaseEmbedding) and NativeEmbedding.class_name() == "NativeEmbedding"
    assert embedding.to_dict()["class_name"] == "NativeEmbedding"
    assert embedding.to_payload()["class_name"] == "NativeEmbedding"
    assert "_embedder" in NativeEmbedding.__private_attributes__ and "embedder" not in NativeEmbedding.model_fields
    assert embedding.embedder is embedder and embedding.dimension == 384
    assert "model" not in embedding.model_dump()  # the model objects stay out of serialisation
    assert isinstance(NativeRetriever(vector_index, embedding), BaseRetriever)


def test_query_embeddings_sync_and_async_read_the_bound_conversation(embedding, embedder):
    question = "What can I see at the Zorblat festival?"
    alone = embedding.get_query_embedding(question)
    np.testing.assert_allclose(alone, embedder.embed_query(question), atol=1e-6)
    np.testing.assert_allclose(asyncio.run(embedding.aget_query_embedding(question)), alone, atol=1e-6)
    history, last = MULTI_TURN[:-1], MULTI_TURN[-1]["content"]
    expected = embedder.embed_conversation(MULTI_TURN)
    with bind_conversation(chat_messages(history)) as bound:
        assert bound == history
        np.testing.assert_allclose(embedding.get_query_embedding(last), expected, atol=1e-6)
        np.testing.assert_allclose(asyncio.run(embedding.aget_query_embedding(last)), expected, atol=1e-6)
        # a history that already ends with the question is not doubled
        with embedding.conversation(MULTI_TURN):
            np.testing.assert_allclose(embedding.get_query_embedding(last), expected, atol=1e-6)
    assert not np.allclose(embedding.get_query_embedding(last), expected, atol=1e-3)  # unbound again


def test_text_embeddings_sync_async_batch_honour_embed_batch_size(embedder, texts):
    recording = Recording(embedder)
    embedding = NativeEmbedding(recording, embed_batch_size=4)
    expected = embedder.embed_documents(texts[:10])
    np.testing.assert_allclose(embedding.get_text_embedding_batch(texts[:10]), expected, atol=1e-5)
    assert recording.batches == [4, 4, 2]
    recording.batches.clear()
    np.testing.assert_allclose(asyncio.run(embedding.aget_text_embedding_batch(texts[:10])), expected, atol=1e-5)
    assert sorted(recording.batches) == [2, 4, 4]
    np.testing.assert_allclose(embedding.get_text_embedding(texts[3]), expected[3], atol=1e-5)
    np.testing.assert_allclose(asyncio.run(embedding.aget_text_embedding(texts[3])), expected[3], atol=1e-5)
    assert embedding.get_text_embedding_batch([]) == []


def test_async_hooks_do_not_block_the_event_loop(embedder):
    embedding = NativeEmbedding(Recording(embedder, delay=0.3))

    async def ticking(job) -> tuple[int, object]:
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        result = await job
        ticker.cancel()
        return ticks, result

    for job in (
        lambda: embedding.aget_query_embedding("Who built the Zorblat festival?"),
        lambda: embedding.aget_text_embedding("The Zorblat festival is in Quenwick."),
        lambda: embedding.aget_text_embedding_batch(["One passage.", "Another passage."]),
    ):
        ticks, result = asyncio.run(ticking(job()))
        assert ticks >= 10 and len(result) > 0  # the loop kept running during the 0.3 s embedding


class Collector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Collector"

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


def test_instrumentation_and_callbacks_see_our_events(embedder, vector_index):
    debug = LlamaDebugHandler()
    embedding = NativeEmbedding(embedder, callback_manager=CallbackManager([debug]))
    handler = Collector(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        embedding.get_query_embedding("Who built the Zorblat festival?")
        asyncio.run(embedding.aget_query_embedding("Who built it?"))
        embedding.get_text_embedding_batch(["A passage.", "Another passage."])
        retriever = NativeRetriever(vector_index, embedding, callback_manager=CallbackManager([debug]))
        retriever.retrieve_conversation(MULTI_TURN)
    finally:
        root.event_handlers.remove(handler)
    starts = [e for e in handler.events if isinstance(e, EmbeddingStartEvent)]
    ends = [e for e in handler.events if isinstance(e, EmbeddingEndEvent)]
    assert len(starts) == len(ends) == 4
    assert all(e.model_dict["class_name"] == "NativeEmbedding" for e in starts)
    assert ends[2].chunks == ["A passage.", "Another passage."] and len(ends[2].embeddings[0]) == 384
    assert ends[3].chunks == [MULTI_TURN[-1]["content"]]
    assert any(isinstance(e, RetrievalStartEvent) for e in handler.events)
    assert any(isinstance(e, RetrievalEndEvent) for e in handler.events)
    assert len(debug.get_event_pairs(CBEventType.EMBEDDING)) == 4
    assert len(debug.get_event_pairs(CBEventType.RETRIEVE)) == 1


def test_embeddings_cache_is_refused(embedder):
    with pytest.raises(ValueError, match="embeddings_cache"):
        NativeEmbedding(embedder, embeddings_cache=SimpleKVStore())
    embedding = NativeEmbedding(embedder)
    embedding.embeddings_cache = SimpleKVStore()  # set after construction: refused on first use
    with pytest.raises(ValueError, match="depends on the whole conversation"):
        embedding.get_query_embedding("Who built the Zorblat festival?")
    with pytest.raises(ValueError, match="embeddings_cache"):
        embedding.get_text_embedding("A passage.")


# -- retrieval --------------------------------------------------------------------------------------------------
def test_same_results_as_native_embedder_and_vector_index(embedder, embedding, vector_index, store_index):
    on_ours = NativeRetriever(vector_index, embedding, similarity_top_k=K)
    on_store = NativeRetriever(store_index, similarity_top_k=K)  # the index's own NativeEmbedding
    assert on_store.embed_model is embedding
    for messages in CONVERSATIONS:
        expected = direct(embedder, vector_index, messages)
        dense = direct(embedder, vector_index, messages, hybrid=False)
        assert_same_hits(ids_scores(on_ours.retrieve_conversation(chat_messages(messages))), expected)
        assert_same_hits(ids_scores(asyncio.run(on_ours.aretrieve_conversation(messages))), expected)
        assert_same_hits(ids_scores(on_store.retrieve_conversation(messages)), dense)  # the store: the vector alone
        with bind_conversation(chat_messages(messages[:-1])):  # LlamaIndex's own retriever, conversation bound
            assert_same_hits(
                ids_scores(store_index.as_retriever(similarity_top_k=K).retrieve(messages[-1]["content"])), dense
            )
        plain = NativeRetriever(vector_index, embedding, similarity_top_k=K, hybrid=None)
        assert_same_hits(ids_scores(plain.retrieve_conversation(messages)), dense)
        memory = ChatMemoryBuffer.from_defaults(chat_history=chat_messages(messages[:-1]))
        from_memory = NativeRetriever(vector_index, embedder, similarity_top_k=K, memory=memory)
        assert_same_hits(ids_scores(from_memory.retrieve(messages[-1]["content"])), expected)
        assert_same_hits(ids_scores(asyncio.run(from_memory.aretrieve(messages[-1]["content"]))), expected)
        fixed = NativeRetriever(vector_index, embedding, similarity_top_k=K, chat_history=messages[:-1])
        assert_same_hits(ids_scores(fixed.retrieve(messages[-1]["content"])), expected)
    node = on_ours.retrieve_conversation(MULTI_TURN)[0].node
    assert node.text == vector_index.get(node.node_id).text and node.metadata["title"]


def test_vector_store_index_round_trip(embedder, embedding, vector_index, texts, tmp_path):
    nodes = [TextNode(id_=f"d{i}", text=text) for i, text in enumerate(texts)]
    index = VectorStoreIndex(nodes, embed_model=embedding)
    stored = index.vector_store.get("d4")
    np.testing.assert_allclose(stored, embedder.embed_documents([texts[4]])[0], atol=1e-5)  # teacher vectors
    index.storage_context.persist(persist_dir=tmp_path)
    loaded = load_index_from_storage(StorageContext.from_defaults(persist_dir=tmp_path), embed_model=embedding)
    retriever = NativeRetriever(loaded, similarity_top_k=3)
    hits = retriever.retrieve_conversation(MULTI_TURN)
    assert_same_hits(ids_scores(hits), direct(embedder, vector_index, MULTI_TURN, k=3, hybrid=False))
    assert all(hit.node.text == texts[int(hit.node.node_id[1:])] for hit in hits)
    with pytest.raises(ValueError, match="does not keep the node texts; pass the VectorStoreIndex"):
        NativeRetriever(loaded.vector_store, embedding)  # SimpleVectorStore keeps vectors only
    assert [n.node.node_id for n in retriever.retrieve_conversation(MULTI_TURN)] == [
        n.node.node_id for n in NativeRetriever(index, similarity_top_k=3).retrieve_conversation(MULTI_TURN)
    ]


def test_similarity_top_k(embedding, vector_index, store_index):
    for index in (vector_index, store_index):
        retriever = NativeRetriever(index, embedding, similarity_top_k=3)
        assert len(retriever.retrieve_conversation(MULTI_TURN)) == 3
        retriever.similarity_top_k = 7
        assert len(retriever.retrieve_conversation(MULTI_TURN)) == 7
        for bad in (0, -1, True, 2.5, "3"):
            with pytest.raises(ValueError, match="similarity_top_k must be a positive integer"):
                NativeRetriever(index, embedding, similarity_top_k=bad)
            with pytest.raises(ValueError, match="similarity_top_k must be a positive integer"):
                retriever.similarity_top_k = bad
        assert retriever.similarity_top_k == 7


@pytest.mark.parametrize("engine_kind", ["condense-plus-context", "context"])
@pytest.mark.parametrize("use_async", [False, True])
def test_chat_engine_turns_retrieve_from_the_whole_conversation(
    embedder, embedding, vector_index, engine_kind, use_async
):
    llm = MockLLM(max_tokens=6)
    retriever = NativeRetriever(vector_index, embedding, similarity_top_k=K)
    if engine_kind == "context":
        memory = ChatMemoryBuffer.from_defaults()
        retriever.memory = memory
        engine = ContextChatEngine.from_defaults(retriever=retriever, memory=memory, llm=llm)
    else:
        engine = retriever.as_chat_engine(llm=llm)
        assert isinstance(engine, CondensePlusContextChatEngine) and engine._skip_condense
    turns = [m["content"] for m in MULTI_TURN if m["role"] == "user"]
    messages: list[dict] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        response = asyncio.run(engine.achat(turn)) if use_async else engine.chat(turn)
        assert_same_hits(ids_scores(response.source_nodes), direct(embedder, vector_index, messages))
        assert response.response.strip()
        messages.append({"role": "assistant", "content": response.response})
    assert [m.content for m in engine.chat_history] == [m["content"] for m in messages]


def test_huggingface_llm_shares_the_weights(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, embedder):
    from llama_index.llms.huggingface import HuggingFaceLLM

    llm = HuggingFaceLLM(model=tiny_llm, tokenizer=tiny_tokenizer, max_new_tokens=2, context_window=512)
    head = tiny_head_factory("attention")
    for embedding in (
        NativeEmbedding(llm=llm, head=head, teacher=teacher),
        NativeEmbedding(model=tiny_llm, tokenizer=tiny_tokenizer, head=head, teacher=teacher),
    ):
        assert embedding.embedder.model is llm._model is tiny_llm
        assert embedding.embedder.tokenizer is tiny_tokenizer
        ours = {name: p.data_ptr() for name, p in embedding.embedder.model.named_parameters()}
        assert ours == {name: p.data_ptr() for name, p in llm._model.named_parameters()}
        np.testing.assert_allclose(
            embedding.get_query_embedding("Who built it?"), embedder.embed_query("Who built it?"), atol=1e-6
        )
    assert llm.complete("Hello").text is not None  # the LLM still works on the shared weights


def test_bad_models_are_refused(tiny_llm, tiny_tokenizer, embedder):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    with pytest.raises(ValueError, match="exactly one of"):
        NativeEmbedding()
    with pytest.raises(ValueError, match="exactly one of"):
        NativeEmbedding(embedder, model=tiny_llm, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        NativeEmbedding(model=tiny_llm)
    with pytest.raises(TypeError, match="HuggingFaceLLM"):
        NativeEmbedding(llm=object())
    with pytest.raises(TypeError, match="LangChain FakeListChatModel.*integrations.langchain"):
        NativeEmbedding(llm=FakeListChatModel(responses=["x"]))
    with pytest.raises(TypeError, match="not an embedder"):
        NativeEmbedding("not an embedder")


def test_a_latent_embedder_works_unchanged(make_tiny_llm, tiny_tokenizer, texts):
    from native_retriever.latent.config import LatentConfig
    from native_retriever.latent.embedder import LatentEmbedder
    from native_retriever.latent.encoder import LatentEncoder

    encoder = LatentEncoder.create(make_tiny_llm(seed=3), tiny_tokenizer, LatentConfig(k=2, lora_r=4, lora_alpha=8))
    latent = LatentEmbedder(encoder.model, tiny_tokenizer, encoder)
    embedding = NativeEmbedding(latent, embed_batch_size=8)
    assert embedding.dimension == latent.dimension == 64
    nodes = [TextNode(id_=f"d{i}", text=text) for i, text in enumerate(texts[:12])]
    store_index = VectorStoreIndex(nodes, embed_model=embedding)  # documents through the latent encoder
    ours = VectorIndex(latent.dimension)
    ours.add([n.node_id for n in nodes], latent.embed_documents(texts[:12]), texts[:12])
    for index in (store_index, ours):  # by the vector alone, as the store searches
        retriever = NativeRetriever(index, embedding, similarity_top_k=4, hybrid=None)
        for messages in (MULTI_TURN, CONVERSATIONS[0]):
            expected = [(h.id, h.score) for h in ours.search(latent.embed_conversation(messages), k=4)[0]]
            assert_same_hits(ids_scores(retriever.retrieve_conversation(messages)), expected)


# -- threads and asyncio ----------------------------------------------------------------------------------------
def test_threads_and_tasks_give_the_serial_results(embedder, embedding, vector_index):
    retriever = NativeRetriever(vector_index, embedding, similarity_top_k=K)
    jobs = CONVERSATIONS * 2
    serial = [[n.node.node_id for n in retriever.retrieve_conversation(m)] for m in jobs]
    serial_vectors = [embedder.embed_conversation(m) for m in jobs]

    def bound(messages):
        with bind_conversation(messages[:-1]):
            return embedding.get_query_embedding(messages[-1]["content"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda m: [n.node.node_id for n in retriever.retrieve_conversation(m)], jobs))
        threaded_vectors = list(pool.map(bound, jobs))
    assert threaded == serial
    np.testing.assert_allclose(threaded_vectors, serial_vectors, atol=1e-5)

    async def abound(messages):
        with bind_conversation(messages[:-1]):
            await asyncio.sleep(0)  # let the other tasks bind theirs
            return await embedding.aget_query_embedding(messages[-1]["content"])

    async def run_all():
        nodes = await asyncio.gather(*(retriever.aretrieve_conversation(m) for m in jobs))
        return [[n.node.node_id for n in found] for found in nodes], await asyncio.gather(*(abound(m) for m in jobs))

    from_tasks, task_vectors = asyncio.run(run_all())
    assert from_tasks == serial
    np.testing.assert_allclose(task_vectors, serial_vectors, atol=1e-5)


# -- bad input --------------------------------------------------------------------------------------------------
def test_empty_history_and_empty_query(embedding, vector_index):
    retriever = NativeRetriever(vector_index, embedding)
    with pytest.raises(ConversationError, match="conversation is empty"):
        retriever.retrieve_conversation([])
    with pytest.raises(ConversationError, match="must end with the user's current question"):
        retriever.retrieve_conversation(MULTI_TURN[:-1])
    for empty in ("", "   "):
        with pytest.raises(ConversationError, match="query is empty"):
            retriever.retrieve(empty)
        with pytest.raises(ConversationError, match="query is empty"):
            asyncio.run(retriever.aretrieve(empty))
        with pytest.raises(ConversationError, match="query is empty"):
            embedding.get_query_embedding(empty)
    with pytest.raises(ConversationError, match="not a string|ChatMessage"):
        retriever.retrieve_conversation("Who built it?")
    # an empty history with a question is a first turn, not an error
    assert len(NativeRetriever(vector_index, embedding, chat_history=[]).retrieve("Who built it?")) == 2


def test_langchain_messages_are_refused_with_the_right_type(embedding, vector_index):
    from langchain_core.messages import AIMessage, HumanMessage

    history = [HumanMessage("Tell me about the Zorblat festival."), AIMessage("It is in Quenwick.")]
    expected = "LangChain HumanMessage.*llama_index.core.llms.ChatMessage.*integrations.langchain"
    with pytest.raises(ConversationError, match=expected):
        NativeRetriever(vector_index, embedding, chat_history=history)
    with pytest.raises(ConversationError, match=expected):
        NativeRetriever(vector_index, embedding).retrieve_conversation([*history, HumanMessage("Who built it?")])
    with pytest.raises(ConversationError, match=expected), bind_conversation(history):
        pass
    with pytest.raises(ConversationError, match="LangChain AIMessage"):
        to_messages([ChatMessage(role="user", content="Hi"), AIMessage("Hello")])
    with pytest.raises(TypeError, match="chat memory.*integrations.langchain"):
        from langchain_core.chat_history import InMemoryChatMessageHistory

        NativeRetriever(vector_index, embedding, memory=InMemoryChatMessageHistory())


def test_to_messages_maps_roles():
    history = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content=None, additional_kwargs={"tool_calls": []}),
        ChatMessage(role="tool", content="{}"),
        ChatMessage(role="chatbot", content="Hello"),
        {"role": "user", "content": "Who built it?"},
    ]
    assert to_messages(history) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Who built it?"},
    ]
    assert to_messages(None) == []


def test_vector_store_of_another_dimension_is_refused(embedding):
    with pytest.raises(DimensionMismatchError, match="8-d vectors but the head gives 384-d"):
        NativeRetriever(VectorIndex(8), embedding)
    rng = np.random.default_rng(0)
    nodes = [TextNode(id_=f"n{i}", text=f"passage {i}", embedding=rng.normal(size=8).tolist()) for i in range(3)]
    with pytest.raises(DimensionMismatchError, match="8-d vectors but the head gives 384-d"):
        NativeRetriever(VectorStoreIndex(nodes, embed_model=embedding), embedding)
    index = VectorStoreIndex([], embed_model=embedding)  # empty when the retriever is built, filled later
    retriever = NativeRetriever(index, embedding)
    index.insert_nodes(nodes)
    with pytest.raises(DimensionMismatchError, match="index the documents with the teacher"):
        retriever.retrieve("Who built it?")


def test_store_dimension_reads_each_store_the_integration_checks():
    from types import SimpleNamespace

    from llama_index.core.vector_stores import SimpleVectorStore

    from native_retriever.integrations import store_dimension

    store = SimpleVectorStore()
    assert store_dimension(store) is None  # empty: nothing to read yet
    store.add([TextNode(id_="n0", text="passage", embedding=[0.0] * 8)])
    assert store_dimension(store) == 8
    # llama-index-vector-stores-faiss is not installed here: a store holding its faiss index as ``_faiss_index``
    faiss = pytest.importorskip("faiss")
    assert store_dimension(SimpleNamespace(_faiss_index=faiss.IndexFlatIP(12))) == 12


# -- packaging --------------------------------------------------------------------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_importing_the_package_does_not_import_llama_index():
    result = run_python(
        "import sys, native_retriever, native_retriever.integrations\n"
        "assert not [m for m in sys.modules if m.startswith('llama_index')], 'llama_index was imported'\n"
    )
    assert result.returncode == 0, result.stderr


def test_without_the_extra_the_import_error_names_the_pip_command():
    result = run_python(
        "import sys\n"
        "sys.modules['llama_index'] = None\n"
        "sys.modules['llama_index.core'] = None\n"
        "import native_retriever\n"
        "try:\n"
        "    import native_retriever.integrations.llama_index\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "native-retriever[llama-index]"' in result.stdout


# -- the example, on the real default models --------------------------------------------------------------------
@pytest.mark.slow
def test_example_chat_engine_retrieves_the_right_passages():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "llama_index_chat.py")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    script = json.loads((ROOT / "native_retriever" / "resources" / "demo_conversation.json").read_text())
    turns = result.stdout.split("User: ")[1:]
    assert [block.splitlines()[0] for block in turns] == script["turns"]
    found = 0
    for block, expected in zip(turns, script["expected_topic_titles"]):
        titles = [line.split("] ", 1)[1] for line in block.split("Assistant:")[0].splitlines() if "] " in line]
        assert len(titles) == 3 and titles[0].split(":")[0] == "Marie Curie", block  # follow-ups stay on topic
        found += expected in titles
        assert "retrieved from the agent's own hidden states" in block and block.split("Assistant:")[1].strip()
    assert found >= 2

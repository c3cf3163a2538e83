"""Training from a corpus alone: the LLM's conversations about each passage (shape, cache and resume, the
teacher's filter, counts), corpora read from text folders or corpus-only data folders, train-head --corpus and
write-conversations end to end on the tiny LLM, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import TOPICS, passage_text

import native_retriever.training.synthetic as synthetic
from native_retriever.cli import main
from native_retriever.data import load_corpus, load_data
from native_retriever.errors import DataFormatError, InvalidArgumentError, NativeRetrieverError
from native_retriever.heads import ProjectionHead
from native_retriever.training.synthetic import (
    SyntheticConfig,
    SyntheticCounts,
    filter_by_teacher,
    generate_conversations,
)


def corpus(n: int = 6) -> list[dict]:
    return [{"id": f"d{i}", "text": passage_text(t) + " " + passage_text(t)} for i, t in enumerate(TOPICS[:n])]


@pytest.fixture
def scripted(monkeypatch):
    """Generation replaced by a script that asks about each passage's topic name (the prompt holds the passage) and
    answers briefly; records how many chats were generated for."""
    calls = {"chats": 0}

    def generate(model, tokenizer, chats, starts, max_new_tokens):
        calls["chats"] += len(chats)
        out = []
        for chat in chats:
            if chat[0]["role"] == "system":  # an answer
                out.append("It is famous. More words follow")
                continue
            passage = next(m["content"] for m in reversed(chat) if m["content"].startswith("Passage:"))
            name = passage.split("The ", 1)[1].split()[0] if "The " in passage else "it"
            asked = sum(m["role"] == "assistant" for m in chat) - 3  # the worked example asks three
            out.append(f" is the {name} like?" if asked == 0 else " is it like in summer?\nextra line")
        return out

    monkeypatch.setattr(synthetic, "_generate", generate)
    return calls


def test_each_passage_gets_a_conversation_that_leans_on_its_earlier_turns(scripted, tmp_path):
    docs = corpus()
    config = SyntheticConfig(turns=3)
    conversations, counts = generate_conversations(None, None, docs, tmp_path / "c.jsonl", config)
    assert set(conversations) == {d["id"] for d in docs}
    messages = conversations["d0"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == f"What is the {TOPICS[0][0]} like?"
    assert messages[1]["content"] == "It is famous."  # the answer's first sentence
    assert messages[2]["content"] == "Who is it like in summer?"  # first line only, started with a question word
    assert counts == SyntheticCounts(passages=6, questions=18)


def test_generation_is_cached_resumes_after_a_crash_and_redoes_changed_passages(scripted, tmp_path):
    docs, cache = corpus(), tmp_path / "c.jsonl"
    generate_conversations(None, None, docs[:4], cache, SyntheticConfig(batch_size=2))
    first = scripted["chats"]
    lines = cache.read_bytes().splitlines(keepends=True)
    cache.write_bytes(b"".join(lines[:3]) + lines[3][:10])  # a crash in the middle of the fourth line
    conversations, _ = generate_conversations(None, None, docs, cache, SyntheticConfig(batch_size=2))
    assert len(conversations) == 6
    # only the cut passage and the two new ones were written again: 3 of 6 passages, as many chats each
    assert scripted["chats"] - first == first // 4 * 3
    assert all(json.loads(line) for line in cache.read_text().splitlines())  # the cut line was removed
    changed = [dict(docs[0], text=docs[0]["text"] + " New sentence here."), *docs[1:]]
    before = scripted["chats"]
    generate_conversations(None, None, changed, cache, SyntheticConfig(batch_size=2))
    assert scripted["chats"] - before == first // 4  # the changed passage only


def test_a_generation_cache_written_by_other_weights_is_refused(
    scripted, tiny_llm, tiny_tokenizer, make_tiny_llm, tmp_path
):
    cache, docs = tmp_path / "c.jsonl", corpus(2)
    first, _ = generate_conversations(tiny_llm, tiny_tokenizer, docs, cache, SyntheticConfig())
    assert generate_conversations(tiny_llm, tiny_tokenizer, docs, cache, SyntheticConfig())[0] == first
    other = make_tiny_llm(seed=5, initializer_range=0.05)
    other.config.name_or_path = tiny_llm.config.name_or_path  # the same name (the cache file's key), other weights
    with pytest.raises(NativeRetrieverError, match="written by other weights .*delete both files or use another"):
        generate_conversations(other, tiny_tokenizer, docs, cache, SyntheticConfig())
    assert generate_conversations(other, tiny_tokenizer, docs, tmp_path / "other.jsonl", SyntheticConfig())[0]


def test_short_passages_and_non_questions_are_counted_not_trained_on(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "_generate", lambda m, t, chats, starts, n: ["" for _ in chats])
    docs = [*corpus(2), {"id": "short", "text": "Too short to ask about."}]
    conversations, counts = generate_conversations(None, None, docs, tmp_path / "c.jsonl", SyntheticConfig())
    assert counts == SyntheticCounts(passages=3, too_short=1, no_question=6)
    assert conversations == {"d0": [], "d1": []}
    with pytest.raises(DataFormatError, match="wrote no question"):
        filter_by_teacher(None, docs, conversations, counts)


def test_the_teacher_keeps_questions_it_ties_to_their_passage(teacher):
    docs = corpus(8)
    name = TOPICS[0][0]
    conversations = {
        "d0": [{"role": "user", "content": f"What is the {name} like?"}],
        "d1": [{"role": "user", "content": f"Tell me about the {name}."}],  # about d0's topic, not d1's
    }
    counts = SyntheticCounts(passages=8, questions=2)
    data = filter_by_teacher(teacher, docs, conversations, counts, check_k=1)
    assert [q["id"] for q in data.queries] == ["synthetic:d0:0"]
    assert data.qrels == {"synthetic:d0:0": {"d0": 1}} and data.queries[0]["story_id"] == "d0"
    assert (counts.kept, counts.filtered_out) == (1, 1)


def test_prompts_are_checked():
    with pytest.raises(InvalidArgumentError, match="Unknown prompt keys"):
        SyntheticConfig(prompts={"question": "x"})
    with pytest.raises(InvalidArgumentError, match="must contain \\{passage\\}"):
        SyntheticConfig(prompts={"first": "Ask something."})
    with pytest.raises(InvalidArgumentError, match="at least 4 questions"):
        SyntheticConfig(turns=4)
    assert SyntheticConfig().key("a") != SyntheticConfig(prompts={"follow_up": "Ask more."}).key("a")
    assert SyntheticConfig().key("a") != SyntheticConfig().key("b")


def test_a_corpus_is_a_text_folder_or_a_corpus_only_data_folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Mirravel\n\nThe Mirravel river has purple reeds.\n")
    (docs / "blob.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        assert load_corpus(docs) == [
            {"id": "a.md#0", "text": "The Mirravel river has purple reeds.", "title": "Mirravel"}
        ]
    data = tmp_path / "data"
    data.mkdir()
    with gzip.open(data / "corpus.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"id": "p1", "text": "Some text."}) + "\n")
    assert [d["id"] for d in load_corpus(data)] == ["p1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no passages were found"):
        load_corpus(tmp_path / "empty")


@pytest.fixture
def text_corpus(tmp_path):
    folder = tmp_path / "my-docs"
    folder.mkdir()
    for i, topic in enumerate(TOPICS[:12]):
        (folder / f"note{i:02d}.txt").write_text(passage_text(topic) + " " + passage_text(topic) + "\n")
    return folder


def test_train_head_from_a_corpus_alone_and_write_conversations(scripted, text_corpus, tiny_llm_folder, tmp_path):
    args = ["train-head", "--corpus", str(text_corpus), "--output", str(tmp_path / "head"), "--llm", tiny_llm_folder]
    args += ["--cache", str(tmp_path / "cache"), "--epochs", "1", "--architecture", "linear", "--batch-size", "8"]
    args += ["--max-tokens", "256", "--rank-top-k", "4"]
    assert main(args) == 0
    head = ProjectionHead.from_pretrained(tmp_path / "head")
    assert head.config.metrics["synthetic"]["passages"] == 12 and head.config.metrics["synthetic"]["kept"] > 12
    names = [d["name"] for d in head.config.training["data"]]
    assert names == ["my-docs-synthetic", "my-docs-synthetic-passages"]
    # the held-out passages' conversations picked the epoch; their passages were not trained on
    assert head.config.metrics["dev"]["queries"] >= 1

    chats = scripted["chats"]
    out = tmp_path / "conversations"
    write = ["write-conversations", "--corpus", str(text_corpus), "--output", str(out), "--llm", tiny_llm_folder]
    assert main([*write, "--cache", str(tmp_path / "cache")]) == 0
    assert scripted["chats"] == chats  # all cached by the training run
    data = load_data(out)
    assert len(data.corpus) == 12 and len(data.queries) == head.config.metrics["synthetic"]["kept"]


def test_bad_corpus_input_fails_before_any_model_loads(tmp_path, capsys):
    def error(args: list[str]) -> str:
        try:
            code = main(args)
        except SystemExit as exc:  # argparse and the command's own checks
            return str(exc.code) + capsys.readouterr().err
        assert code != 0
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    head = str(tmp_path / "h")
    assert "no passages were found" in error(["train-head", "--corpus", str(tmp_path / "empty"), "-o", head])
    assert "not allowed with argument" in error(["train-head", "--corpus", "x", "--train", "y", "-o", head])
    assert "goes with --train" in error(["train-head", "--corpus", "x", "--dev-holdout", "3", "-o", head])
    assert "needs --dev FOLDER or --dev-holdout" in error(["train-head", "--train", "x", "-o", head])
    bad = tmp_path / "prompts.json"
    bad.write_text("[1, 2]")
    prompts = ["write-conversations", "--corpus", str(tmp_path), "-o", str(tmp_path / "c"), "--prompts", str(bad)]
    assert "give a JSON object" in error(prompts)
    assert not Path(head).exists()


def test_a_corpus_head_adapts_the_head_it_starts_from(
    scripted, text_corpus, tiny_llm_folder, tiny_head_factory, tmp_path
):
    import torch

    start = tiny_head_factory("attention", max_input_tokens=96)
    start.save_pretrained(tmp_path / "start")
    args = ["train-head", "--corpus", str(text_corpus), "--output", str(tmp_path / "head"), "--llm", tiny_llm_folder]
    args += ["--cache", str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "8", "--rank-top-k", "4"]
    assert main([*args, "--init-head", str(tmp_path / "start")]) == 0
    head = ProjectionHead.from_pretrained(tmp_path / "head")
    assert (head.config.architecture, head.config.d_model, head.config.max_input_tokens) == ("attention", 32, 96)
    assert head.config.prompt_format == start.config.prompt_format
    before, after = start.state_dict(), head.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_ranks_share_out_the_batches_and_any_world_size_reads_them(scripted, tmp_path, monkeypatch):
    import threading

    from native_retriever.training.distributed import Ranks

    meeting = threading.Barrier(2)
    # two ranks as two threads meeting at the barriers
    monkeypatch.setattr(Ranks, "barrier", lambda self: meeting.wait(timeout=60) if self.world > 1 else None)
    docs, config = corpus(6), SyntheticConfig(batch_size=2)
    single, _ = generate_conversations(None, None, docs, tmp_path / "one" / "c.jsonl", config)
    alone = scripted["chats"]
    cache = tmp_path / "two" / "c.jsonl"
    results = {}

    def rank(r: int) -> None:
        try:
            results[r] = generate_conversations(None, None, docs, cache, config, ranks=Ranks(r, 2))[0]
        except BaseException as exc:  # reported below: a thread's exception does not reach the test
            results[r] = exc
            meeting.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(isinstance(r, BaseException) for r in results.values()), results
    assert results[0] == results[1] == single and scripted["chats"] - alone == alone  # the work done once
    # rank 0 wrote batches 0 and 2 (4 passages), rank 1 batch 1 (2 passages)
    lines = {p.name: len(p.read_text().splitlines()) for p in cache.parent.iterdir()}
    assert lines == {"c.rank0.jsonl": 4, "c.rank1.jsonl": 2}
    before = scripted["chats"]
    again, _ = generate_conversations(None, None, docs, cache, config)  # one process later: nothing left to write
    assert again == single and scripted["chats"] == before

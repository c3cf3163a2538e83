"""Tests for native_retriever.training: resumable hidden-state cache, teacher targets, losses, the training loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import native_retriever.training.cache as cache_mod
from native_retriever.conversation import PromptFormat, encode_conversation
from native_retriever.data import load_data, passage_queries
from native_retriever.errors import NativeRetrieverError
from native_retriever.heads import ProjectionHead
from native_retriever.models import llm_info
from native_retriever.states import select_tokens, token_states
from native_retriever.training.cache import (
    cache_hidden_states,
    cache_spec,
    load_hidden_states,
    target_text,
    teacher_vectors,
)
from native_retriever.training.losses import AlignmentLoss, InfoNCE, ScoreDistillation
from native_retriever.training.trainer import Split, TrainConfig, dev_metrics, head_config, train_head

FMT = PromptFormat(max_tokens=256)
SMALL = dict(
    architecture="linear",
    span="last_user",
    d_model=32,
    num_layers=1,
    num_heads=2,
    batch_size=8,
    lr=3e-3,
    hard_negatives=2,
    rank_top_k=8,
    patience=100,
)
WINDOW = (SMALL["span"], TrainConfig.max_input_tokens)  # the tokens the SMALL heads read


@pytest.fixture(scope="module")
def data(tiny_data_folder):
    return load_data(tiny_data_folder)


@pytest.fixture(scope="module")
def split(tiny_llm, tiny_tokenizer, teacher, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-cache")
    states = cache_hidden_states(
        tiny_llm, tiny_tokenizer, data, root / "states", window=WINDOW, prompt_format=FMT, shard_size=16
    )
    corpus, targets = teacher_vectors(teacher, data, root, "history")
    return Split(data, states, corpus, targets)


# -- hidden-state cache ---------------------------------------------------------------------------------------
def _expected_window(tiny_llm, tiny_tokenizer, query, window):
    encoded = encode_conversation(tiny_tokenizer, query["messages"], FMT, query=query["question"])
    start, end = select_tokens(encoded, *window)
    return token_states(tiny_llm, [encoded.input_ids], [-1])[0][start:end]


def test_cache_holds_only_the_heads_window_of_the_inference_states(split, tiny_llm, tiny_tokenizer, data, tmp_path):
    cache = split.states
    assert cache.ids == [q["id"] for q in data.queries] and len(cache) == len(data.queries)
    for i in (0, 17, len(cache) - 1):
        expected = _expected_window(tiny_llm, tiny_tokenizer, data.queries[i], WINDOW)
        assert cache[i].dtype == torch.float16 and cache[i].shape == expected.shape
        torch.testing.assert_close(cache[i].float(), expected, atol=2e-2, rtol=1e-2)

    window = ("all", 8)  # the last 8 tokens before the appended question, nothing else
    short = cache_hidden_states(tiny_llm, tiny_tokenizer, data, tmp_path, window=window, prompt_format=FMT)
    for i in (0, len(short) - 1):
        torch.testing.assert_close(
            short[i].float(), _expected_window(tiny_llm, tiny_tokenizer, data.queries[i], window), atol=2e-2, rtol=1e-2
        )
    assert short.tokens == 8 * len(short) and short.nbytes == short.tokens * 2 * 64
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    on_disk = sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))
    assert short.nbytes <= on_disk <= short.nbytes + 1024  # float16 states and a small header, nothing more


def test_cache_resumes_recomputing_only_a_missing_shard(tiny_llm, tiny_tokenizer, data, tmp_path, monkeypatch):
    first = cache_hidden_states(
        tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=16
    )
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == math.ceil(len(data.queries) / 16) == 3
    shards[1].unlink()

    computed: list[int] = []

    def counting(model, sequences, layers):
        computed.append(len(sequences))
        return token_states(model, sequences, layers)

    monkeypatch.setattr(cache_mod, "token_states", counting)
    second = cache_hidden_states(
        tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=16
    )

    assert sum(computed) == 16  # only the deleted shard's conversations went through the LLM again
    assert second.ids == first.ids
    for i in range(len(first)):
        assert torch.equal(second[i], first[i]), i

    computed.clear()
    third = cache_hidden_states(
        tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=16
    )
    assert computed == [] and third.ids == first.ids
    assert load_hidden_states(folder).ids == first.ids


def test_cache_refuses_states_of_another_llm(tiny_llm, tiny_tokenizer, data, tmp_path, make_tiny_llm):
    cache_hidden_states(tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=64)
    other = make_tiny_llm(seed=5, initializer_range=0.05)
    other.config.name_or_path = tiny_llm.config.name_or_path  # same name, other weights
    with pytest.raises(NativeRetrieverError) as info:
        cache_hidden_states(other, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=64)
    assert "built for another llm" in str(info.value) and "delete it or use another cache" in str(info.value)


@pytest.mark.parametrize(
    ("field", "layers", "window"), [("window", [-1], ("all", 64)), ("layers", [-2], WINDOW), ("llm", [-1], WINDOW)]
)
def test_opening_a_cache_for_another_window_layers_or_llm_is_refused(
    tiny_llm, tiny_tokenizer, data, tmp_path, make_tiny_llm, field, layers, window
):
    cache_hidden_states(tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=64)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    model = make_tiny_llm(seed=5, initializer_range=0.05) if field == "llm" else tiny_llm
    assert len(load_hidden_states(folder, expect=cache_spec(tiny_llm, tiny_tokenizer, [-1], WINDOW, FMT))) == len(
        data.queries
    )
    with pytest.raises(NativeRetrieverError, match=f"built for another {field} ") as info:
        load_hidden_states(folder, expect=cache_spec(model, tiny_tokenizer, layers, window, FMT))
    assert "delete it or use another cache folder" in str(info.value)


def test_a_damaged_shard_is_named_with_the_fix(tiny_llm, tiny_tokenizer, data, tmp_path):
    cache_hidden_states(tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=16)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    shard = folder / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])  # cut short, as a failing disk might leave it
    with pytest.raises(NativeRetrieverError, match="shard-00001.safetensors is damaged .*delete it and rerun"):
        cache_hidden_states(tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=16)
    shard.unlink()  # the fix the message gives: only that shard is computed again
    again = cache_hidden_states(
        tiny_llm, tiny_tokenizer, data, tmp_path, window=WINDOW, prompt_format=FMT, shard_size=16
    )
    assert len(again) == len(data.queries)


def test_training_refuses_a_cache_of_another_window(split, tiny_llm, teacher):
    config = TrainConfig(**{**SMALL, "span": "all"}, epochs=1)
    with pytest.raises(NativeRetrieverError, match="holds window .*'last_user'.* but this head reads window .*'all'"):
        train_head([split], split, config, _base(config, tiny_llm, teacher))


def test_the_cache_is_memory_mapped_not_read_into_ram(tmp_path):
    from safetensors.torch import save_file

    def anonymous_rss() -> int:  # bytes of this process's memory not backed by a file
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:"))) * 1024

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc")
    rows, hidden, per_example = 65_536, 1024, 64  # 128 MiB of float16 states, 1,024 examples
    (tmp_path / "manifest.json").write_text(json.dumps({"format": cache_mod.CACHE_FORMAT, "hidden_size": hidden}))
    offsets = torch.arange(0, rows + 1, per_example)
    save_file(
        {"states": torch.ones(rows, hidden, dtype=torch.float16), "offsets": offsets},
        tmp_path / "shard-00000.safetensors",
    )
    (tmp_path / "shard-00000.json").write_text(json.dumps([f"q{i}" for i in range(len(offsets) - 1)]))

    before = anonymous_rss()
    cache = load_hidden_states(tmp_path)
    total = sum(float(cache[i][0, 0]) for i in range(len(cache)))
    assert total == len(cache) == 1024 and cache.nbytes == rows * hidden * 2
    assert anonymous_rss() - before < 32 * 2**20  # a cache read whole would add 128 MiB


def test_teacher_targets(teacher, data):
    query = next(q for q in data.queries if len(q["messages"]) == 5)
    assert target_text(teacher, query, "question") == query["question"]
    assert target_text(teacher, query, "history") == "\n".join(m["content"] for m in query["messages"])
    assert target_text(teacher, query, "history-2") == "\n".join(m["content"] for m in query["messages"][-2:])
    with pytest.raises(ValueError, match="use question, history or history-N"):
        target_text(teacher, query, "everything")


def test_teacher_vectors_are_cached_and_unit_norm(split, data, teacher, tmp_path):
    assert split.corpus.shape == (len(data.corpus), 384)
    assert split.targets.shape == (len(data.queries), 384)
    np.testing.assert_allclose(np.linalg.norm(split.targets, axis=1), 1.0, atol=1e-5)
    corpus, _ = teacher_vectors(teacher, data, tmp_path, "question")
    files = sorted(p.name for p in next(tmp_path.iterdir()).iterdir())
    assert files == ["corpus.npy", "target-question.npy"]
    np.testing.assert_allclose(corpus, split.corpus, atol=1e-6)


def _copy_data(source, target, edit_passage: int | None = None, edit_query: int | None = None):
    """A copy of a data folder at ``target``, optionally with one passage's or one question's text changed."""
    target.mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
        lines = (Path(source) / name).read_text().splitlines()
        row = {"corpus.jsonl": edit_passage, "queries.jsonl": edit_query}.get(name)
        if row is not None:
            item = json.loads(lines[row])
            if name == "corpus.jsonl":
                item["text"] += " It was painted green in the last century."
            else:
                item["messages"][-1]["content"] = item["question"] = "Who looks after it in winter?"
            lines[row] = json.dumps(item)
        (target / name).write_text("\n".join(lines) + "\n")
    return target


def test_caches_are_keyed_by_content_not_by_the_data_folders_name(
    tiny_llm, tiny_tokenizer, teacher, tiny_data_folder, tmp_path, monkeypatch
):
    first = load_data(_copy_data(tiny_data_folder, tmp_path / "a" / "data"), max_queries=6)
    edited = load_data(_copy_data(tiny_data_folder, tmp_path / "b" / "data", edit_passage=3, edit_query=2), 6)
    renamed = load_data(_copy_data(tiny_data_folder, tmp_path / "c" / "renamed"), max_queries=6)
    assert first.name == edited.name == "data"
    root = tmp_path / "cache"
    llm_calls: list[int] = []
    teacher_calls: list[int] = []

    def counting_states(model, sequences, layers):
        llm_calls.append(len(sequences))
        return token_states(model, sequences, layers)

    def caches(data):
        llm_calls.clear(), teacher_calls.clear()
        states = cache_hidden_states(tiny_llm, tiny_tokenizer, data, root / "states", window=WINDOW, prompt_format=FMT)
        corpus, targets = teacher_vectors(teacher, data, root, "question")
        return states, corpus, targets

    monkeypatch.setattr(cache_mod, "token_states", counting_states)
    encode = teacher.encode
    monkeypatch.setattr(teacher, "encode", lambda texts, **kw: teacher_calls.append(len(texts)) or encode(texts, **kw))

    states, corpus, targets = caches(first)
    assert sum(llm_calls) == 6 and teacher_calls == [30, 6]

    # another folder named "data" with one passage and one question edited: nothing stale is reused
    states_b, corpus_b, targets_b = caches(edited)
    assert sum(llm_calls) == 6 and teacher_calls == [30, 6]
    np.testing.assert_allclose(corpus_b[3], encode([edited.corpus[3]["text"]])[0], atol=1e-5)
    assert not np.allclose(corpus_b[3], corpus[3], atol=1e-3)
    np.testing.assert_allclose(targets_b[2], encode(["Who looks after it in winter?"])[0], atol=1e-5)
    query = edited.queries[2]
    encoded = encode_conversation(tiny_tokenizer, query["messages"], FMT, query=query["question"])
    expected = token_states(tiny_llm, [encoded.input_ids], [-1])[0]
    start, end = select_tokens(encoded, *WINDOW)
    torch.testing.assert_close(states_b[2].float(), expected[start:end], atol=2e-2, rtol=1e-2)
    assert states_b[2].shape != states[2].shape

    # the same content under another folder name: everything is reused
    states_c, corpus_c, targets_c = caches(renamed)
    assert llm_calls == [] and teacher_calls == []
    assert all(torch.equal(states_c[i], states[i]) for i in range(len(states)))
    np.testing.assert_array_equal(corpus_c, corpus)
    np.testing.assert_array_equal(targets_c, targets)

    # another prompt window or head window is another hidden-state cache, never the old one
    fmt = PromptFormat(max_tokens=128)
    cache_hidden_states(tiny_llm, tiny_tokenizer, first, root / "states", window=WINDOW, prompt_format=fmt)
    cache_hidden_states(tiny_llm, tiny_tokenizer, first, root / "states", window=("all", 32), prompt_format=FMT)
    assert sum(llm_calls) == 12
    assert len([p for p in (root / "states").iterdir() if p.is_dir()]) == 4


# -- training -------------------------------------------------------------------------------------------------
def _base(config: TrainConfig, tiny_llm, teacher):
    return head_config(config, llm_info(tiny_llm), teacher.info, FMT)


def test_train_head_beats_a_random_head_on_its_training_set(split, tiny_llm, teacher, tmp_path):
    config = TrainConfig(**SMALL, epochs=5)
    base = _base(config, tiny_llm, teacher)
    random_recall = dev_metrics(ProjectionHead(base), split)["recall@10"]

    head = train_head([split], split, config, base, log_path=tmp_path / "log.json")

    trained = dev_metrics(head, split)
    assert trained["recall@10"] >= random_recall + 0.3
    assert trained["recall@10"] >= 0.8
    history = head.config.metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert head.config.metrics["dev"]["recall@10"] == max(h["recall@10"] for h in history) == trained["recall@10"]
    assert head.config.training["config"]["epochs"] == 5
    assert head.config.training["data"][0]["queries"] == len(split.states.ids)
    assert (tmp_path / "log.json").is_file()
    assert not head.training
    # the trained head round-trips with its history and config
    head.save_pretrained(tmp_path / "head")
    loaded = ProjectionHead.from_pretrained(tmp_path / "head")
    assert loaded.config.metrics == head.config.metrics
    assert loaded.config.prompt_format == FMT.to_dict()


def test_early_stopping_keeps_the_best_epoch(split, tiny_llm, teacher):
    config = TrainConfig(**{**SMALL, "patience": 1, "lr": 1e-6}, epochs=6)
    head = train_head([split], split, config, _base(config, tiny_llm, teacher))
    history = head.config.metrics["history"]
    assert len(history) < 6  # stopped once dev Recall@10 stopped improving
    best = max(history, key=lambda h: (h["recall@10"], h["mrr@10"]))  # ties on recall go to the better MRR
    assert head.config.metrics["dev"]["recall@10"] == best["recall@10"]
    assert head.config.metrics["dev"]["mrr@10"] == best["mrr@10"]


@pytest.mark.parametrize("zeroed", ["align_weight", "contrastive_weight", "rank_weight"])
def test_each_loss_is_finite_and_can_be_switched_off(split, tiny_llm, teacher, zeroed):
    config = TrainConfig(**SMALL, epochs=1, **{zeroed: 0.0})
    base = _base(config, tiny_llm, teacher)
    torch.manual_seed(config.seed)
    initial = ProjectionHead(base).state_dict()

    head = train_head([split], split, config, base)

    (entry,) = head.config.metrics["history"]
    for name in ("loss_align", "loss_contrastive", "loss_rank"):
        assert math.isfinite(entry[name]), name
    changed = [not torch.equal(initial[k], v) for k, v in head.state_dict().items()]
    assert any(changed)  # the other two losses still train the head


# -- losses ---------------------------------------------------------------------------------------------------
def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_alignment_loss_is_zero_for_identical_vectors_and_two_for_opposite():
    x = _unit(4, 16)
    assert AlignmentLoss()(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert AlignmentLoss()(x, -x).item() == pytest.approx(2.0, abs=1e-6)


def test_contrastive_loss_ignores_masked_false_negatives():
    student = _unit(2, 16, seed=1)
    docs = _unit(4, 16, seed=2)
    docs[2] = student[0]  # another positive of query 0: a perfect match that must not count as a negative
    labels = torch.tensor([0, 1])
    loss = InfoNCE(temperature=0.05)
    ignore = torch.zeros(2, 4, dtype=torch.bool)
    ignore[0, 2] = True

    masked = loss(student, docs, labels, ignore)
    without = (
        F.cross_entropy((student[:1] @ docs[[0, 1, 3]].T) / 0.05, torch.tensor([0]))
        + F.cross_entropy((student[1:] @ docs.T) / 0.05, torch.tensor([1]))
    ) / 2
    unmasked = loss(student, docs, labels, torch.zeros(2, 4, dtype=torch.bool))

    assert torch.isfinite(masked)
    assert masked.item() == pytest.approx(without.item(), rel=1e-5)
    assert unmasked.item() > masked.item()


def test_contrastive_loss_is_small_when_each_query_matches_its_positive():
    docs = _unit(3, 16, seed=3)
    loss = InfoNCE()(docs.clone(), docs, torch.arange(3), torch.zeros(3, 3, dtype=torch.bool))
    assert loss.item() < 0.5


def test_rank_distillation_is_zero_when_student_equals_target():
    target = _unit(3, 16, seed=4)
    candidates = _unit(3, 8, 16, seed=5)
    loss = ScoreDistillation()
    assert loss(target, target.clone(), candidates).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(target, _unit(3, 16, seed=6), candidates).item() > 0.01


def test_split_off_holds_out_whole_conversations(split):
    stories = {qid: f"story-{i // 3}" for i, qid in enumerate(split.states.ids)}  # three turns a conversation
    for query in split.data.queries:
        query["story_id"] = stories[query["id"]]
    try:
        rest, held = split.split_off(2)
        with pytest.raises(ValueError, match="Cannot hold out"):
            split.split_off(len(set(stories.values())))
    finally:
        for query in split.data.queries:
            del query["story_id"]
    last_two = set(list(dict.fromkeys(stories[q] for q in reversed(split.states.ids)))[:2])
    assert {stories[q] for q in held.states.ids} == last_two
    assert not {stories[q] for q in rest.states.ids} & last_two
    assert len(rest.states.ids) + len(held.states.ids) == len(split.states.ids)
    for part in (rest, held):
        assert set(part.data.qrels) == set(part.states.ids) == {q["id"] for q in part.data.queries}
        for row, qid in enumerate(part.states.ids):
            i = split.states.ids.index(qid)
            assert torch.equal(part.states[row], split.states[i])
            np.testing.assert_array_equal(part.targets[row], split.targets[i])


def test_train_head_from_folders_is_train_head_as_one_call(tiny_data_folder, tiny_llm_folder, tmp_path):
    import json

    from native_retriever.errors import DataFormatError, HeadFileError, InvalidArgumentError
    from native_retriever.training.pipeline import train_head_from_folders

    config = TrainConfig(**(SMALL | {"epochs": 2}))
    head = train_head_from_folders(
        tiny_data_folder,
        dev_holdout=2,
        output=tmp_path / "head",
        config=config,
        llm=tiny_llm_folder,
        cache=tmp_path / "cache",
        max_train_queries=12,
        passage_queries=5,
        max_tokens=256,
    )
    data = head.config.training["data"]
    assert [d["name"] for d in data] == ["tiny", "tiny-passages"] and 0 < data[0]["queries"] < 12
    assert 0 < data[1]["queries"] <= 5 and head.config.metrics["dev"]["data"] == "tiny"
    assert len(head.config.metrics["history"]) == 2 and head.config.prompt_format["max_tokens"] == 256
    saved = ProjectionHead.from_pretrained(tmp_path / "head")
    assert saved.config.metrics == head.config.metrics
    assert json.loads((tmp_path / "head" / "training_log.json").read_text()) == head.config.metrics["history"]
    # arguments and the output folder are checked before any data or model loads
    missing = {"llm": tmp_path / "no-llm", "cache": tmp_path / "cache"}
    with pytest.raises(InvalidArgumentError, match="max_train_queries takes one number, or one per training folder"):
        train_head_from_folders([tiny_data_folder], tiny_data_folder, max_train_queries=[3, 4], **missing)
    with pytest.raises(InvalidArgumentError, match="exactly one of dev"):
        train_head_from_folders(tiny_data_folder, tiny_data_folder, dev_holdout=2, **missing)
    with pytest.raises(InvalidArgumentError, match=r"dev_holdout \(--dev-holdout\) 500: .* hold out between 1 and"):
        train_head_from_folders(tiny_data_folder, dev_holdout=500, **missing)  # refused before the LLM loads
    with pytest.raises(DataFormatError, match="no-data does not exist"):  # not the missing LLM: data is read first
        train_head_from_folders(tmp_path / "no-data", tiny_data_folder, **missing)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "main.py").write_text("print('mine')")
    with pytest.raises(HeadFileError, match="did not write"):
        train_head_from_folders(tiny_data_folder, tiny_data_folder, output=tmp_path / "mine", **missing)


def test_passage_queries_turn_each_passage_into_a_conversation_about_itself(data, teacher, tiny_tokenizer):
    passages = passage_queries(data, tiny_tokenizer, limit=4, exclude=frozenset({data.corpus[1]["id"]}))
    kept = [data.corpus[i] for i in (0, 2, 3)]
    assert passages.name == f"{data.name}-passages" and passages.corpus is data.corpus
    assert [q["messages"] for q in passages.queries] == [[{"role": "user", "content": d["text"]}] for d in kept]
    assert passages.qrels == {q["id"]: {d["id"]: 1} for q, d in zip(passages.queries, kept)}
    assert all(q["question"] == " ".join(d["text"].split()[:32]) for q, d in zip(passages.queries, kept))
    # The alignment target of a passage conversation is the teacher's vector of the passage itself.
    assert target_text(teacher, passages.queries[0], "history") == kept[0]["text"]
    assert len(passage_queries(data, tiny_tokenizer).queries) == len(data.corpus)
    cut = passage_queries(data, tiny_tokenizer, limit=1, max_tokens=5).queries[0]  # cut to fit the LLM window
    ids = tiny_tokenizer(data.corpus[0]["text"], add_special_tokens=False)["input_ids"]
    assert cut["messages"][0]["content"] == tiny_tokenizer.decode(ids[:5]).strip() != data.corpus[0]["text"]

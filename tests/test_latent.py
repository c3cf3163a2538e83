"""The latent view: cached soft-token loop, the adapter beside the agent, file format, losses, training, CLI."""

from __future__ import annotations

import json
import random
import threading
import warnings

import numpy as np
import pytest
import torch

from native_retriever.conversation import encode_document
from native_retriever.errors import (
    ConversationError,
    DataFormatError,
    HeadFileError,
    IncompatibleHeadError,
    LatentConfigError,
)
from native_retriever.latent import LatentConfig, LatentEmbedder, LatentEncoder
from native_retriever.latent.encoder import (
    check_k,
    decoder_of,
    latent_states,
    left_pad,
    positions,
    soft_token,
)
from native_retriever.latent.losses import TrajectoryAlignment, boundary_steps
from native_retriever.latent.training import (
    Example,
    ExplicitInputs,
    LatentTrainConfig,
    build_examples,
    make_batch,
    train_latent,
)
from native_retriever.training.losses import InfoNCE, ScoreDistillation

CONVERSATION = [
    {"role": "user", "content": "Tell me about the Zorblat festival near Quenwick."},
    {"role": "assistant", "content": "It is a spring festival."},
    {"role": "user", "content": "What can I see there?"},
]


def latent_states_uncached(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, temperature: float = 1.0
) -> torch.Tensor:
    """The test oracle: :func:`latent_states` by full recomputation at every step, without a cache."""
    check_k(k)
    decoder = decoder_of(model)
    embeds, mask, states = model.get_input_embeddings()(input_ids), attention_mask, []
    for step in range(k):
        out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False)
        hidden = out.last_hidden_state[:, -1]
        states.append(hidden)
        if step < k - 1:
            embeds = torch.cat([embeds, soft_token(model, hidden, temperature).unsqueeze(1)], dim=1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return torch.stack(states, dim=1)


def randomize_lora(encoder: LatentEncoder, seed: int = 0, scale: float = 0.2) -> None:
    """LoRA B starts at zero (an identity adapter); give it values so the adapter changes the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture
def encoder(make_tiny_llm, tiny_tokenizer):
    model = make_tiny_llm(seed=0)
    enc = LatentEncoder.create(model, tiny_tokenizer, LatentConfig(k=3, lora_r=4, lora_alpha=8))
    randomize_lora(enc)
    return enc


def test_cached_loop_equals_full_recomputation_with_left_padding(encoder, tiny_tokenizer):
    sequences = [
        encoder.conversation_ids(CONVERSATION),
        encoder.conversation_ids([{"role": "user", "content": "Who built it?"}]),
        encoder.document_ids("The Mirravel river is found near Dunhollow. Visitors come in autumn."),
    ]
    assert len({len(s) for s in sequences}) == 3  # real left padding in the batch
    ids, mask = left_pad(sequences, encoder.pad_id)
    with torch.no_grad(), encoder.adapter_active():
        cached = latent_states(encoder.model, ids, mask, k=4)
        full = latent_states_uncached(encoder.model, ids, mask, k=4)
        alone = [latent_states(encoder.model, *left_pad([s], encoder.pad_id), k=4)[0] for s in sequences]
    assert cached.shape == (3, 4, 64)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached, torch.stack(alone), atol=1e-5, rtol=1e-4)  # padding changes nothing
    assert not torch.allclose(cached[:, 0], cached[:, 1])  # the soft tokens do move the state
    # K steps are a prefix of K+1 steps, and K=1 is the last input token's state
    with torch.no_grad(), encoder.adapter_active():
        one = latent_states(encoder.model, ids, mask, k=1)
    torch.testing.assert_close(one[:, 0], cached[:, 0], atol=1e-5, rtol=1e-4)


def test_soft_token_is_the_softmax_weighted_embedding(encoder):
    hidden = torch.randn(2, 64)
    table = encoder.model.get_input_embeddings().weight
    logits = encoder.model.get_output_embeddings()(hidden).double()
    expected = torch.softmax(logits / 0.5, -1) @ table.double()
    torch.testing.assert_close(soft_token(encoder.model, hidden, 0.5).double(), expected, atol=1e-5, rtol=1e-4)
    sharp = soft_token(encoder.model, hidden, 1e-4)  # a tiny temperature picks the argmax token's embedding
    torch.testing.assert_close(sharp, table[logits.argmax(-1)], atol=1e-4, rtol=1e-4)


def test_embedding_is_normalised_mean_of_the_k_states(encoder):
    sequences = [encoder.conversation_ids(CONVERSATION)]
    vectors = encoder.embed_ids(sequences, k=3)
    with torch.no_grad(), encoder.adapter_active():
        states = latent_states(encoder.model, *left_pad(sequences, encoder.pad_id), k=3)
    expected = torch.nn.functional.normalize(states.mean(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(encoder.embed_ids(sequences, k=1), vectors, atol=1e-3)  # K at inference is honoured


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_below_one_is_refused(encoder, k):
    with pytest.raises(LatentConfigError, match="at least 1"):
        encoder.embed_ids([[1, 2, 3]], k=k)
    with pytest.raises(LatentConfigError):
        LatentConfig(k=k)


def test_bad_config_values_are_refused(make_tiny_llm, tiny_tokenizer):
    with pytest.raises(LatentConfigError, match="temperature"):
        LatentConfig(temperature=0)
    with pytest.raises(LatentConfigError, match="rank"):
        LatentConfig(lora_r=0)
    with pytest.raises(LatentConfigError, match="K="):
        LatentTrainConfig(k=0)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(temperature="hot"), "LatentConfig.temperature='hot'; use a positive one"),
        (lambda d: d.update(k=2.5), "K=2.5 latent steps"),
        (lambda d: d.update(target_modules=[]), "LatentConfig.target_modules=[]; use a non-empty list"),
        (lambda d: d.update(document_max_tokens="256"), "LatentConfig.document_max_tokens='256'"),
        (lambda d: d.update(prompt_format={"max_tokens": None}), "LatentConfig.prompt_format="),
        (lambda d: d.pop("llm"), "LatentConfig.llm={}; it must record the llm"),
        (lambda d: d.update(version=2), "config version 2; this native-retriever reads version 1. Upgrade"),
        (lambda d: d.update(lora_rank=8), "unknown keys 'lora_rank'"),
    ],
    ids=["temperature", "k", "modules", "window", "prompt", "no-llm", "version", "unknown-key"],
)
def test_invalid_latent_config_is_refused_at_load(tiny_llm, tmp_path, edit, expected):
    from native_retriever.models import llm_info

    LatentConfig(k=2, llm=llm_info(tiny_llm), prompt_format={"system_prompt": None, "max_tokens": 64}).save(tmp_path)
    path = tmp_path / "latent_config.json"
    assert LatentConfig.load(tmp_path).k == 2
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(HeadFileError) as info:
        LatentConfig.load(tmp_path)
    assert str(path) + ":" in str(info.value) and expected in str(info.value)
    assert "retrain the adapter" in str(info.value)


def test_agent_generates_with_base_weights_beside_the_adapter(make_tiny_llm, tiny_tokenizer):
    model = make_tiny_llm(seed=3)
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    prompt = tiny_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    inputs = tiny_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    embedding = model.get_input_embeddings().weight
    pointer, count = embedding.data_ptr(), sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        before = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        logits_before = model(**inputs).logits
    enc = LatentEncoder.create(model, tiny_tokenizer, LatentConfig(lora_r=4))
    randomize_lora(enc)
    with torch.no_grad():
        after = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        torch.testing.assert_close(model(**inputs).logits, logits_before)
        with enc.adapter_active():
            adapted = model(**inputs).logits
    assert torch.equal(before, after)
    assert not torch.allclose(adapted, logits_before, atol=1e-3)  # the adapter is real, just off for the agent
    assert torch.allclose(model(**inputs).logits, logits_before)  # and off again after the retrieval pass
    # the same model object and base weights, plus only the LoRA matrices
    assert enc.model is model and model.get_input_embeddings().weight.data_ptr() == pointer
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in model.parameters()) == count + lora
    embedder = LatentEmbedder(model, tiny_tokenizer, enc)
    embedder.embed_conversation(CONVERSATION)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=12, do_sample=False), before)


def test_save_load_and_wrong_base_model(encoder, make_tiny_llm, tiny_tokenizer, tmp_path):
    folder = tmp_path / "adapter"
    encoder.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} >= {
        "latent_config.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert not list(folder.glob("*.bin"))
    loaded = LatentEmbedder(make_tiny_llm(seed=0), tiny_tokenizer, folder)
    original = LatentEmbedder(encoder.model, tiny_tokenizer, encoder)
    np.testing.assert_allclose(
        loaded.embed_conversation(CONVERSATION), original.embed_conversation(CONVERSATION), atol=1e-5
    )
    with pytest.raises(IncompatibleHeadError, match="'fingerprint'"):
        LatentEncoder.from_pretrained(make_tiny_llm(seed=1), tiny_tokenizer, folder)
    with pytest.raises(IncompatibleHeadError, match="'hidden_size'"):
        LatentEncoder.from_pretrained(make_tiny_llm(seed=0, hidden_size=32), tiny_tokenizer, folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(HeadFileError, match="adapter_model.safetensors"):
        LatentEncoder.from_pretrained(make_tiny_llm(seed=0), tiny_tokenizer, folder)
    with pytest.raises(HeadFileError, match="latent_config.json"):
        LatentEncoder.from_pretrained(make_tiny_llm(seed=0), tiny_tokenizer, tmp_path / "nothing")


def test_latent_embedder_has_the_native_embedder_methods(encoder, tiny_tokenizer, capsys):
    embedder = LatentEmbedder(encoder.model, tiny_tokenizer, encoder)
    assert embedder.dimension == 64 and embedder.model is encoder.model and embedder.tokenizer is tiny_tokenizer
    single = embedder.embed_conversation(CONVERSATION)
    assert single.shape == (64,) and single.dtype == np.float32
    assert capsys.readouterr().err == ""  # no progress bar on one query
    batch = embedder.embed_conversations([CONVERSATION, [{"role": "user", "content": "Who built it?"}]] * 3)
    np.testing.assert_allclose(batch[0], single, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_query("Who built it?"), batch[1], atol=1e-5)
    docs = embedder.embed_documents(["The Zorblat festival has paper lanterns.", "A canal with goats."])
    assert docs.shape == (2, 64) and np.allclose(np.linalg.norm(docs, axis=1), 1, atol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 64)
    with pytest.raises(ConversationError):
        embedder.embed_documents(["  "])
    with pytest.raises(LatentConfigError):
        LatentEmbedder(encoder.model, tiny_tokenizer, encoder, k=0)
    k1 = LatentEmbedder(encoder.model, tiny_tokenizer, encoder, k=1)
    assert not np.allclose(k1.embed_conversation(CONVERSATION), single, atol=1e-3)
    results = {}

    def work(i: int) -> None:
        results[i] = embedder.embed_conversation(CONVERSATION)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for vector in results.values():
        np.testing.assert_allclose(vector, single, atol=1e-5)


def test_document_format_cuts_long_text(tiny_tokenizer):
    text = " ".join(["The Zorblat festival is found near Quenwick."] * 80)
    ids = encode_document(tiny_tokenizer, text, max_tokens=64)
    assert len(ids) <= 64
    assert tiny_tokenizer.decode(ids).rstrip().endswith("<|im_start|>assistant")
    assert len(encode_document(tiny_tokenizer, "Short.", max_tokens=64)) < 64
    with pytest.raises(ConversationError, match="empty"):
        encode_document(tiny_tokenizer, "")


def test_boundary_steps_downsample_and_repeat():
    assert boundary_steps(7, 3) == [0, 3, 6]
    assert boundary_steps(3, 3) == [0, 1, 2]
    assert boundary_steps(2, 4) == [0, 1, 1, 1]
    assert boundary_steps(1, 1) == [0]
    assert boundary_steps(10, 1) == [0]
    with pytest.raises(ValueError):
        boundary_steps(0, 3)


def test_losses():
    torch.manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    queries = torch.nn.functional.normalize(docs[:3] + 0.1 * torch.randn(3, 8), dim=-1).requires_grad_()
    labels, ignore = torch.tensor([0, 1, 2]), torch.zeros(3, 6, dtype=torch.bool)
    good = InfoNCE(0.02)(queries, docs, labels, ignore)
    bad = InfoNCE(0.02)(queries, docs, torch.tensor([3, 4, 5]), ignore)
    assert good < bad
    ignore[0, 3] = True
    assert torch.isfinite(InfoNCE(0.02)(queries, docs, labels, ignore))
    kl = ScoreDistillation(0.02)
    assert kl(queries, queries, docs, ignore).abs() < 1e-6  # identical views: zero
    teacher = queries.detach().clone().requires_grad_()
    student = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1).requires_grad_()
    value = kl(teacher, student, docs, ignore)
    assert value > 0 and torch.isfinite(value)
    value.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0  # explicit scores are detached
    segments = torch.nn.functional.normalize(torch.randn(3, 2, 8), dim=-1)
    assert TrajectoryAlignment(0.05)(segments, segments, docs, ignore).abs() < 1e-6


def example(
    qid: str, positives: list[int], rationale: str = "Evidence: it is near Quenwick.\n\nAnswer: owls"
) -> Example:
    return Example(qid, CONVERSATION, rationale, positives, [5, 6])


def test_batch_without_a_positive_is_refused():
    with pytest.raises(DataFormatError, match="'q2' has no positive"):
        make_batch([example("q1", [0]), example("q2", [])], random.Random(0))
    docs, labels, ignore = make_batch([example("q1", [0, 1]), example("q2", [1])], random.Random(0))
    assert len(docs) == len(set(docs)) and docs[labels[1]] == 1
    if docs[labels[0]] == 0:  # q1's other positive (1) is in the batch: not a negative for q1
        assert ignore[0, docs.index(1)]
    assert not ignore[1].any()


def test_explicit_view_boundaries_and_cut_rationale(tiny_tokenizer):
    from native_retriever.conversation import PromptFormat

    inputs = ExplicitInputs(tiny_tokenizer, PromptFormat(), max_rationale_tokens=1000)
    ids, bounds = inputs(example("q", [0], "It is near Quenwick. It has owls.\n\nAnswer: owls"))
    assert len(bounds) == 3 and bounds[-1] == len(ids) - 1 and bounds == sorted(bounds)
    assert tiny_tokenizer.decode(ids[bounds[0]]).strip().endswith(".")
    short = ExplicitInputs(tiny_tokenizer, PromptFormat(), max_rationale_tokens=8)
    with pytest.warns(UserWarning, match="max_rationale_tokens=8"):
        cut_ids, cut_bounds = short(example("q", [0], "It is near Quenwick. " * 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, counted afterwards
        short(example("q", [0], "It is near Quenwick. " * 20))
    assert short.cut == 2 and cut_bounds[-1] == len(cut_ids) - 1
    assert len(cut_ids) - len(ids) + len(ids) - (len(ids) - bounds[-1] - 1) > 0
    empty_ids, empty_bounds = inputs(example("q", [0], ""))
    assert empty_bounds == [len(empty_ids) - 1]


def test_closed_explicit_layout_ends_on_the_next_generation_prompt(tiny_tokenizer):
    from native_retriever.conversation import PromptFormat
    from native_retriever.latent.training import LatentTrainConfig

    query = example("q", [0])
    reply_ids, reply_bounds = ExplicitInputs(tiny_tokenizer, PromptFormat(), 1000)(query)
    closed_ids, closed_bounds = ExplicitInputs(tiny_tokenizer, PromptFormat(), 1000, "closed")(query)
    tail = closed_ids[len(reply_ids) :]
    assert closed_ids[: len(reply_ids)] == reply_ids and closed_bounds == reply_bounds and tail
    # the tail is exactly what the chat template writes after the reply, up to and including the generation prompt
    chat = tiny_tokenizer.apply_chat_template(
        [*CONVERSATION, {"role": "assistant", "content": query.rationale}], tokenize=False, add_generation_prompt=True
    )
    prompt_only = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert chat.endswith(tiny_tokenizer.decode(tail)) and prompt_only.endswith(tiny_tokenizer.decode(tail[-2:]))
    with pytest.raises(LatentConfigError, match="explicit_layout"):
        LatentTrainConfig(explicit_layout="after")


def test_build_examples_skips_queries_without_passages(tiny_data_folder):
    from native_retriever.data import load_data

    data = load_data(tiny_data_folder)
    data.qrels[data.queries[0]["id"]] = {"missing-doc": 1}
    with pytest.warns(UserWarning, match="1 queries have no judged passage"):
        examples = build_examples(data, max_queries=None, hard_pool=5)
    assert len(examples) == len(data.queries) - 1
    assert all(e.positives and e.hard and not set(e.hard) & set(e.positives) for e in examples)
    cached = build_examples(data, rationales={data.queries[1]["id"]: "cached"}, max_queries=None)
    assert {e.qid: e.rationale for e in cached}[data.queries[1]["id"]] == "cached"


def small_config(**overrides) -> LatentTrainConfig:
    settings = dict(k=2, lora_r=4, lora_alpha=8, batch_size=4, grad_accum=2, lr=5e-3, max_tokens=128)
    settings.update(document_max_tokens=64, max_rationale_tokens=32, checkpoint_every=1, seed=1)
    return LatentTrainConfig(**(settings | overrides))


def tiny_examples(tiny_data_folder, n: int = 16):
    from native_retriever.data import load_data

    data = load_data(tiny_data_folder)
    for q in data.queries:
        q["rationale"], q["answer"] = f"{q['question']} The topic is {q['id']}.", "yes"
    return build_examples(data, max_queries=n, hard_pool=5), [d["text"] for d in data.corpus]


def test_training_learns_saves_and_resumes(make_tiny_llm, tiny_tokenizer, tiny_data_folder, tmp_path, monkeypatch):
    from native_retriever.latent import training

    examples, corpus = tiny_examples(tiny_data_folder)
    config = small_config()
    model = make_tiny_llm(seed=0)
    enc = train_latent(model, tiny_tokenizer, examples, corpus, config, tmp_path / "full")
    history = json.loads((tmp_path / "full" / "training_log.json").read_text())
    assert len(history) == 2 and {"loss_latent", "loss_explicit", "loss_distill", "loss_trajectory"} <= set(history[0])
    assert (tmp_path / "full" / "loss_curve.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "full" / "latent_config.json").read_text())
    assert saved["k"] == 2 and saved["training"]["examples"] == 16 and saved["llm"]["hidden_size"] == 64
    assert any(p.abs().sum() > 0 for n, p in enc.model.named_parameters() if "lora_B" in n)  # it trained
    assert not model.training or model.training is False

    calls = {"n": 0}
    real_plot = training.plot_losses

    def crash(*args, **kwargs):  # the first checkpoint is written, then the run "dies"
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "plot_losses", crash)
    with pytest.raises(KeyboardInterrupt):
        train_latent(make_tiny_llm(seed=0), tiny_tokenizer, examples, corpus, config, tmp_path / "resumed")
    assert calls["n"] == 1 and (tmp_path / "resumed" / "checkpoint" / "state.json").is_file()
    monkeypatch.setattr(training, "plot_losses", real_plot)
    again = train_latent(
        make_tiny_llm(seed=0), tiny_tokenizer, examples, corpus, config, tmp_path / "resumed", resume=True
    )
    resumed = json.loads((tmp_path / "resumed" / "training_log.json").read_text())
    assert [h["step"] for h in resumed] == [1, 2]
    assert resumed[1]["loss_total"] == pytest.approx(history[1]["loss_total"], rel=1e-3)
    for (name, a), (_, b) in zip(enc.model.named_parameters(), again.model.named_parameters()):
        if "lora_" in name:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_contrastive_only_skips_the_explicit_view(make_tiny_llm, tiny_tokenizer, tiny_data_folder, tmp_path):
    examples, corpus = tiny_examples(tiny_data_folder, n=4)
    config = small_config(k=1, explicit_weight=0, distill_weight=0, trajectory_weight=0)
    assert not config.explicit_view
    train_latent(make_tiny_llm(seed=0), tiny_tokenizer, examples, corpus, config, tmp_path / "c")
    history = json.loads((tmp_path / "c" / "training_log.json").read_text())
    assert set(history[0]) == {"step", "loss_latent", "loss_total", "seconds"}


def test_cli_train_latent(tiny_llm_folder, tiny_data_folder, tmp_path, capsys):
    from native_retriever.cli import main

    out = tmp_path / "adapter"
    args = ["train-latent", "--train", tiny_data_folder, "--llm", tiny_llm_folder, "-o", str(out)]
    small = ["--max-train-queries", "8", "--lora-r", "4", "--k", "2", "--max-tokens", "128"]
    assert main([*args, *small, "--document-max-tokens", "64", "--max-rationale-tokens", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 8 and report["steps"] == 1 and (out / "adapter_model.safetensors").is_file()
    assert main([*args, "--k", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err

    report_path = tmp_path / "report.json"
    evaluate = ["eval", "--data", tiny_data_folder, "--llm", tiny_llm_folder, "--output", str(report_path)]
    assert (
        main([*evaluate, "--systems", "teacher-question,latent", "--latent-adapter", str(out), "--latent-k", "1"]) == 0
    )
    report = json.loads(report_path.read_text())
    assert set(report["systems"]) == {"teacher-question", "latent"} and report["latent"]["latent"]["k"] == 1
    assert (
        0 <= report["systems"]["latent"]["recall@10"] <= 1
        and report["systems"]["latent"]["queries"] == report["queries"] > 0
    )
    # a latent-only eval never loads the teacher (a missing one is no error) and saves the latent run
    runs, no_teacher = tmp_path / "runs", str(tmp_path / "no-teacher")
    latent_only = [
        "--systems",
        "latent",
        "--latent-adapter",
        str(out),
        "--teacher",
        no_teacher,
        "--save-runs",
        str(runs),
    ]
    assert main([*evaluate, *latent_only]) == 0
    queries = {line.split()[0] for line in (runs / "latent.trec").read_text().splitlines()}
    assert len(queries) == json.loads(report_path.read_text())["queries"]
    with pytest.raises(SystemExit, match="--latent-contrastive-adapter"):
        main([*evaluate, "--systems", "latent-contrastive"])


def test_evaluate_systems_indexes_documents_with_the_latent_encoder(encoder, tiny_tokenizer, tiny_data_folder):
    from native_retriever.data import load_data
    from native_retriever.evaluation import evaluate_systems

    data = load_data(tiny_data_folder, max_queries=6)
    embedder = LatentEmbedder(encoder.model, tiny_tokenizer, encoder)

    class NoTeacher:  # the latent system indexes the corpus itself: no teacher pass over it
        def encode(self, *args, **kwargs):
            raise AssertionError("the teacher encoded the corpus for a latent-only evaluation")

    report = evaluate_systems(data, ["latent"], latent_embedders={"latent": embedder}, teacher=NoTeacher())
    metrics = report["systems"]["latent"]
    assert metrics["queries"] == 6 and 0 <= metrics["mrr@10"] <= metrics["recall@10"] <= 1
    # the same numbers by hand: documents and conversations both through the latent encoder
    docs = embedder.embed_documents([d["text"] for d in data.corpus])
    queries = embedder.embed_conversations([q["messages"] for q in data.queries])
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    hits = [any(data.doc_ids[c] in data.qrels[q["id"]] for c in row) for q, row in zip(data.queries, top)]
    assert metrics["recall@10"] == pytest.approx(np.mean(hits), abs=1e-3)
    with pytest.raises(ValueError, match="latent_embedders"):
        evaluate_systems(data, ["latent-contrastive"], latent_embedders={"latent": embedder})


def test_cli_latent_rationales_cache_and_use(tiny_llm_folder, tiny_data_folder, tmp_path, capsys):
    from native_retriever.cli import main

    cache = tmp_path / "rationales.jsonl"
    args = ["latent-rationales", "--data", tiny_data_folder, "--llm", tiny_llm_folder, "-o", str(cache)]
    assert main([*args, "--max-queries", "3", "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 3 and all(set(r) == {"id", "rationale"} for r in rows)
    assert main([*args, "--max-queries", "5", "--max-new-tokens", "4"]) == 0  # extends, keeps the first three
    assert [json.loads(line)["id"] for line in cache.read_text().splitlines()][:3] == [r["id"] for r in rows]
    assert len(cache.read_text().splitlines()) == 5
    out = tmp_path / "adapter"
    train = ["train-latent", "--train", tiny_data_folder, "--llm", tiny_llm_folder, "-o", str(out)]
    small = ["--max-train-queries", "4", "--lora-r", "4", "--k", "2", "--max-tokens", "128", "--rationales", str(cache)]
    assert main([*train, *small, "--document-max-tokens", "64", "--max-rationale-tokens", "16"]) == 0
    saved = json.loads((out / "latent_config.json").read_text())
    assert saved["training"]["data"]["rationales"] == str(cache)


def test_write_rationales_and_train_latent_from_folder_are_the_commands_as_calls(
    tiny_llm_folder, tiny_data_folder, tmp_path
):
    from native_retriever.errors import HeadFileError
    from native_retriever.latent.training import train_latent_from_folder, write_rationales

    cache = tmp_path / "rationales.jsonl"
    assert write_rationales(tiny_data_folder, cache, llm=tiny_llm_folder, max_queries=2, max_new_tokens=4) == 2
    assert write_rationales(tiny_data_folder, cache, llm=tiny_llm_folder, max_queries=4, max_new_tokens=4) == 4
    ids = [json.loads(line)["id"] for line in cache.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 4
    out = tmp_path / "adapter"
    config = small_config(checkpoint_every=10)
    encoder = train_latent_from_folder(
        tiny_data_folder, out, config, llm=tiny_llm_folder, rationales=str(cache), max_train_queries=4
    )
    training = encoder.config.training
    assert training["examples"] == 4 and training["optimizer_steps"] == 1
    assert training["data"] == {"name": "tiny", "queries": 4, "passages": 30, "rationales": str(cache)}
    assert json.loads((out / "latent_config.json").read_text())["training"] == training
    # a folder of the user's is refused before the data or the model loads
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(HeadFileError, match="did not write"):
        train_latent_from_folder(tmp_path / "no-data", mine, config, llm=tmp_path / "no-llm")
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_real_smollm2_latent_view_beside_the_agent():
    from native_retriever.generation import generate_text
    from native_retriever.models import load_llm

    model, tokenizer = load_llm()
    chat = [{"role": "user", "content": "Name one planet."}]
    before = generate_text(model, tokenizer, chat, max_new_tokens=8)
    encoder = LatentEncoder.create(model, tokenizer, LatentConfig(lora_r=8, lora_layers=2))
    randomize_lora(encoder, scale=0.05)
    embedder = LatentEmbedder(model, tokenizer, encoder)
    ids = [encoder.conversation_ids(CONVERSATION), encoder.document_ids("Mars is the fourth planet from the Sun.")]
    input_ids, mask = left_pad(ids, encoder.pad_id)
    with torch.no_grad(), encoder.adapter_active():
        cached = latent_states(model, input_ids, mask, k=3)
        full = latent_states_uncached(model, input_ids, mask, k=3)
    torch.testing.assert_close(cached, full, atol=2e-3, rtol=1e-4)  # final states reach |40|: fp32 sum order
    vectors = embedder.embed_documents(["Mars is the fourth planet from the Sun.", "Paris is in France."])
    assert vectors.shape == (2, 576) and embedder.embed_query("Which planet is red?").shape == (576,)
    assert generate_text(model, tokenizer, chat, max_new_tokens=8) == before

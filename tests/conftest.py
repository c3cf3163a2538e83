"""Shared fixtures: a tiny byte-level BPE tokenizer with a ChatML template, a tiny random Llama, the real teacher,
projection heads for the tiny LLM, and a small made-up data folder in the shared-data format."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<unk>"]

# Thirty made-up topics: (name, kind, place, season, feature). Every name is an invented word.
TOPICS = [
    ("Zorblat", "festival", "Quenwick", "spring", "paper lanterns shaped like owls"),
    ("Mirravel", "river", "Dunhollow", "autumn", "purple reeds along its banks"),
    ("Tessaline", "bridge", "Karrowmere", "winter", "copper railings that sing in the wind"),
    ("Gobrimax", "engine", "Vellport", "summer", "a flywheel carved from basalt"),
    ("Plinketh", "orchard", "Sowerby Fen", "autumn", "blue pears with silver seeds"),
    ("Ulvastrand", "lighthouse", "Cape Morrow", "winter", "a green lamp visible for forty miles"),
    ("Brisquell", "dance", "Ostenfeld", "summer", "dancers who balance bowls of water"),
    ("Carnavoy", "library", "Hethering", "spring", "books chained to oak reading desks"),
    ("Drelmoth", "volcano", "Isle of Pask", "winter", "ash that falls as grey snow"),
    ("Fennimore", "clock tower", "Lowstead", "autumn", "a bell that rings thirteen times"),
    ("Gristlewood", "forest", "Ambercross", "spring", "trees with red spiral bark"),
    ("Halvidor", "cheese", "Marrowdale", "summer", "a rind washed in plum wine"),
    ("Ixtaby", "canal", "Port Selwyn", "winter", "boats pulled by trained goats"),
    ("Jorrumund", "observatory", "Skellan Ridge", "autumn", "a telescope made of brass rings"),
    ("Kelptide", "market", "Brinemouth", "summer", "stalls that float on rafts"),
    ("Lummercast", "choir", "Tollgate", "winter", "singers who hum in five keys"),
    ("Morvane", "glacier", "Northreach", "spring", "ice caves lit by glowing moss"),
    ("Nettlebrook", "mill", "Wendlecombe", "autumn", "a waterwheel with ninety paddles"),
    ("Orrindale", "castle", "Pellmoor", "summer", "towers painted in yellow stripes"),
    ("Pasquarry", "mine", "Duskholm", "winter", "tunnels that glitter with mica"),
    ("Quillibet", "bakery", "Saltmarsh", "spring", "bread braided into knots"),
    ("Rondeleth", "garden", "Fairhaven", "summer", "hedges trimmed into sea serpents"),
    ("Sablecroft", "railway", "Grimsmouth", "autumn", "carriages pulled by a steam dragon"),
    ("Thorncaster", "tournament", "Elderholt", "spring", "knights who joust on stilts"),
    ("Umbervale", "vineyard", "Rosslyn Down", "autumn", "grapes that ripen at night"),
    ("Vexmoor", "swamp", "Blackwater", "summer", "frogs that croak in chords"),
    ("Wimbrelle", "harbour", "Gullcliff", "winter", "a seawall built of whale bones"),
    ("Yarrowgate", "school", "Penhallow", "spring", "lessons taught entirely in song"),
    ("Zephyrine", "windmill", "Hallowfield", "summer", "sails woven from sheep wool"),
    ("Ashgrimble", "museum", "Corvenstead", "winter", "a hall of mechanical birds"),
]


def passage_text(topic: tuple[str, ...]) -> str:
    name, kind, place, season, feature = topic
    return (
        f"The {name} {kind} is found near {place}. Visitors come in {season} to see {feature}. "
        f"Local stories say the {name} {kind} was first built by a clever family from {place}."
    )


def topic_index(embedder):
    """A ``VectorIndex`` of the TOPICS passages through ``embedder``'s teacher: ids ``d0``, ``d1``, ..., metadata
    ``{"n": i}``."""
    from native_retriever import VectorIndex

    texts = [passage_text(topic) for topic in TOPICS]
    index = VectorIndex(embedder.dimension)
    index.add(
        [f"d{i}" for i in range(len(texts))],
        embedder.embed_documents(texts),
        texts,
        [{"n": i} for i in range(len(texts))],
    )
    return index


def conversations() -> list[tuple[str, list[dict], int]]:
    """About forty (query id, messages, topic index) with 1-3 user turns; the last question is about the topic."""
    rng = random.Random(7)
    out = []
    for i, (name, kind, place, season, _feature) in enumerate(TOPICS):
        out.append((f"q{i}a", [{"role": "user", "content": f"What can I see at the {name} {kind}?"}], i))
        if i % 3 == 0:
            messages = [
                {"role": "user", "content": f"Tell me about the {name} {kind} near {place}."},
                {"role": "assistant", "content": f"The {name} {kind} is a famous {kind} near {place}."},
                {"role": "user", "content": f"When should I visit the {name} {kind}?"},
            ]
            out.append((f"q{i}b", messages, i))
        if i % 4 == 1:
            other = TOPICS[(i + 5) % len(TOPICS)]
            messages = [
                {"role": "user", "content": f"Is the {other[0]} {other[1]} worth a trip?"},
                {"role": "assistant", "content": f"Yes, many people visit it in {other[3]}."},
                {"role": "user", "content": f"And what about the {name} {kind} in {place}?"},
                {"role": "assistant", "content": f"It is quiet in {season}."},
                {"role": "user", "content": f"Who built the {name} {kind}?"},
            ]
            out.append((f"q{i}c", messages, i))
    rng.shuffle(out)
    return out


FILLER_WORDS = (
    "the a an of to in and is was for on with as by at from it this that what who when where why how "
    "can should could would tell me about visit see built first near famous quiet people many yes "
    "trip worth local stories say clever family visitors come assistant user system helpful question "
    "answer search query rewrite standalone conversation names everything refers last only one"
)


def tokenizer_lines() -> list[str]:
    rng = random.Random(3)
    words = FILLER_WORDS.split()
    lines = [passage_text(t) for t in TOPICS] * 3
    for _ in range(300):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + ".")
    return lines


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_lines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_llm(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=1024,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


@pytest.fixture(scope="session")
def make_tiny_llm(tiny_tokenizer):
    """Another tiny Llama for the same tokenizer: ``make_tiny_llm(seed=1, initializer_range=0.05)``."""

    def make(seed: int = 0, **overrides):
        return make_llm(len(tiny_tokenizer), seed=seed, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_llm(tiny_tokenizer):
    model = make_llm(len(tiny_tokenizer))
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    model.config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    return model


@pytest.fixture(scope="session")
def tiny_llm_folder(tiny_llm, tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llm")
    tiny_llm.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def teacher():
    from native_retriever.teacher import Teacher

    return Teacher.from_pretrained()


@pytest.fixture(scope="session")
def tiny_head_factory(tiny_llm, teacher):
    from native_retriever.heads import HeadConfig, ProjectionHead
    from native_retriever.models import llm_info

    llm = llm_info(tiny_llm)

    def make(architecture: str = "linear", input_mode: str = "context", seed: int = 0, **overrides):
        settings = dict(
            hidden_size=llm["hidden_size"],
            output_dim=384,
            architecture=architecture,
            input_mode=input_mode,
            d_model=32,
            num_layers=1,
            num_heads=2,
            max_input_tokens=128,
            llm=dict(llm),
            teacher=dict(teacher.info),
            prompt_format={"system_prompt": None, "max_tokens": 256},
        )
        settings.update(overrides)
        torch.manual_seed(seed)
        return ProjectionHead(HeadConfig(**settings)).eval()

    return make


@pytest.fixture(scope="module")
def embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    """A NativeEmbedder on the tiny LLM with an attention head (test modules that need another define their own)."""
    from native_retriever.embedder import NativeEmbedder

    return NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("attention"), teacher=teacher)


@pytest.fixture
def query_embedder(embedder, tiny_head_factory, teacher, monkeypatch):
    """A NativeEmbedder on the test embedder's LLM with a query-mode head, in a process that has said no notice yet
    (``native_retriever.notices``)."""
    import native_retriever.notices as notices
    from native_retriever.embedder import NativeEmbedder

    monkeypatch.setattr(notices, "_said", set())
    head = tiny_head_factory("attention", input_mode="query")
    return NativeEmbedder(embedder.model, embedder.tokenizer, head=head, teacher=teacher)


@pytest.fixture(scope="session")
def tiny_data_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "tiny"
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for i, topic in enumerate(TOPICS):
            doc = {"id": f"d{i}", "text": passage_text(topic), "title": f"{topic[0]} {topic[1]}"}
            handle.write(json.dumps(doc) + "\n")
    convs = conversations()
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for qid, messages, _ in convs:
            row = {"id": qid, "messages": messages, "question": messages[-1]["content"], "answer": "", "source": "t"}
            handle.write(json.dumps(row) + "\n")
    (folder / "qrels.tsv").write_text("".join(f"{qid}\t0\td{topic}\t1\n" for qid, _, topic in convs))
    return str(folder)


@pytest.fixture
def data_copy(tiny_data_folder, tmp_path) -> Path:
    """A writable copy of the tiny data folder, to damage."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_data_folder, folder)
    return folder


def append_line(path: Path, raw: bytes) -> int:
    """Append one raw line to a data file; returns its line number."""
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([*lines, raw]) + b"\n")
    return len(lines) + 1

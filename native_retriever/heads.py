"""Projection heads: an LLM's token hidden states -> a unit vector in the teacher's embedding space.

A head lives in a folder: ``head.safetensors`` (weights) and ``config.json`` (what it was trained for: LLM and
teacher identity, layers, token selection, prompt format, training data and metrics). Loading a head onto another
LLM or teacher is refused with a message naming the field that differs.

The heads shipped in ``native_retriever/heads/`` form a registry (:func:`shipped_heads`, found by scanning their
configs): when no head is given, :func:`shipped_head_for` picks the one whose config records the loaded LLM's weight
fingerprint, so a head folder added there is picked up by just being there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import HeadConfigError, HeadFileError, IncompatibleHeadError, NoShippedHeadError
from .files import atomic_folder, check_identity, fingerprints_match, read_config, reading, verify_folder
from .models import BUILTIN_NAMES

HEAD_FORMAT = "native-retriever-head"
HEAD_VERSION = 2  #: the config.json version this package writes
#: config.json versions this package reads (1: before ``tokens`` was renamed ``span``; its files load unchanged)
HEAD_VERSIONS = (1, 2)
RENAMED_KEYS = {"tokens": "span"}  #: old config key -> its name now (read from any version)
ARCHITECTURES = ("linear", "attention", "transformer")
INPUT_MODES = ("context", "query")
SPANS = ("all", "last_user", "last", "query")
#: Required keys of a config's identity sections and their types (``check_identity`` compares them at bind time).
LLM_KEYS: dict[str, type] = {"name": str, "hidden_size": int, "num_layers": int, "vocab_size": int, "fingerprint": list}
TEACHER_KEYS: dict[str, type] = {"name": str, "dim": int, "fingerprint": list}
PROMPT_FORMAT_KEYS = ("system_prompt", "max_tokens")
_TRAIN_FIX = "retrain the head (`native-retriever train-head`)"
SHIPPED_HEADS = Path(__file__).parent / "heads"  #: the shipped heads' folder, one sub-folder per head


def is_int(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_section(error: type[Exception], owner: str, name: str, value: object, keys: dict[str, type]) -> None:
    """Refuse an identity section (``llm`` / ``teacher``) that is not a dict with ``keys`` of their types."""
    shown = ", ".join(keys)
    if not isinstance(value, dict) or not value:
        raise error(
            f"{owner}.{name}={value!r}; it must record the {name} the model was trained for ({shown}), or it "
            f"would run unchecked on any {name}: restore the saved config or train again."
        )
    for key, kind in keys.items():
        item = value.get(key)
        ok = (
            isinstance(item, list) and bool(item) and all(is_number(x) for x in item)
            if kind is list
            else (is_int(item) and item > 0 if kind is int else isinstance(item, kind))
        )
        if not ok:
            what = {list: "a non-empty list of numbers", int: "a positive int", str: "a string"}[kind]
            raise error(f"{owner}.{name}[{key!r}]={item!r}; it must be {what} ({name} needs {shown}).")


def check_prompt_format(error: type[Exception], owner: str, value: object) -> None:
    """Refuse a prompt format that ``PromptFormat.from_dict`` would misread (unknown keys, wrong types)."""
    fix = "use {'system_prompt': None or a string, 'max_tokens': a positive int} (either key may be left out)"
    if not isinstance(value, dict):
        raise error(f"{owner}.prompt_format={value!r}; {fix}.")
    unknown = sorted(set(value) - set(PROMPT_FORMAT_KEYS))
    system, window = value.get("system_prompt"), value.get("max_tokens", 1)
    if unknown or not (system is None or isinstance(system, str)) or not (is_int(window) and window > 0):
        raise error(f"{owner}.prompt_format={value!r}; {fix}.")


def check_keys(error: type[Exception], owner: str, data: dict, known: set[str]) -> None:
    """Refuse keys a config does not have: a typo, or a file written by a newer native-retriever."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(
            f"{owner} has unknown keys {', '.join(map(repr, unknown))}; remove them if they are typos, or upgrade "
            "native-retriever if a newer version wrote the file."
        )


def check_version(error: type[Exception], what: str, data: dict, versions: tuple[int, ...]) -> None:
    """Refuse a config whose ``version`` is missing or one this package does not read (a newer package wrote it)."""
    version = data.get("version")
    if version not in versions or isinstance(version, bool):
        known = ", ".join(map(str, versions))
        raise error(
            f"{what} config version {version!r}; this native-retriever reads version {known}. Upgrade "
            "native-retriever (pip install -U native-retriever) to load a newer file, or restore the saved config."
        )


@dataclass
class HeadConfig:
    """Architecture and provenance of a head (the JSON half of a head folder), validated when it is made.

    ``input_mode`` is the prompt the LLM is given and so the embed call the head serves: ``context`` (the
    conversation; ``embed_conversation``) or ``query`` (the conversation followed by a search query the LLM
    generated; ``embed_generated_query``). ``span`` is which token states of that prompt the head reads: ``all``
    (the conversation), ``last_user`` (the current question), ``last`` (the final token) or ``query`` (the generated
    query's tokens, so only in input mode ``query``). Version-1 files call ``span`` ``tokens``; they load unchanged.
    """

    hidden_size: int
    output_dim: int
    architecture: str = "transformer"
    input_mode: str = "context"  # the prompt: "context" (the conversation) or "query" (plus a generated query)
    span: str = "all"  # which token states of the prompt the head reads
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged; -1 = final normed
    max_input_tokens: int = 512  # the most recent tokens read
    pool_window: int = 1  # transformer: mean-pool this many consecutive tokens (counted from the end) first
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    llm: dict = field(default_factory=dict)  # name, hidden_size, num_layers, vocab_size, fingerprint (required)
    teacher: dict = field(default_factory=dict)  # name, dim, fingerprint (required)
    prompt_format: dict = field(default_factory=dict)  # PromptFormat.to_dict(): system_prompt, max_tokens
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range; raises HeadConfigError naming the field, its value and the fix.

        The ``llm`` and ``teacher`` sections are required (a head without them would run unchecked on any model);
        ``layers`` are checked against ``llm["num_layers"]`` here and against the bound LLM by ``check_layers``.
        """

        def bad(name: str, fix: str) -> HeadConfigError:
            return HeadConfigError(f"HeadConfig.{name}={getattr(self, name)!r}; {fix}.")

        for name, allowed in (("architecture", ARCHITECTURES), ("input_mode", INPUT_MODES), ("span", SPANS)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"use one of {', '.join(allowed)}")
        if self.span == "query" and self.input_mode != "query":
            raise HeadConfigError("HeadConfig.span='query' needs input_mode='query' (only that prompt has a query).")
        for name in ("hidden_size", "output_dim", "max_input_tokens", "pool_window", "d_model", "num_layers"):
            if not (is_int(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "use a positive int")
        if not (is_int(self.num_heads) and self.num_heads > 0):
            raise bad("num_heads", "use a positive int")
        if self.architecture == "transformer" and self.d_model % self.num_heads:
            raise bad("num_heads", f"d_model={self.d_model} must be divisible by it (the transformer's heads)")
        if not (is_number(self.dropout) and 0 <= self.dropout < 1):
            raise bad("dropout", "use a number in [0, 1)")
        if not (isinstance(self.layers, (list, tuple)) and self.layers and all(is_int(i) for i in self.layers)):
            raise bad("layers", "use a non-empty list of LLM hidden-state indices (ints; -1: the final normed layer)")
        check_section(HeadConfigError, "HeadConfig", "llm", self.llm, LLM_KEYS)
        check_section(HeadConfigError, "HeadConfig", "teacher", self.teacher, TEACHER_KEYS)
        self.check_layers(self.llm["num_layers"])
        check_prompt_format(HeadConfigError, "HeadConfig", self.prompt_format)
        for name in ("training", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "use a dict (it records provenance)")

    def check_layers(self, num_layers: int, error: type[Exception] = HeadConfigError) -> None:
        """Refuse layers outside an LLM with ``num_layers`` decoder layers (hidden_states -L-1 .. L)."""
        outside = [i for i in self.layers if not -num_layers - 1 <= i <= num_layers]
        if outside:
            raise error(
                f"HeadConfig.layers={self.layers!r}; layer {outside[0]} is outside an LLM with {num_layers} layers "
                f"(hidden_states indices {-num_layers - 1}..{num_layers}, -1: the final normed layer). Use the head "
                f"trained for this LLM, or {_TRAIN_FIX}."
            )

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict, with the head file's format name and version."""
        return {"format": HEAD_FORMAT, "version": HEAD_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        """A config from `to_dict`'s output (or a version-1 file's, whose ``tokens`` is read as ``span``).

        A missing or unknown ``version`` (a newer package's file) and unknown keys (a typo, or a newer file) are
        refused with HeadConfigError, like any invalid field.
        """
        check_version(HeadConfigError, "Head", data, HEAD_VERSIONS)
        data = dict(data)
        for old, new in RENAMED_KEYS.items():
            if old in data:
                if new in data:
                    raise HeadConfigError(f"HeadConfig has both {old!r} and {new!r}; keep {new!r} (the new name).")
                data[new] = data.pop(old)
        check_keys(HeadConfigError, "HeadConfig", data, set(cls.__dataclass_fields__) | {"format", "version"})
        missing = [name for name in ("hidden_size", "output_dim") if name not in data]
        if missing:
            raise HeadConfigError(f"HeadConfig.{missing[0]} is missing; restore the saved config or {_TRAIN_FIX}.")
        data.pop("format", None), data.pop("version", None)
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadConfig:
        """Read and validate a head's ``config.json``; any problem raises HeadFileError naming the file and field."""
        path = Path(path)
        data = read_config(path, HEAD_FORMAT, "head")
        try:
            return cls.from_dict(data)
        except HeadConfigError as exc:
            raise HeadFileError(f"{path}: {exc} Fix that field, or restore or {_TRAIN_FIX}.") from exc


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where mask is true: (B, T, H), (B, T) -> (B, H)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class LinearHead(nn.Module):
    """Mean of the selected token states, layer norm, one linear map."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.output_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Project the masked mean of `states` (B, T, H) under `mask` (B, T) to (B, D)."""
        return self.proj(self.norm(masked_mean(states, mask)))


class AttentionPoolHead(nn.Module):
    """Multi-head attention pooling: each head weights the tokens (by content and distance from the end), the
    weighted means are concatenated and mapped linearly. Reads the whole conversation at the cost of a linear head."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.score = nn.Linear(config.hidden_size, config.num_heads)
        self.recency = nn.Embedding(config.max_input_tokens, config.num_heads)
        nn.init.zeros_(self.recency.weight)
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(config.num_heads * config.hidden_size, config.output_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool `states` (B, T, H) under `mask` (B, T) into one (B, D) vector per row."""
        batch, length = mask.shape
        if (
            batch == 1
            and not self.training
            and not torch.is_grad_enabled()
            and length <= self.recency.num_embeddings
            and bool(mask.all())
        ):
            return self._single_row(states[0])
        position = torch.arange(length, device=mask.device).unsqueeze(0)
        distance = (mask.sum(1, keepdim=True) - 1 - position).clamp(0, self.recency.num_embeddings - 1)
        hidden = self.norm(states)
        logits = (self.score(hidden) + self.recency(distance)).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1)  # (B, T, heads), over tokens
        pooled = torch.einsum("bth,btd->bhd", weights, hidden).flatten(1)
        return self.proj(self.dropout(pooled))

    def _single_row(self, states: torch.Tensor) -> torch.Tensor:
        """Inference on one unpadded row (the batch-1 query path): the same function as ``forward``, without module
        calls, masking or materialising the normed states. The layer norm's scale g and shift b are folded into the
        score and output maps (``_folded``). With centred states c_t = x_t - mean(x_t) and r_t = 1/std(x_t), the
        normed state is g*c_t*r_t + b, so the scores are (W_s*g) c_t * r_t + (W_s b + b_s), and since each head's
        weights a_t sum to 1 its pooled state is g * sum_t (a_t r_t) c_t + b, mapped by (W_p*g) and W_p b + b_p:
        pool first, project after.
        """
        length, limit = states.shape[0], self.recency.num_embeddings
        score_w, score_b, proj_w, proj_b, recency_rev = self._folded()
        centred = states - states.mean(-1, keepdim=True)
        scale = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + self.norm.eps)  # (T, 1)
        logits = torch.addcmul(score_b + recency_rev[limit - length :], F.linear(centred, score_w), scale)
        weights = torch.softmax(logits, dim=0).mul_(scale)  # (T, heads): a_t * r_t
        pooled = (weights.t() @ centred).view(1, -1)
        return F.linear(pooled, proj_w, proj_b)

    def _folded(self) -> tuple[torch.Tensor, ...]:
        """Score and output weights with the layer norm's scale and shift folded in, and the recency table reversed
        (row L-1-d holds distance d); recomputed when any weight changes (its version counter or storage)."""
        tensors = (self.norm.weight, self.norm.bias, self.score.weight, self.score.bias, self.proj.weight)
        tensors += (self.proj.bias, self.recency.weight)
        key = tuple((t.data_ptr(), t._version) for t in tensors)  # .to() and in-place updates change these
        cached = self.__dict__.get("_folded_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            gain, shift, score_w, score_b, proj_w, proj_b, recency = (t.detach() for t in tensors)
            per_head = proj_w.view(proj_w.shape[0], score_w.shape[0], -1)  # (D, heads, H)
            folded = (
                (score_w * gain).contiguous(),
                score_w @ shift + score_b,
                (per_head * gain).reshape(proj_w.shape[0], -1).contiguous(),
                proj_b + (per_head * shift).sum((1, 2)),
                recency.flip(0).contiguous(),
            )
        self.__dict__["_folded_cache"] = (key, folded)
        return folded


class TransformerHead(nn.Module):
    """The paper's head: input projection, a small Transformer encoder over the tokens, mean pool, output projection.

    A learned embedding of each position's distance from the end tells the encoder which turn it belongs to. With
    ``pool_window`` w > 1 the encoder runs over means of w consecutive tokens (counted from the end) instead of
    single tokens: w times fewer positions, for CPU training and inference.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.window = config.pool_window
        self.norm = nn.LayerNorm(config.hidden_size)
        self.inp = nn.Linear(config.hidden_size, config.d_model)
        self.recency = nn.Embedding(-(-config.max_input_tokens // self.window), config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.num_heads, 4 * config.d_model, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(config.d_model)
        self.out = nn.Linear(config.d_model, config.output_dim)

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means of ``window`` tokens from the end: (B, C, H) states, (B, C) mask, (B, C) distance from the end."""
        batch, length, hidden = states.shape
        position = torch.arange(length, device=mask.device).unsqueeze(0)
        distance = (mask.sum(1, keepdim=True) - 1 - position).clamp_min(0)  # tokens are left-aligned
        chunk = (distance // self.window).clamp_max(self.recency.num_embeddings - 1)
        count = self.recency.num_embeddings
        weights = mask.to(states.dtype)
        sums = states.new_zeros((batch, count, hidden)).scatter_add_(
            1, chunk.unsqueeze(-1).expand(-1, -1, hidden), states * weights.unsqueeze(-1)
        )
        sizes = weights.new_zeros((batch, count)).scatter_add_(1, chunk, weights)
        used = sizes > 0
        steps = torch.arange(count, device=mask.device).expand(batch, -1)
        return sums / sizes.clamp_min(1).unsqueeze(-1), used, steps

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool `states` (B, T, H) under `mask` (B, T), encode and project to one (B, D) vector per row."""
        pooled, used, distance = self.pool(states, mask)
        hidden = self.inp(self.norm(pooled)) + self.recency(distance)
        hidden = self.encoder(hidden, src_key_padding_mask=~used)
        return self.out(self.out_norm(masked_mean(hidden, used)))


class ProjectionHead(nn.Module):
    """A head with its config; ``forward(states, mask)`` returns L2-normalised vectors."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        bodies = {"linear": LinearHead, "attention": AttentionPoolHead, "transformer": TransformerHead}
        self.body = bodies[config.architecture](config)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit vectors (B, D) in the teacher's space from hidden states (B, T, H) and their mask (B, T)."""
        return F.normalize(self.body(states, mask).float(), dim=-1)

    @property
    def output_dim(self) -> int:
        """Size of the head's output vectors (the teacher's dimension)."""
        return self.config.output_dim

    def save_pretrained(self, folder: str | os.PathLike, extra_files: dict[str, str] | None = None) -> None:
        """Write ``head.safetensors``, ``config.json`` (and ``extra_files``: name -> text) atomically, with a manifest.

        A crash leaves the old folder intact; a folder the package did not write is refused (HeadFileError).
        """
        with atomic_folder(folder, "head") as tmp:
            weights = {name: t.detach().float().cpu().contiguous() for name, t in self.state_dict().items()}
            save_file(weights, str(tmp / "head.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ProjectionHead:
        """Load a head folder; missing, corrupt or altered files (sha256 of its manifest) raise HeadFileError.

        A save into the folder from another thread or process waits until the load has read it.
        """
        with reading(folder, "head") as path:
            return cls._read(path)

    @classmethod
    def _read(cls, folder: Path) -> ProjectionHead:
        config_path, weights_path = folder / "config.json", folder / "head.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise HeadFileError(
                    f"{path} is missing; a head folder holds config.json and head.safetensors "
                    "(train one with `native-retriever train-head`, or omit the head to use the shipped default)."
                )
        config = HeadConfig.load(config_path)  # every field checked before any weight is read
        try:
            head = cls(config)
            head.load_state_dict(load_file(str(weights_path)))
        except Exception as exc:
            raise HeadFileError(
                f"{weights_path} does not match {config_path} or is corrupt ({exc}); restore or retrain the head."
            ) from exc
        verify_folder(folder, "head")  # sha256 of every file; last, so that the checks above name their own problem
        return head.eval()

    def check_compatible(self, llm: dict | None = None, teacher: dict | None = None) -> None:
        """Refuse an LLM or teacher other than the ones this head was trained for, naming the field.

        Then the head's own sizes (``hidden_size``, ``output_dim``) and layers are checked against the given LLM's
        and teacher's (IncompatibleHeadError).
        """
        for side, actual, expected in (
            ("LLM", llm, self.config.llm),
            ("teacher", teacher, self.config.teacher),
        ):
            if not actual or not expected:
                continue
            fix = f"Use the head trained for this {side}, or train one with `native-retriever train-head`."
            check_identity("head", side, actual, expected, fix)
        config = self.config
        sizes = (("LLM", llm, "hidden_size", "hidden_size"), ("teacher", teacher, "dim", "output_dim"))
        for side, info, key, own in sizes:
            if info and info.get(key) != getattr(config, own):
                raise IncompatibleHeadError(
                    f"HeadConfig.{own}={getattr(config, own)!r} but the {side} {info.get('name')!r} has {key} "
                    f"{info.get(key)!r}; use the head trained for this {side}, or {_TRAIN_FIX}."
                )
        if llm and is_int(llm.get("num_layers")):
            config.check_layers(llm["num_layers"], IncompatibleHeadError)


def shipped_heads(root: str | os.PathLike | None = None) -> list[tuple[Path, HeadConfig]]:
    """(folder, config) of every head shipped in ``root`` (default :data:`SHIPPED_HEADS`), sorted by folder name.

    Every sub-folder with a ``config.json`` is one; nothing is hard-coded, so a head folder added there is found.
    """
    root = Path(root or SHIPPED_HEADS)
    folders = sorted(p.parent for p in root.glob("*/config.json")) if root.is_dir() else []
    return [(folder, HeadConfig.load(folder / "config.json")) for folder in folders]


def same_llm(recorded: dict, llm: dict) -> bool:
    """True when ``llm`` (``models.llm_info``) is the LLM a head config's ``llm`` section records: same sizes and
    weight fingerprint (tolerant of dtype rounding), whatever its name."""
    sizes = ("hidden_size", "num_layers", "vocab_size")
    return all(recorded.get(key) == llm.get(key) for key in sizes) and fingerprints_match(
        list(llm.get("fingerprint") or []), list(recorded.get("fingerprint") or [])
    )


def shipped_head_for(llm: dict, input_mode: str = "context", root: str | os.PathLike | None = None) -> Path:
    """The folder of the shipped head made for ``llm`` (``models.llm_info`` of the loaded model) in ``input_mode``.

    Matched by the weight fingerprint its config records, not by name; the first by folder name wins when several
    match. None made for it raises NoShippedHeadError saying how to train one.
    """
    heads = shipped_heads(root)
    for folder, config in heads:
        if config.input_mode == input_mode and same_llm(config.llm, llm):
            return folder
    name = llm.get("name") or "unknown"
    argument = BUILTIN_NAMES.get(name, name if "/" not in name or Path(name).exists() else "FOLDER")
    made_for = sorted({f"{c.llm.get('name')} ({f.name})" for f, c in heads if c.input_mode == input_mode})
    raise NoShippedHeadError(
        f"No shipped head was made for the LLM {name!r} (hidden_size {llm.get('hidden_size')}, "
        f"{llm.get('num_layers')} layers; matched by its weight fingerprint) in input mode {input_mode!r}; the "
        f"shipped {input_mode} heads are for {', '.join(made_for) or 'no LLM'}. Train one with `native-retriever "
        f"train-head --llm {argument} --train DATA... --dev DATA -o my-head"
        f"{' --input-mode query --tokens query' if input_mode == 'query' else ''}` (docs/training.md) and pass it "
        "as the head (--head my-head, or head='my-head')."
    )

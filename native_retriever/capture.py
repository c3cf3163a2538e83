"""Hidden states from the agent's own forward passes: the last prefill becomes a query vector with no extra LLM pass.

    with embedder.capture() as cap:
        out = model.generate(**batch)  # the agent's own call, unchanged
    vectors = cap.vectors()  # (B, D): the head on that prefill's states

Forward hooks observe calls of the wrapped model (``model(...)`` and ``model.generate(...)``) from the thread that
opened the capture. A *prefill* is a call that starts a sequence (no cache, or an empty one); decode steps and
calls that extend a cache are ignored, and each prefill replaces the previous one, so only the last prefill is
kept. Only the layers the head reads are kept (averaged as ``token_states`` does: -1 is the final normed output,
another index ``i`` is ``hidden_states[i]``) and, with left padding or none, only the last ``max_input_tokens``
positions, the most the head reads. Hooks are removed when the block ends, on error too.

The prompt must be the head's formatted conversation (``embedder.tokenize(messages).input_ids``, batched with left
padding); ``vectors(conversations)`` checks each row's tokens against it and reads the head's token span.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .compat import call_cache
from .conversation import EncodedConversation
from .errors import CaptureError
from .states import pad_states, select_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class Prefill:
    """The kept states of one prefill: ``states`` (B, K, H) are the last K of its T positions."""

    input_ids: torch.Tensor | None  # (B, T), on the CPU
    attention_mask: torch.Tensor | None  # (B, T), on the CPU
    states: torch.Tensor  # (B, K, H): positions T-K .. T-1, averaged over the head's layers
    length: int  # T

    @property
    def offset(self) -> int:
        """Position of ``states[:, 0]`` in the prefill."""
        return self.length - self.states.shape[1]

    def rows(self) -> list[tuple[torch.Tensor, list[int] | None]]:
        """For each row: the positions of its real tokens and their ids (None when the ids were not seen)."""
        out = []
        for row in range(self.states.shape[0]):
            mask = None if self.attention_mask is None else self.attention_mask[row]
            if mask is None or bool(mask.all()):
                positions = torch.arange(self.length)
                ids = None if self.input_ids is None else self.input_ids[row].tolist()
            else:
                positions = torch.nonzero(mask, as_tuple=True)[0]
                ids = None if self.input_ids is None else self.input_ids[row, positions].tolist()
            out.append((positions, ids))
        return out


def _layer_index(layer: int, num_layers: int) -> int:
    """``hidden_states`` index in 0..L (L: the final normed output) of a head layer index."""
    index = num_layers if layer == -1 else layer + (num_layers + 1 if layer < 0 else 0)
    if not 0 <= index <= num_layers:
        raise CaptureError(f"The head reads layer {layer}, but the model has hidden_states indices 0..{num_layers}.")
    return index


def _past_length(past) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple cache: ((key, value), ...) with keys (B, heads, T, d)
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


class HiddenStateCapture:
    """Forward hooks keeping the averaged ``layers`` states of the last prefill of ``model`` (a causal LM).

    ``keep`` bounds how many trailing positions are kept when every row ends at the last position (left padding
    or none); with right padding all positions are kept. ``extend``: also record calls that extend a cache (their
    states are those of the new positions only), for a caller that keeps a conversation's cache between turns.
    """

    def __init__(
        self, model: PreTrainedModel, layers: Sequence[int], keep: int | None = None, extend: bool = False
    ) -> None:
        self.model = model
        self.base = getattr(model, "base_model", model)
        num_layers = int(model.config.num_hidden_layers)
        # a layer listed twice weighs twice, as in token_states' mean over the listed layers
        self.counts = Counter(_layer_index(layer, num_layers) for layer in layers)
        self.indices = sorted(self.counts)
        self.num_layers = num_layers
        self.keep = keep
        self.extend = extend
        self.prefill: Prefill | None = None
        self.prefills_seen = 0
        self._handles: list = []
        self._thread: int | None = None
        self._pending: dict | None = None  # the prefill being recorded

    # -- context manager ------------------------------------------------------------------------------------
    def __enter__(self) -> HiddenStateCapture:
        if self._handles:
            raise CaptureError("This capture is already open; use a new one per `with` block.")
        self._thread = threading.get_ident()
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_call, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._on_return, always_call=True))
            inner = [i for i in self.indices if i < self.num_layers]
            if inner:
                layers = getattr(self.base, "layers", None)
                if layers is None:
                    raise CaptureError(
                        f"{type(self.base).__name__} has no `layers` list to hook; use a head that reads layer -1."
                    )
                for index in inner:
                    self._handles.append(
                        layers[index].register_forward_pre_hook(self._layer_hook(index), with_kwargs=True)
                    )
            if self.num_layers in self.indices:
                self._handles.append(self.base.register_forward_hook(self._on_base_output))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending = None

    @property
    def active(self) -> bool:
        """Whether the hooks are installed (inside the `with` block)."""
        return bool(self._handles)

    # -- hooks ----------------------------------------------------------------------------------------------
    def _on_call(self, module, args, kwargs) -> None:
        if threading.get_ident() != self._thread:
            return  # another thread's call: its own capture (if any) records it; ours is left as it is
        self._pending = None
        if not self.extend and _past_length(call_cache(kwargs)) > 0:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            return  # a 4-D custom mask: rows cannot be read back
        ids = input_ids.detach().cpu() if isinstance(input_ids, torch.Tensor) else None
        self._pending = {"input_ids": ids, "mask": None if mask is None else mask.detach().cpu(), "sum": None, "n": 0}

    def _on_return(self, module, args, output) -> None:
        if threading.get_ident() != self._thread:
            return
        pending, self._pending = self._pending, None
        if pending is None or pending["n"] != sum(self.counts.values()):
            return  # not a prefill, or the forward failed before every layer was seen
        states = pending["sum"] if pending["n"] == 1 else pending["sum"] / pending["n"]
        self.prefill = Prefill(pending["input_ids"], pending["mask"], states, pending["length"])
        self.prefills_seen += 1

    def _keep(self, hidden: torch.Tensor) -> torch.Tensor:
        pending = self._pending
        pending["length"] = hidden.shape[1]
        mask = pending["mask"]
        left_aligned_end = mask is None or bool(mask[:, -1].all())
        if self.keep is not None and left_aligned_end and hidden.shape[1] > self.keep:
            hidden = hidden[:, -self.keep :]
        return hidden.detach().clone()  # a copy: the model's own buffers are not held

    def _add(self, hidden: torch.Tensor, count: int) -> None:
        pending = self._pending
        kept = self._keep(hidden)
        if count > 1:
            kept.mul_(count)
        pending["sum"] = kept if pending["sum"] is None else pending["sum"].add_(kept)
        pending["n"] += count

    def _layer_hook(self, index: int):
        def hook(module, args, kwargs) -> None:
            if self._pending is not None and threading.get_ident() == self._thread:
                self._add(args[0] if args else kwargs["hidden_states"], self.counts[index])

        return hook

    def _on_base_output(self, module, args, output) -> None:
        if self._pending is not None and threading.get_ident() == self._thread:
            hidden = getattr(output, "last_hidden_state", None)
            self._add(hidden if hidden is not None else output[0], self.counts[self.num_layers])

    def require_prefill(self) -> Prefill:
        """The observed prefill; raises CaptureError when the model ran no prefill inside the block."""
        if self.prefill is None:
            raise CaptureError(
                "No prefill was observed: call model(...) or model.generate(...) inside the `with` block, on the "
                "model the capture wraps, from the same thread."
            )
        return self.prefill


class ConversationCapture(HiddenStateCapture):
    """A capture for a ``NativeEmbedder``: ``vectors()`` runs its head on the last prefill, one row per sequence.

    The embedder's lock is held while the block runs, so its own calls from other threads wait.
    """

    def __init__(self, embedder, extend: bool = False) -> None:
        config = embedder.head.config
        super().__init__(embedder.model, config.layers, keep=config.max_input_tokens, extend=extend)
        self.embedder = embedder
        self._locked = False

    def __enter__(self) -> ConversationCapture:
        if self._locked:
            raise CaptureError("This capture is already open; use a new one per `with` block.")
        self.embedder._lock.acquire()
        self._locked = True
        return super().__enter__()

    def close(self) -> None:
        """Remove the hooks and release the embedder's lock."""
        super().close()
        if self._locked:
            self._locked = False
            self.embedder._lock.release()

    def vectors(
        self,
        conversations: Sequence[Sequence | EncodedConversation] | None = None,
        queries: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Head vectors (B, D) of the last prefill.

        ``conversations`` (messages or ``EncodedConversation``s, one per row) are checked against the tokens each
        row prefilled and give the head's token span; without them each row's real tokens are taken as the
        formatted conversation (enough for heads that read all tokens or the last one). ``queries``: generated
        search queries appended to each conversation (heads in ``query`` mode).
        """
        prefill = self.require_prefill()
        config = self.embedder.head.config
        rows = prefill.rows()
        if conversations is None:
            if config.span not in ("all", "last"):
                raise CaptureError(
                    f"This head reads the {config.span!r} tokens; pass the conversations to vectors() so their "
                    "token spans are known."
                )
            encoded = [
                EncodedConversation(ids if ids is not None else [0] * len(p), (0, 0), None, 0) for p, ids in rows
            ]
        else:
            if len(conversations) != len(rows):
                raise CaptureError(f"Got {len(conversations)} conversations for a prefill of {len(rows)} rows.")
            queries = list(queries) if queries is not None else [None] * len(rows)
            encoded = [
                c if isinstance(c, EncodedConversation) else self.embedder.tokenize(c, query=q)
                for c, q in zip(conversations, queries, strict=True)
            ]
            for row, ((_, ids), enc) in enumerate(zip(rows, encoded)):
                if ids is not None and ids != enc.input_ids:
                    raise CaptureError(
                        f"Row {row} of the prefill is not the head's formatted conversation ({len(ids)} tokens "
                        f"prefilled, {len(enc.input_ids)} expected): build the prompt from embedder.tokenize(messages)"
                        ".input_ids (batch with left padding) so the head reads what it was trained on."
                    )
        dtype = next(self.embedder.head.parameters()).dtype
        picked = []
        for row, ((positions, _), enc) in enumerate(zip(rows, encoded)):
            start, end = select_tokens(enc, config.span, config.max_input_tokens)
            columns = positions[start:end] - prefill.offset
            if len(columns) == 0 or int(columns[0]) < 0:
                raise CaptureError(
                    f"Row {row}'s tokens were not kept (right padding keeps all positions, left padding only the "
                    "last ones); pad the batch on the left."
                )
            first = int(columns[0])
            contiguous = int(columns[-1]) - first + 1 == len(columns)
            picked.append(
                prefill.states[row, first : first + len(columns)] if contiguous else prefill.states[row, columns]
            )
        with torch.inference_mode():
            if len(picked) == 1:
                states = picked[0].to(dtype).unsqueeze(0)
                mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
            else:
                states, mask = pad_states([p.to(dtype) for p in picked])
            return self.embedder.head(states, mask).cpu().numpy().astype(np.float32, copy=False)

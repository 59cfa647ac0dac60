"""The DICOM room: reading a file, zip member or bytes (`read`, where the project's one `dcmread` and the
one parser of "archive.zip:member" names live), walking folders and zips (`walk`), instance metadata
(`meta`), the grey-scale display pipeline (`display`), CT/MR/PET series as volumes (`volume` assembles
slices; `series` groups files, reads them and orders a stored series' slices), PS3.15 de-identification
of datasets (`deid`, by the standard's table in `basic_profile`) and of stored copies (`deid_copies`),
upload limits (`limits`), writing simple DICOM images (`write`) and report export as DICOM SR, text or
JSON (`sr`), a DICOMweb client for a server's URL (`web`) and what an interactive viewer is sent
(`viewer_data`). Nothing here knows about models, the case store or the UI."""

from medcm.dicom.meta import InstanceMeta
from medcm.dicom.read import DicomImage, DicomReadError, read_instance
from medcm.dicom.walk import iter_dicom

__all__ = ["DicomImage", "DicomReadError", "InstanceMeta", "iter_dicom", "read_instance"]

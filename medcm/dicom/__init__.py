"""The DICOM room: reading files, folders and zips (`read`, where the project's one `dcmread` lives),
CT/MR/PET series as volumes (`volume` assembles slices, `series` groups files and reads them), PS3.15
de-identification of datasets (`deid`) and of stored copies (`deid_copies`), upload limits (`limits`),
writing simple DICOM images (`write`) and report export as DICOM SR, text or JSON (`sr`). Nothing here
knows about models, the case store or the UI."""

from medcm.dicom.read import DicomImage, DicomReadError, InstanceMeta, iter_dicom, read_instance

__all__ = ["DicomImage", "DicomReadError", "InstanceMeta", "iter_dicom", "read_instance"]

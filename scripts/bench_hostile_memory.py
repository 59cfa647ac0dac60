"""Peak memory and time of reading hostile and large DICOM files, each in a fresh process (issue 18, item 1).

    .venv/bin/python scripts/bench_hostile_memory.py [--keep DIR]

Writes the files of issue 18's red-team pass (a few hundred KB of deflated zeros that hold gigabytes of
pixel data, with or without NumberOfFrames; a tiny JPEG-LS file declaring 16384 x 16383) and two real-sized
images within the limits, then reads each with `medcm.dicom.read.read_instance` in its own Python process
and prints a markdown table: file size, outcome, wall seconds (with the interpreter's start and medcm's
imports) and the process's peak RSS. The baseline row is a process that only imports medcm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

READ = """
import re, sys, warnings
warnings.simplefilter("ignore")
from medcm.dicom.read import DicomReadError, read_instance
if sys.argv[1] != "-":
    try:
        image = read_instance(sys.argv[1])
        print("read", "x".join(map(str, image.pixels.shape)))
    except DicomReadError as exc:
        print("refused:", exc.reason)
# VmHWM (peak resident set, kB) belongs to this program's memory map; ru_maxrss would keep the parent's
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def _write(path: Path, rows: int, columns: int, pixel_bytes: int, syntax: str, frames: int | None = None,
           fill: bytes = b"\0") -> Path:
    """A 16-bit MONOCHROME2 secondary capture of `pixel_bytes` bytes of pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = (fill * (pixel_bytes // len(fill) + 1))[:pixel_bytes]
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_ls_declaring(path: Path, rows: int, columns: int) -> Path:
    """A small real JPEG-LS image whose header then declares `rows` x `columns`."""
    small = _write(path, 8, 8, 128, ExplicitVRLittleEndian)
    ds = pydicom.dcmread(small)
    ds.compress(JPEGLSLossless)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path)
    return path


def _files(folder: Path) -> list[tuple[str, Path | None]]:
    ramp = np.arange(65536, dtype="<u2").tobytes()
    return [
        ("medcm imports only (baseline)", None),
        ("deflated, no NumberOfFrames, 3,641 frames of 256² by length",
         _write(folder / "deflate_padded.dcm", 256, 256, 256 * 256 * 2 * 3641, DeflatedExplicitVRLittleEndian)),
        ("deflated 16384 × 16383", _write(folder / "deflate_big.dcm", 16384, 16383, 16384 * 16383 * 2,
                                          DeflatedExplicitVRLittleEndian)),
        ("JPEG-LS declaring 16384 × 16383", _jpeg_ls_declaring(folder / "jpegls_big.dcm", 16384, 16383)),
        ("uncompressed, no NumberOfFrames, 2,100 frames of 256² by length",
         _write(folder / "native_padded.dcm", 256, 256, 256 * 256 * 2 * 2100, ExplicitVRLittleEndian)),
        ("within the limits: deflated 512² × 200 frames (ramp)",
         _write(folder / "deflate_ok.dcm", 512, 512, 512 * 512 * 2 * 200, DeflatedExplicitVRLittleEndian, 200, ramp)),
        ("within the limits: uncompressed 512² × 400 frames (ramp)",
         _write(folder / "native_ok.dcm", 512, 512, 512 * 512 * 2 * 400, ExplicitVRLittleEndian, 400, ramp)),
    ]


def _measure(path: Path | None) -> tuple[str, float, float]:
    """(outcome, wall seconds, peak RSS in MiB) of reading `path` in a fresh interpreter."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", READ, str(path) if path else "-"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=False)
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return f"failed (rc {done.returncode}): {done.stderr.strip().splitlines()[-1:]}", wall, float("nan")
    return " ".join(lines[:-1]) or "(nothing read)", wall, int(lines[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the files here and keep them (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        print("| file | size | outcome | wall s | peak RSS MiB |\n|---|---:|---|---:|---:|")
        for label, path in _files(folder):
            outcome, wall, peak = _measure(path)
            size = f"{path.stat().st_size / 1024:,.0f} KB" if path else "–"
            print(f"| {label} | {size} | {outcome[:140]} | {wall:.2f} | {peak:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

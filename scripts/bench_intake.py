"""Benchmark: DICOM intake throughput of `medcm listen` against Orthanc and against bare pydicom read + decode.

N studies (copies of the synthetic MR series in /work/shared/data/dicom-series-synthetic, or --source,
each with fresh study/series/instance UIDs and its first --slices slices) are sent with DCMTK's
`storescu` (one association) to:

  (a) `medcm listen` (a subprocess; de-identification on, no checkpoint: intake as a PACS feeds it, without
      embedding), timed from the first byte sent until its log says every study was stored;
  (b) a private Orthanc on loopback ports (`tests/pacs_peers.Orthanc`), timed until storescu returns
      (Orthanc has stored each instance when it acknowledges it);
  (c) bare pydicom: `dcmread` + `pixel_array` of the same files, in this process.

storescu runs with TCP_NODELAY=1 (DCMTK's switch for it): with Nagle's algorithm left on, each instance on
loopback waits ~40 ms for a delayed ACK, and every receiver measures about 20 instances/s.

It prints instances/s for each and the ratios medcm/Orthanc and medcm/pydicom (one run):

    .venv/bin/python scripts/bench_intake.py --studies 20 --slices 16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc test peer and free_port


def make_studies(source: Path, out: Path, studies: int, slices: int) -> list[Path]:
    """`studies` copies of the first `slices` files of `source`, each with new UIDs: every file written."""
    import pydicom
    from pydicom.uid import generate_uid

    originals = sorted(source.glob("*.dcm"), key=lambda p: (len(p.name), p.name))[:slices]
    if len(originals) < slices:
        raise ValueError(f"--source {source}: {len(originals)} .dcm files, expected at least --slices {slices}")
    files = []
    for n in range(studies):
        study, series = generate_uid(), generate_uid()
        for k, original in enumerate(originals):
            ds = pydicom.dcmread(original)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientName, ds.PatientID = f"BENCH^{n}", f"BENCH{n}"
            path = out / f"s{n:03d}" / f"{k:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def storescu(files: list[Path], port: int, called: str) -> float:
    """Send `files` in one association; seconds until storescu returned."""
    start = time.perf_counter()
    done = subprocess.run(["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, "TCP_NODELAY": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {called}@127.0.0.1:{port} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def bench_medcm(files: list[Path], studies: int, work: Path) -> tuple[float, float]:
    """Seconds until storescu returned, and until `medcm listen` logged every study as stored."""
    from pacs_peers import free_port

    port, log_file = free_port(), work / "listen.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with log_file.open("w") as log:
        listen = subprocess.Popen([sys.executable, "-m", "medcm", "listen", "--db", str(work / "cases.db"),
                                   "--port", str(port), "--quiet-seconds", "0.5"], stdout=log,
                                  stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        while "medcm listen: AE" not in log_file.read_text():
            if listen.poll() is not None:
                raise RuntimeError(f"medcm listen exited: {log_file.read_text()}")
            time.sleep(0.1)
        start = time.perf_counter()
        acknowledged = storescu(files, port, "MEDCM")
        while log_file.read_text().count("received study") < studies:
            if listen.poll() is not None or time.perf_counter() - start > 3600:
                raise RuntimeError(f"medcm listen did not store every study: {log_file.read_text()[-2000:]}")
            time.sleep(0.05)
        return acknowledged, time.perf_counter() - start
    finally:
        listen.terminate()
        listen.wait(timeout=60)


def bench_orthanc(files: list[Path], work: Path) -> float:
    from pacs_peers import Orthanc

    orthanc = Orthanc(work / "orthanc").start()
    try:
        return storescu(files, orthanc.dicom_port, orthanc.ae_title)
    finally:
        orthanc.stop()


def bench_pydicom(files: list[Path]) -> float:
    import pydicom

    start = time.perf_counter()
    for path in files:
        pydicom.dcmread(path).pixel_array.sum()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=16, help="instances per study")
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data/dicom-series-synthetic"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medcm-bench-intake-") as tmp:
        work = Path(tmp)
        files = make_studies(args.source, work / "studies", args.studies, args.slices)
        n = len(files)
        print(f"{args.studies} studies x {args.slices} instances = {n} instances "
              f"({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB); {os.cpu_count()} CPU cores")
        decode = bench_pydicom(files)
        orthanc = bench_orthanc(files, work)
        (work / "medcm").mkdir()
        acknowledged, stored = bench_medcm(files, args.studies, work / "medcm")
    rows = [("pydicom dcmread + pixel_array", decode), ("storescu -> Orthanc (stored)", orthanc),
            ("storescu -> medcm listen (acknowledged)", acknowledged),
            ("storescu -> medcm listen (stored, de-identified)", stored)]
    for label, seconds in rows:
        print(f"  {label:<48} {seconds:7.2f} s  {n / seconds:8.1f} instances/s")
    print(f"medcm stored / Orthanc stored: {orthanc / stored:.2f}x the rate; "
          f"medcm stored / bare pydicom decode: {decode / stored:.2f}x the rate")


if __name__ == "__main__":
    main()

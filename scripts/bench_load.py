"""Load test of the review app on loopback: N clinicians upload, draft and sign at once for a fixed time.

Serves a copy of the synthetic demo (built once in --demo-dir, about 2 minutes) with logins and
de-identification on, drives it with `load_test.run_load`, then checks that every accepted upload and
signature is in the store exactly once. Prints users, duration, requests, p50/p95 latency per
endpoint and the store check; `--out FILE.json` keeps the numbers.

    .venv/bin/python scripts/bench_load.py --users 8 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--demo-dir", default=".medcm-demo", help="the demo to copy (built there if missing)")
    parser.add_argument("--out", help="write the summary as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from db.store import CaseStore
    from medcm.dicom.deid import DeidConfig
    from medcm.dicom.deid_copies import default_key_file, load_or_create_key
    from medcm.cli.serve import data_dirs, prepare_demo, serve
    from load_test import check_store, format_summary, run_load  # scripts/load_test.py, beside this file

    _, run = prepare_demo(args.demo_dir, progress=False)
    with tempfile.TemporaryDirectory(prefix="medcm-load-") as tmp:
        root = Path(tmp)
        shutil.copytree(Path(args.demo_dir).resolve(), root / "demo", ignore=shutil.ignore_patterns("archive"))
        db_url = f"sqlite:///{root / 'demo' / 'cases.db'}"
        store = CaseStore(db_url)  # the app opens its own; this one adds the users and checks the result
        logins = [(f"dr.load{i}", f"password-{i:04d}") for i in range(args.users)]
        for name, password in logins:
            store.add_user(name, "clinician", password)
        studies_before = len(store.list_studies(limit=1_000_000))
        port = _free_port()
        app = serve(db_url, run, port=port, block=False, deid=DeidConfig(load_or_create_key(default_key_file(db_url))))
        try:
            result = run_load(f"http://127.0.0.1:{port}/", logins, args.seconds, root / "client-files")
        finally:
            app.close()
        problems = check_store(store, result, studies_before)
        cache = data_dirs(db_url)[1]
        leftovers = [p for p in cache.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ".zip")]
        store.close()
    summary = result.summary()
    summary.update(store_problems=problems, upload_cache_files_left=len(leftovers), cpu_count=os.cpu_count())
    print(f"{summary['users']} users for {summary['seconds']} s: {summary['requests']} requests, "
          f"{summary['uploads']} uploads, {summary['signatures']} signatures, {len(summary['errors'])} errors")
    print(format_summary(summary))
    print("store check:", "every accepted upload and signature stored exactly once" if not problems else problems)
    print("upload cache files left:", len(leftovers))
    for error in summary["errors"][:5]:
        print("error:", error)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0 if not problems and not summary["errors"] and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())

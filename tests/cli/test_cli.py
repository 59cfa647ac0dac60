"""`medcm ingest`, `medcm search` and `medcm draft` end to end on synthetic DICOM, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def medcm(*args):
    return subprocess.run([sys.executable, "-m", "medcm", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def archive(synthetic_manifest, tmp_path_factory):
    """Eight cases with their report.txt, plus one file that is not DICOM."""
    folder = tmp_path_factory.mktemp("archive")
    for i in range(8):
        shutil.copytree(synthetic_manifest.parent / "cases" / f"train-{i:05d}", folder / f"case{i}")
    (folder / "case0" / "notes.dcm").write_text("this is not a DICOM file")
    return folder


@pytest.fixture(scope="module")
def ingested(archive, trained_run, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "cases.db"
    done = medcm("ingest", archive, "--db", db, "--checkpoint", trained_run.best_dir.parent)
    return db, done


def test_ingest_stores_good_files_and_reports_bad_ones_in_one_line(ingested, archive):
    _, done = ingested
    assert done.returncode == 1  # something failed
    bad = archive / "case0" / "notes.dcm"
    assert done.stderr.splitlines() == [f"error: {bad}: not a DICOM file (no DICM header, and no image data parsed without one)"]
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("stored 8 new instance(s) in 8 study(ies); 0 already stored; 8 report(s); 16 embedding(s); 1 file(s) failed")


def test_reingest_of_good_files_succeeds_and_skips(ingested, archive, trained_run):
    db, _ = ingested
    done = medcm("ingest", archive / "case1", archive / "case2", "--db", db, "--checkpoint", trained_run.best_dir.parent)
    assert done.returncode == 0, done.stderr
    assert "stored 0 new instance(s) in 2 study(ies); 2 already stored" in done.stdout


def test_search_by_image_and_text_as_json(ingested, archive, trained_run):
    db, _ = ingested
    ckpt = trained_run.best_dir.parent
    by_image = medcm("search", "--image", archive / "case3" / "image.dcm", "--db", db, "--checkpoint", ckpt, "-k", 3, "--json")
    assert by_image.returncode == 0, by_image.stderr
    cases = json.loads(by_image.stdout)
    assert len(cases) == 3 and {"study_uid", "score", "report", "modality", "body_part"} <= set(cases[0])
    assert (cases[0]["percentile"], cases[0]["weak"]) == (None, False)  # 8 studies: too few to calibrate
    by_text = medcm("search", "--text", "small round lesion", "--db", db, "--checkpoint", ckpt, "-k", 2, "--json")
    assert by_text.returncode == 0, by_text.stderr
    assert [set(hit) >= {"sop_instance_uid", "study_uid", "score"} for hit in json.loads(by_text.stdout)] == [True, True]


def test_faiss_index_backend_answers_like_the_exact_one(ingested, archive, trained_run):
    pytest.importorskip("faiss")
    db, _ = ingested
    ckpt = trained_run.best_dir.parent
    answers = {}
    for backend in ("exact", "faiss"):
        done = medcm("search", "--image", archive / "case3" / "image.dcm", "--db", db, "--checkpoint", ckpt, "-k", 4,
                     "--json", "--index-backend", backend)
        assert done.returncode == 0, done.stderr
        answers[backend] = [(case["study_uid"], round(case["score"], 5)) for case in json.loads(done.stdout)]
    assert len(answers["exact"]) == 4 and answers["faiss"] == answers["exact"]


def test_draft_prints_an_unverified_draft_with_sources(ingested, synthetic_manifest, trained_run):
    db, _ = ingested
    query = synthetic_manifest.parent / "cases" / "dev-00005" / "image.dcm"
    done = medcm("draft", query, "--db", db, "--checkpoint", trained_run.best_dir.parent)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "DRAFT — UNVERIFIED: to be reviewed, edited and signed by a clinician."
    assert lines[1].startswith("FINDINGS:")
    assert any(" <- " in line for line in lines[2:])


def test_draft_of_a_study_the_archive_holds_nothing_like_prints_why(ingested, synthetic_manifest, trained_run,
                                                                     tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(synthetic_manifest.parent / "cases" / "dev-00005" / "image.dcm")
    ds.Modality, ds.StudyInstanceUID = "MG", generate_uid()
    ds.save_as(tmp_path / "mammogram.dcm")
    ckpt = trained_run.best_dir.parent
    done = medcm("draft", tmp_path / "mammogram.dcm", "--db", ingested[0], "--checkpoint", ckpt)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "NO DRAFT: this archive holds no MG studies."
    assert lines[1].startswith("  similar cases (weak matches): ") and len(lines[1].split(", ")) == 5
    assert "DRAFT — UNVERIFIED" not in done.stdout and " <- " not in done.stdout
    as_json = json.loads(medcm("draft", tmp_path / "mammogram.dcm", "--db", ingested[0], "--checkpoint", ckpt,
                               "--json").stdout)
    assert as_json["sentences"] == [] and as_json["abstention"]["abstained"] is True
    assert as_json["abstention"]["reason"] == "this archive holds no MG studies"
    found = medcm("search", "--image", tmp_path / "mammogram.dcm", "--db", ingested[0], "--checkpoint", ckpt, "-k", 2)
    assert [line.endswith("weak match  DX CHEST") for line in found.stdout.splitlines() if line[0].isdigit()] == [True] * 2


def test_abstain_below_reaches_the_engine_and_is_checked(ingested, synthetic_manifest, trained_run):
    from medcm.cli.commands import build_parser
    from medcm.cli.options import abstention_config, open_engine

    parser = build_parser()
    for verb in ("draft", "serve"):
        args = parser.parse_args([verb, *(["x.dcm"] if verb == "draft" else []), "--db", str(ingested[0]),
                                  "--checkpoint", "ckpt", "--abstain-below", "12.5"])
        assert abstention_config(args).below_percentile == 12.5
    args.checkpoint = None  # the store alone: the engine is built without loading a model
    assert open_engine(args, need_model=False)._abstainer.config.below_percentile == 12.5
    assert abstention_config(parser.parse_args(["serve", "--db", "x", "--checkpoint", "c"])).below_percentile == 3.0
    study = synthetic_manifest.parent / "cases" / "dev-00005" / "image.dcm"
    bad = medcm("draft", study, "--db", ingested[0], "--checkpoint", trained_run.best_dir.parent, "--abstain-below", 150)
    assert bad.returncode == 2 and "expected a percentile from 0 to 100, got 150" in bad.stderr


def test_query_commands_need_a_checkpoint_and_a_readable_image(ingested, tmp_path, trained_run):
    db, _ = ingested
    missing = medcm("search", "--text", "effusion", "--db", db)
    assert missing.returncode == 2 and "--checkpoint" in missing.stderr
    junk = tmp_path / "junk.dcm"
    junk.write_text("junk")
    done = medcm("draft", junk, "--db", db, "--checkpoint", trained_run.best_dir.parent)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"error: {junk}: no readable DICOM image to search with"


def test_draft_consensus_preset_reads_more_cases(ingested, synthetic_manifest, trained_run):
    db, _ = ingested
    study = synthetic_manifest.parent / "cases" / "dev-00000"
    similarity = medcm("draft", study, "--db", db, "--checkpoint", trained_run.best_dir.parent, "--json")
    consensus = medcm("draft", study, "--db", db, "--checkpoint", trained_run.best_dir.parent, "--json", "--draft", "consensus")
    assert similarity.returncode == 0 and consensus.returncode == 0, consensus.stderr
    # 8 cases are stored: the default reads 5 of them, the consensus preset (40) all 8.
    assert len(json.loads(similarity.stdout)["source_cases"]) == 5
    assert len(json.loads(consensus.stdout)["source_cases"]) == 8
    unknown = medcm("draft", study, "--db", db, "--checkpoint", trained_run.best_dir.parent, "--draft", "nope")
    assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr


def test_import_is_a_subcommand():
    done = medcm("import", "--help")
    assert done.returncode == 0 and "{manifest,medpix}" in done.stdout and "--files" in done.stdout


def test_synth_volumes_then_train_with_a_chosen_volume_encoder(tmp_path):
    done = medcm("synth", "--volumes", 8, "--train", 6, "--dev", 2, "--size", 32, "--out", tmp_path / "ct")
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "ct" / "manifest.jsonl"
    first = json.loads(manifest.read_text().splitlines()[0])
    assert len(first["images"]) == 8 and first["meta"]["finding"] in {"normal", "nodule", "effusion", "fracture"}

    done = medcm("train", "--data", manifest, "--split", "train", "--val-split", "dev", "--volume-encoder", "2.5d",
                 "--epochs", 1, "--batch-size", 4, "--out", tmp_path / "run", "--quiet")
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["config"]["model"]["volume"]
    assert saved["kind"] == "2.5d" and saved["size"] == 128  # the 2D tower's image size

    done = medcm("train", "--data", manifest, "--volume-encoder", "5d", "--out", tmp_path / "bad")
    assert done.returncode != 0 and "invalid choice: '5d'" in done.stderr

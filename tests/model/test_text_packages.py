"""Packaged text models: all-mpnet-base-v2 assembled from its split-zip packages, hash-pinned, once."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from medcm.model.encoders import text_packages
from medcm.model.encoders.text_packages import PACKAGED_TEXT_MODELS, packaged_model_dir


def _parts_installed() -> bool:
    try:
        for package in text_packages._MPNET_PARTS:
            metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


real_parts = pytest.mark.skipif(
    not _parts_installed(), reason="all-mpnet-base-v2 part packages not installed (bash scripts/setup.sh --mpnet)"
)


# ---- fake part packages: a tiny nested model zip split over 5 dist-infos on a tmp sys.path entry ----

FAKE_PARTS = tuple(f"fake-mpnet-part-{i:03d}" for i in range(1, 6))
FAKE_WEIGHTS = bytes(range(256)) * 40  # stands in for model.safetensors


def _fake_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("outer/", b"")
        archive.writestr("outer/mpnet/1_Pooling/config.json", b'{"pooling_mode_mean_tokens": true}')
        archive.writestr("outer/mpnet/config.json", b'{"model_type": "mpnet"}')
        archive.writestr("outer/mpnet/desktop.ini", b"[.ShellClassInfo]")
        archive.writestr("outer/mpnet/model.safetensors", FAKE_WEIGHTS)
        archive.writestr("outer/notes.txt", b"outside the model folder")
    return buffer.getvalue()


def _install_fake_parts(site: Path, data: bytes, skip: tuple[int, ...] = ()) -> None:
    """Write each part as an installed package: `<pkg>/input/m.zip.00N` plus a dist-info with a RECORD."""
    n = len(FAKE_PARTS)
    chunk = -(-len(data) // n)
    for i, package in enumerate(FAKE_PARTS):
        if i in skip:
            continue
        folder = package.replace("-", "_")
        member = f"{folder}/input/m.zip.{i + 1:03d}"
        (site / member).parent.mkdir(parents=True)
        (site / member).write_bytes(data[i * chunk:(i + 1) * chunk])
        info = site / f"{folder}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{member},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(text_packages, "_MPNET_PARTS", FAKE_PARTS)
    return site


def _model_folders(cache: Path) -> list[Path]:
    models = cache / "text-models"
    return sorted(models.iterdir()) if models.exists() else []


def test_fake_parts_assemble_the_nested_model_folder(fake_site, tmp_path, monkeypatch):
    _install_fake_parts(fake_site, _fake_zip())
    sha = hashlib.sha256(FAKE_WEIGHTS).hexdigest()
    monkeypatch.setattr(text_packages, "_MPNET_SHA256", sha)
    folder = packaged_model_dir("all-mpnet-base-v2", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "text-models" / f"all-mpnet-base-v2-{sha[:12]}"
    assert (folder / "model.safetensors").read_bytes() == FAKE_WEIGHTS
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert not (folder / "desktop.ini").exists() and not (folder / "notes.txt").exists()
    assert json.loads((folder / ".medcm-verified.json").read_text()) == {
        "file": "model.safetensors", "sha256": sha, "size": len(FAKE_WEIGHTS)}
    assert _model_folders(tmp_path / "cache") == [folder]  # no staging folder left beside it


def test_wrong_hash_is_refused_and_leaves_no_folder(fake_site, tmp_path):
    _install_fake_parts(fake_site, _fake_zip())
    with pytest.raises(ValueError) as err:
        packaged_model_dir("all-mpnet-base-v2", tmp_path / "cache")
    message = str(err.value)
    assert "model.safetensors" in message and "\n" not in message
    assert hashlib.sha256(FAKE_WEIGHTS).hexdigest() in message and text_packages._MPNET_SHA256 in message
    assert _model_folders(tmp_path / "cache") == []


def test_missing_part_names_the_package(fake_site, tmp_path):
    _install_fake_parts(fake_site, _fake_zip(), skip=(2,))
    with pytest.raises(ValueError, match=r"fake-mpnet-part-003; install them with bash scripts/setup.sh --mpnet"):
        packaged_model_dir("all-mpnet-base-v2", tmp_path / "cache")
    assert _model_folders(tmp_path / "cache") == []


def test_truncated_part_is_an_error_and_leaves_no_folder(fake_site, tmp_path, monkeypatch):
    data = _fake_zip()
    _install_fake_parts(fake_site, data[:len(data) // 2] + data[len(data) // 2 + 7:])
    monkeypatch.setattr(text_packages, "_MPNET_SHA256", hashlib.sha256(FAKE_WEIGHTS).hexdigest())
    with pytest.raises(ValueError, match="do not form a valid zip"):
        packaged_model_dir("all-mpnet-base-v2", tmp_path / "cache")
    assert _model_folders(tmp_path / "cache") == []


def test_a_folder_without_its_marker_is_assembled_again(fake_site, tmp_path, monkeypatch):
    _install_fake_parts(fake_site, _fake_zip())
    monkeypatch.setattr(text_packages, "_MPNET_SHA256", hashlib.sha256(FAKE_WEIGHTS).hexdigest())
    monkeypatch.setenv("MEDCM_CACHE", str(tmp_path / "env-cache"))
    folder = packaged_model_dir("all-mpnet-base-v2")
    assert folder.parent == tmp_path / "env-cache" / "text-models"
    (folder / ".medcm-verified.json").unlink()
    (folder / "model.safetensors").write_bytes(b"half")  # e.g. someone copied a broken folder in
    assert packaged_model_dir("all-mpnet-base-v2") == folder
    assert (folder / "model.safetensors").read_bytes() == FAKE_WEIGHTS


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'bert-base'.*all-MiniLM-L6-v2.*all-mpnet-base-v2"):
        packaged_model_dir("bert-base")
    assert set(PACKAGED_TEXT_MODELS) == {"all-MiniLM-L6-v2", "all-mpnet-base-v2"}


def test_minilm_is_the_shipped_folder():
    assert (packaged_model_dir("all-MiniLM-L6-v2") / "config.json").is_file()


# ---- the real packages ----

@pytest.fixture(scope="module")
def mpnet(tmp_path_factory) -> tuple[Path, Path, float]:
    cache = tmp_path_factory.mktemp("medcm-cache")
    start = time.perf_counter()
    folder = packaged_model_dir("all-mpnet-base-v2", cache)
    return folder, cache, time.perf_counter() - start


@real_parts
def test_real_parts_assemble_with_the_pinned_hash(mpnet):
    folder, cache, _ = mpnet
    assert folder.name == "all-mpnet-base-v2-78c0197b6159" and folder.parent == cache / "text-models"
    marker = json.loads((folder / ".medcm-verified.json").read_text())
    assert marker["sha256"] == text_packages._MPNET_SHA256
    assert marker["size"] == (folder / "model.safetensors").stat().st_size == 437_971_872
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()


@real_parts
def test_second_call_does_not_assemble_again(mpnet):
    folder, cache, _ = mpnet
    before = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert packaged_model_dir("all-mpnet-base-v2", cache) == folder
    assert time.perf_counter() - start < 0.1  # a few stats, not a 440 MB hash
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


@real_parts
def test_real_model_embeds_similar_reports_closer(mpnet):
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = mpnet[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    texts = ["No pleural effusion.", "The lungs are clear without effusion.", "Fracture of the distal radius."]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 768)
    near, far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert near > far + 0.1, (near, far)

"""Upload limits: every bad input is built small in tmp_path and refused with a one-line message."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from medcm.dicom.write import write_image
from medcm.dicom.limits import UploadLimits, UploadRejected, check_upload, zip_member_problem

BOMB_BYTES = 50 * 1024**2  # 50 MB of zeros deflate to ~50 KB: a ratio of about 1000
DEFAULT = UploadLimits()


@pytest.fixture(scope="module")
def dicom_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_image(tmp_path_factory.mktemp("dcm") / "a.dcm", np.zeros((8, 8)))
    return path.read_bytes()


@pytest.fixture(scope="module")
def bomb_zip() -> bytes:
    return _zip({"bomb.dcm": b"\0" * BOMB_BYTES}, zipfile.ZIP_DEFLATED)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _refused(paths: list[Path], limits: UploadLimits = DEFAULT, names: dict[str, str] | None = None) -> str:
    with pytest.raises(UploadRejected) as info:
        check_upload(paths, limits, names)
    message = str(info.value)
    assert "\n" not in message
    return message


def _patch(data: bytes, name: bytes, local: tuple[str, int, int] | None = None,
           central: tuple[str, int, int] | None = None) -> bytes:
    """Overwrite a field (struct format, offset from the header start, value) in the local and central headers."""
    raw = bytearray(data)
    if local:
        struct.pack_into(local[0], raw, raw.index(b"PK\x03\x04") + local[1], local[2])
    if central:
        struct.pack_into(central[0], raw, raw.index(b"PK\x01\x02") + central[1], central[2])
    assert name in raw
    return bytes(raw)


# --- valid uploads pass ----------------------------------------------------------------------------


def test_valid_zip_and_folder_pass(tmp_path: Path, dicom_bytes: bytes) -> None:
    archive = _write(tmp_path / "study.zip", _zip({f"s/{i}.dcm": dicom_bytes for i in range(3)},
                                                  zipfile.ZIP_DEFLATED))
    folder = tmp_path / "folder"
    for i in range(3):
        _write(folder / "sub" / f"{i}.dcm", dicom_bytes)
    _write(folder / "inner.zip", _zip({"x.dcm": dicom_bytes, "nested.zip": _zip({"y.dcm": dicom_bytes})}))
    os.symlink(folder / "sub" / "0.dcm", folder / "link.dcm")  # a link inside the folder is fine
    check_upload([archive, folder, str(tmp_path / "folder" / "sub" / "1.dcm")])


def test_small_highly_compressible_member_passes(tmp_path: Path) -> None:
    # 512 KB of zeros compresses ~1000:1, but members under 1 MiB are not judged by ratio.
    check_upload([_write(tmp_path / "a.zip", _zip({"blank.dcm": b"\0" * 512 * 1024}, zipfile.ZIP_DEFLATED))])


# --- sizes and counts ------------------------------------------------------------------------------


def test_upload_over_size_names_file_and_limit(tmp_path: Path) -> None:
    first, second = _write(tmp_path / "a.dcm", b"x" * 600), _write(tmp_path / "b.dcm", b"x" * 600)
    message = _refused([first, second], UploadLimits(max_upload_bytes=1000))
    assert message.startswith(f"{second}: ") and "1.2 KiB (1200 bytes)" in message and "1000 bytes limit" in message


def test_user_given_names_replace_server_paths(tmp_path: Path) -> None:
    stored = _write(tmp_path / "upload-3f9a", b"x" * 2000)
    message = _refused([stored], UploadLimits(max_upload_bytes=1000), names={str(stored): "my scan.dcm"})
    assert message.startswith("my scan.dcm: ") and str(tmp_path) not in message


def test_too_many_files_in_folder(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / "f" / f"{i}.dcm", b"x")
    message = _refused([tmp_path / "f"], UploadLimits(max_files=2))
    assert message.startswith(f"{tmp_path / 'f'}/2.dcm: ") and "3 files" in message and "limit of 2" in message


def test_too_many_files_counts_zip_members(tmp_path: Path) -> None:
    archive = _write(tmp_path / "a.zip", _zip({f"{i}.dcm": b"x" for i in range(3)}))
    check_upload([archive], UploadLimits(max_files=4))  # the zip itself plus three members
    message = _refused([archive], UploadLimits(max_files=3))
    assert message.startswith(f"{archive}: ") and "4 files (zip members included)" in message
    assert "limit of 3" in message


def test_declared_entry_count_refused_before_parsing(tmp_path: Path) -> None:
    archive = _write(tmp_path / "many.zip", _zip({f"{i}": b"" for i in range(50)}))
    message = _refused([archive], UploadLimits(max_files=10))
    assert message.startswith(f"{archive}: ") and "51 files" in message and "limit of 10" in message


# --- zip bombs -------------------------------------------------------------------------------------


def test_many_small_members_are_judged_together(tmp_path: Path) -> None:
    """Issue 18 item 5: 200 members of 1 MiB of zeros (each under the per-member threshold) in a small zip."""
    data = _zip({f"m{i:03d}.dcm": b"\0" * 1024**2 for i in range(200)}, zipfile.ZIP_DEFLATED)
    assert len(data) < 300_000
    archive = _write(tmp_path / "many.zip", data)
    message = _refused([archive])
    assert message.startswith(f"{archive}: its members together unpack at ") and "over the 100:1 limit" in message
    plain = _zip({f"m{i:03d}.dcm": np.random.default_rng(i).bytes(64 * 1024) for i in range(40)}, zipfile.ZIP_DEFLATED)
    check_upload([_write(tmp_path / "plain.zip", plain)])  # 2.5 MiB of incompressible members pass


def test_zip_bomb_ratio(tmp_path: Path, bomb_zip: bytes) -> None:
    assert len(bomb_zip) < 100_000
    archive = _write(tmp_path / "bomb.zip", bomb_zip)
    message = _refused([archive])
    assert message.startswith(f"{archive}:bomb.dcm: compression ratio ") and "over the 100:1 limit" in message


def test_zip_bomb_total_unpacked(tmp_path: Path, bomb_zip: bytes) -> None:
    archive = _write(tmp_path / "bomb.zip", bomb_zip)
    limits = UploadLimits(max_unpacked_bytes=10 * 1024**2, max_compression_ratio=1e6)
    message = _refused([archive], limits)
    assert message.startswith(f"{archive}:bomb.dcm: zip members unpack to 50.0 MiB")
    assert "over the 10.0 MiB (10485760 bytes) unpacked limit" in message


def test_nested_zip_bomb(tmp_path: Path, bomb_zip: bytes) -> None:
    archive = _write(tmp_path / "outer.zip", _zip({"inner.zip": bomb_zip, "ok.dcm": b"x"}))
    message = _refused([archive], names={str(archive): "study.zip"})
    assert message.startswith("study.zip:inner.zip:bomb.dcm: compression ratio ") and "100:1 limit" in message


def test_zip_nesting_depth(tmp_path: Path) -> None:
    three = _write(tmp_path / "a.zip", _zip({"b.zip": _zip({"c.zip": _zip({"x.dcm": b"x"})})}))
    message = _refused([three])
    assert message.startswith(f"{three}:b.zip:c.zip: zip nested 2 level(s) deep, over the limit of 1")
    two = _write(tmp_path / "d.zip", _zip({"e.zip": _zip({"x.dcm": b"x"})}))
    check_upload([two])
    assert "over the limit of 0" in _refused([two], UploadLimits(max_zip_depth=0))


def test_zip_disguised_as_dicom_is_still_inspected(tmp_path: Path) -> None:
    disguised = _write(tmp_path / "scan.dcm", _zip({"../evil.dcm": b"x"}))
    assert "'..' component" in _refused([disguised])


def test_zipfile_stops_at_declared_size_of_a_lying_header() -> None:
    """Python's zipfile never returns more than the declared file_size: with the true CRC the read
    fails ("Bad CRC-32"); with a CRC matching the truncated data it returns exactly file_size bytes.
    So declared sizes bound the work, and check_upload may judge bombs by their headers."""
    data = _zip({"a.dcm": b"\0" * 5 * 1024**2}, zipfile.ZIP_DEFLATED)
    lying = _patch(data, b"a.dcm", local=("<I", 22, 1000), central=("<I", 24, 1000))
    with zipfile.ZipFile(io.BytesIO(lying)) as zf, pytest.raises(zipfile.BadZipFile, match="CRC"):
        zf.read("a.dcm")
    crc = zlib.crc32(b"\0" * 1000)
    lying = _patch(lying, b"a.dcm", local=("<I", 14, crc), central=("<I", 16, crc))
    with zipfile.ZipFile(io.BytesIO(lying)) as zf:
        assert zf.getinfo("a.dcm").file_size == 1000
        assert len(zf.read("a.dcm")) == 1000


def test_nested_zip_with_lying_header_is_refused(tmp_path: Path) -> None:
    inner = _zip({"x.dcm": b"x" * 3000})
    lying = _patch(_zip({"inner.zip": inner}, zipfile.ZIP_DEFLATED), b"inner.zip",
                   local=("<I", 22, 100), central=("<I", 24, 100))
    archive = _write(tmp_path / "a.zip", lying)
    message = _refused([archive])
    assert message.startswith(f"{archive}:inner.zip: not a readable zip archive (BadZipFile")


# --- unsafe members --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "what"), [
    ("../evil.dcm", "'..' component"),
    ("a/../../evil.dcm", "'..' component"),
    ("..\\evil.dcm", "'..' component"),
    ("/etc/x.dcm", "absolute path"),
    ("\\\\server\\x.dcm", "absolute path"),
    ("C:/x.dcm", "drive letter"),
])
def test_traversal_names(tmp_path: Path, name: str, what: str) -> None:
    archive = _write(tmp_path / "a.zip", _zip({"ok.dcm": b"x", name: b"x"}))
    message = _refused([archive])
    assert message.startswith(f"{archive}:{name}: unsafe member name: it ") and what in message


def test_symlink_member(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.create_system, info.external_attr = 3, 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    archive = _write(tmp_path / "a.zip", buf.getvalue())
    message = _refused([archive])
    assert message == f"{archive}:link.dcm: member is a symbolic link (mode 0o120777); links are not accepted in uploads"
    assert zip_member_problem(info) and zip_member_problem(zipfile.ZipInfo("a/b.dcm")) is None


def test_encrypted_member(tmp_path: Path) -> None:
    data = _zip({"secret.dcm": b"x" * 100})
    flags = zipfile.ZipFile(io.BytesIO(data)).getinfo("secret.dcm").flag_bits | 0x1
    archive = _write(tmp_path / "a.zip", _patch(data, b"secret.dcm", local=("<H", 6, flags), central=("<H", 8, flags)))
    assert _refused([archive]) == f"{archive}:secret.dcm: member is encrypted; expected unencrypted files"


def test_local_header_name_differing_from_directory(tmp_path: Path) -> None:
    raw = bytearray(_zip({"aaaaaaaaaaa.dcm": b"x"}))
    local = raw.index(b"aaaaaaaaaaa.dcm")  # the local header's copy comes first
    raw[local:local + 15] = b"../../evil.dcm!"
    archive = _write(tmp_path / "a.zip", bytes(raw))
    message = _refused([archive])
    assert message.startswith(f"{archive}:aaaaaaaaaaa.dcm: not a readable zip archive (BadZipFile")


@pytest.mark.parametrize("data", [b"not a zip at all", b"PK\x03\x04" + b"\0" * 40, b""])
def test_corrupt_zip(tmp_path: Path, data: bytes) -> None:
    archive = _write(tmp_path / "a.zip", data)
    message = _refused([archive])
    assert message.startswith(f"{archive}: not a readable zip archive (") and "expected an intact .zip" in message


def test_truncated_zip(tmp_path: Path, dicom_bytes: bytes) -> None:
    data = _zip({f"{i}.dcm": dicom_bytes for i in range(3)})
    archive = _write(tmp_path / "a.zip", data[: len(data) // 2])
    assert "not a readable zip archive" in _refused([archive])


def test_member_name_with_newline_stays_on_one_line(tmp_path: Path) -> None:
    archive = _write(tmp_path / "a.zip", _zip({"x\n/../y.dcm": b"x"}))
    assert "x\\n/../y.dcm" in _refused([archive])


# --- folders and paths -----------------------------------------------------------------------------


def test_folder_link_pointing_outside(tmp_path: Path) -> None:
    outside = _write(tmp_path / "secret.txt", b"x")
    folder = tmp_path / "up"
    _write(folder / "a.dcm", b"x")
    os.symlink(outside, folder / "b.dcm")
    message = _refused([folder], names={str(folder): "upload"})
    assert message.startswith("upload/b.dcm: link points outside the uploaded folder")
    (folder / "b.dcm").unlink()
    os.symlink(tmp_path, folder / "loop")  # a linked folder outside is refused too
    assert _refused([folder]).startswith(f"{folder}/loop: link points outside")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_special_file_in_folder(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.dcm")  # reading it would block forever
    assert "not a regular file" in _refused([tmp_path])


def test_missing_path(tmp_path: Path) -> None:
    assert _refused([tmp_path / "gone.zip"]) == f"{tmp_path / 'gone.zip'}: no such file or folder; expected an uploaded file"


# --- the limits themselves -------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("max_upload_bytes", 0), ("max_files", -1), ("max_unpacked_bytes", 1.5), ("max_files", True),
    ("max_compression_ratio", 0.0), ("max_compression_ratio", float("nan")), ("max_zip_depth", -1),
])
def test_limits_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"UploadLimits.{field}: got "):
        UploadLimits(**{field: value})


def test_rejection_is_a_picklable_value_error() -> None:
    err = pickle.loads(pickle.dumps(UploadRejected("a.zip", "too big")))
    assert isinstance(err, ValueError) and (err.name, err.reason, str(err)) == ("a.zip", "too big", "a.zip: too big")

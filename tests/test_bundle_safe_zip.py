"""safe_extract against crafted archives: each unsafe case is refused and nothing lands outside (or at) dest."""
from __future__ import annotations

import io
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from edgekd.bundle.safe_zip import ExtractLimits, member_problems, safe_extract, unsafe_name
from edgekd.errors import EdgeKDError


def _zip(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    """Write members (name, data, unix mode or None) exactly as named: zipfile does not sanitize on write."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" on purpose
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data, mode in members:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (mode if mode is not None else 0o100644) << 16
                zf.writestr(info, data)
    return path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """tmp/archives holds the archive; tmp/area/dest is the destination; everything else must stay untouched."""
    (tmp_path / "archives").mkdir()
    (tmp_path / "area").mkdir()
    return tmp_path


def _refused(sandbox: Path, members, match: str, limits: ExtractLimits = ExtractLimits()):
    archive = _zip(sandbox / "archives" / "a.zip", members)
    before = _snapshot(sandbox)
    with pytest.raises(EdgeKDError, match=match):
        safe_extract(archive, sandbox / "area" / "dest", limits)
    assert _snapshot(sandbox) == before, "a refused archive wrote something"
    assert not (sandbox / "area" / "dest").exists()


def test_a_clean_archive_extracts_all_members(sandbox):
    archive = _zip(sandbox / "archives" / "ok.zip", [("a.txt", b"alpha", None), ("d/", b"", 0o40755),
                                                     ("d/e/b.bin", bytes(range(256)) * 40, None)])
    written = safe_extract(archive, sandbox / "area" / "dest")
    dest = sandbox / "area" / "dest"
    assert sorted(p.relative_to(dest).as_posix() for p in written) == ["a.txt", "d/e/b.bin"]
    assert (dest / "a.txt").read_bytes() == b"alpha"
    assert (dest / "d/e/b.bin").read_bytes() == bytes(range(256)) * 40
    assert _snapshot(sandbox / "area") == {"dest", "dest/a.txt", "dest/d", "dest/d/e", "dest/d/e/b.bin"}


def test_an_empty_existing_dest_is_used_and_a_full_one_refused(sandbox):
    archive = _zip(sandbox / "archives" / "ok.zip", [("a.txt", b"alpha", None)])
    dest = sandbox / "area" / "dest"
    dest.mkdir()
    safe_extract(archive, dest)
    assert (dest / "a.txt").read_bytes() == b"alpha"
    with pytest.raises(EdgeKDError, match="exists and is not an empty folder"):
        safe_extract(archive, dest)


@pytest.mark.parametrize("name, match", [
    ("../evil.txt", r"path traversal"),
    ("a/../../evil.txt", r"path traversal"),
    ("/tmp/evil.txt", r"absolute path"),
    ("C:/evil.txt", r"absolute path"),
    ("..\\evil.txt", r"backslash"),
    ("a//b.txt", r"empty or '.' components"),
])
def test_unsafe_names_are_refused(sandbox, name, match):
    _refused(sandbox, [("fine.txt", b"ok", None), (name, b"pwned", None)], match)


def test_a_symlink_member_is_refused(sandbox):
    _refused(sandbox, [("link", b"../../etc/passwd", stat.S_IFLNK | 0o777), ("link/x", b"y", None)],
             r"'link' is a symbolic link")


def test_a_special_file_member_is_refused(sandbox):
    _refused(sandbox, [("fifo", b"", stat.S_IFIFO | 0o644)], r"special file")


def test_duplicate_names_are_refused(sandbox):
    _refused(sandbox, [("a.txt", b"first", None), ("a.txt", b"second", None)], r"duplicates 'a.txt'")
    _refused(sandbox, [("A.txt", b"first", None), ("a.txt", b"second", None)], r"duplicates 'A.txt'")


def test_a_member_over_the_size_cap_is_refused_from_its_header(sandbox):
    bomb = bytes(5_000_000)  # 5 MB of zeros deflate to ~5 kB
    _refused(sandbox, [("zeros.bin", bomb, None)], r"declares 5000000 bytes; the per-member limit is 1000000",
             ExtractLimits(max_member_bytes=1_000_000))


def test_members_over_the_total_cap_are_refused(sandbox):
    _refused(sandbox, [(f"m{i}.bin", bytes(400), None) for i in range(3)], r"declares 1200 bytes in all",
             ExtractLimits(max_member_bytes=500, max_total_bytes=1000))


def test_too_many_members_are_refused(sandbox):
    _refused(sandbox, [(f"m{i}", b"x", None) for i in range(5)], r"5 members; the limit is 4",
             ExtractLimits(max_members=4))


def _lie_about_size(path: Path, declared: int) -> None:
    """Patch the local and central headers of the only member to declare `declared` uncompressed bytes."""
    raw = bytearray(path.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    raw[local + 22:local + 26] = declared.to_bytes(4, "little")
    raw[central + 24:central + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def test_a_member_that_decompresses_past_its_lying_header_is_refused(sandbox):
    archive = _zip(sandbox / "archives" / "a.zip", [("bomb.bin", bytes(2_000_000), None)])
    _lie_about_size(archive, 100)
    assert zipfile.ZipFile(archive).infolist()[0].file_size == 100  # the header now passes the caps
    before = _snapshot(sandbox)
    with pytest.raises(EdgeKDError, match=r"'bomb.bin' is corrupt|decompresses to more than"):
        safe_extract(archive, sandbox / "area" / "dest", ExtractLimits(max_member_bytes=1000))
    assert _snapshot(sandbox) == before
    assert not (sandbox / "area" / "dest").exists()


def test_a_corrupt_member_leaves_no_partial_files(sandbox):
    archive = _zip(sandbox / "archives" / "a.zip", [("good.txt", b"good" * 100, None),
                                                   ("bad.bin", bytes(range(256)) * 64, None)])
    raw = bytearray(archive.read_bytes())
    at = raw.find(b"bad.bin") + len("bad.bin") + 100  # inside bad.bin's compressed data
    raw[at] ^= 0xFF
    archive.write_bytes(bytes(raw))
    before = _snapshot(sandbox)
    with pytest.raises(EdgeKDError, match=r"'bad.bin' is corrupt"):
        safe_extract(archive, sandbox / "area" / "dest")
    assert _snapshot(sandbox) == before, "good.txt was extracted before the failure and left behind"


def test_not_a_zip_is_a_clear_error(sandbox):
    archive = sandbox / "archives" / "junk.zip"
    archive.write_bytes(b"this is not a zip file")
    with pytest.raises(EdgeKDError, match="junk.zip is not a readable zip archive"):
        safe_extract(archive, sandbox / "area" / "dest")
    assert not (sandbox / "area" / "dest").exists()


def test_every_problem_is_listed_one_per_line(sandbox):
    archive = _zip(sandbox / "archives" / "a.zip", [("../x", b"", None), ("/y", b"", None),
                                                   ("l", b"t", stat.S_IFLNK | 0o777)])
    with pytest.raises(EdgeKDError) as e:
        safe_extract(archive, sandbox / "area" / "dest")
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and "traversal" in lines[1] and "absolute" in lines[2] and "symbolic link" in lines[3]


def test_encrypted_flag_is_refused():
    info = zipfile.ZipInfo("secret.txt")
    info.flag_bits |= 0x1
    assert member_problems([info]) == ["member 'secret.txt' is encrypted; encrypted archives are not supported"]


@pytest.mark.parametrize("name", ["a.txt", "d/e/f.bin", "dir/"])
def test_safe_names_pass(name):
    assert unsafe_name(name) is None


def test_limits_validate_themselves():
    with pytest.raises(ValueError, match="max_total_bytes must be > 0, got 0"):
        ExtractLimits(max_total_bytes=0)

"""JSONL sink and hash-chain verification: every kind of tampering is found at its line."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_identity.audit import (
    GENESIS,
    AuditError,
    AuditEvent,
    AuditTrail,
    JsonlSink,
    chain_files,
    verify_chain,
)
from agent_identity.audit.chain import VerifyResult, make_record
from agent_identity.audit.events import canonical_json

pytestmark = pytest.mark.anyio


def _event(i: int) -> AuditEvent:
    return AuditEvent.for_tool_call(
        "tool.succeeded", tool=f"tool-{i}", arguments={"i": i}, outcome="ok", latency_ms=i
    )


async def _write(path: Path, count: int, *, rotate_bytes: int | None = None) -> None:
    sink = JsonlSink(path, rotate_bytes=rotate_bytes, fsync=False)
    for i in range(count):
        await sink.write([_event(i)])
    await sink.aclose()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


async def test_chain_is_valid_and_records_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 5)
    result = verify_chain([path])
    assert result.ok
    assert result.records == 5
    assert result.first_broken is None
    records = [json.loads(line) for line in _lines(path)]
    assert records[0]["prev_hash"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    assert [r["seq"] for r in records] == list(range(5))
    assert records[2]["event"]["tool"] == "tool-2"
    assert (path.stat().st_mode & 0o777) == 0o600


async def test_reopened_sink_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 3)
    await _write(path, 2)
    assert verify_chain([path]).records == 5
    assert verify_chain([path]).ok


async def test_editing_one_byte_is_found_at_that_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 6)
    lines = _lines(path)
    lines[3] = lines[3].replace(b'"tool-3"', b'"tool-X"')
    path.write_bytes(b"".join(lines))
    result = verify_chain([path])
    assert not result.ok
    assert result.first_broken == (str(path), 4)
    assert result.records == 3
    assert result.reason is not None
    assert "hash" in result.reason


@pytest.mark.parametrize("offset", [0, 5, 40, 100, -60, -3])
async def test_any_single_byte_flip_breaks_that_line(tmp_path: Path, offset: int) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 4)
    lines = _lines(path)
    line = bytearray(lines[2])
    pos = offset % (len(line) - 1)  # never the line end
    line[pos] = line[pos] ^ 0x01
    lines[2] = bytes(line)
    path.write_bytes(b"".join(lines))
    assert verify_chain([path]).first_broken == (str(path), 3)


async def test_relinked_edit_is_found_at_the_next_record(tmp_path: Path) -> None:
    # an editor who recomputes the edited record's own hash still breaks the next link
    path = tmp_path / "audit.jsonl"
    await _write(path, 4)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["event"]["tool"] = "forged"
    line, _ = make_record(record["event"], seq=record["seq"], prev_hash=record["prev_hash"])
    lines[1] = line
    path.write_bytes(b"".join(lines))
    result = verify_chain([path])
    assert result.first_broken == (str(path), 3)
    assert result.reason is not None
    assert "prev_hash" in result.reason


async def test_deleted_line_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 6)
    lines = _lines(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    result = verify_chain([path])
    assert result.first_broken == (str(path), 3)
    assert result.reason is not None
    assert "deleted" in result.reason


async def test_swapped_lines_are_found_at_the_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 6)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    assert verify_chain([path]).first_broken == (str(path), 2)


async def test_truncation_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    result = verify_chain([path])
    assert result.first_broken == (str(path), 5)
    assert result.records == 4
    # a line cut just before its end is still a truncated record
    path.write_bytes(data[:-1])
    assert verify_chain([path]).first_broken == (str(path), 5)


async def test_sink_resumes_after_a_torn_line_and_verification_keeps_reporting_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # crash in the middle of the last record
    await _write(path, 2)
    result = verify_chain([path])
    assert result.first_broken == (str(path), 3)
    lines = _lines(path)
    assert len(lines) == 5
    assert json.loads(lines[3])["seq"] == 2


async def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 12, rotate_bytes=1200)
    files = chain_files(path)
    assert len(files) >= 3
    assert files[-1] == path
    assert files[0] == tmp_path / "audit.jsonl.1"
    assert all(f.stat().st_size <= 1200 for f in files)
    result = verify_chain(files)
    assert result.ok
    assert result.records == 12
    first_of_second = json.loads(_lines(files[1])[0])
    last_of_first = json.loads(_lines(files[0])[-1])
    assert first_of_second["prev_hash"] == last_of_first["hash"]


async def test_missing_rotation_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 12, rotate_bytes=1200)
    files = chain_files(path)
    files[1].unlink()
    result = verify_chain(chain_files(path))
    assert result.first_broken == (str(files[2]), 1)
    assert result.reason is not None
    assert "rotated file is missing" in result.reason
    files[0].unlink()
    result = verify_chain(chain_files(path))
    assert result.first_broken == (str(files[2]), 1)
    assert result.reason is not None
    assert "earlier file is missing" in result.reason
    assert verify_chain([tmp_path / "nope.jsonl"]).first_broken == (
        str(tmp_path / "nope.jsonl"),
        0,
    )


async def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = JsonlSink(path, fsync=False)
    await first.write([_event(0)])
    second = JsonlSink(path, fsync=False)
    with pytest.raises(AuditError):
        await second.write([_event(1)])
    await first.aclose()
    await second.write([_event(1)])  # the lock is free again
    await second.aclose()
    assert verify_chain([path]).records == 2


async def test_trail_with_jsonl_sink_writes_every_event(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditTrail(JsonlSink(path)) as trail:
        for i in range(50):
            await trail.emit(_event(i))
    assert trail.stats.written == 50
    assert verify_chain([path]).records == 50


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_identity.cli", "audit", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 9, rotate_bytes=1200)
    ok = _cli(str(path))  # brings in the rotated files
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK")
    assert "9 record" in ok.stdout
    explicit = _cli(*(str(p) for p in reversed(chain_files(path))))  # any order
    assert explicit.returncode == 0
    assert "9 record" in explicit.stdout

    lines = _lines(path)
    lines[0] = lines[0].replace(b'"ok"', b'"no"')
    path.write_bytes(b"".join(lines))
    broken = _cli(str(path))
    assert broken.returncode == 1
    assert broken.stdout.startswith("BROKEN")
    assert f"{path}:1:" in broken.stdout
    assert _cli().returncode == 2  # usage error


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_verify_never_raises_on_garbage(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(data)
    result = verify_chain([path])
    assert result.ok == (data == b"")


# -- issue 12 item 10: verification never raises, whatever the third line holds ------------


def _record(number: bytes) -> bytes:
    """A line shaped like a record (hex hashes, the right members) holding ``number``."""
    hexes = b'"hash":"' + b"a" * 64 + b'","prev_hash":"' + b"b" * 64 + b'"'
    return b'{"event":{"n":' + number + b"}," + hexes + b',"seq":2,"v":1}'


HOSTILE_LINES = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested-array"),
    pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="deeply-nested-object"),
    pytest.param(_record(b"NaN"), id="nan"),
    pytest.param(_record(b"-Infinity"), id="infinity"),
    pytest.param(_record(b"1e400"), id="1e400"),
    pytest.param(_record(b"9" * 4000), id="4000-digits"),
    pytest.param(b'{"event":{"n":' + b"9" * 5000 + b'},"v":1}', id="5000-digits"),
    pytest.param(b'{"event":{},"event":{},"hash":"","prev_hash":"","seq":2,"v":1}', id="dup"),
    pytest.param(
        b'{"event":{"s":"\\ud800"},"hash":"'
        + b"0" * 64
        + b'","prev_hash":"'
        + b"0" * 64
        + b'","seq":2,"v":1}',
        id="lone-surrogate",
    ),
    pytest.param(b"\xff\xfe\xed\xa0\x80 not utf-8", id="non-utf-8"),
    pytest.param(b'{"event":{"tool":"x"', id="truncated"),
    pytest.param(b"\x00" * 1000, id="nul-bytes"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(
        b'{"event":{},"hash":"' + b"a" * 64 + b'","prev_hash":"x","seq":true,"v":1}', id="bool-seq"
    ),
]


def _replace_third_line(path: Path, line: bytes) -> None:
    lines = _lines(path)
    lines[2] = line + b"\n"
    path.write_bytes(b"".join(lines))


async def _chain_with_third_line(path: Path, line: bytes) -> None:
    await _write(path, 4)
    _replace_third_line(path, line)


@pytest.mark.parametrize("line", HOSTILE_LINES)
async def test_verify_reports_hostile_lines_as_broken_at_their_line(
    tmp_path: Path, line: bytes
) -> None:
    path = tmp_path / "audit.jsonl"
    await _chain_with_third_line(path, line)
    result = verify_chain([path])
    assert not result.ok
    assert result.first_broken == (str(path), 3)
    assert result.records == 2
    assert result.reason


async def test_cli_verify_reports_hostile_lines_as_broken(tmp_path: Path) -> None:
    """The command line, in a fresh process: BROKEN with the line number, exit 1."""
    for index, param in enumerate(HOSTILE_LINES):
        path = tmp_path / f"audit-{index}.jsonl"
        await _chain_with_third_line(path, param.values[0])
    for index in range(len(HOSTILE_LINES)):
        path = tmp_path / f"audit-{index}.jsonl"
        outcome = _cli(str(path))
        assert outcome.returncode == 1, (HOSTILE_LINES[index].id, outcome.stderr)
        assert outcome.stdout.startswith(f"BROKEN: {path}:3: "), HOSTILE_LINES[index].id
        assert outcome.stderr == ""


async def test_cli_verify_odd_file_names(tmp_path: Path) -> None:
    undecodable = tmp_path / "audit-\udcff.jsonl"  # a POSIX name that is not UTF-8
    outcome = _cli(str(undecodable))
    assert outcome.returncode == 1
    assert "file is missing" in outcome.stdout
    assert outcome.stderr == ""
    assert not verify_chain([tmp_path / "a\x00b"]).ok
    assert verify_chain([tmp_path]).first_broken == (str(tmp_path), 0)  # a directory


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


async def test_sink_reopens_after_a_garbage_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 2)
    _append(path, b"[" * 100_000 + b"]" * 100_000 + b"\n")
    await _write(path, 1)  # resumes from the last readable record instead of crashing
    assert verify_chain([path]).first_broken == (str(path), 3)


# -- tests that kill the mutants that survived the first mutation run (docs/security.md) ----


def _truncate(path: Path) -> None:
    path.write_bytes(b"")


async def test_an_emptied_rotated_file_breaks_the_chain(tmp_path: Path) -> None:
    """Verification goes on past an empty file (it does not stop there and report OK):
    the next file's first record then no longer links."""
    path = tmp_path / "audit.jsonl"
    await _write(path, 12, rotate_bytes=1200)
    files = chain_files(path)
    _truncate(files[1])
    result = verify_chain(files)
    assert result.ok is False
    assert result.first_broken == (str(files[2]), 1)


async def test_verify_results_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 2)
    assert verify_chain([tmp_path]) == VerifyResult(
        False, 0, (str(tmp_path), 0), "unreadable (IsADirectoryError)"
    )
    missing = tmp_path / "gone.jsonl"
    assert verify_chain([path, missing]) == VerifyResult(
        False, 2, (str(missing), 0), "file is missing"
    )
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert verify_chain([path]) == VerifyResult(
        False, 1, (str(path), 2), "truncated record (no line end)"
    )


async def test_chain_files_lists_only_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(path, 12, rotate_bytes=1200)
    rotated = chain_files(path)[:-1]
    for foreign in ("audit.jsonl.x.1", "audit.jsonl.01", "audit.jsonl.1.bak", "other.jsonl.1"):
        (tmp_path / foreign).write_bytes(b"not part of the chain\n")
    assert chain_files(path) == [*rotated, path]
    path.unlink()  # only rotated files left: the live file is not listed
    assert chain_files(path) == rotated
    for file in rotated:
        file.unlink()
    assert chain_files(path) == [path]  # nothing at all: the live file, reported missing


async def test_a_relinked_record_with_a_boolean_sequence_is_broken(tmp_path: Path) -> None:
    """``true`` is not sequence number 1, even in a record whose hash was recomputed."""
    path = tmp_path / "audit.jsonl"
    await _write(path, 1)
    first = json.loads(_lines(path)[0])
    line, _ = make_record({"kind": "x"}, seq=True, prev_hash=first["hash"])  # type: ignore[arg-type]
    _append(path, line)
    result = verify_chain([path])
    assert result.first_broken == (str(path), 2)
    assert result.reason == "malformed sequence number"


_TEXT = st.text(st.characters(exclude_categories=("Cs",)))  # records are valid Unicode
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    event=st.dictionaries(_TEXT, _JSON, max_size=6),
    seq=st.one_of(st.integers(0, 2**70), st.booleans()),
    prev_hash=st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), _TEXT),
)
def test_make_record_is_the_canonical_encoding_of_the_record(
    event: dict[str, Any], seq: int, prev_hash: str
) -> None:
    """The one-pass line (the event encoded once) is exactly the canonical JSON of the
    whole record, and its hash the SHA-256 of the body's canonical JSON, for any event
    and for values the writer never uses (a boolean seq, a prev_hash that is not hex)."""
    body = {"event": event, "prev_hash": prev_hash, "seq": seq, "v": 1}
    digest = hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()
    line, got = make_record(event, seq=seq, prev_hash=prev_hash)
    assert got == digest
    assert line == (canonical_json({**body, "hash": digest}) + "\n").encode("utf-8")

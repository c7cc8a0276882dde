"""The hash chain of JSONL audit files, and its verification.

Each line of a JSONL audit file is one record, serialised as canonical JSON (sorted keys,
no whitespace, UTF-8; see :func:`~agent_identity.audit.events.canonical_json`) and ended by
``\\n``::

    {"event":{...},"hash":"<hex>","prev_hash":"<hex>","seq":<n>,"v":1}

- ``seq`` counts records from 0 across all files of the chain;
- ``prev_hash`` is the ``hash`` of the previous record (:data:`GENESIS`, 64 zeros, for the
  first record ever). After rotation the first record of a new file links to the last
  record of the previous file, so the files form one chain;
- ``hash`` is the SHA-256 (FIPS 180-4) of the canonical JSON of the record without
  ``hash``.

Editing, deleting, reordering or truncating a record, or losing a rotated file, breaks the
chain at a precise line; :func:`verify_chain` reports the first such line. Limits: a chain
without a key is tamper-*evident* only against edits that do not rewrite every following
record, and removing whole records from the very end cannot be told from a chain that was
simply shorter. Ship records off the host too (logging, OpenTelemetry) where that matters.

Rotated files are named ``<path>.1``, ``<path>.2``...: ``.1`` is the oldest, ``<path>``
itself the newest. :func:`chain_files` lists them in chain order.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent_identity.audit.events import canonical_json

__all__ = ["GENESIS", "VerifyResult", "chain_files", "make_record", "verify_chain"]

GENESIS: Final = "0" * 64
FORMAT_VERSION: Final = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"event", "hash", "prev_hash", "seq", "v"})
#: Far above any record the writer produces (events are bounded to a few KiB).
_MAX_LINE: Final = 16 * 1024 * 1024


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def make_record(event: dict[str, Any], *, seq: int, prev_hash: str) -> tuple[bytes, str]:
    """The JSONL line (with its ``\\n``) for ``event`` and the record's hash.

    The line is ``canonical_json`` of the body (``event``, ``prev_hash``, ``seq``, ``v``)
    plus ``hash``, the SHA-256 of the body's canonical text. For the writer's own values
    (an integer ``seq``, a 64-hex-digit ``prev_hash``) the event is encoded once and both
    texts are spelled around it (``hash`` sorts between ``event`` and ``prev_hash``; those
    values need no escaping); anything else takes the general path.
    """
    if type(seq) is not int or not isinstance(prev_hash, str) or not _HEX64.fullmatch(prev_hash):
        body = {"event": event, "prev_hash": prev_hash, "seq": seq, "v": FORMAT_VERSION}
        digest = _digest(body)
        return (canonical_json({**body, "hash": digest}) + "\n").encode("utf-8"), digest
    head = '{"event":' + canonical_json(event)
    tail = f',"prev_hash":"{prev_hash}","seq":{seq},"v":{FORMAT_VERSION}}}'
    digest = hashlib.sha256((head + tail).encode("utf-8")).hexdigest()
    return f'{head},"hash":"{digest}"{tail}\n'.encode(), digest


def rotation_index(path: Path) -> int | None:
    """``n`` for a rotated file ``<base>.<n>``, else ``None``."""
    suffix = path.suffix
    return int(suffix[1:]) if re.fullmatch(r"\.[1-9][0-9]*", suffix) else None


def chain_files(path: str | Path) -> list[Path]:
    """The files of the chain whose live file is ``path``, oldest first: the existing
    ``path.1``, ``path.2``... in numeric order, then ``path`` (if it exists, or if there is
    nothing else, so that verifying reports it missing)."""
    live = Path(path)
    rotated: list[tuple[int, Path]] = []
    if live.parent.is_dir():
        for candidate in live.parent.iterdir():
            if candidate.name.startswith(live.name + "."):
                index = rotation_index(candidate)
                if index is not None and candidate.name == f"{live.name}.{index}":
                    rotated.append((index, candidate))
    files = [p for _, p in sorted(rotated)]
    if live.exists() or not files:
        files.append(live)
    return files


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    ``records`` counts the records found valid (all of them when ``ok``);
    ``first_broken`` is ``(file, line)`` of the first bad record (``line`` is 1-based; 0
    when the whole file is missing or unreadable) and ``reason`` says what is wrong.
    """

    ok: bool
    records: int
    first_broken: tuple[str, int] | None = None
    reason: str | None = None


class _Broken(Exception):
    pass


def _not_a_constant(name: str) -> Any:
    raise _Broken(f"non-standard JSON constant {name} (edited)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Broken("number out of range (edited)")
    return value


def _check_line(raw: bytes, seq: int, prev_hash: str, first_of_file: bool) -> str:
    """The record's hash if ``raw`` is the next valid link, else :class:`_Broken`.

    Whatever the bytes: non-UTF-8, NaN/Infinity, numbers out of range, duplicate
    members, nesting too deep for the parser, lone surrogates (a record the writer could
    never have produced), everything ends as :class:`_Broken`, never another exception."""
    try:
        return _check_record(raw, seq, prev_hash, first_of_file)
    except _Broken:
        raise
    except RecursionError:
        raise _Broken("record is nested too deeply (edited)") from None
    except Exception as exc:  # the contract: bad input never raises
        raise _Broken(f"unreadable record ({type(exc).__name__})") from None


def _check_record(raw: bytes, seq: int, prev_hash: str, first_of_file: bool) -> str:
    if len(raw) > _MAX_LINE:
        raise _Broken("record is too large (edited)")
    try:
        record = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_not_a_constant,
            parse_float=_finite,
        )
    except (UnicodeDecodeError, ValueError):
        raise _Broken("not a valid JSON record (edited or truncated)") from None
    if not isinstance(record, dict) or set(record) != _KEYS:
        raise _Broken("not an audit record (unexpected members)")
    if record["v"] != FORMAT_VERSION:
        raise _Broken("unknown record format version")
    digest = record["hash"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise _Broken("malformed hash")
    try:
        canonical = canonical_json(record).encode("utf-8")
    except ValueError:  # a lone surrogate: not text the writer could have encoded
        raise _Broken("record holds invalid Unicode (edited)") from None
    if canonical != raw:
        raise _Broken("record is not in canonical form (edited)")
    body = {k: v for k, v in record.items() if k != "hash"}
    if _digest(body) != digest:
        raise _Broken("hash does not match the record's contents (edited)")
    found = record["seq"]
    if not isinstance(found, int) or isinstance(found, bool):
        raise _Broken("malformed sequence number")
    if found != seq:
        if seq == 0:
            raise _Broken(
                f"chain does not start here (sequence {found}, expected 0): "
                "an earlier file is missing"
            )
        where = "a rotated file is missing" if first_of_file else "records deleted or reordered"
        raise _Broken(f"sequence jumps from {seq - 1} to {found}: {where}")
    if record["prev_hash"] != prev_hash:
        where = "the last record of the previous file" if first_of_file else "the previous record"
        raise _Broken(f"does not link to {where} (prev_hash mismatch)")
    return digest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Broken("duplicate member")
        out[key] = value
    return out


def verify_chain(paths: Iterable[str | Path]) -> VerifyResult:
    """Verify the hash chain across ``paths``, taken in the order given (oldest first;
    :func:`chain_files` gives that order). Reports the FIRST broken link: an edited,
    deleted, reordered, duplicated or truncated record, a file that is missing, or a chain
    that does not start at sequence 0. Reads each file once; never raises for bad input
    (garbage bytes, non-UTF-8, NaN, huge numbers, deep nesting, duplicate members, lone
    surrogates, unreadable or oddly named files): it reports them as the broken line.
    """
    files: Sequence[Path] = [Path(p) for p in paths]
    seq, prev = 0, GENESIS
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return VerifyResult(False, seq, (str(path), 0), "file is missing")
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the file name
            return VerifyResult(False, seq, (str(path), 0), f"unreadable ({type(exc).__name__})")
        if not data:
            continue
        lines = data.split(b"\n")
        complete = lines[:-1]
        for number, raw in enumerate(complete, start=1):
            try:
                prev = _check_line(raw, seq, prev, first_of_file=number == 1)
            except _Broken as exc:
                return VerifyResult(False, seq, (str(path), number), str(exc))
            seq += 1
        if lines[-1]:
            where = (str(path), len(complete) + 1)
            return VerifyResult(False, seq, where, "truncated record (no line end)")
    return VerifyResult(True, seq)


def cli_verify(files: Sequence[str]) -> int:
    """``agent-identity audit verify FILE...``: exit 0 and print ``OK`` with the record
    count, or exit 1 and print the first broken link. A live file given without its
    rotated siblings brings them in (see :func:`chain_files`)."""
    ordered: list[Path] = []
    for name in files:
        path = Path(name)
        try:
            group = chain_files(path) if rotation_index(path) is None else [path]
        except (OSError, ValueError):  # an unreadable directory: verify reports the file
            group = [path]
        ordered.extend(p for p in group if p not in ordered)
    ordered.sort(key=_chain_order)
    result = verify_chain(ordered)
    if result.ok:
        print(f"OK: {result.records} record(s) in {len(ordered)} file(s), chain intact")
        return 0
    assert result.first_broken is not None
    file, line = result.first_broken
    print(
        f"BROKEN: {_printable(file)}:{line}: {result.reason} "
        f"({result.records} valid record(s) before)"
    )
    return 1


def _printable(name: str) -> str:
    """A file name as text any terminal encoding takes (undecodable bytes of a POSIX name
    arrive as lone surrogates, which ``print`` cannot encode)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _chain_order(path: Path) -> tuple[str, int]:
    index = rotation_index(path)
    if index is None:
        return (str(path), 1 << 62)
    return (str(path.with_suffix("")), index)

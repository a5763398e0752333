"""Instruction-tuning examples: loading, validating and saving them.

Every bad input raises a one-line :class:`~fedpit.errors.DataError` naming the file, the record (``line N`` for
JSONL, ``record N`` for a JSON array or a Hugging Face dataset, 1-based) and the field.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fedpit.errors import DataError
from fedpit.fsutil import write_private_text

logger = logging.getLogger("fedpit.data")

FORMATS = ("auto", "alpaca", "jsonl", "medinstruct", "hf")
MEDINSTRUCT_ANSWER_FIELDS = {
    "gpt-4": "gpt-4-answer",
    "gpt-3.5-turbo": "gpt-3.5-turbo-answer",
    "text-davinci-003": "text-davinci-003-answer",
    "claude-2": "claude-2",
}
DEMO_SPLITS = ("train", "test")
NO_INPUT = "<noinput>"  # AlpaCare's marker for an empty input
_ON_DUPLICATE = ("error", "drop")


@dataclass(frozen=True)
class Example:
    """One instruction-tuning example."""

    instruction: str
    output: str
    input: str = ""
    category: str | None = None

    def to_dict(self) -> dict:
        """The record as written to JSONL (``category`` omitted when it is None)."""
        d = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.category is not None:
            d["category"] = self.category
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        """Build from a trusted dict (no validation)."""
        return cls(
            instruction=d["instruction"], output=d["output"], input=d.get("input", ""), category=d.get("category")
        )


def load_examples(
    source: str | Path,
    *,
    format: str = "auto",
    output_field: str | None = None,
    on_duplicate: str = "error",
    limit: int | None = None,
) -> list[Example]:
    """Load and validate examples from a ``.json`` array, a ``.jsonl`` file or ``hf:NAME[:SPLIT]``.

    ``on_duplicate`` is ``"error"`` or ``"drop"`` (keep the first of records with the same instruction and input);
    ``limit`` keeps the first N valid examples.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if on_duplicate not in _ON_DUPLICATE:
        raise ValueError(f"on_duplicate must be one of {_ON_DUPLICATE}, got {on_duplicate!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    if format == "hf" or (format == "auto" and isinstance(source, str) and source.startswith("hf:")):
        path: str | Path = str(source)
        records = _hf_records(str(source))
    else:
        path = Path(source)
        jsonl = {"alpaca": False, "jsonl": True, "medinstruct": path.suffix.lower() != ".json"}.get(format)
        records = read_records(path, jsonl=jsonl)

    if format == "medinstruct" or (format == "auto" and "gpt-4-answer" in records[0][1]):
        field = MEDINSTRUCT_ANSWER_FIELDS.get(output_field or "gpt-4", output_field)
        fallbacks: tuple[str, ...] = ()
    elif output_field:
        field, fallbacks = output_field, ()
    else:
        field, fallbacks = "output", ("response",)

    examples: list[Example] = []
    seen: dict[tuple[str, str], str] = {}
    dropped = 0
    for label, raw in records:
        ex = validate_record(raw, path=path, record=label, output_field=field, fallback_fields=fallbacks)
        key = (ex.instruction, ex.input)
        if key in seen:
            if on_duplicate == "error":
                raise DataError(path, f"duplicate of {seen[key]} (same instruction and input)", record=label)
            dropped += 1
            continue
        seen[key] = label
        examples.append(ex)
    if dropped:
        logger.warning("%s: dropped %d duplicate record(s) (same instruction and input)", path, dropped)
    return examples if limit is None else examples[:limit]


def read_records(path: str | Path, *, jsonl: bool | None = None) -> list[tuple[str, dict]]:
    """Read raw records as ``(label, dict)`` pairs from a JSON array or a JSONL file.

    ``jsonl`` picks the parser; None decides by suffix (``.jsonl`` or ``.json``).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a directory, expected a .json or .jsonl file")
    if not path.exists():
        raise DataError(path, "file not found")
    if jsonl is None:
        suffix = path.suffix.lower()
        if suffix not in (".json", ".jsonl"):
            raise DataError(path, f"unknown file type {suffix or '(no suffix)'!r}; expected .json or .jsonl")
        jsonl = suffix == ".jsonl"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"not UTF-8 text (line {line}, byte {e.start})") from None

    records = _parse_jsonl(path, text) if jsonl else _parse_json_array(path, text)
    if not records:
        raise DataError(path, "no records")
    for label, raw in records:
        if not isinstance(raw, dict):
            raise DataError(path, f"expected a JSON object, got {_type_name(raw)}", record=label)
    return records


def _parse_jsonl(path: Path, text: str) -> list[tuple[str, object]]:
    records = []
    # split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold raw.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})", record=f"line {n}") from None
    return records


def _parse_json_array(path: Path, text: str) -> list[tuple[str, object]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON array of records, got {_type_name(data)}")
    return [(f"record {i}", raw) for i, raw in enumerate(data, 1)]


def validate_record(
    raw: dict, *, path: str | Path, record: str, output_field: str = "output", fallback_fields: Sequence[str] = ()
) -> Example:
    """Check one raw record and return it as a stripped :class:`Example`.

    The output is read from ``output_field``, or else from the first of ``fallback_fields`` present.
    """

    def text(field: str, value: object) -> str:
        if not isinstance(value, str):
            raise DataError(path, f"expected text, got {_type_name(value)}", record=record, field=field)
        check_utf8(value, path=path, record=record, field=field)
        return value.strip()

    def required(field: str, value: object) -> str:
        value = text(field, value)
        if not value:
            raise DataError(path, "is empty", record=record, field=field)
        return value

    if "instruction" not in raw:
        raise DataError(path, "missing required field", record=record, field="instruction")
    instruction = required("instruction", raw["instruction"])

    out_field = next((f for f in (output_field, *fallback_fields) if f in raw), None)
    if out_field is None:
        expected = " or ".join(repr(f) for f in (output_field, *fallback_fields))
        raise DataError(path, f"missing required field (expected {expected})", record=record, field=output_field)
    output = required(out_field, raw[out_field])

    inp = raw.get("input")
    inp = "" if inp is None else text("input", inp)
    if inp == NO_INPUT:
        inp = ""

    category = raw.get("category")
    if category is not None:
        category = required("category", category)
    return Example(instruction=instruction, output=output, input=inp, category=category)


def check_utf8(value: str, *, path: str | Path, record: str | None = None, field: str | None = None) -> None:
    """Raise a DataError unless ``value`` encodes as UTF-8. JSON's ``\\ud800`` escapes decode to lone surrogates,
    which Python strings hold but no tokenizer or UTF-8 file can."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            path,
            f"not valid Unicode text: a lone surrogate U+{ord(value[e.start]):04X} at character "
            f"{e.start + 1} (an unpaired \\u{ord(value[e.start]):04x} escape?)",
            record=record,
            field=field,
        ) from None


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _hf_records(source: str) -> list[tuple[str, dict]]:
    name, _, split = source.removeprefix("hf:").partition(":")
    if not name:
        raise DataError(source, "expected hf:NAME or hf:NAME:SPLIT")
    try:
        import datasets
    except ImportError:
        raise DataError(
            source, "loading a Hugging Face dataset needs the 'datasets' package: pip install 'fedpit[hub]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - datasets raises many unrelated types; each becomes a DataError
        reason = _short_reason(e)
        if _looks_offline(e):
            raise DataError(
                source,
                f"cannot load this Hugging Face dataset: the hub is not reachable from this "
                f"machine ({reason}); download it where the hub is reachable and pass a "
                f"local .json or .jsonl file",
            ) from None
        raise DataError(source, f"cannot load this Hugging Face dataset ({reason})") from None
    records = [(f"record {i}", dict(row)) for i, row in enumerate(ds, 1)]
    if not records:
        raise DataError(source, "no records")
    return records


def _short_reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _looks_offline(e: BaseException) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True
    if isinstance(e, (ConnectionError, TimeoutError, FileNotFoundError)):
        return True
    words = ("connection", "offline", "not found", "couldn't reach", "timed out", "doesn't exist", "resolve")
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in words)


def save_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples as JSONL, atomically and owner-only (mode 600: examples are training text), by
    :func:`fedpit.fsutil.write_private_text`."""
    write_private_text(path, "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples))


def demo_path(split: str) -> Path:
    """Path of the packaged demo split (``train`` or ``test``)."""
    if split not in DEMO_SPLITS:
        raise ValueError(f"split must be one of {DEMO_SPLITS}, got {split!r}")
    return Path(str(resources.files("fedpit.data").joinpath("demo", f"{split}.jsonl")))


def load_demo(split: str = "train") -> list[Example]:
    """Load the packaged demo split (``train`` or ``test``)."""
    return load_examples(demo_path(split))


def check_enough(examples: Sequence[Example], num_clients: int, min_per_client: int, path: str | Path) -> None:
    """Raise a DataError unless there are at least ``num_clients * min_per_client`` examples."""
    if num_clients < 1 or min_per_client < 1:
        raise ValueError("num_clients and min_per_client must be >= 1")
    need = num_clients * min_per_client
    if len(examples) < need:
        raise DataError(
            path,
            f"{len(examples)} examples cannot give {num_clients} clients at least {min_per_client} each (need {need})",
        )

"""Instruction-tuning data: examples, loaders and the packaged demo set."""

from fedpit.data.examples import (
    FORMATS,
    MEDINSTRUCT_ANSWER_FIELDS,
    Example,
    check_enough,
    demo_path,
    load_demo,
    load_examples,
    read_records,
    save_jsonl,
    validate_record,
)

__all__ = [
    "FORMATS",
    "MEDINSTRUCT_ANSWER_FIELDS",
    "Example",
    "check_enough",
    "demo_path",
    "load_demo",
    "load_examples",
    "read_records",
    "save_jsonl",
    "validate_record",
]

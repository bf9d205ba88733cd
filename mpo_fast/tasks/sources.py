"""Reading raw rows from the shipped files, local JSONL/JSON/Parquet files or Hugging Face.

Each reader returns plain dicts; turning rows into TaskExamples (field mapping, validation)
is Task.load's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_OTHER_DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".arrow", ".yaml", ".yml", ".xlsx")
# owner/name or name, as on the Hugging Face Hub.
_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class RawRows:
    rows: list[dict[str, Any]]
    where: str  # human-readable origin for error messages
    split_applied: bool  # True when the source already selected the split (HF datasets)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} line {number} is not valid JSON ({exc.msg}); each line must hold one JSON object"
                ) from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is a JSON {type(row).__name__}; each line must be an object")
            rows.append(row)
    return rows


def read_json(path: Path) -> list[dict[str, Any]]:
    """A .json file holding one array of objects, or JSON Lines under a .json name."""
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); use an array of objects or JSON Lines") from exc
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise ValueError(f"{path} element {bad} is not an object; the array must hold one object per example")
    return rows


def read_parquet(path: Path) -> list[dict[str, Any]]:
    from ..optional_import import import_optional

    pq = import_optional("pyarrow.parquet", needed_for=f"reading {path} needs pyarrow",
                         install="pip install pyarrow (or convert the file to JSONL)")
    return pq.read_table(path).to_pylist()


def read_hf(name: str, split: str, config: str | None) -> list[dict[str, Any]]:
    from ..optional_import import import_optional

    datasets = import_optional("datasets", needed_for=f"loading the Hugging Face dataset {name!r} needs the datasets package",
                               install="pip install datasets (or download it once and pass a local .jsonl/.parquet path)")
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub raises many types (network, missing split, missing config)
        raise RuntimeError(
            f"could not load Hugging Face dataset {name!r} (config {config!r}, split {split!r}): {exc}. "
            "Check the name, config and split on the Hub and your network, or pass a local file"
        ) from exc
    return [dict(row) for row in dataset]


def read_shipped(filename: str) -> RawRows:
    resource = resources.files("mpo_fast.tasks").joinpath("data", filename)
    if not resource.is_file():
        raise FileNotFoundError(
            f"shipped data file mpo_fast/tasks/data/{filename} is missing from this install; reinstall "
            "mpo_fast (package data must include mpo_fast/tasks/data/*.jsonl) or pass source=PATH"
        )
    with resources.as_file(resource) as path:
        return RawRows(read_jsonl(path), f"shipped data {filename}", split_applied=False)


def read_source(source: str | Path, split: str | None, hf_config: str | None) -> RawRows:
    """Local file by suffix; otherwise a Hugging Face dataset name."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in _LOCAL_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset file {path} does not exist; check the path, or leave the data source unset to "
                "use the data shipped with mpo_fast"
            )
        reader = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet}[suffix]
        return RawRows(reader(path), str(path), split_applied=False)
    if suffix in _OTHER_DATA_SUFFIXES or path.exists():
        raise ValueError(
            f"dataset source {path} is not a supported file; use .jsonl, .json or .parquet "
            "(convert CSV with pandas: pd.read_csv(p).to_json(out, orient='records', lines=True))"
        )
    if isinstance(source, Path) or not _HF_NAME.match(str(source)):
        raise FileNotFoundError(
            f"dataset source {str(source)!r} is neither an existing .jsonl/.json/.parquet file nor a "
            "Hugging Face dataset name like 'owner/name'; check the path"
        )
    return RawRows(read_hf(str(source), split or "train", hf_config), f"Hugging Face dataset {source}", True)

"""The Task interface: what the policy is asked, how a judge is briefed, where data comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ..rubrics import Rubric, RubricItem
from .example import TaskExample
from .sources import RawRows, read_shipped, read_source

_FIELDS = ("id", "prompt", "reference", "label")
_SPLIT_COLUMN = "split"


class Task:
    """Subclasses set the class attributes and write `format_prompt` and `initial_rubric_items`.

    name:          registry key ("essay", ...).
    system_prompt: instructions to the POLICY (system message).
    judge_context: what the judge is told about the task; the initial rubric's context.
    data_file:     shipped JSONL under mpo_fast/tasks/data/.
    """

    name: ClassVar[str]
    system_prompt: ClassVar[str]
    judge_context: ClassVar[str]
    data_file: ClassVar[str]
    requires_reference: ClassVar[bool] = False

    # -- prompts and rubric ----------------------------------------------------------------

    def format_prompt(self, example: TaskExample) -> str:
        raise NotImplementedError

    def initial_rubric_items(self) -> tuple[RubricItem, ...]:
        raise NotImplementedError

    def initial_rubric(self) -> Rubric:
        return Rubric(task=self.name, context=self.judge_context, items=self.initial_rubric_items())

    def build_messages(self, example: TaskExample) -> list[dict[str, str]]:
        """Chat messages for the policy: the task's system prompt, then the templated input."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.format_prompt(example)},
        ]

    def rule_reward(self, example: TaskExample, response: str) -> float | None:
        """A reward computed by rule, or None when the task has none (judged only)."""
        return None

    def rule_rewards(self, examples: Sequence[TaskExample], responses: Sequence[str]) -> list[float | None]:
        """rule_reward for a batch (tasks override this when batching is cheaper)."""
        self._check_batch(examples, responses)
        return [self.rule_reward(e, r) for e, r in zip(examples, responses)]

    @staticmethod
    def _check_batch(examples: Sequence[TaskExample], responses: Sequence[str]) -> None:
        if isinstance(responses, str):
            raise TypeError("responses is a single str; pass a list with one response per example")
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples but {len(responses)} responses; pass one response per example")

    # -- data ------------------------------------------------------------------------------

    def normalise_label(self, label: Any, where: str) -> str | None:
        return None if label is None else str(label)

    def normalise_reference(self, reference: Any, where: str) -> str | None:
        if reference is None:
            return None
        if isinstance(reference, bool) or not isinstance(reference, (str, int, float)):
            raise ValueError(f"{where}: reference is a {type(reference).__name__}; it must be text or a number")
        text = str(reference).strip()
        return text or None

    def load(
        self,
        source: str | Path | None = None,
        split: str | None = "train",
        *,
        field_map: Mapping[str, str] | None = None,
        hf_config: str | None = None,
        limit: int | None = None,
    ) -> list[TaskExample]:
        """Examples of one split.

        source: None for the data shipped with mpo_fast; a .jsonl/.json/.parquet path; or a
          Hugging Face dataset name (needs `datasets` and a network; `hf_config` picks a config).
        split: rows whose `split` column equals it. split=None returns every row. A local file
          without a `split` column is one training set: it serves split="train" only.
        field_map: {our field: your column}, e.g. {"prompt": "problem", "reference": "solution"};
          our fields are id, prompt, reference, label. Other columns go to example.meta.
        """
        fields = self._field_map(field_map)
        raw: RawRows = read_shipped(self.data_file) if source is None else read_source(source, split, hf_config)
        rows = self._select_split(raw, None if raw.split_applied else split)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"limit is {limit!r}; pass a positive integer or None for all rows")
            rows = rows[:limit]
        examples = []
        seen: dict[str, int] = {}
        for index, row in rows:
            example = self._example(row, index, raw.where, fields)
            if example.id in seen:
                raise ValueError(
                    f"{raw.where}: id {example.id!r} appears in rows {seen[example.id]} and {index}; ids must be "
                    "unique (drop the id column to number rows automatically)"
                )
            seen[example.id] = index
            examples.append(example)
        return examples

    def _field_map(self, field_map: Mapping[str, str] | None) -> dict[str, str]:
        fields = {name: name for name in _FIELDS}
        for ours, theirs in (field_map or {}).items():
            if ours not in _FIELDS:
                raise ValueError(f"field_map key {ours!r} is not a task field; map any of {list(_FIELDS)}")
            if not isinstance(theirs, str) or not theirs:
                raise ValueError(f"field_map[{ours!r}] must name a column, got {theirs!r}")
            fields[ours] = theirs
        return fields

    def _select_split(self, raw: RawRows, split: str | None) -> list[tuple[int, dict[str, Any]]]:
        numbered = list(enumerate(raw.rows))
        if not numbered:
            raise ValueError(f"{raw.where} holds no rows; add at least one example")
        if split is None:
            return numbered
        has_split = [_SPLIT_COLUMN in row for _, row in numbered]
        if not any(has_split):
            if split == "train":
                return numbered
            raise ValueError(
                f"{raw.where} has no 'split' column, so it is training data only; pass split=None to use "
                f"all rows for {split!r}, or add a 'split' field to each row"
            )
        if not all(has_split):
            first = has_split.index(False)
            raise ValueError(f"{raw.where}: row {first} has no 'split' field while others do; give every row one")
        selected = [(i, row) for i, row in numbered if row[_SPLIT_COLUMN] == split]
        if not selected:
            available = sorted({str(row[_SPLIT_COLUMN]) for _, row in numbered})
            raise ValueError(f"{raw.where} has no rows with split {split!r}; available splits: {available}")
        return selected

    def _example(self, row: Mapping[str, Any], index: int, where: str, fields: Mapping[str, str]) -> TaskExample:
        at = f"{where} row {index}"
        prompt = row.get(fields["prompt"])
        if not isinstance(prompt, str) or not prompt.strip():
            found = "missing" if prompt is None else f"{type(prompt).__name__} {prompt!r:.40}"
            raise ValueError(
                f"{at}: column {fields['prompt']!r} (the prompt) is {found}; it must be non-empty text. "
                f"Columns here: {sorted(row)}; map yours with field_map={{'prompt': 'your_column'}}"
            )
        raw_id = row.get(fields["id"])
        # Without an id column, the row number (in the whole file, before split selection) is
        # stable across loads of the same file.
        example_id = f"{self.name}-{index}" if raw_id is None else str(raw_id)
        reference = self.normalise_reference(row.get(fields["reference"]), at)
        if self.requires_reference and reference is None:
            raise ValueError(
                f"{at}: task {self.name!r} needs a reference answer but column {fields['reference']!r} is empty "
                f"or missing; map it with field_map={{'reference': 'your_column'}}"
            )
        label = self.normalise_label(row.get(fields["label"]), at)
        used = {fields[name] for name in _FIELDS} | {_SPLIT_COLUMN}
        meta = {key: value for key, value in row.items() if key not in used}
        if isinstance(row.get("meta"), Mapping) and "meta" not in used:
            meta = {**{k: v for k, v in meta.items() if k != "meta"}, **row["meta"]}
        return TaskExample(id=example_id, prompt=prompt.strip(), reference=reference, label=label, meta=meta)

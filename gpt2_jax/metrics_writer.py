"""Run outputs: ``metrics.jsonl`` (one JSON object per event) and TensorBoard event files.

Only the first process of a multi-host run writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax

from gpt2_jax import files

log = logging.getLogger(__name__)


class MetricsWriter:
    """Append train/eval events to ``workdir/metrics.jsonl`` and to TensorBoard."""

    def __init__(self, workdir: Path, resume_step: int | None = None):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        from tensorboardX import SummaryWriter  # deferred: only the writing process needs it

        self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Drop events logged after ``step`` (a resumed run recomputes them), replacing the file atomically."""
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("dropping line %d of %s, which is not a metrics record: %r", number, self.path, line[:80])
        if len(kept) < len(lines):
            files.write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All events of a run, in order; a line that is not a record (cut short by a kill) is skipped with a warning."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping line %d of %s, which is not a metrics record: %r", number, path, line[:80])
    return records

"""ScanReport: what a dataset scan found wrong, counted by kind, for the trainer's log."""
from __future__ import annotations

from dataclasses import dataclass, field

# Problem kinds, in the order the summary lists them.
PROBLEMS = (
    "missing_partner",   # an IR file without its visible partner or the reverse, or a label without images
    "missing_label",     # a pair without its label file (seg / det datasets)
    "unreadable_image",  # an image that cannot be opened or decoded
    "invalid_label",     # a label file that cannot be parsed or holds out-of-range values
    "empty_label",       # a label with no object / no labelled pixel (skipped unless keep_empty)
    "size_mismatch",     # IR, visible and mask sizes differ
    "skipped_at_load",   # a file that became unreadable after the scan, skipped while loading
)
MAX_EXAMPLES = 5


@dataclass
class ScanReport:
    """Counts of usable samples and of each problem, with a few example names per problem."""

    split: str = ""
    found: int = 0        # candidate samples seen (union of IR and visible names)
    usable: int = 0       # samples kept
    dropped_objects: int = 0  # boxes dropped inside otherwise valid labels (unknown class, zero area)
    counts: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PROBLEMS})
    examples: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PROBLEMS})

    def add(self, problem: str, name: str, detail: str = "") -> None:
        """Count one problem of kind ``problem`` for sample ``name``."""
        self.counts[problem] += 1
        if len(self.examples[problem]) < MAX_EXAMPLES:
            self.examples[problem].append(f"{name}: {detail}" if detail else name)

    @property
    def skipped(self) -> int:
        """Samples left out, whatever the reason."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """True when nothing was skipped."""
        return self.skipped == 0

    def as_dict(self) -> dict:
        """Plain-data form for logs and checkpoints."""
        return {"split": self.split, "found": self.found, "usable": self.usable,
                "dropped_objects": self.dropped_objects, "counts": dict(self.counts),
                "examples": {k: list(v) for k, v in self.examples.items() if v}}

    def summary(self) -> str:
        """One line: usable count and every non-zero problem count."""
        parts = [f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items() if v]
        if self.dropped_objects:
            parts.append(f"dropped objects {self.dropped_objects}")
        head = f"{self.split or 'dataset'}: {self.usable} usable of {self.found}"
        return head + (f" (skipped: {', '.join(parts)})" if parts else "")

    def details(self) -> str:
        """Multi-line text with the example names of each problem."""
        lines = [self.summary()]
        for k, names in self.examples.items():
            for n in names:
                lines.append(f"  {k}: {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

"""The search's values, torch-free: a plan, a candidate measured, a proposal to measure.

A plan is typed (`widths` of the prunable groups, `dropped_blocks`). The solver and the
refinement see it instead as one flat table of entries, each with a list of widths to choose
one from: a group is an entry of its channel widths, a removable block an entry of two widths,
1 kept and 0 dropped. `SearchPlan.from_entries` and `SearchPlan.entries` are the only
translation between the two, and the entry names never leave the search package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

Entries = dict[str, int]  # entry name -> width: what the solver and the refinement choose

_BLOCK_ENTRY = "block:"


def block_entry(name: str) -> str:
    """The entry of removable block `name` in the solver's table."""
    return _BLOCK_ENTRY + name


def is_block_entry(entry: str) -> bool:
    return entry.startswith(_BLOCK_ENTRY)


@dataclass(frozen=True)
class SearchPlan:
    """Channels kept per prunable group, and the residual blocks replaced by the identity."""

    widths: Mapping[str, int]
    dropped_blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", dict(self.widths))
        object.__setattr__(self, "dropped_blocks", tuple(sorted(self.dropped_blocks)))

    @classmethod
    def from_entries(cls, entries: Mapping[str, int]) -> SearchPlan:
        return cls(widths={n: w for n, w in entries.items() if not is_block_entry(n)},
                   dropped_blocks=tuple(n[len(_BLOCK_ENTRY):] for n, w in entries.items()
                                        if is_block_entry(n) and w == 0))

    def entries(self, blocks: Sequence[str]) -> Entries:
        """The plan as the solver's entries, every one of `blocks` kept but those dropped."""
        return dict(self.widths, **{block_entry(b): 0 if b in self.dropped_blocks else 1 for b in blocks})

    def key(self) -> list[Any]:
        """A stable description for cache keys."""
        return sorted(self.widths.items()) + [["dropped", list(self.dropped_blocks)]]

    def to_dict(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), "dropped_blocks": list(self.dropped_blocks)}


@dataclass(kw_only=True)
class Candidate:
    """One plan measured: a row of the search trace, from which the report is rendered."""

    id: int
    parent: int | None
    stage: str  # "search" | "infeasible-check" | "calibration" | "uniform"
    plan: SearchPlan
    predicted: dict[str, float]
    measured: dict[str, float]
    quality: dict[str, Any]
    shortfall: float
    slack: float
    start: float
    end: float
    refinement: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        del row["plan"]
        return {**row, **self.plan.to_dict()}


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """A plan the searcher asks to have measured, with what it predicts of it."""

    plan: SearchPlan
    predicted: dict[str, float]
    stage: str  # "search", or "infeasible-check" when no plan was predicted to fit
    parent: int | None
    refinement: list[dict[str, Any]] = field(default_factory=list)

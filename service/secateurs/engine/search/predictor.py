"""What a plan is predicted to cost before it is measured: params, MACs, size and latency.

Params and MACs are counted from the layer dimensions each group sets (engine/search/costmodel.py).
Latency is the baseline's, plus the isolated-layer change (engine/latency/layers.py) scaled by the
channel calibration point, minus each dropped block's layers alone scaled by its stage's
calibration point: a dropped block also saves adds, activations and per-operator overhead that
its layers measured alone do not show.
"""

from __future__ import annotations

from typing import Mapping

from secateurs.engine.budget import Measurement
from secateurs.engine.latency.layers import LayerLatencyModel
from secateurs.engine.search.costmodel import GroupLayers
from secateurs.engine.search.types import Entries, SearchPlan

# Extrapolated far (every block dropped, every group at its floor) the linear model can promise any
# speedup; no plan here removes more than 95% of the latency.
LATENCY_FLOOR = 0.05


class CostPredictor:
    """predictor(entries) -> {"params", "macs", "size_bytes"[, "latency_ms"]}, memoised: the solver
    and the refinement ask for the same plans thousands of times."""

    def __init__(self, baseline: Measurement, members: GroupLayers, full: Mapping[str, int],
                 block_layers: Mapping[str, list[str]], latency_model: LayerLatencyModel | None) -> None:
        self.baseline, self.members, self.full = baseline, members, dict(full)
        self.block_layers, self.latency_model = dict(block_layers), latency_model
        self.scale = 1.0  # end-to-end change over isolated-layer change, for channels (one calibration point)
        self.block_scale: dict[str, float] = {}  # block name -> end-to-end saving over its layers' isolated time
        self._base_params, self._base_macs = members.params_macs(self.full)
        self._memo: dict[tuple, dict[str, float]] = {}

    def calibrated(self, *, scale: float | None = None, block_scale: Mapping[str, float] | None = None) -> None:
        """Record calibration points; earlier predictions are forgotten."""
        if scale is not None:
            self.scale = scale
        if block_scale:
            self.block_scale.update(block_scale)
        self._memo.clear()

    def __call__(self, entries: Mapping[str, int]) -> dict[str, float]:
        key = tuple(sorted(entries.items()))
        if key not in self._memo:
            self._memo[key] = self._predict(SearchPlan.from_entries(entries))
        return dict(self._memo[key])

    def lowest(self) -> dict[str, float]:
        """The least each prediction can read: an aim below it is out of the model's reach, whatever
        the linearised savings of its entries add up to."""
        return {"latency_ms": LATENCY_FLOOR * self.baseline.latency_ms} if self.latency_model is not None else {}

    def isolated_delta(self, entries: Mapping[str, int]) -> float:
        """The isolated-layer latency change of a plan's channel widths (no scaling, no blocks)."""
        return self.latency_model.delta(self.members.layer_widths(dict(entries)))

    def block_isolated_ms(self, name: str) -> float:
        """Block `name`'s layers measured alone, summed."""
        return sum(self.latency_model.full[n] for n in self.block_layers[name])

    def block_saving(self, name: str) -> float:
        """Predicted milliseconds saved by dropping block `name` alone."""
        return self.block_scale.get(name, 1.0) * self.block_isolated_ms(name)

    def inside_dropped(self, entries: Mapping[str, int]) -> Entries:
        """Groups whose every layer is in a dropped block, back at full width: their width no longer
        matters, and pruning them would be counted twice."""
        removed = self._removed(SearchPlan.from_entries(entries))
        return {g: self.full[g] for g, m in self.members.members.items()
                if removed and g in self.full and m and all(layer in removed for layer, _, _ in m)}

    def _removed(self, plan: SearchPlan) -> set[str]:
        return {n for b in plan.dropped_blocks for n in self.block_layers[b]}

    def _predict(self, plan: SearchPlan) -> dict[str, float]:
        channels = {n: plan.widths.get(n, w) for n, w in self.full.items()}
        removed = self._removed(plan)
        params, macs = self.members.params_macs(channels, removed=removed)
        base = self.baseline
        out = {"params": base.params + params - self._base_params, "macs": base.macs + macs - self._base_macs,
               "size_bytes": base.size_bytes + 4 * (params - self._base_params)}
        if self.latency_model is not None:
            kept_layers = {n: w for n, w in self.members.layer_widths(channels).items() if n not in removed}
            out["latency_ms"] = max(LATENCY_FLOOR * base.latency_ms,
                                    base.latency_ms + self.scale * self.latency_model.delta(kept_layers)
                                    - sum(self.block_saving(b) for b in plan.dropped_blocks))
        return out

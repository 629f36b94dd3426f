"""Progressive pruning: reach the target plan in k prune+recover steps.

Pruning a trained network by a high ratio at once destroys more than recovery can
rebuild; removing the same channels over several steps, recovering in between with
the original model as the teacher throughout, keeps it on a path it can recover from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from secateurs.engine.events import CancelCheck, Event, EventSink, check_cancel, ignore_events
from secateurs.engine.prune.apply import Plan, kept_count, kept_heads, prune
from secateurs.engine.spec import PruneSpec
from secateurs.engine.recover.train import RecoveryResult, recover
from secateurs.engine.spec import RecoverySpec, validate_recovery_spec
from secateurs.errors import InvalidRequest


@dataclass(frozen=True, kw_only=True)
class ProgressiveResult:
    """The final model, one plan replayable on the original (every step's history in order),
    the widths after each step, and each step's recovery."""

    model: nn.Module
    plan: Plan
    widths: list[dict[str, int]]
    steps: list[RecoveryResult] = field(default_factory=list)


def progressive(model: nn.Module, example: torch.Tensor, target_ratios: Mapping[str, float] | float,
                train_loader: Iterable[Any], spec: RecoverySpec = RecoverySpec(), *,
                steps: int | None = None, prune_spec: PruneSpec | None = None, val: Iterable[Any] | None = None,
                on_event: EventSink = ignore_events, cancel: CancelCheck | None = None,
                checkpoint_dir: Path | str | None = None) -> ProgressiveResult:
    """Reach the target ratios in `steps` (default spec.progressive_steps) prune+recover rounds.

    Step i's width of each group is what a one-shot prune at ratio r*i/k gives on the original
    (so the last step lands exactly on the one-shot widths); each step prunes the previous
    step's model to that width, then recovers with the original `model` as the teacher.
    Epochs are split across the steps, the remainder going to the last. `prune_spec` gives
    importance, round_to and min_channels (its ratios are ignored).
    """
    validate_recovery_spec(spec)
    k = steps if steps is not None else spec.progressive_steps
    if not 1 <= k <= spec.epochs:
        raise InvalidRequest(f"progressive_steps must be in [1, epochs={spec.epochs}], got {k}",
                             field="recovery.progressive_steps")
    base = prune_spec or PruneSpec(ratio=0.0)
    uniform = isinstance(target_ratios, (int, float))

    def step_spec(i: int) -> PruneSpec:
        f = i / k
        if uniform:
            return replace(base, ratio=float(target_ratios) * f, group_ratios=None)
        return replace(base, ratio=None, group_ratios={n: r * f for n, r in target_ratios.items()})

    current, plan = model, None
    histories: list[tuple[str, bool, list[int]]] = []
    widths: list[dict[str, int]] = []
    results: list[RecoveryResult] = []
    originals: dict[str, tuple[int, str, int, int]] = {}
    for i in range(1, k + 1):
        check_cancel(cancel)
        if i == 1:
            pruned = prune(model, example, step_spec(1))
            originals = {g.name: (g.channels, g.unit, g.step, g.floor) for g in pruned.groups}
        else:
            # width the one-shot ratio r*i/k gives on the original, reached from the current width
            one_shot = step_spec(i)
            ratios = one_shot.group_ratios or {n: one_shot.ratio or 0.0 for n in originals}
            now = widths[-1]
            exact: dict[str, float] = {}
            for name, r in ratios.items():
                channels, unit, step, floor = originals.get(name, (0, "channels", 1, 0))
                if name not in now:
                    continue
                want = (kept_heads(channels, r) if unit == "heads" else
                        kept_count(channels, r, round_to=base.round_to, min_channels=max(base.min_channels, floor),
                                   step=step))
                if want < now[name]:
                    exact[name] = 1 - want / now[name]
            # round_to=1, min_channels=1: the widths above are already rounded; keep them exact
            # blocks to drop went at step 1 (the largest change gets the most recovery)
            pruned = prune(current, example, replace(base, ratio=None, group_ratios=exact, round_to=1, min_channels=1,
                                                     drop_blocks=()))
        histories.extend(pruned.plan.history)
        plan = pruned.plan
        widths.append({g["name"]: int(g["after"]) for g in pruned.plan.groups})
        epochs = spec.epochs // k + (spec.epochs % k if i == k else 0)
        step = replace(spec, epochs=epochs, warmup_epochs=min(spec.warmup_epochs, epochs), progressive_steps=1)

        def relay(event: Event, i: int = i) -> None:
            progress = None if event.progress is None else (i - 1 + event.progress) / k
            on_event(replace(event, progress=progress, message=f"step {i}/{k}: {event.message}",
                             data={**event.data, "step": i, "steps": k}))

        results.append(recover(pruned.model, model, train_loader, step, val=val, on_event=relay, cancel=cancel,
                               checkpoint_dir=Path(checkpoint_dir) / f"step{i}" if checkpoint_dir else None))
        current = pruned.model
    if plan is None:  # unreachable: k >= 1
        raise InvalidRequest("no progressive step ran", field="recovery.progressive_steps")
    groups = [{**g, "before": originals.get(g["name"], (g["before"], ""))[0],
               "ratio_requested": (float(target_ratios) if uniform else float(target_ratios.get(g["name"], 0.0)))}
              for g in plan.groups]
    combined = Plan(groups=groups, history=histories, heads=plan.heads, dropped=list(base.drop_blocks))
    return ProgressiveResult(model=current, plan=combined, widths=widths, steps=results)

"""The stability rule: when a trial, and an lr, count as stable (its settings, their checks, its wording).
bnexp.analysis.stability judges by it (pure: no torch, Optuna or W&B here either)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from bnexp import record
from bnexp.cli import ConfigError

RULE_MODES = ("threshold", "relative")
STATISTICS = record.STATISTICS  # population / batch statistics -> the metric each judges


def _isnum(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _default_spell(key: str, value: str) -> str:
    return f"rule.{key}={value}"


@dataclass
class StabilityRule:
    """When a trial, and an lr, count as stable: the one rule, its defaults here and nowhere else.

    It is the `sweep.rule` node of a study's config (its Hydra schema), is recorded with the study, and is
    what the report, the progress bar, the W&B summaries and the status command judge by (see the module
    docstring). `statistics` names the view it judges: population (inference mode) or batch statistics.
    """

    threshold: float = 0.9  # stable = not diverged and the judged metric >= threshold
    mode: str = "threshold"  # or "relative": metric >= best_of_variant - epsilon
    epsilon: float = 0.02
    seed_quorum: float = 0.5  # an lr is stable when at least this fraction of its seeds is (inclusive)
    last_k: int = 1  # the final k validations must all pass (1: the final value alone)
    statistics: str = "population"  # population | batch: which metric is judged (STATISTICS)

    def __post_init__(self) -> None:
        self.check(_default_spell)

    @classmethod
    def of(cls, values: Any = None, spell: Callable[[str, str], str] = _default_spell) -> StabilityRule:
        """A rule from a mapping of its settings (a config node, a study's recorded rule, command-line flags);
        unset keys take the defaults. Each bad value is one ConfigError spelled as the user gave it
        (`spell("threshold", "3")` -> `sweep.rule.threshold=3` or `--threshold 3`)."""
        known = {f.name for f in fields(cls)}
        vals = {k: v for k, v in dict(values or {}).items() if v is not None}
        unknown = sorted(set(vals) - known - {"metric", "describe"})  # older studies recorded these two
        if unknown:
            raise ConfigError(f"{spell(unknown[0], '...')} is not a rule setting; choose from: {', '.join(known)}")
        if "metric" in vals and "statistics" not in vals:  # a study recorded before `statistics`
            vals["statistics"] = next((s for s, m in STATISTICS.items() if m == record.canonical(vals["metric"])),
                                      "population")  # fmt: skip
        rule = object.__new__(cls)
        for f in fields(cls):
            setattr(rule, f.name, vals.get(f.name, f.default))
        rule.check(spell)
        return rule

    def check(self, spell: Callable[[str, str], str] = _default_spell) -> None:
        """Every setting, each error naming the fix in the user's own spelling."""

        def bad(key: str, ok: str, example: str) -> ConfigError:
            v = getattr(self, key)
            shown = f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)
            return ConfigError(f"{spell(key, shown)} must be {ok} (e.g. {spell(key, example)})")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.mode not in RULE_MODES:
            raise ConfigError(
                f"{spell('mode', repr(self.mode))} is not allowed; choose one of: {', '.join(RULE_MODES)}"
            )
        if self.statistics not in STATISTICS:
            raise ConfigError(f"{spell('statistics', repr(self.statistics))} is not allowed; choose one of: "
                              f"{', '.join(STATISTICS)}")  # fmt: skip
        if not (number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise bad("threshold", f"in [0, 1]: a final {self.metric}", "0.9")
        if not (number(self.epsilon) and 0.0 <= self.epsilon <= 1.0):
            raise bad("epsilon", ">= 0 and <= 1: an accuracy difference", "0.02")
        if not (number(self.seed_quorum) and 0.0 < self.seed_quorum <= 1.0):
            raise bad("seed_quorum", "in (0, 1]: the fraction of an lr's seeds that must be stable", "0.5")
        if isinstance(self.last_k, bool) or not isinstance(self.last_k, int) or self.last_k < 1:
            raise bad("last_k", "a whole number >= 1 (1: judge the final validation alone)", "1")

    @property
    def metric(self) -> str:
        """The metric judged (a bnexp.record name)."""
        return STATISTICS[self.statistics]

    def settings(self) -> dict[str, Any]:
        """The rule as it is recorded with a study and stated in summary.json and W&B."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def differences(self, other: StabilityRule) -> str:
        """`threshold 0.3; the study was created with 0.9` style text of the settings that differ ('' if none)."""
        diff = [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
        if not diff:
            return ""
        now = ", ".join(f"{k} {getattr(self, k):g}" if _isnum(getattr(self, k)) else f"{k} {getattr(self, k)}"
                        for k in diff)  # fmt: skip
        was = ", ".join(f"{getattr(other, k):g}" if _isnum(getattr(other, k)) else str(getattr(other, k)) for k in diff)
        return f"judged by {now}; the study was created with {was}"

    def describe(self) -> str:
        if self.mode == "threshold":
            text = f"not diverged and {self.metric} >= {self.threshold:g}"
        else:
            text = f"not diverged and {self.metric} >= (best {self.metric} of the variant) - {self.epsilon:g}"
        return text + (f" at each of the last {self.last_k} validations" if self.last_k > 1 else "")

    def with_metric(self, metric: str) -> StabilityRule:
        """The same rule judged on another metric (population vs batch statistics)."""
        return replace(self, statistics=next(s for s, m in STATISTICS.items() if m == metric))


def check_judged_whole(trials: list[dict], rule: StabilityRule) -> None:
    """A rule with last_k > 1 judges validations before the last: refused (ConfigError, before anything is
    written) where a trial scored those on a subset (trainer.val_subset: `n` in its val_history below the
    final one's), as their precision is not the final validation's."""
    if rule.last_k <= 1:
        return
    for r in trials:
        hist = [h for h in r.get("val_history") or [] if isinstance(h, dict)]
        judged = hist[-rule.last_k :]
        ns = [h.get("n") for h in judged if h.get("n") is not None]
        if ns and min(ns) < max(ns):
            raise ConfigError(
                f"last_k={rule.last_k} judges {rule.last_k} validations, but trial {r.get('number')} scored "
                f"{min(ns)} of the final {max(ns)} images in those before the last (trainer.val_subset); judge the "
                "final validation alone (last_k 1), or rerun the study with trainer.val_subset=null"
            )

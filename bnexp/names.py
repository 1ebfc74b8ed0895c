"""One namer for variants, runs and trials (pure: no torch, Optuna or W&B).

A *variant* is what a study compares: BN placement, bias rule, depth, plus any other axis a sweep's grid
varies (`optim.name`, `model.init_std`, ...). Its label is the values joined by '-', each value after the
axis it sets: depth with a 'd', the other axes with their `AXIS_TAGS` tag (or, for an axis without one, its
key's last part and '='): `pre-auto-d19`, `pre-auto-d8-init0.01`, `pre-auto-d8-mom0.1`, `pre-auto-d19-sgd`
(an optimizer's name says what it is). So one label never means two settings in two studies. A *run* is a
variant at one learning rate and seed: `pre-auto-d19-lr2e-03-s0`. A *trial* of a study is that run numbered
inside its study: `trials/<study>/0007_pre-auto-d19-lr2e-03-s0`, so two studies sharing an output dir never
share a trial dir.

bnexp.analysis (report tables), bnexp.tracking (W&B run names, tags) and bnexp.sweep (trial dirs) all
name things through these functions, so a W&B run, a report row and a trial dir of one point agree: a trial
dir is `<number>_<run name>`, and its W&B run is named the run name and has an id that starts with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# the variant axes every study has, in label order; a grid's other axes follow in grid order
BASE_AXES = ("bn", "bias", "depth")
BASE_AXIS_KEYS = {"bn": "model.bn", "bias": "model.bias", "depth": "model.depth"}
# the short name a variant label gives an extra axis's value ("": the value names itself)
AXIS_TAGS = {"model.init_std": "init", "model.bn_momentum": "mom", "optim.name": "", "model.bn_impl": ""}


def axis_name(key: str) -> str:
    """A grid key's column name in trial records: model.bn -> bn, model.depth -> depth; others keep their path."""
    for name, k in BASE_AXIS_KEYS.items():
        if key == k:
            return name
    return key


def variant_keys(grid_keys: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """Record columns that identify a variant: bn, bias, depth, then every other grid axis."""
    extra = tuple(axis_name(k) for k in grid_keys if axis_name(k) not in BASE_AXES)
    return BASE_AXES + extra


def _number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, bool)


def axis_value(key: str, value: Any) -> str:
    """One axis's part of a variant label: `pre`, `auto`, `d19`, `init0.01`, `mom0.1`, `sgd`, `compile=True`."""
    if key in ("bn", "bias"):
        return str(value)
    if key == "depth":
        return f"d{value}"
    tag = AXIS_TAGS.get(key, key.rsplit(".", 1)[-1])
    if not tag:
        return str(value)
    return f"{tag}{value}" if key in AXIS_TAGS and _number(value) else f"{tag}={value}"


def variant_label(values: Mapping[str, Any] | tuple, keys: tuple[str, ...] | list[str] = BASE_AXES) -> str:
    """`pre-auto-d8-init0.01`: the variant's values in `keys` order (a mapping by key, or a tuple in that order),
    each naming its axis (`axis_value`)."""
    vals = [values.get(k) for k in keys] if isinstance(values, Mapping) else list(values)
    return "-".join(axis_value(k, v) for k, v in zip(keys, vals, strict=True))


def lr_tag(lr: float) -> str:
    """The shortest exponent form that reads back as the same lr: 2e-03, 2.35e-03."""
    for digits in range(4):
        s = f"{lr:.{digits}e}"
        if math.isclose(float(s), lr, rel_tol=1e-6):
            return s
    return f"{lr:.4e}"


def run_name(values: Mapping[str, Any], lr: float, seed: int, keys: tuple[str, ...] | list[str] = BASE_AXES) -> str:
    """`pre-auto-d19-lr2e-03-s0`: a variant at one learning rate and seed."""
    return f"{variant_label(values, keys)}-lr{lr_tag(float(lr))}-s{int(seed)}"


def trial_dir_name(number: int, values: Mapping[str, Any], lr: float, seed: int, keys=BASE_AXES) -> str:
    """`0007_pre-auto-d19-lr2e-03-s0`: a trial's dir under `trials/<study>/`."""
    return f"{int(number):04d}_{safe(run_name(values, lr, seed, keys))}"


def run_id(*parts: str) -> str:
    """A deterministic W&B run id for what `parts` name (a study and a point; a run dir): the same point retried,
    or a run rerun into its dir, resumes its W&B run instead of starting another. It starts with `parts[0]` as
    `safe` spells it (W&B takes '.', '+' and '=' in an id), so a trial's dir, W&B name and id say one name
    (`pre-auto-d19-lr1e+00-s0`, never `lr1e-00` in one of them); a hash of all the parts follows."""
    import hashlib

    digest = hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:12]
    head = safe(str(parts[0]))[-64:].strip("_") if parts else ""
    return f"{head}-{digest}" if head else digest


def study_group(study: str, spec_hash: str) -> str:
    """`lr_stability-3f2a9c1d`: a study's W&B group. Two studies of one name (other out dirs or specs) never
    share a group, so `bnexp.dashboard --study-name` shows one study, not a mix."""
    return f"{safe(study)}-{spec_hash[:8]}" if spec_hash else safe(study)


def safe(s: str) -> str:
    """A name usable as one path component, W&B group or artifact name."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s).strip("_") or "_"


def cfg_values(cfg: Any, grid_keys: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A training config's variant values: {bn, bias, depth, <other grid axes>} (cfg: a DictConfig)."""
    from omegaconf import OmegaConf

    out = {name: OmegaConf.select(cfg, key) for name, key in BASE_AXIS_KEYS.items()}
    for k in grid_keys:
        if axis_name(k) not in BASE_AXES:
            out[axis_name(k)] = OmegaConf.select(cfg, k)
    return out

"""A study's spec and design (pure functions: no Optuna, no torch).

A study spec is a Hydra config group (`bnexp/conf/sweep/NAME.yaml`, chosen with `sweep=NAME`) over the same
root config as `python -m bnexp.run`. Its file is `# @package _global_`: it sets the `sweep:` node (typed by
`SweepConfig`) and may set training keys or switch groups (`defaults: [override /optim: sgd]`) for its
trials. The command line composes on top of it, with the one override grammar of both commands.

The design is every point variant x seed x learning rate. The *grid* is nested like the config it varies
(`sweep.grid.model.bn: [off, pre, post]`, so `sweep.grid.model.bn=[off]` overrides it); every list leaf is
an axis. Learning rates are `sweep.lr.points` evenly log-spaced in [low, high]; seeds are `sweep.seeds`.

The command line can only narrow what a study varies, never be dropped: a training override of a grid axis
(`model.bn=off`) fixes that axis to its value, `seed=3` fixes the seeds to [3], and `optim.lr=...` (the axis
every study varies) is refused, naming `sweep.lr.*` instead (`resolve`).

What makes a study the same study (`spec_hash`): its design and every training setting that changes a
result. Settings of where and how it runs (logger, data dir, accelerator, compile, ...) do not count, so a
worker may log to W&B or run on another machine and still join the study.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bnexp.analysis.stability import StabilityRule
from bnexp.cli import ConfigError
from bnexp.core.config import EXECUTION_KEYS, MAX_SEED, Config, flat, validate
from bnexp.sweep.pruning import plan

ACTIONS = ("all", "work", "create", "report", "plan")
SEARCHES = ("grid", "edges")
COARSE = ("outward", "all")
SWEPT = ("optim.lr", "seed")  # what every study varies besides its grid
LR_PARAM = "optim.lr"  # the Optuna param of a point's lr: named for the config key it sets


@dataclass
class LRRange:
    low: float = 1e-5
    high: float = 1.0
    points: int = 24  # points per variant and seed, evenly log-spaced (edges: the coarse grid)
    search: str = "grid"  # grid: the points alone | edges: then bisect each edge of the stable range per seed
    resolution: float = 0.1  # edges: bisect each edge's bracket until it is at most this many decades wide
    # edges: a seed after the first starts from the first seed's brackets (bnexp.analysis.edges.warm_points): the
    # same brackets as a search from scratch, in about a third of its trials; false: every seed from scratch
    warm_start: bool = True
    # edges: outward: a seed searched from scratch trains its coarse grid from the middle out, each side until
    # its first unstable point (bnexp.analysis.edges.coarse_points): the same coarse brackets without the points
    # past them; all: the whole coarse grid at once (as a population, sweep.population > 1, always does)
    coarse: str = "outward"


@dataclass
class SweepConfig:
    name: str = "lr_stability"  # the Optuna study's name (with -m: plus the job's overrides)
    grid: dict = field(default_factory=lambda: {"model": {"bn": ["off", "pre", "post"]}})
    lr: LRRange = field(default_factory=LRRange)
    seeds: list = field(default_factory=lambda: [0])
    rule: StabilityRule = field(default_factory=StabilityRule)  # the one rule (bnexp.analysis.stability)
    storage: Optional[str] = None  # None: $BNEXP_STORAGE, else sqlite:///<out_dir>/study.db; journal:///path
    out_dir: str = "outputs/sweeps/${sweep.name}"  # = hydra.run.dir: stable, so a rerun finds its study
    population: int = 1  # K > 1: train K lrs of one variant as one model (bnexp.population)
    # stop a trial at chance whose first layer gets no gradient (it cannot learn), recorded PRUNED
    # (bnexp.sweep.pruning): auto (where it cannot change a verdict: a threshold rule above chance) | true | false
    prune: Any = "auto"
    # refused when set: the first step of the former rule (at chance from a step on), which a held-out late
    # starter showed can change a verdict; kept in the schema so that the refusal names why
    prune_after: Optional[int] = None
    heartbeat: int = 10  # seconds between heartbeats; 0 disables stale-trial detection
    grace: int = 40  # a RUNNING trial without a heartbeat for this long is failed and its point retried
    retries: int = 2  # times a failed point is enqueued again
    progress: bool = True  # a progress bar with per-variant stable ranges
    jobs: Any = "auto"  # local workers on this machine: auto (a core each on CPU, a GPU each) | N (bnexp.sweep.local)
    action: str = "all"  # all | work (--no-report) | create (--create-only) | report (--report-only) | plan
    max_trials: Optional[int] = None  # --max-trials N: this worker stops after N trials (one worker)
    study: Optional[str] = None  # the Optuna study's name; None: sweep.name (with -m: plus the job's overrides)


@dataclass
class StudyConfig(Config):
    """The sweep app's root: bnexp.run's config plus the `sweep` node."""

    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    from bnexp.core.config import register_configs as register_run

    register_run()
    ConfigStore.instance().store(group="schema", name="study", node=StudyConfig, package="_global_")


# ---- the grid ------------------------------------------------------------------------------------
def _norm_value(key: str, v: Any) -> Any:
    if key.endswith(".bn") and v is False:  # YAML 1.1 reads an unquoted `off` as false
        return "off"
    if isinstance(v, bool):
        return str(v).lower()
    return v


def grid_axes(grid: Any) -> dict[str, list]:
    """{'model.bn': ['off', 'pre']}: every leaf of the nested grid, a scalar leaf as a one-value axis."""
    node = OmegaConf.to_container(grid, resolve=True) if isinstance(grid, DictConfig) else grid
    axes: dict[str, list] = {}

    def walk(d: Any, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                vals = v if isinstance(v, list) else [v]
                axes[key] = [_norm_value(key, x) for x in vals]

    if not isinstance(node, dict):
        raise ConfigError("sweep.grid must map config keys to lists, e.g. sweep.grid.model.bn=[off,pre]")
    walk(node, "")
    return axes


def _nest(axes: dict[str, list]) -> dict:
    out: dict = {}
    for key, vals in axes.items():
        d = out
        *parents, leaf = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = list(vals)
    return out


# ---- resolving the command line into the study ----------------------------------------------------
def _override_keys(task_overrides: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(task_overrides))]


def resolve(cfg: DictConfig, task_overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """Check the sweep node and apply the command line's training overrides to the design.

    Returns (sweep node with the grid as resolved axes, notes for the user). A command-line override of a
    key the grid varies fixes that axis to its value; `seed=N` fixes the seeds; `optim.lr=` is refused."""
    sw = OmegaConf.create(OmegaConf.to_container(cfg.sweep, resolve=True))
    axes = grid_axes(sw.grid)
    keys = [k for k in _override_keys(task_overrides) if not k.startswith(("sweep", "hydra"))]
    notes = []
    if "optim.lr" in keys:
        raise ConfigError(
            f"optim.lr={cfg.optim.lr} is the axis every study varies; set the range instead: "
            f"sweep.lr.low=... sweep.lr.high=... sweep.lr.points=... (one lr: sweep.lr.low=X sweep.lr.high=X "
            "sweep.lr.points=1), or train it alone with python -m bnexp.run"
        )
    for axis in list(axes):
        if any(axis == k or axis.startswith(k + ".") for k in keys):  # model.bn=off, or a group (optim=sgd)
            value = _norm_value(axis, OmegaConf.select(cfg, axis))
            if axes[axis] != [value]:
                notes.append(f"{axis}={value} on the command line: the grid's {axis} axis is now [{value}]")
            axes[axis] = [value]
    if "seed" in keys and list(sw.seeds) != [int(cfg.seed)]:
        notes.append(f"seed={cfg.seed} on the command line: the study's seeds are now [{cfg.seed}]")
        sw.seeds = [int(cfg.seed)]
    sw.grid = _nest(axes)
    check(sw, cfg)
    return sw, notes


def check(sw: DictConfig, cfg: DictConfig | None = None) -> None:
    """Every value of the sweep node, each error naming the fix."""
    axes = grid_axes(sw.grid)
    if not axes or any(not v for v in axes.values()):
        raise ConfigError("sweep.grid must map config keys to non-empty lists, e.g. sweep.grid.model.bn=[off,pre]")
    for key in axes:
        if key in SWEPT:
            raise ConfigError(f"sweep.grid.{key}: {key} is swept by sweep.lr / sweep.seeds, not by the grid")
        if cfg is not None and OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise ConfigError(f"sweep.grid.{key}: {key} is not a training config key (python -m bnexp.run --cfg job)")
    lr = sw.lr
    for k in ("low", "high"):
        v = lr[k]
        if not math.isfinite(v):
            raise ConfigError(f"sweep.lr.{k}={v} is not a finite number (e.g. sweep.lr.low=1e-5 sweep.lr.high=1.0)")
        if v <= 0:
            raise ConfigError(f"sweep.lr.{k}={v} must be positive (e.g. sweep.lr.low=1e-5 sweep.lr.high=1.0)")
    if lr.low > lr.high or (lr.low == lr.high and lr.points != 1):
        raise ConfigError(
            f"sweep.lr.low={lr.low} must be < sweep.lr.high={lr.high}; e.g. sweep.lr.low=1e-5 sweep.lr.high=1.0"
        )
    if lr.points < 1:
        raise ConfigError(f"sweep.lr.points={lr.points} must be >= 1 (e.g. sweep.lr.points=12)")
    if lr.search not in SEARCHES:
        raise ConfigError(f"sweep.lr.search={lr.search!r} is not allowed; choose one of: {', '.join(SEARCHES)}")
    if lr.coarse not in COARSE:
        raise ConfigError(f"sweep.lr.coarse={lr.coarse!r} is not allowed; choose one of: {', '.join(COARSE)}")
    if not (math.isfinite(lr.resolution) and lr.resolution > 0):
        raise ConfigError(f"sweep.lr.resolution={lr.resolution} must be a positive number of decades (e.g. 0.1)")
    if lr.search == "edges" and lr.points < 2:
        raise ConfigError("sweep.lr.search=edges needs a coarse grid of sweep.lr.points >= 2 (e.g. 6) to bracket")
    if sw.action not in ACTIONS:
        raise ConfigError(f"sweep.action={sw.action!r} is not allowed; choose one of: {', '.join(ACTIONS)}")
    StabilityRule.of(sw.rule, lambda k, v: f"sweep.rule.{k}={v}")
    if not sw.seeds:
        raise ConfigError("sweep.seeds must list at least one seed, e.g. sweep.seeds=[0,1,2]")
    for s in sw.seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED:
            raise ConfigError(
                f"sweep.seeds={list(sw.seeds)}: seeds are whole numbers >= 0 and <= {MAX_SEED}, "
                "e.g. sweep.seeds=[0,1,2]"
            )
    if len(set(sw.seeds)) != len(sw.seeds):
        raise ConfigError(f"sweep.seeds={list(sw.seeds)} lists a seed twice")
    for k in ("population", "retries", "heartbeat", "grace"):
        low = 1 if k == "population" else 0
        if sw[k] < low:  # the example is the default
            raise ConfigError(f"sweep.{k}={sw[k]} must be >= {low} (e.g. sweep.{k}={getattr(SweepConfig, k)})")
    if sw.max_trials is not None and sw.max_trials < 1:
        raise ConfigError(f"--max-trials={sw.max_trials}: give a positive whole number, e.g. --max-trials=10")
    if cfg is not None:
        check_savings(sw, cfg)
    if not re.fullmatch(r"[\w.\-]+", sw.name):
        raise ConfigError(f"sweep.name={sw.name!r}: use letters, digits, '.', '_' and '-'")
    check_combinations(sw, cfg)


def _check_population_layout(sw: DictConfig, t: DictConfig) -> None:
    if sw.population > 1 and t.memory_format == "channels_last":  # as bnexp.population.train refuses it
        raise ConfigError(
            f"trainer.memory_format=channels_last with sweep.population={sw.population}: population training "
            "updates each member's slice of the packed weights as one contiguous block; use "
            "trainer.memory_format=auto (contiguous there), or sweep.population=1"
        )


def check_combinations(sw: DictConfig, cfg: DictConfig | None = None) -> None:
    """Study settings each valid alone, unsafe (refused, naming the fix) or meaningless (a warning) together,
    with each other or with the training config `cfg` (tests/test_break_round3.py lists every pair)."""
    from bnexp.cli import warn

    lr, rule = sw.lr, StabilityRule.of(sw.rule, lambda k, v: f"sweep.rule.{k}={v}")
    if sw.heartbeat > 0 and sw.grace < 2 * sw.heartbeat:  # Optuna takes max(grace, 2 x heartbeat)
        warn(f"sweep.grace={sw.grace} < 2 x sweep.heartbeat={sw.heartbeat}: a trial is failed only after two "
             f"missed beats, so {2 * sw.heartbeat} s is used; set sweep.grace={2 * sw.heartbeat}")  # fmt: skip
    if sw.heartbeat == 0 and sw.grace != SweepConfig.grace:
        warn(f"sweep.grace={sw.grace} with sweep.heartbeat=0: without heartbeats no trial is judged stale; "
             "the grace is unused (sweep.heartbeat=10 turns it on)")  # fmt: skip
    decades = math.log10(lr.high / lr.low) if lr.low > 0 and lr.high > 0 else 0.0
    if lr.search == "edges" and lr.points >= 2:
        step = decades / (lr.points - 1)
        if lr.resolution >= step:
            raise ConfigError(
                f"sweep.lr.resolution={lr.resolution:g} decades is no finer than the coarse grid's step "
                f"({decades:g} decades / {lr.points - 1} = {step:.3g}): the edge search would bisect nothing; "
                f"set sweep.lr.resolution below {step:.3g} (e.g. {min(0.1, step / 4):.2g}) or sweep.lr.search=grid"
            )
    elif lr.search == "grid" and lr.resolution != LRRange.resolution:
        warn(f"sweep.lr.resolution={lr.resolution:g} is the edge search's; with sweep.lr.search=grid it is unused "
             "(sweep.lr.search=edges bisects to it)")  # fmt: skip
    if lr.search == "grid" and lr.coarse != LRRange.coarse:
        warn(f"sweep.lr.coarse={lr.coarse} is the edge search's; with sweep.lr.search=grid it is unused (a grid "
             "trains every point)")  # fmt: skip
    if sw.population > 1 and lr.points > 1 and sw.population > lr.points and lr.search == "grid":
        warn(f"sweep.population={sw.population} > sweep.lr.points={lr.points}: a population holds the lrs of one "
             f"variant and seed, so at most {lr.points}; sweep.population={lr.points} says what runs")  # fmt: skip
    if lr.points == 1 and lr.high != lr.low:
        warn(f"sweep.lr.points=1 trains sweep.lr.low={lr.low:g} alone; sweep.lr.high={lr.high:g} is unused "
             "(sweep.lr.points=2 or more spans the range)")  # fmt: skip
    default_rule = StabilityRule()
    if rule.mode == "threshold" and rule.epsilon != default_rule.epsilon:
        warn(f"sweep.rule.epsilon={rule.epsilon:g} is the relative mode's; with sweep.rule.mode=threshold it is unused")
    if rule.mode == "relative" and rule.threshold != default_rule.threshold:
        warn(f"sweep.rule.threshold={rule.threshold:g} is the threshold mode's; with sweep.rule.mode=relative it is "
             "unused (sweep.rule.epsilon sets the margin)")  # fmt: skip
    if len(sw.seeds) == 1 and rule.seed_quorum != default_rule.seed_quorum:
        warn(f"sweep.rule.seed_quorum={rule.seed_quorum:g} with one seed: an lr is stable when its seed is, "
             "whatever the quorum (sweep.seeds=[0,1,2] gives it seeds to count)")  # fmt: skip
    if sw.max_trials is not None and sw.action in ("create", "report", "plan"):
        warn(f"--max-trials={sw.max_trials} caps the trials a worker trains; sweep.action={sw.action} trains none")
    if sw.max_trials is not None and str(sw.jobs).strip().lower() not in ("auto", "1"):
        raise ConfigError(
            f"--max-trials stops one worker after N trials, and sweep.jobs={sw.jobs} asks for several; give one: "
            "drop --max-trials, or sweep.jobs=1"
        )
    if cfg is None:
        return
    t, m, lg = cfg.trainer, cfg.model, cfg.logger
    validations = t.max_steps // t.val_every + (1 if t.max_steps % t.val_every else 0)
    if rule.last_k > validations:
        raise ConfigError(
            f"sweep.rule.last_k={rule.last_k} asks for more validations than a trial makes ({validations}: "
            f"trainer.max_steps={t.max_steps} / trainer.val_every={t.val_every}), so no trial could be stable; "
            f"lower sweep.rule.last_k to {validations} or trainer.val_every"
        )
    if rule.statistics == "recal":
        why = (
            "trainer.recal_batches=0 recalibrates nothing" if t.recal_batches == 0
            else f"sweep.population={sw.population} trains members that record no recalibrated value"
            if sw.population > 1
            else "model.bn_impl=manual has no library BN layer to recalibrate" if m.bn_impl == "manual" else None
        )  # fmt: skip
        if why:
            raise ConfigError(
                f"sweep.rule.statistics=recal judges val/acc_recal, but {why}, so no trial could be stable; "
                "use sweep.rule.statistics=population or batch"
            )
    _check_population_layout(sw, t)
    bns = {str(x) for x in grid_axes(sw.grid).get("model.bn", [m.bn])}
    if rule.statistics != "population" and bns <= {"off", "False"}:
        warn(f"sweep.rule.statistics={rule.statistics} with only model.bn=off: without BN every statistics "
             "gives the same value")  # fmt: skip
    if lg.run_id is not None or lg.run_name is not None:
        which = "logger.run_id" if lg.run_id is not None else "logger.run_name"
        warn(f"{which} is set per trial by the sweep (from the study and the point); the value given is unused")


def check_savings(sw: DictConfig, cfg: DictConfig) -> None:
    """The settings that save a trial's work, against what a verdict reads: each one that could change a
    verdict is refused (bnexp.sweep.pruning.plan for the pruner)."""
    rule = StabilityRule.of(sw.rule, lambda k, v: f"sweep.rule.{k}={v}")
    t = cfg.trainer
    if t.val_subset is not None and rule.last_k > 1:
        raise ConfigError(
            f"sweep.rule.last_k={rule.last_k} judges the last {rule.last_k} validations, but trainer.val_subset="
            f"{t.val_subset} scores all but the final one on {t.val_subset} images; set trainer.val_subset=null "
            "(or sweep.rule.last_k=1)"
        )
    plan(sw, cfg, rule)
    # and each variant's own training: a grid may vary the optimizer, the batch or the precision it rests on
    for variant in variants(sw):
        c = cfg.copy()
        for k, v in variant.items():
            OmegaConf.update(c, k, v, merge=False)
        try:
            plan(sw, c, rule)
        except ConfigError as e:
            where = " ".join(f"{k}={v}" for k, v in variant.items())
            raise ConfigError(f"in the grid's variant {where}: {e}") from None


# ---- the design ----------------------------------------------------------------------------------
def lr_points(sw: DictConfig) -> list[float]:
    lo, hi, n = math.log10(sw.lr.low), math.log10(sw.lr.high), sw.lr.points
    if n == 1:
        return [float(f"{10**lo:.6g}")]
    return [float(f"{10 ** (lo + i * (hi - lo) / (n - 1)):.6g}") for i in range(n)]


def variants(sw: DictConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's axes, as {config key: value}."""
    out: list[dict[str, Any]] = [{}]
    for k, vals in grid_axes(sw.grid).items():
        out = [{**v, k: x} for v in out for x in vals]
    return out


def point_key(variant: dict[str, Any], seed: int, lr: Any) -> str:
    """A design point's identity in the study: `model.bn=pre seed=0 lr=0.001`."""
    return " ".join(f"{k}={x}" for k, x in variant.items()) + f" seed={seed} lr={lr}"


def warm_seeds(sw: DictConfig) -> list[int]:
    """The seeds whose search starts from the first seed's brackets (an edge search with sweep.lr.warm_start):
    their points are planned by the search (bnexp.sweep.worker), none is in the design."""
    if sw.lr.search != "edges" or not sw.lr.get("warm_start", False):
        return []
    return [int(s) for s in sw.seeds[1:]]


def edge_trials_estimate(sw: DictConfig) -> dict[str, int]:
    """How many trials an edge search may take, from its settings alone (what it finds decides): `low` where
    no variant has a stable lr (each seed trains the coarse grid), `high` where every seed brackets two
    closed edges (each bisected down to the resolution; a warm-started seed at its dearest near the first
    seed's edges, 9), `typical` between (warm-started seeds at 7, the median of tests/analysis/
    test_warm_start.py's seeds within 0.5 decades of the first seed's edges)."""
    n, points = len(variants(sw)), int(sw.lr.points)
    step = (math.log10(sw.lr.high) - math.log10(sw.lr.low)) / max(points - 1, 1)
    halvings = max(0, math.ceil(math.log2(step / float(sw.lr.resolution)))) if step > sw.lr.resolution else 0
    first = points + 2 * halvings
    later = len(sw.seeds) - 1
    warm = bool(warm_seeds(sw))
    return {
        "low": n * points * len(sw.seeds),
        "typical": n * (first + later * (7 if warm else first)),
        "high": n * (first + later * (9 if warm else first)),
    }


def scans_outward(sw: DictConfig) -> bool:
    """Whether an edge search trains its coarse grids from the middle out (`sweep.lr.coarse=outward`; a
    population trains a seed's coarse grid as one model, so there the whole grid at once)."""
    return sw.lr.search == "edges" and sw.lr.get("coarse", "all") == "outward" and int(sw.get("population", 1)) == 1


def worker_points(sw: DictConfig, design_size: int) -> int:
    """The most points a study can have waiting at once, which caps its local workers: the design, or for an
    edge search the coarse grids of its seeds searched from scratch (an outward search enqueues their middle
    first and the rest as results come in)."""
    if sw.lr.search != "edges":
        return design_size
    return max(design_size, len(variants(sw)) * (len(sw.seeds) - len(warm_seeds(sw))) * int(sw.lr.points))


def design(sw: DictConfig) -> list[dict[str, Any]]:
    """Every point of the study enqueued when it is created: variant x seed x lr, less the seeds a warm-started
    edge search plans itself (`warm_seeds`); an outward edge search enqueues the coarse grid's middle
    (bnexp.analysis.edges.middle), and the search plans the rest."""
    from bnexp.analysis.edges import middle

    lrs = lr_points(sw)
    if scans_outward(sw):
        lrs = middle(lrs)
    pts = []
    warm = set(warm_seeds(sw))
    for v in variants(sw):
        for s in [s for s in sw.seeds if int(s) not in warm]:
            for i, lr in enumerate(lrs):
                key = point_key(v, int(s), lr if lr is not None else i)
                pts.append({"variant": v, "seed": int(s), "lr": lr, "key": key})
    return pts


# ---- training configs ------------------------------------------------------------------------------
def training_cfg(cfg: DictConfig) -> DictConfig:
    """The study config without its `sweep` node, typed and validated as bnexp.run's config."""
    import dataclasses

    keys = [f.name for f in dataclasses.fields(Config)]
    node = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    return validate(OmegaConf.merge(OmegaConf.structured(Config), node))


def trial_cfg(base: DictConfig, variant: dict[str, Any], lr: float, seed: int) -> DictConfig:
    """One point's training config: the study's training config with the point's axes, lr and seed."""
    c = base.copy()
    for k, v in variant.items():
        OmegaConf.update(c, k, v, merge=False)
    c.optim.lr, c.seed = float(lr), int(seed)
    return validate(c)


def _counts(key: str, ignore: tuple[str, ...]) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in ignore)


def _lr_ident(lr: DictConfig) -> dict:
    """The lr node as it identifies a study: a grid study's as before the edge search existed (its hash stays)."""
    ident = OmegaConf.to_container(lr)
    ident.pop("warm_start", None)  # how the same brackets are found, not which: workers of either join the study
    ident.pop("coarse", None)  # likewise
    if ident.get("search", "grid") == "grid":
        ident.pop("search", None)
        ident.pop("resolution", None)
    return ident


def spec_hash(sw: DictConfig, base: DictConfig) -> str:
    """What makes a study the same study: its design and the training settings that change a result."""
    axes = grid_axes(sw.grid)
    train = flat(OmegaConf.to_container(base, resolve=True))
    ignore = (*EXECUTION_KEYS, *SWEPT, *axes)
    ident = {
        "grid": axes,
        "lr": _lr_ident(sw.lr),
        "sampler": "grid",  # kept so that studies created when a sampler could be chosen keep their hash
        "seeds": list(sw.seeds),
        "train": {k: v for k, v in sorted(train.items()) if _counts(k, ignore)},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _override_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    s = str(v)
    if re.fullmatch(r"[\w./:+-]+", s) and s not in ("null", "true", "false") and not _numeric(s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


RERUN_IGNORE = ("logger.group", "logger.job_type", "logger.run_name", "trainer.progress_bar")


def rerun_overrides(trial: DictConfig, default: DictConfig) -> list[str]:
    """The `python -m bnexp.run` overrides that rebuild `trial` from the default config: every key that differs."""
    t = flat(OmegaConf.to_container(trial, resolve=True))
    d = flat(OmegaConf.to_container(default, resolve=True))
    return [f"{k}={_override_value(v)}" for k, v in t.items() if d.get(k, object()) != v and _counts(k, RERUN_IGNORE)]

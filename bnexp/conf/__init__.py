"""bnexp's Hydra configs (package data, found as pkg://bnexp.conf), and `compose()` to build one as the commands do.

from bnexp.conf import compose
cfg = compose(["model.bn=post", "trainer.max_steps=100"])        # what `python -m bnexp.run ...` trains
study = compose(["sweep=depth_ablation"], config_name="study")  # what `python -m bnexp.sweep ...` runs
"""

from __future__ import annotations

from typing import Any


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config", **kw: Any):
    """A config composed from these files with the real schema, as `bnexp.run` (config) or `bnexp.sweep` (study)
    compose it; keyword arguments go to hydra.compose (e.g. return_hydra_config=True)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from bnexp.sweep.spec import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app: its search path has these files
        return hydra_compose(config_name=config_name, overrides=list(overrides), **kw)
    with initialize_config_module(config_module="bnexp.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), **kw)

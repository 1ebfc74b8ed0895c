"""What BN gains: each variant's width with BN minus the same variant's without (pure, as bnexp.analysis.stability)."""

from __future__ import annotations

from collections.abc import Sequence

from bnexp.analysis.stability import variant_sort_key


def compare(variants: list[dict], variant_keys: Sequence[str] | None = None) -> list[dict]:
    """Width with BN minus width without, per group of the other variant keys (each variant's ``width``:
    ``edges.add_widths`` attaches it).

    Groups are every variant key except ``bn`` (so ``depth`` and ``bias``, plus any extra grid
    axis). ``variant_keys`` defaults to the keys that precede ``"label"`` in each ``analyse()``
    dict (also true after a JSON round trip). A BN placement whose group has no
    ``bn == "off"`` variant gets ``off_width = delta_width = None`` rather than being
    dropped, so the missing baseline is visible.
    """
    groups: dict[tuple, dict[str, dict]] = {}
    group_names: dict[tuple, dict] = {}
    for v in variants:
        if "bn" not in v:
            continue
        if variant_keys is None:
            keys = list(v)[: list(v).index("label")] if "label" in v else []
        else:
            keys = list(variant_keys)
        names = {k: v.get(k) for k in keys if k != "bn"}
        gk = tuple(names.items())
        groups.setdefault(gk, {})[v["bn"]] = v
        group_names[gk] = names
    rows = []
    for gk, by_bn in groups.items():
        off = by_bn.get("off")
        for bn, v in by_bn.items():
            if bn == "off":
                continue
            row = dict(group_names[gk])
            row.update(
                {
                    "bn": bn,
                    "width": v["width"],
                    "off_width": off["width"] if off else None,
                    "delta_width": (
                        v["width"] - off["width"] if off and None not in (v["width"], off["width"]) else None
                    ),
                    "n_holes": v["n_holes"],
                    "off_n_holes": off["n_holes"] if off else None,
                }
            )
            rows.append(row)

    def order(row: dict) -> tuple:
        keys = [k for k in row if k not in _COMPARE_VALUE_KEYS]
        return variant_sort_key(tuple(row[k] for k in keys), keys)

    return sorted(rows, key=order)


_COMPARE_VALUE_KEYS = {"width", "off_width", "delta_width", "n_holes", "off_n_holes"}

"""Linear mixed models per quantity: condition fixed, replicate and group random (statsmodels).

The optional second analysis of a nested design (``-p biomarkers.model=mixed``). For each
quantity the per-image means are modelled as

    value ~ condition  +  (1 | replicate unit)  [+ (1 | group unit)]  +  residual (image)

with statsmodels' ``MixedLM`` (REML), the reference condition as the baseline. When the
design has no replicate level the groups carry the random intercept; with neither, there is
nothing random to fit and no rows are returned. Each row gives the condition's coefficient
(its difference from the reference), standard error and Wald p-value, the variance
components (``var_replicate``, ``var_group``, ``var_image``: the residual between images,
and ``var_cell``: the pooled within-image variance of cells) and the ICC, the share of the
image-level variance that lies between the top random units. statsmodels is an optional
dependency: ``pip install "epikit[stats]"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.design import Design, unit_ids
from epikit.errors import ConfigError

MODELS: tuple[str, ...] = ("means", "mixed")


def _statsmodels() -> Any:
    try:
        import statsmodels.formula.api as smf
    except ImportError:
        raise ConfigError('biomarkers.model=mixed needs statsmodels: pip install "epikit[stats]"') from None
    return smf


def pooled_variance(values: pd.Series, within: pd.Series) -> tuple[float, int]:
    """Pooled variance of ``values`` around the means of their ``within`` group, and its degrees of
    freedom (NaN and 0 when no group has two values; NaN values are left out)."""
    frame = pd.DataFrame({"v": values.to_numpy(float), "g": within.to_numpy()}).dropna()
    grouped = frame.groupby("g")["v"]
    dof = (grouped.size() - 1).clip(lower=0)
    total = int(dof.sum())
    if total == 0:
        return float("nan"), 0
    return float((grouped.var(ddof=1).fillna(0.0) * dof).sum() / total), total


def _fit(smf: Any, frame: pd.DataFrame, reference: str, nested: bool) -> Any:
    formula = f"value ~ C(condition, Treatment({reference!r}))"
    vc = {"group": "0 + C(group_unit)"} if nested else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smf.mixedlm(formula, frame, groups=frame["top_unit"], vc_formula=vc, re_formula="1")
        return model.fit(reml=True)


def mixed_table(long: pd.DataFrame, keys: Sequence[str], design: Design, reference: str) -> pd.DataFrame | None:
    """One row per quantity and non-reference condition (see the module docstring); None without random levels."""
    top = "replicate" if "replicate" in design.levels else ("group" if "group" in design.levels else None)
    if top is None:
        return None
    smf = _statsmodels()
    nested = top == "replicate" and "group" in design.levels
    data = long.loc[long["value"].notna()].copy()
    data["top_unit"] = unit_ids(data, top).to_numpy()
    data["group_unit"] = unit_ids(data, "group").to_numpy() if nested else ""
    rows: list[dict[str, Any]] = []
    for key_values, block in data.groupby(list(keys), sort=True, dropna=False):
        key_values = key_values if isinstance(key_values, tuple) else (key_values,)
        images = block.groupby(["condition", "top_unit", "group_unit", "image_id"], sort=True)["value"].mean()
        frame = images.reset_index()
        var_cell = pooled_variance(block["value"], block["image_id"])[0]
        try:
            result = _fit(smf, frame, reference, nested)
            var_top = float(result.cov_re.iloc[0, 0])
            var_group = float(result.vcomp[0]) if nested and len(result.vcomp) else 0.0
            var_image = float(result.scale)
            params, errors, pvalues = result.fe_params, result.bse_fe, result.pvalues
            note = "" if result.converged else "did not converge"
        except (ValueError, np.linalg.LinAlgError) as error:
            var_top = var_group = var_image = float("nan")
            params = errors = pvalues = pd.Series(dtype=float)
            note = f"fit failed: {error}"
        total = var_top + var_group + var_image
        for condition in sorted(set(frame["condition"]) - {reference}):
            term = f"C(condition, Treatment({reference!r}))[T.{condition}]"
            rows.append({**dict(zip(keys, key_values)), "condition": condition, "reference": reference,
                         "random_unit": top, "coefficient": float(params.get(term, np.nan)),
                         "std_error": float(errors.get(term, np.nan)), "p_value": float(pvalues.get(term, np.nan)),
                         "var_replicate": var_top if top == "replicate" else float("nan"),
                         "var_group": var_group if nested else (var_top if top == "group" else float("nan")),
                         "var_image": var_image, "var_cell": var_cell,
                         "icc": var_top / total if total > 0 else float("nan"), "note": note})
    return pd.DataFrame(rows) if rows else None

"""The results table: one row per evaluation (accuracy and its standard error, accuracy by answer
form, the recipe's extra columns, for thinking-mode evaluations the observations per response and
the fraction the judge found unsupported, parsed rate, questions)."""

from __future__ import annotations

# result entries shown where any row has them: (entry, header)
OBSERVATIONS = (("observations_per_response", "obs/resp"), ("unsupported_observation_rate", "unsupported"))


def table(results: dict[str, dict], columns: tuple[str, ...] = (), note: str = "") -> str:
  """Rows for the `results` entries that hold an accuracy, with `columns` (further entries of a
  row, e.g. the accuracy on a subset) where any row has them, then `note`; "" when nothing was
  evaluated."""
  rows = [(k, v) for k, v in results.items() if isinstance(v, dict) and "accuracy" in v]
  if not rows:
    return ""
  forms = sorted({f for _, v in rows for f in v["by_form"]})
  extra = [(c, c) for c in columns if any(c in v for _, v in rows)]
  extra += [(c, h) for c, h in OBSERVATIONS if any(c in v for _, v in rows)]
  heads = [f"acc {f}" for f in forms] + [h for _, h in extra]
  width = max(24, *(len(name) + 2 for name, _ in rows))
  lines = [f"{'stage':<{width}}{'accuracy':>10}{'+-se':>7}" + "".join(f"{h:>12}" for h in heads)
           + f"{'parsed':>9}{'n':>6}"]
  for name, v in rows:
    values = [v["by_form"].get(f, float("nan")) for f in forms] + [v.get(c, float("nan")) for c, _ in extra]
    parsed = f"{v['parsed_rate']:>9.2f}" if "parsed_rate" in v else f"{'-':>9}"
    se = f"{v['stderr']:>7.3f}" if "stderr" in v else f"{'-':>7}"
    lines.append(f"{name:<{width}}{v['accuracy']:>10.3f}{se}" + "".join(f"{x:>12.3f}" for x in values)
                 + f"{parsed}{v['n']:>6}")
  return "\n".join(lines + ([note] if note else []))

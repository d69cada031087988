"""The results table: one row per evaluation (accuracy overall and by answer form, parsed rate)."""

from __future__ import annotations


def table(results: dict[str, dict], columns: tuple[str, ...] = (), note: str = "") -> str:
  """Rows for the `results` entries that hold an accuracy, with `columns` (further entries of a
  row, e.g. the accuracy on a subset) where any row has them, then `note`; "" when nothing was
  evaluated."""
  rows = [(k, v) for k, v in results.items() if isinstance(v, dict) and "accuracy" in v]
  if not rows:
    return ""
  forms = sorted({f for _, v in rows for f in v["by_form"]})
  extra = [c for c in columns if any(c in v for _, v in rows)]
  heads = [f"acc {f}" for f in forms] + extra
  lines = [f"{'stage':<24}{'accuracy':>10}" + "".join(f"{h:>11}" for h in heads) + f"{'parsed':>9}{'n':>6}"]
  for name, v in rows:
    values = [v["by_form"].get(f, float("nan")) for f in forms] + [v.get(c, float("nan")) for c in extra]
    parsed = f"{v['parsed_rate']:>9.2f}" if "parsed_rate" in v else f"{'-':>9}"
    lines.append(f"{name:<24}{v['accuracy']:>10.3f}" + "".join(f"{x:>11.3f}" for x in values) + f"{parsed}{v['n']:>6}")
  return "\n".join(lines + ([note] if note else []))

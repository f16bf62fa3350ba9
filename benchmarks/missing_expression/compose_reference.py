"""Writes section (c) of benchmarks/RESULTS_missing_expression.md from robustness studies'
outputs (no typed numbers):

    python benchmarks/missing_expression/compose_reference.py OUT "COMMAND" [OUT "COMMAND" ...]

OUT is a study's --out folder (results.json, sweep.json, table.md, robustness.png); COMMAND is the
exact command that wrote it. Each study's raw JSON and figure are copied beside this script
(suffixed by OUT's folder name); its curve is compared with section (a)'s raw results.
"""

import json
import pathlib
import shutil
import sys

import numpy as np

here = pathlib.Path(__file__).resolve().parent
doc = here.parent / "RESULTS_missing_expression.md"
curve_a = json.loads((here / "robustness_results.json").read_text())


def against_a(results):
  """How the study's curve compares with section (a)'s, per (fraction, seed) both ran."""
  if set(results) < set(curve_a) or len(results["drop0"]) < len(curve_a["drop0"]):
    return ""  # not (a)'s fractions and seeds: another protocol, nothing to compare
  pairs = [
    (a["test"], b["test"])
    for k, rows in results.items()
    if k in curve_a
    for b in rows
    for a in curve_a[k]
    if a["seed"] == b["seed"]
  ]
  same = sum(a == b for a, b in pairs)
  worst = max(abs(a - b) for a, b in pairs)
  return (
    f"The curve reruns section (a)'s protocol: {same} of its {len(pairs)} (fraction, seed) "
    f"test AUCs are reproduced exactly (largest difference {worst:.2g})."
  )


def section(out, command, tag):
  results = json.loads((out / "results.json").read_text())
  sweep = json.loads((out / "sweep.json").read_text())
  shutil.copy(out / "results.json", here / f"reference_results_{tag}.json")
  shutil.copy(out / "sweep.json", here / f"reference_sweep_{tag}.json")
  figure = f"missing_expression_robustness_reference_{tag}.png"
  shutil.copy(out / "robustness.png", here.parent / figure)
  seeds = [r["seed"] for r in results["drop0"]]
  config = json.loads((out / f"drop0-seed{seeds[0]}" / "config.json").read_text())
  epochs = config["train"]["epochs"]
  fractions = ", ".join(k[4:] for k in results if k.startswith("drop"))
  walls = "; ".join(f"{k}: {sum(r['wall_s'] for r in v):.0f} s" for k, v in results.items())
  sweep_walls = "; ".join(
    f"feature_weight {k}: {sum(r['wall_s'] for r in v):.0f} s" for k, v in sweep["candidates"].items()
  )
  test = {k: {r["seed"]: r["test"] for r in v} for k, v in results.items()}
  student_gap = [test["subspace-student"][k] - test["abmil"][k] for k in seeds]
  teacher_gap = [test["drop0"][k] - test["abmil"][k] for k in seeds]
  paired = (
    f"Paired by seed: student - abmil {', '.join(f'{d:+.3f}' for d in student_gap)}; "
    f"teacher (drop0) - abmil {', '.join(f'{d:+.3f}' for d in teacher_gap)}."
  )
  means = {k: float(np.mean(list(v.values()))) for k, v in test.items()}
  val_means = sorted(sweep["val_mean"].values(), reverse=True)
  spread = max(np.std([r["val"] for r in rows], ddof=1) for rows in sweep["candidates"].values())
  lead = val_means[0] - val_means[1]
  reading = (
    f"The chosen feature_weight leads the next candidate by {lead:.3f} mean validation "
    f"AUC, {'less' if lead < spread else 'more'} than the largest seed-to-seed std of a "
    f"candidate ({spread:.3f})" + (": the choice is not established at this protocol." if lead < spread else ".")
  )
  below = [k for k in ("abmil", "subspace-student") if means[k] < 0.5]
  if below:
    reading += (
      f" {' and '.join(f'`{k}`' for k in below)} averages below chance (AUC 0.5): "
      "tiny slides-only models are barely trained at this protocol, so the reference "
      "lines show the study runs end to end more than they measure what distillation "
      "recovers."
    )
  return f"""### {len(seeds)} seeds ({', '.join(map(str, seeds))}), {epochs} epochs, fractions {fractions}

Command (wall s per setting over its seeds: {walls}; the sweep: {sweep_walls}; the first run of
each program includes compiling it):

    {command}

{(out / 'table.md').read_text()}
{' '.join(x for x in (paired, against_a(results), reading) if x)}

![robustness with reference lines, {len(seeds)} seeds]({figure})
"""


args = sys.argv[1:]
if not args or len(args) % 2:
  raise SystemExit(__doc__)
body = "\n".join(
  section(pathlib.Path(out), command, pathlib.Path(out).name) for out, command in zip(args[::2], args[1::2])
)
text = f"""## (c) Reference lines and the student's feature_weight chosen on validation (REDUCED protocols)

Reduced protocols (2 CPU cores shared by 4 engineers, load average about 10): the study's cohort
(`COHORT` in `smml_jax/evaluate/missing_expression_study.py`) and tiny models (`TINY_OPTIONS`:
`subspace` as in (a); `subspace-student` the same plus `predictor_hidden` 16; `abmil` hidden 16 and
attention hidden 16). The slides-only references do not depend on the drop fraction, so each is
one horizontal line (mean, ± std band over the seeds) trained on the same cohort, splits and seeds
as the curve; each seed's student is distilled from that seed's fraction-0 subspace run (its
teacher, reused, not trained again). `distill.feature_weight` in {{0.01, 0.1, 1}} (with
`distill.kd_weight` 0.01 and T = 2, the defaults) is chosen on the mean validation AUC over seeds;
the test AUC is read for the chosen value only (the candidates' rows in `reference_sweep_*.json`
hold validation values only). Every test number is at the validation-selected epoch; mean ± std
with ddof 1 over seeds.

{body}"""
marker = "## (c) Reference lines"
old = doc.read_text()
head = old.split(marker)[0].rstrip("\n") + "\n\n"
doc.write_text(head + text)
print(text)

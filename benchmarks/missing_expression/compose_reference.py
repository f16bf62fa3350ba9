"""Writes section (c) of benchmarks/RESULTS_missing_expression.md from a robustness study's
outputs (no typed numbers): python benchmarks/missing_expression/compose_reference.py OUT "COMMAND"

OUT is the study's --out folder (results.json, sweep.json, table.md, robustness.png); COMMAND is
the exact command that wrote it. The raw JSON and the figure are copied beside this script.
"""
import json
import pathlib
import shutil
import sys

import numpy as np

here = pathlib.Path(__file__).resolve().parent
doc = here.parent / "RESULTS_missing_expression.md"
out, command = pathlib.Path(sys.argv[1]), sys.argv[2]
results = json.loads((out / "results.json").read_text())
sweep = json.loads((out / "sweep.json").read_text())
shutil.copy(out / "results.json", here / "reference_results.json")
shutil.copy(out / "sweep.json", here / "reference_sweep.json")
shutil.copy(out / "robustness.png", here.parent / "missing_expression_robustness_reference.png")
seeds = [r["seed"] for r in results["drop0"]]
epochs = json.loads((out / f"drop0-seed{seeds[0]}" / "config.json").read_text())["train"]["epochs"]
walls = "; ".join(f"{k}: {sum(r['wall_s'] for r in v):.0f} s" for k, v in results.items())
sweep_walls = "; ".join(f"feature_weight {k}: {sum(r['wall_s'] for r in v):.0f} s"
                        for k, v in sweep["candidates"].items())
student = {r["seed"]: r["test"] for r in results["subspace-student"]}
abmil = {r["seed"]: r["test"] for r in results["abmil"]}
teacher = {r["seed"]: r["test"] for r in results["drop0"]}
gap = np.array([student[k] - abmil[k] for k in seeds])
recovered = np.array([teacher[k] - abmil[k] for k in seeds])
paired = (f"student - abmil per seed: {', '.join(f'{d:+.3f}' for d in gap)}; teacher (drop0) - "
          f"abmil per seed: {', '.join(f'{d:+.3f}' for d in recovered)}")
means = {k: float(np.mean([r["test"] for r in v])) for k, v in results.items()}
val_means = sorted(sweep["val_mean"].values(), reverse=True)
val_spread = max(np.std([r["val"] for r in rows], ddof=1) for rows in sweep["candidates"].values())
reading = ("Reading: the chosen feature_weight leads the next candidate by "
           f"{val_means[0] - val_means[1]:.3f} mean validation AUC, less than the largest "
           f"seed-to-seed std of a candidate ({val_spread:.3f}): the choice is not established "
           "at this protocol. " if val_means[0] - val_means[1] < val_spread else
           "Reading: the chosen feature_weight leads the next candidate by more than the largest "
           "seed-to-seed std of a candidate. ")
if min(means["abmil"], means["subspace-student"]) < 0.5:
  reading += ("A slides-only reference is below chance (AUC 0.5) on average: at this many epochs "
              "the tiny slides-only models are barely trained, so the reference lines show the "
              "study runs end to end rather than measure what distillation recovers.")
section = f"""## (c) Reference lines and the student's feature_weight chosen on validation (REDUCED protocol)

Reduced protocol (to finish on a 2-core machine shared by 4 engineers, load average about 10):
the study's cohort (`COHORT` in `smml_jax/evaluate/missing_expression_study.py`), the tiny
models (`TINY_OPTIONS`: subspace as in (a); the student the same plus `predictor_hidden` 16;
`abmil` hidden 16), **{len(seeds)} seeds ({', '.join(map(str, seeds))}), {epochs} epochs**, fractions
{', '.join(k[4:] for k in results if k.startswith('drop'))}. The reference models do not see expression,
so each is one horizontal line (mean, ± std band over the seeds) on the same cohort,
splits and seeds; each seed's student is distilled from that seed's fraction-0 subspace run (its
teacher, not trained again). `distill.feature_weight` in {{{', '.join(sweep['candidates'])}}} with
`distill.kd_weight` 0.01 and T = 2 (the defaults) is chosen on the mean validation AUC over
seeds; the test AUC is read for the chosen value only (the other candidates' rows in
`reference_sweep.json` hold validation values only). Not comparable with (a): fewer seeds and
epochs.

Command (wall s per setting, all seeds: {walls}; sweep: {sweep_walls}; the first run of each
program includes compiling it):

    {command}

{(out / 'table.md').read_text()}
{paired}.

{reading}

![robustness with reference lines](missing_expression_robustness_reference.png)
"""
text = doc.read_text()
marker = "## (c) Reference lines"
head = text.split(marker)[0].rstrip("\n") + "\n\n" if marker in text else text.rstrip("\n") + "\n\n"
doc.write_text(head + section)
print(section)

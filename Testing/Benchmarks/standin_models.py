"""Stand-in packages with the architecture of the bundled ``synth`` pipeline, for speed work
before (or without) the real ones: ``synth-localizer`` (``Localizer``, default config, 4 mm) and
``synth-metricunet-hcp`` (``MetricUNet-HCP``, 1.5 mm, base 16, 64-d embedding, 64² patches),
modality ``any``, plus ``synth.pipeline.json``. Inference time does not depend on the weights
once the ROI is fixed; the weights only have to find a prostate so that both stages run. Both
are trained ``--iterations`` on CT phantoms. (The real ``synth`` packages are bundled in
``Resources/Models`` now; the stand-ins remain for timing work on other architectures' budgets.)

    python Testing/Benchmarks/standin_models.py --out /tmp/voxmetric-standins [--iterations 300]
    VOXMETRIC_BUNDLED_MODELS=/tmp/voxmetric-standins voxmetric segment CT.nrrd -o out.seg.nrrd

Not for any use but timing: the cards say so (``demo`` true, intended use "timing stand-in").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

USE = "timing stand-in for the synth pipeline (briefly trained on phantoms); not for any segmentation use"
CONFIGS = {"localizer": ("Localizer", {}),
           "refiner": ("MetricUNet-HCP", {"spacing_mm": 1.5, "base": 16, "embed_channels": 64})}
NAMES = {"localizer": "synth-localizer", "refiner": "synth-metricunet-hcp"}


def _train(kind: str, cases: list, work: Path, iterations: int) -> tuple[dict, dict]:
    from voxmetric import training
    from voxmetric.methods import get_method

    name, overrides = CONFIGS[kind]
    method = get_method(name)
    cfg = method.make_config(overrides)
    tcfg = training.TrainConfig(iterations=iterations, batch_size=8, optimizer="adam", lr=1e-3, amp=False,
                                val_every=iterations, checkpoint_every=iterations, log_every=max(1, iterations // 5),
                                device="cpu", seed=0)
    res = training.train(method, cfg, tcfg, cases[:-1], cases[-1:], work / f"run-{kind}",
                         emit=lambda e: print(json.dumps(e), flush=True) if e.get("event") == "iteration" else None)
    return dict(res.card_fields), res.state_dict


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/voxmetric-standins"))
    p.add_argument("--work", type=Path, default=None, help="training work folder (default OUT/work)")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--cases", type=int, default=6)
    a = p.parse_args()
    import torch

    from voxmetric import models
    from voxmetric.cases import load_cases
    from voxmetric.phantom import write_cases

    torch.set_num_threads(1)
    work = a.work or a.out / "work"
    if not (work / "phantoms" / "manifest.json").exists():
        write_cases(work / "phantoms", a.cases, modality="ct", seed=7000)
    cases = load_cases(work / "phantoms" / "manifest.json", "Prostate")
    for kind in ("localizer", "refiner"):
        card, state = _train(kind, cases, work, a.iterations)
        card.update(name=NAMES[kind], modality="any", demo=True, intended_use=USE,
                    description=f"{CONFIGS[kind][0]} {kind} stand-in with the synth pipeline's architecture")
        path = models.save_package(a.out / NAMES[kind], card, state, overwrite=True)
        print(json.dumps({"saved": str(path), "method": card["method"], "config": card["config"]}), flush=True)
    (a.out / "synth.pipeline.json").write_text(json.dumps(
        {"name": "synth", "localizer": NAMES["localizer"], "refiner": NAMES["refiner"]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

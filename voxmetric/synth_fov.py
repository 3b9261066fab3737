"""The synthetic generator's fields of view (:mod:`voxmetric.synth`), importable without numpy
or scipy (the CLI builds its ``phantom --fov`` choices from them at start-up)."""

FOVS = ("pelvis", "roi", "abdomen")
FOV_HELP = {"pelvis": "a whole-pelvis scan on a random acquisition grid",
            "roi": "a 120-160 mm stage-2 crop around the prostate at 1 mm",
            "abdomen": "an abdomen-pelvis scan from below the prostate up to the upper abdomen (300-550 mm)"}

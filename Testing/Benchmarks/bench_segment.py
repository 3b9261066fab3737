"""What the user waits for: the whole ``voxmetric segment`` process against a single-stage MONAI
peer, start to exit, alternating in one run (issue 14); prints JSON lines.

    python Testing/Benchmarks/bench_segment.py [--repeats 3] [--work DIR] [--models DIR]
        [--before-src DIR] [--wait-quiet 2700] [--quiet-load 1.0] [--device cpu|cuda]

Input: a synthetic 512 × 512 × 200 CT at 0.8 × 0.8 × 2.5 mm (``voxmetric.phantom``, seed 4242),
written once to ``WORK/ct_512x512x200.nrrd`` (gzip NRRD). Each measurement is one child process;
its wall time runs from the spawn to the exit and its peak RSS and CPU time come from
``os.wait4`` (that process alone). Per round, in this order:

- ``ours``: ``python -m voxmetric segment IMAGE -o OUT.seg.nrrd --model synth`` with the models
  of ``--models`` (``VOXMETRIC_BUNDLED_MODELS``; default: ``Resources/Models`` when it holds the
  ``synth`` pipeline, else stand-ins of the same architecture made by ``standin_models.py``); the
  stage split comes from the timings JSON it writes (``stage_timings``) and
  start-up + imports = process wall − the in-process total;
- ``before`` (with ``--before-src``: a checkout of the engine before issue 14, e.g.
  ``git archive 777bf18 | tar -x -C DIR``): the same command run by that engine on the same
  models without their ONNX graphs (it cannot read the card's ``onnx`` block);
- ``peer``: this script's ``--child peer``: import torch + MONAI, read the image, body box,
  resample the body to 1.5 mm, MONAI ``UNet(3D, 16-32-64-128-256, strides 2, 2 residual units)``
  with ``sliding_window_inference`` (96³, overlap 0.25, batch 1), threshold, resample back onto
  the input grid (nearest), write a ``.seg.nrrd`` (cropped like ours). Random weights: its run
  time does not depend on them.

``--wait-quiet S`` polls ``os.getloadavg()`` every 60 s for up to S seconds until the 1-min load is
below ``--quiet-load`` before the first measurement; the load before and after each measurement
is printed with it. The summary gives medians, min–max, peak RSS and the ratios ours / peer.
``--child conv_peak`` measures the machine's conv peak (a 256→256 3×3 conv) in torch and ONNX
Runtime; ``bench_refiner_gflops.py`` uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}


def make_input(path: Path) -> Path:
    from voxmetric import io
    from voxmetric.phantom import make_case

    if not path.exists():
        case = make_case(4242, "ct", shape=(200, 512, 512), spacing=(0.8, 0.8, 2.5))
        io.write_volume(case.image, path)
    return path


# ---- the peer (a child process) --------------------------------------------------------------------
def child_peer(image: Path, out: Path, res_units: int, device: str = "cpu") -> dict:
    """The single-stage peer, whole, on ``device`` (CUDA: AMP, as ours): returns in-process
    seconds per step."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from voxmetric import intensity, io
    from voxmetric.volume import Volume, crop, resample_to

    torch.set_num_threads(os.cpu_count() or 1)
    t_import = time.perf_counter()
    vol = io.read_volume(image)
    t_read = time.perf_counter()
    step = np.maximum(1, np.floor(4.0 / vol.spacing)).astype(int)  # body box on a 4 mm strided view, as ours
    coarse = Volume(vol.array[::step[2], ::step[1], ::step[0]], vol.spacing * step, vol.origin, vol.direction)
    body = intensity.body_box(coarse, "ct")
    iso = crop(vol, body, (1.5, 1.5, 1.5), fill=-1024.0)
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(intensity.normalize_ct(iso.array) / 255.0)[None, None].to(dev)
    t_pre = time.perf_counter()
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units=res_units).eval().to(dev)
    with torch.inference_mode(), torch.autocast(dev.type, enabled=dev.type == "cuda"):
        logits = sliding_window_inference(x, (96, 96, 96), 1, net, overlap=0.25)
        mask = (torch.softmax(logits.float(), 1)[0, 1] > 0.5).cpu().numpy().astype(np.uint8)
    t_net = time.perf_counter()
    back = resample_to(iso.with_array(mask), vol, is_label=True)
    t_back = time.perf_counter()
    io.write_segmentation(out, back.with_array(back.array.astype(np.uint8)), [io.segment_info("Prostate", 1)],
                          crop=True)
    t_write = time.perf_counter()
    return {"import": t_import - t0, "read": t_read - t_import, "body_box_resample": t_pre - t_read,
            "network": t_net - t_pre, "resample_back": t_back - t_net, "write": t_write - t_back,
            "grid_1.5mm": list(iso.shape), "params": sum(p.numel() for p in net.parameters()), "device": dev.type}


def conv_peak() -> dict:
    """GFLOP/s of one 256→256 3×3 conv on 8 × 256 × 64 × 64 (fp32), best of 5, torch
    (channels_last) and ONNX Runtime, all cores."""
    import io as _io
    import warnings

    import torch

    from voxmetric.runtime import OnnxNetwork, cpu_threads

    torch.set_num_threads(cpu_threads())
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.rand(8, 256, 64, 64)
    flops = 2 * 8 * 256 * 256 * 9 * 64 * 64
    out = {}
    convc = conv.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    buf = _io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, (x[:1],), buf, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    ort = OnnxNetwork(buf.getvalue())
    xn = x.numpy()
    per_cpu = {}
    for name, run in (("torch", lambda: convc(xc)), ("onnxruntime", lambda: ort(xn))):
        best, best_cpu = float("inf"), float("inf")
        with torch.inference_mode():
            run()
            for _ in range(5):
                t, c = time.perf_counter(), time.process_time()
                run()
                best = min(best, time.perf_counter() - t)
                best_cpu = min(best_cpu, time.process_time() - c)
        out[name] = flops / 1e9 / best
        per_cpu[name] = flops / 1e9 / best_cpu
    return {"gflops_per_s": max(out.values()), "by_runtime": out, "gflop_per_cpu_s": max(per_cpu.values()),
            "gflop_per_cpu_s_by_runtime": per_cpu, "threads": cpu_threads(),
            "shape": "8x256x64x64, 3x3, 256->256, fp32"}


# ---- the parent ---------------------------------------------------------------------------------------
def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Spawn ``cmd``: wall time from spawn to exit, and that process's own peak RSS (MB) and CPU
    seconds from ``os.wait4``; the 1-min load before and after."""
    before = load()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd or ROOT)
    assert proc.stderr is not None
    err = proc.stderr.read()  # until the child closes it (at exit)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024.0,
            "cpu_s": ru.ru_utime + ru.ru_stime, "stderr": err.decode(errors="replace")[-2000:],
            "load_before": before, "load_after": load()}


def wait_quiet(limit_s: float, threshold: float) -> dict:
    t0 = time.monotonic()
    seen = [load()]
    while seen[-1] >= threshold and time.monotonic() - t0 < limit_s:
        time.sleep(60)
        seen.append(load())
    return {"measure": "wait_quiet", "waited_s": round(time.monotonic() - t0), "quiet": seen[-1] < threshold,
            "threshold": threshold, "load_samples": seen}


def default_models(work: Path) -> Path:
    bundled = ROOT / "Resources" / "Models"
    if (bundled / "synth.pipeline.json").exists():
        return bundled
    out = work / "standins"
    if not (out / "synth.pipeline.json").exists():
        subprocess.run([sys.executable, str(HERE / "standin_models.py"), "--out", str(out)], check=True)
    return out


def torch_only_copy(models: Path, work: Path) -> Path:
    """A copy of the synth packages without ONNX graphs (cards an older engine can read), in a
    folder of ``work`` named by their weights' hashes (reused only for the same weights)."""
    import hashlib

    from voxmetric import models as M

    cards = sorted(child / "model.json" for child in models.iterdir() if (child / "model.json").is_file())
    digest = hashlib.sha256("".join(M.read_card(c.parent)["weights_sha256"] for c in cards).encode()).hexdigest()
    out = work / f"models-torch-{digest[:12]}"
    if (out / "synth.pipeline.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for child in models.iterdir():
        if (child / "model.json").is_file():
            pkg = M.load_package(child)
            card = {k: v for k, v in pkg.card.items() if k not in ("onnx", "format", "engine_version", "weights_sha256",
                                                                    "weights_bytes", "weights_dtype")}
            M.save_package(out / child.name, card, pkg.state_dict, half=pkg.card.get("weights_dtype") == "float16",
                           onnx=False, overwrite=True)
        elif child.name.endswith(".pipeline.json"):
            shutil.copy(child, out / child.name)
    return out


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("rc") == 0]
    if not ok:
        return {"failed": [r.get("stderr", "")[-500:] for r in runs]}
    walls = [r["wall_s"] for r in ok]
    s = {"wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
         "runs_wall_s": [round(w, 2) for w in walls], "peak_rss_mb_max": max(r["peak_rss_mb"] for r in ok),
         "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in ok),
         "cpu_s_median": statistics.median(r["cpu_s"] for r in ok), "n": len(ok)}
    stages = [r["stages"] for r in ok if r.get("stages")]
    if stages:
        s["stages_median_s"] = {k: round(statistics.median(st.get(k, 0.0) for st in stages), 3) for k in stages[0]}
    return s


def ours_stages(timings_file: Path, wall: float) -> dict:
    data = json.loads(timings_file.read_text())
    st = dict(data.get("stage_timings") or {})
    st = {"startup_imports": wall - data["timings"]["total"], **st, "in_process_total": data["timings"]["total"]}
    return {k: round(float(v), 3) for k, v in st.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-bench")
    p.add_argument("--models", type=Path, help="models folder holding the synth pipeline (default: see above)")
    p.add_argument("--before-src", type=Path, help="engine checkout before issue 14 (also measured)")
    p.add_argument("--peer-res-units", type=int, default=2)
    p.add_argument("--wait-quiet", type=float, default=0.0, help="seconds to wait for a quiet machine")
    p.add_argument("--quiet-load", type=float, default=1.0)
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: ours' --device and the peer's")
    p.add_argument("--child", choices=["peer", "conv_peak"])
    p.add_argument("--image", type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.child == "peer":
        print(json.dumps(child_peer(a.image, a.out, a.peer_res_units, a.device)))
        return 0
    if a.child == "conv_peak":
        print(json.dumps(conv_peak()))
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    image = make_input(a.work / "ct_512x512x200.nrrd")
    models = (a.models or default_models(a.work)).resolve()
    emit({"measure": "setup", "machine": machine(), "device": a.device, "input": "512x512x200 CT, 0.8x0.8x2.5 mm, gzip NRRD",
          "image": str(image), "models": str(models), "before_src": str(a.before_src) if a.before_src else None})
    env = dict(os.environ, VOXMETRIC_BUNDLED_MODELS=str(models))
    before_env = None
    if a.before_src:
        before_env = dict(os.environ, VOXMETRIC_BUNDLED_MODELS=str(torch_only_copy(models, a.work)),
                          PYTHONPATH=str(a.before_src.resolve()))
    if a.wait_quiet > 0:
        emit(wait_quiet(a.wait_quiet, a.quiet_load))
    kinds = ["ours"] + (["before"] if before_env else []) + ([] if a.skip_peer else ["peer"])
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(a.repeats):
        for kind in kinds:
            out = a.work / f"{kind}.seg.nrrd"
            for old in a.work.glob(f"{kind}*"):  # segment never writes over a file
                old.unlink()
            if kind == "peer":
                res = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", "peer", "--image",
                                    str(image), "--out", str(out), "--peer-res-units", str(a.peer_res_units),
                                    "--device", a.device])
            else:
                res = run_measured([sys.executable, "-m", "voxmetric", "segment", str(image), "-o", str(out), "--model",
                                    "synth", "--device", a.device], env=before_env if kind == "before" else env,
                                   cwd=a.before_src if kind == "before" else None)
                if res["rc"] == 0:
                    res["stages"] = ours_stages(a.work / f"{kind}_timings.json", res["wall_s"])
            runs[kind].append(res)
            emit({"measure": kind, "round": r, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                 for k, v in res.items() if k != "stderr" or res["rc"] != 0}})
    summary = {k: summarize(v) for k, v in runs.items()}
    for k, s in summary.items():
        emit({"measure": f"summary_{k}", **s})
    peer = summary.get("peer", {})
    for k in ("ours", "before"):
        s = summary.get(k, {})
        if "wall_s_median" in s and "wall_s_median" in peer:
            emit({"measure": f"ratio_{k}_to_peer", "time_ratio": round(s["wall_s_median"] / peer["wall_s_median"], 3),
                  "rss_ratio": round(s["peak_rss_mb_max"] / peer["peak_rss_mb_max"], 3),
                  "targets": "time <= 0.25, rss <= 0.6"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

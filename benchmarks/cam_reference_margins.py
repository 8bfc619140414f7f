"""How far netsight's CAMs are from pytorch-grad-cam's in the reference tests, in
numbers: the worst Pearson r of the final maps and the worst raw-map difference
(as a fraction of the reference's largest value) for every (model, method) pair of
``tests/test_cam_reference.py``, on the models, layers and inputs of that file.

Run it on different CPU kernels to see the margins the tests' tolerances leave::

    .venv/bin/python benchmarks/cam_reference_margins.py
    ATEN_CPU_CAPABILITY=default .venv/bin/python benchmarks/cam_reference_margins.py --no-onednn
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import netsight.cam as nscam
import test_cam_reference as ref


def _worst(
    ours: nscam.CAMResult, layer: str, maps: torch.Tensor, raw: torch.Tensor
) -> tuple[float, float]:
    rs, errs = [], []
    for i in range(maps.shape[0]):
        if float(maps[i].amax() - maps[i].amin()) > 1e-6:
            rs.append(ref._pearson(ours.maps[i], maps[i]))
        scale = float(raw[i].abs().amax())
        errs.append(
            float((ours.raw[layer][i] - raw[i].to(ours.raw[layer].dtype)).abs().amax()) / scale
        )
    return min(rs, default=1.0), max(errs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-onednn", action="store_true", help="native convolutions")
    args = parser.parse_args()
    if args.no_onednn:
        torch.backends.mkldnn.enabled = False
    warnings.filterwarnings("ignore")
    print(
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN {'off' if args.no_onednn else 'on'}"
    )
    rows = []
    for arch, (_, shape, layer, layer_p, shape_p) in ref.ARCHS.items():
        model = ref._model(arch)
        x = ref._input(shape)
        for method, cls in ref.GRADIENT_METHODS.items():
            ours = nscam.METHODS[method](model, layer).explain(x, ref.TARGETS)
            maps, raw = ref._reference(cls, model, layer, x)
            rows.append((arch, method, *_worst(ours, layer, maps, raw)))
        xp = ref._input(shape_p)
        with torch.no_grad():
            top = model(xp).argmax(1).tolist()
        for method, cls in (("scorecam", "ScoreCAM"), ("ablationcam", "AblationCAM")):
            ours = nscam.METHODS[method](model, layer_p, batch_size=64).explain(xp, top)
            options = {"batch_size": 64} if cls == "AblationCAM" else {}
            maps, raw = ref._reference(cls, model, layer_p, xp, top, **options)
            rows.append((arch, method, *_worst(ours, layer_p, maps, raw)))
    print(f"{'model':9} {'method':12} {'worst r':>10} {'raw diff / scale':>17}")
    for arch, method, r, err in rows:
        print(f"{arch:9} {method:12} {r:10.7f} {err:17.2e}")
    print(
        f"worst: r {min(r[2] for r in rows):.7f}, raw {max(r[3] for r in rows):.2e} "
        f"(tests: r >= {ref.R_MIN}, raw <= {ref.RAW_TOL} / {ref.RAW_TOL_ABLATION} Ablation-CAM)"
    )


if __name__ == "__main__":
    main()

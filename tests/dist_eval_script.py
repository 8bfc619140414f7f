"""Run by tests/test_cam_metrics.py under ``torchrun --nproc_per_node 2 --standalone``:
every rank evaluates its share of a small dataset (gloo, CPU) and writes what it got.

``build()`` makes the model and data; the test imports it to run the same evaluation
in one process and compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import netsight.cam as nscam
from dist_setup import init, teardown

SIZE = 13  # odd: a DistributedSampler over 2 ranks pads one repeated image
# ROAD at two percentages: its sums, curves and seeded noise are reduced like the rest.
OPTIONS: dict[str, Any] = {
    "steps": 5,
    "chunk_size": 16,
    "progress": False,
    "seed": 3,
    "road": True,
    "road_percentages": (30, 70),
}


def build() -> tuple[nn.Module, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        model[6].weight.abs_()  # every class gains from every channel: no all-zero maps
    x = torch.randn(SIZE, 1, 10, 10, generator=generator)
    y = torch.randint(0, 4, (SIZE,), generator=generator)
    corner = torch.randint(0, 6, (SIZE, 2), generator=generator)
    boxes = torch.cat([corner, corner + 4], 1)
    return model, TensorDataset(x, y, boxes)


def cams(model: nn.Module) -> dict[str, nscam.BaseCAM]:
    return {"gradcam": nscam.GradCAM(model), "eigencam": nscam.EigenCAM(model)}


def as_dict(result: nscam.CAMEvaluation) -> dict[str, Any]:
    return {
        "images": result.images,
        "pointing_images": result.pointing_images,
        "world_size": result.world_size,
        "indices": None if result.indices is None else result.indices.tolist(),
        "methods": {
            name: {
                "deletion": scores.deletion,
                "insertion": scores.insertion,
                "pointing": scores.pointing,
                "average_drop": scores.average_drop,
                "increase": scores.increase,
                "deletion_curve": scores.deletion_curve.tolist(),
                "insertion_curve": scores.insertion_curve.tolist(),
                "per_image": {key: value.tolist() for key, value in scores.per_image.items()},
                "road_morf": scores.road_morf,
                "road_lerf": scores.road_lerf,
                "road_morf_curve": _listed(scores.road_morf_curve),
                "road_lerf_curve": _listed(scores.road_lerf_curve),
            }
            for name, scores in result.methods.items()
        },
    }


def _listed(curve: torch.Tensor | None) -> list[float] | None:
    return None if curve is None else curve.tolist()


def evaluate_share() -> dict[str, Any]:
    rank = dist.get_rank()
    model, dataset = build()
    # 1. A Dataset: netsight shards it (3 images per batch on each rank).
    sharded = nscam.evaluate(cams(model), dataset, batch_size=3, **OPTIONS)
    # 2. A DataLoader with a shuffling DistributedSampler (pads 13 to 14).
    sampler = DistributedSampler(dataset, shuffle=True, seed=5)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    padded = nscam.evaluate(cams(model), loader, **OPTIONS)
    try:  # a plain DataLoader would give every rank every image: refused
        nscam.evaluate(cams(model), DataLoader(dataset), **OPTIONS)
        refused = ""
    except ValueError as exc:
        refused = str(exc)
    return {
        "refused": refused,
        "rank": rank,
        "own_share": len(range(rank, SIZE, dist.get_world_size())),
        "dataset": as_dict(sharded),
        "sampler": as_dict(padded),
    }


def main(out: Path) -> None:
    init()
    # On an error the traceback ends the rank (torchrun then stops the other one);
    # destroying the group there could wait on a collective the other rank never joins.
    payload = evaluate_share()
    payload["threads_left"] = teardown()
    (out / f"rank{payload['rank']}.json").write_text(json.dumps(payload), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

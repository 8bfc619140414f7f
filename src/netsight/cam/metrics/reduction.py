"""Reduction: the per-image values and curve sums as they come, all-reduced (sums,
counts) and gathered (per-image values, dataset indices) across ranks at the end,
and turned into a :class:`~netsight.cam.metrics.results.CAMEvaluation`."""

from __future__ import annotations

from typing import Any

import torch

from netsight.cam.metrics.results import CAMEvaluation, MethodScores

# Per-image quantities kept for every method, in this order in the all-reduce.
_PER_IMAGE = ("deletion", "insertion", "pointing", "drop", "increase")
# ... and when ROAD is measured.
_ROAD = ("road_morf", "road_lerf")


class Totals:
    """Per-image values as they come, summed and gathered across ranks at the end."""

    def __init__(self, names: list[str], steps: int, road_points: int = 0) -> None:
        self.names = names
        self.steps = steps
        self.road_points = road_points
        keys = (*_PER_IMAGE, *_ROAD) if road_points else _PER_IMAGE
        self.values: dict[str, dict[str, list[torch.Tensor]]] = {
            name: {key: [] for key in keys} for name in names
        }
        self.curves = {
            name: [torch.zeros(steps + 1, dtype=torch.float64) for _ in range(2)] for name in names
        }
        # ROAD: (2, P) sums of the most / least relevant first probabilities
        self.road = {name: torch.zeros(2, road_points, dtype=torch.float64) for name in names}
        self.seconds = dict.fromkeys(names, 0.0)
        self.images = 0
        self.pointing_images = 0
        self.indices: list[int] | None = []

    def add(
        self,
        name: str,
        values: dict[str, torch.Tensor],
        deletion: torch.Tensor,
        insertion: torch.Tensor,
        seconds: float,
        road: torch.Tensor | None = None,
    ) -> None:
        for key, value in values.items():
            self.values[name][key].append(value.detach().double().cpu())
        self.curves[name][0] += deletion.sum(0).cpu()
        self.curves[name][1] += insertion.sum(0).cpu()
        if road is not None:
            self.road[name] += road.sum(0).cpu()
        self.seconds[name] += seconds

    def add_images(self, count: int, pointing: int, indices: list[int] | None) -> None:
        self.images += count
        self.pointing_images += pointing
        if indices is None:
            self.indices = None
        elif self.indices is not None:
            self.indices.extend(indices)

    def _local(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            name: {
                key: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
                for key, parts in per.items()
            }
            for name, per in self.values.items()
        }

    def finish(
        self,
        fractions: torch.Tensor,
        world: int,
        settings: dict[str, Any],
        road_percentages: tuple[float, ...] = (),
    ) -> CAMEvaluation:
        local = self._local()
        # One flat float64 vector of sums and counts (exact for counts below 2**53).
        parts: list[torch.Tensor] = [
            torch.tensor([self.images, self.pointing_images], dtype=torch.float64)
        ]
        for name in self.names:
            values = local[name]
            pointing = values["pointing"]
            parts.append(
                torch.stack(
                    [
                        values["deletion"].sum(),
                        values["insertion"].sum(),
                        pointing.nan_to_num(0.0).sum(),
                        values["drop"].sum(),
                        values["increase"].sum(),
                        torch.tensor(self.seconds[name], dtype=torch.float64),
                    ]
                )
            )
            parts.extend(self.curves[name])
            parts.append(self.road[name].flatten())
        sums = torch.cat(parts)
        per_image, indices = local, self.indices
        if world > 1:
            sums = _all_reduce(sums)
            per_image, indices = _gather(local, self.indices)
        images, pointing_images = int(sums[0]), int(sums[1])
        if images == 0:
            raise ValueError("data: no images to evaluate (the dataset is empty)")
        index_tensor = None
        if indices is not None:
            index_tensor = torch.tensor(indices, dtype=torch.long)
            order = torch.argsort(index_tensor, stable=True)
            index_tensor = index_tensor[order]
            per_image = {
                name: {key: value[order] for key, value in per.items()}
                for name, per in per_image.items()
            }
        methods = {}
        offset = 2
        points = self.road_points
        width = 6 + 2 * (self.steps + 1) + 2 * points
        for name in self.names:
            block = sums[offset : offset + width]
            offset += width
            curves = block[6 : width - 2 * points].view(2, self.steps + 1) / images
            road = block[width - 2 * points :].view(2, points) / images
            methods[name] = MethodScores(
                name=name,
                deletion=float(block[0] / images),
                insertion=float(block[1] / images),
                pointing=float(block[2] / pointing_images) if pointing_images else None,
                average_drop=float(block[3] / images),
                increase=float(block[4] / images),
                deletion_curve=curves[0].clone(),
                insertion_curve=curves[1].clone(),
                per_image=per_image[name],
                seconds=float(block[5]),
                road_morf=float(road[0].mean()) if points else None,
                road_lerf=float(road[1].mean()) if points else None,
                road_morf_curve=road[0].clone() if points else None,
                road_lerf_curve=road[1].clone() if points else None,
            )
        return CAMEvaluation(
            methods=methods,
            images=images,
            pointing_images=pointing_images,
            steps=self.steps,
            fractions=fractions,
            indices=index_tensor,
            settings=settings,
            world_size=world,
            road_percentages=road_percentages,
        )


def _all_reduce(sums: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    reduced = sums.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.cpu()


def _gather(
    local: dict[str, dict[str, torch.Tensor]], indices: list[int] | None
) -> tuple[dict[str, dict[str, torch.Tensor]], list[int] | None]:
    """Every rank's per-image values (rank after rank) and dataset indices (``None``
    unless every rank knows its own)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (local, indices))
    merged = {
        name: {key: torch.cat([g[0][name][key] for g in gathered]) for key in per}
        for name, per in local.items()
    }
    if any(g[1] is None for g in gathered):
        return merged, None
    return merged, [i for g in gathered for i in g[1]]

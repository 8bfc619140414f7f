"""The demo: the tutorials' VGG-16 trained on scikit-learn's digits, shown inside out.

Run it with ``netsight demo --out out`` (or ``make demo``). It

1. prints and saves the summaries of the tutorials' VGG-16 and of ResNet-18;
2. trains the VGG-16 on the bundled digits (about 4 epochs; the weights are cached
   in ``out/vgg16_digits.pth`` so a second run skips training), watched by a
   :class:`~netsight.TrainingMonitor` that writes ``out/runs/vgg16-digits/``
   (TensorBoard events, ``scalars.csv``, gradient flow, ``index.html``);
3. draws the filters of the first and the last convolution;
4. writes the feature maps of every convolution and the mean maps for one test digit;
5. measures the statistics of every ReLU over the whole test set, for the trained
   network and for the same network at initialisation, and says whether sparsity
   rises with depth (the tutorials' claim);
6. trains a small CNN (:class:`netsight.zoo.CanvasNet`) on digits pasted off-centre on
   64 x 64 canvases (:func:`netsight.datasets.digit_canvases`), where a class
   activation map can be judged, and explains 100 unseen canvases with Grad-CAM,
   Grad-CAM++, Layer-CAM and Eigen-CAM, scored against a random and a centred map
   (pointing game and deletion);
7. puts everything, training run included, on one page: ``out/report.html``
   (:func:`netsight.report`);
8. writes 16 test digits and the class names under ``out/explore/`` and prints the
   ``netsight explore`` command that opens the trained VGG-16 on them in the
   interactive explorer (it does not start it: the demo does not block).

Everything goes under ``out/``; ``out/index.txt`` lists the files. The directory is
the demo's own: a second run replaces the files of the first (it writes with
``overwrite=True``, where ``netsight cam``/``filters``/... would ask for ``--overwrite``)
and reuses the trained weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import nn

from netsight._io import atomic_write_bytes, atomic_write_text, save_figure
from netsight._progress import ProgressBar
from netsight.summary import Summary, summary
from netsight.zoo import Vgg16Net

if TYPE_CHECKING:
    from netsight.monitor import TrainingMonitor

__all__ = ["DemoConfig", "run_demo", "train_digits"]

_DEPTH = 3
_WEIGHTS = "vgg16_digits.pth"
_TRAINING = "training.json"


@dataclass(frozen=True)
class DemoConfig:
    """How the demo trains its two models.

    The VGG-16 (``epochs`` ... ``test_limit``; the defaults reach about 95 % test
    accuracy on the digits; ``train_limit``/``test_limit`` cut the dataset for a quick
    run). The CAM model, :class:`netsight.zoo.CanvasNet`, on digits pasted off-centre
    (:func:`netsight.datasets.digit_canvases`): ``canvas_train`` canvases for
    ``canvas_epochs`` epochs at peak learning rate ``canvas_lr`` (about 98 % test
    accuracy), explained on ``canvas_test`` unseen canvases.
    """

    epochs: int = 4
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    canvas_train: int = 3000
    canvas_test: int = 100
    canvas_epochs: int = 6
    canvas_lr: float = 0.1

    @classmethod
    def quick(cls) -> DemoConfig:
        """A smoke run of seconds: one epoch on 64 digits, tested on 32; the CAM
        model one epoch on 64 canvases, explained on 16."""
        return cls(
            epochs=1,
            train_limit=64,
            test_limit=32,
            canvas_train=64,
            canvas_test=16,
            canvas_epochs=1,
        )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run with a fixed seed without moving the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with _seeded(seed):
        return factory()


def _demo_summaries() -> list[tuple[str, str, Summary]]:
    """``(file stem, title, summary)`` for every model the demo shows."""
    vgg = _build(Vgg16Net)
    resnet = _build(torchvision.models.resnet18)
    return [
        (
            "vgg16",
            "The tutorials' VGG-16 (netsight.zoo.Vgg16Net), input (1, 1, 32, 32)",
            summary(vgg, input_size=(1, 1, 32, 32), depth=_DEPTH),
        ),
        (
            "resnet18",
            "torchvision ResNet-18 (random weights), input (1, 3, 224, 224)",
            summary(resnet, input_size=(1, 3, 224, 224), depth=_DEPTH),
        ),
    ]


def _limit(dataset: torch.utils.data.TensorDataset, n: int | None) -> Any:
    if n is None or n >= len(dataset):
        return dataset
    x, y = dataset.tensors
    return torch.utils.data.TensorDataset(x[:n], y[:n])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` in eval mode on ``(x, y)``, by batches of 256."""
    was_training = model.training
    model.eval()
    losses, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), 256):
            logits = model(x[start : start + 256])
            target = y[start : start + 256]
            losses += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    model.train(was_training)
    return losses / len(y), correct / len(y)


def train_digits(
    model: nn.Module,
    config: DemoConfig = DemoConfig(),
    *,
    progress: bool = True,
    monitor: TrainingMonitor | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on the digits' training split; returns one record per epoch.

    SGD with Nesterov momentum 0.9, weight decay and a one-cycle learning rate
    (peak ``config.lr``), cross-entropy loss, seeded shuffling. Each record holds
    ``epoch``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` and ``seconds``.
    The model is left in eval mode. The global RNG state is left as it was.

    With ``monitor``, every step and epoch is logged to it (test metrics as
    ``val_loss`` / ``val_acc``); the caller closes it.
    """
    from netsight.datasets import digits

    return fit(
        model,
        _limit(digits("train"), config.train_limit),
        _limit(digits("test"), config.test_limit),
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        progress=progress,
        monitor=monitor,
        label="training VGG-16 on digits",
    )


def fit(
    model: nn.Module,
    train: torch.utils.data.Dataset[Any],
    test: torch.utils.data.TensorDataset,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = True,
    monitor: TrainingMonitor | None = None,
    label: str = "training",
) -> list[dict[str, float]]:
    """Train a classifier on ``train`` (samples ``(image, label, ...)``), testing on
    ``test`` after every epoch; returns one record per epoch (see :func:`train_digits`).

    Prints one line per epoch as it ends (loss, accuracies, seconds), so a log
    written to a file shows the training as it goes.
    """
    test_x, test_y = test.tensors[:2]
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps = max(1, epochs * len(loader))
    # OneCycleLR needs a few steps per phase; a tiny run just stops early in its cycle.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(steps, 10), pct_start=0.25
    )
    history: list[dict[str, float]] = []
    if monitor is not None:
        monitor.optimizer = optimizer
    bar = ProgressBar(progress, steps, label)
    try:
        with _seeded(seed):
            for epoch in range(1, epochs + 1):
                model.train()
                start = time.perf_counter()
                seen, loss_sum, correct = 0, 0.0, 0
                for batch in loader:
                    x, y = batch[0], batch[1]
                    logits = model(x)
                    loss = nn.functional.cross_entropy(logits, y)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(f"epoch {epoch}: the loss became {value}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    if monitor is not None:
                        monitor.step(loss=loss, outputs=logits, targets=y)
                    optimizer.step()
                    schedule.step()
                    seen += len(y)
                    loss_sum += value * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    bar.advance(f"epoch {epoch}/{epochs} loss {value:.3f}")
                test_loss, test_acc = _accuracy(model, test_x, test_y)
                if monitor is not None:
                    monitor.epoch_end(val_loss=test_loss, val_acc=test_acc)
                record = {
                    "epoch": epoch,
                    "train_loss": loss_sum / seen,
                    "train_acc": correct / seen,
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "seconds": time.perf_counter() - start,
                }
                history.append(record)
                if progress:
                    print(_epoch_line(record), flush=True)
    finally:
        bar.close()
    model.eval()
    return history


def _epoch_line(h: dict[str, float]) -> str:
    return (
        f"epoch {h['epoch']:.0f}: train loss {h['train_loss']:.3f}, "
        f"train acc {h['train_acc']:.1%}, test acc {h['test_acc']:.1%} "
        f"({h['seconds']:.0f} s)"
    )


def _trained_vgg(
    out: Path, config: DemoConfig, *, retrain: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The demo's VGG-16, trained, or loaded from ``out`` when a run with the same
    config left its weights there."""
    from netsight.models import load_weights

    model = _build(Vgg16Net, config.seed)
    weights, record = out / _WEIGHTS, out / _TRAINING
    if not retrain and weights.is_file() and record.is_file():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("config") == asdict(config):
            load_weights(model, weights)  # weights_only=True
            model.eval()
            saved["cached"] = True
            return model, saved
    from netsight.datasets import digits
    from netsight.monitor import TrainingMonitor

    probe = _limit(digits("test"), config.test_limit).tensors
    with TrainingMonitor(
        model,
        out / "runs",
        "vgg16-digits",
        probe=(probe[0][:16], probe[1][:16]),
        mean=(0.5,),
        std=(0.5,),
        log_every=5,
    ) as monitor:
        history = train_digits(model, config, monitor=monitor)
    buffer = _state_bytes(model)
    atomic_write_bytes(weights, buffer)
    info = {
        "config": asdict(config),
        "history": history,
        "cached": False,
        "run": str(monitor.run_dir),
        "diagnostics": [d.to_dict() for d in monitor.diagnostics],
    }
    atomic_write_text(record, json.dumps(info, indent=2) + "\n")
    return model, info


_CANVAS_WEIGHTS = "canvasnet_digits.pth"
_CANVAS_TRAINING = "canvas_training.json"


def _canvas_settings(config: DemoConfig) -> dict[str, Any]:
    keys = ("seed", "canvas_train", "canvas_test", "canvas_epochs", "canvas_lr")
    return {k: getattr(config, k) for k in keys}


def _trained_canvas_net(
    out: Path, config: DemoConfig, *, retrain: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The CAM model, trained on digit canvases, or loaded from ``out``."""
    from netsight.datasets import digit_canvases
    from netsight.models import load_weights
    from netsight.zoo import CanvasNet

    model = _build(CanvasNet, config.seed)
    weights, record = out / _CANVAS_WEIGHTS, out / _CANVAS_TRAINING
    settings = _canvas_settings(config)
    if not retrain and weights.is_file() and record.is_file():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("config") == settings:
            load_weights(model, weights)
            model.eval()
            saved["cached"] = True
            return model, saved
    print(f"drawing {config.canvas_train} training canvases ...", flush=True)
    train = digit_canvases("train", config.canvas_train, seed=config.seed)
    test = digit_canvases("test", config.canvas_test, seed=config.seed + 1)
    history = fit(
        model,
        train,
        test,
        epochs=config.canvas_epochs,
        batch_size=32,
        lr=config.canvas_lr,
        seed=config.seed,
        label="training CanvasNet on digit canvases",
    )
    atomic_write_bytes(weights, _state_bytes(model))
    info = {"config": settings, "history": history, "cached": False}
    atomic_write_text(record, json.dumps(info, indent=2) + "\n")
    return model, info


def _state_bytes(model: nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _plot_history(history: list[dict[str, float]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["test_acc"] for h in history], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


#: Test digits written for the explorer.
EXPLORE_DIGITS = 16


def _explorer_inputs(
    out: Path, test_x: torch.Tensor, test_y: torch.Tensor
) -> tuple[list[Path], str]:
    """Write test digits as PNG files and the class names, for ``netsight explore``;
    returns the files and the command that opens the explorer on them."""
    import io
    import shlex

    from netsight.datasets import DIGITS_MEAN, DIGITS_STD
    from netsight.images import denormalize, to_pil

    folder = out / "explore" / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(EXPLORE_DIGITS, len(test_x))):
        picture = to_pil(denormalize(test_x[index], DIGITS_MEAN, DIGITS_STD))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        name = f"test-{index:02d}-digit-{int(test_y[index])}.png"
        written.append(atomic_write_bytes(folder / name, buffer.getvalue()))
    classes = out / "explore" / "classes.txt"
    written.append(atomic_write_text(classes, "".join(f"{d}\n" for d in range(10))))
    size = int(test_x.shape[-1])
    mean = ",".join(f"{v:g}" for v in DIGITS_MEAN)
    std = ",".join(f"{v:g}" for v in DIGITS_STD)
    command = shlex.join(
        [
            "netsight",
            "explore",
            "zoo:Vgg16Net",
            str(folder),
            "--weights",
            str(out / _WEIGHTS),
            "--classes",
            str(classes),
            "--size",
            str(size),
            "--mean",
            mean,
            "--std",
            std,
        ]
    )
    written.append(atomic_write_text(out / "explore" / "command.txt", command + "\n"))
    return written, command


def _section(title: str) -> None:
    print()
    print(f"== {title}")


def run_demo(
    out_dir: str | os.PathLike[str] = "out",
    *,
    config: DemoConfig | None = None,
    retrain: bool = False,
) -> list[Path]:
    """Run the whole demo (see the module docstring) and return the paths written.

    Prints the text summaries, the training progress and accuracy, the layer
    statistics and the sparsity verdict; writes HTML, JSON, PNG and text files
    under ``out_dir`` (each written whole or not at all) and lists them in
    ``out_dir/index.txt``. The global RNG state is left as it was.

    Args:
        out_dir: where the files go; created if missing. The demo's own files from an
            earlier run there are replaced (no ``overwrite`` needed).
        config: training settings (default :class:`DemoConfig`; ``DemoConfig.quick()``
            for a run of seconds).
        retrain: train even if weights from a run with the same config are cached.

    Raises:
        OSError: ``out_dir`` cannot be created or written to.
    """
    # DataLoader iterators draw a seed from the global RNG even without shuffling.
    with torch.random.fork_rng(devices=[]):
        return _run_demo(Path(out_dir), config or DemoConfig(), retrain)


def _run_demo(out: Path, config: DemoConfig, retrain: bool) -> list[Path]:
    from netsight.datasets import digits
    from netsight.features import export_features, layer_stats
    from netsight.filters import save_filters

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"demo output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    _section("1. Model summaries")
    for stem, title, s in _demo_summaries():
        print(title)
        print(s.to_text())
        print()
        written.append(atomic_write_text(out / f"{stem}.html", s.to_html(full_page=True)))
        written.append(atomic_write_text(out / f"{stem}.json", s.to_json() + "\n"))

    _section("2. Training the tutorials' VGG-16 on scikit-learn's digits")
    model, info = _trained_vgg(out, config, retrain=retrain)
    history = info["history"]
    if info["cached"]:
        print(f"(weights from an earlier run with the same settings: {out / _WEIGHTS})")
        for h in history:
            print(_epoch_line(h))
    written += [out / _WEIGHTS, out / _TRAINING]
    written.append(save_figure(_plot_history(history), out / "training.png"))
    run = info.get("run")
    if run:
        problems = info.get("diagnostics") or []
        print(
            f"training monitor run: {run} (index.html, scalars.csv, TensorBoard events; "
            f"`netsight tensorboard {Path(run).parent}`); "
            + (
                f"{len(problems)} diagnostic(s): "
                + "; ".join(sorted({d["kind"] for d in problems}))
                if problems
                else "no problems found"
            )
        )
        if (Path(run) / "index.html").is_file():
            written.append(Path(run) / "index.html")

    _section("3. Filters")
    drawn = save_filters(
        model, ["layer1.0", "layer5.6"], out / "filters", max_tiles=64, overwrite=True
    )
    written += drawn
    for entry in json.loads(drawn[-1].read_text(encoding="utf-8"))["layers"]:
        print(f"{entry['layer']}: {entry['note']}")

    test = _limit(digits("test"), config.test_limit)
    test_x, test_y = test.tensors

    _section("4. Feature maps of one test digit")
    sample = test_x[:1]
    print(f"a test image of the digit {int(test_y[0])}; every convolution's output")
    written += export_features(model, sample, out / "features", max_channels=64)

    _section("5. Layer statistics over the test set (every ReLU)")
    trained = layer_stats(model, torch.utils.data.DataLoader(test, batch_size=128))
    untrained = layer_stats(
        _build(Vgg16Net, config.seed), torch.utils.data.DataLoader(test, batch_size=128)
    )
    print(trained.to_text().rsplit("\n", 1)[0])  # the table; the verdicts follow
    print()
    print(f"trained:        {trained.trend_text()}")
    print(f"initialisation: {untrained.trend_text()}")
    stats_dir = out / "layer_stats"
    stats_dir.mkdir(exist_ok=True)
    for stem, stats in (("trained", trained), ("untrained", untrained)):
        written.append(atomic_write_text(stats_dir / f"{stem}.txt", stats.to_text() + "\n"))
        written.append(atomic_write_text(stats_dir / f"{stem}.json", stats.to_json() + "\n"))
        written.append(save_figure(stats.plot(), stats_dir / f"{stem}.png"))

    _section("6. Where a network looks: class activation maps on digits placed anywhere")
    # The VGG-16's last maps are 2 x 2 on a centred 32 x 32 digit: a map there cannot
    # be judged. A small CNN trained on digits pasted off-centre on 64 x 64 canvases
    # (the boxes known) can: its maps should land on the digit, and a centred map
    # should not.
    from netsight.datasets import digit_canvases

    canvas_net, canvas_info = _trained_canvas_net(out, config, retrain=retrain)
    if canvas_info["cached"]:
        print(f"(CanvasNet weights from an earlier run: {out / _CANVAS_WEIGHTS})")
    for h in canvas_info["history"]:
        if canvas_info["cached"]:
            print(_epoch_line(h))
    written += [out / _CANVAS_WEIGHTS, out / _CANVAS_TRAINING]
    canvases = digit_canvases("test", config.canvas_test, seed=config.seed + 1)
    canvas_x, canvas_y, canvas_boxes = canvases.tensors

    _section("7. Everything on one page")
    from netsight.datasets import DIGITS_MEAN, DIGITS_STD
    from netsight.report import CAMInputs, report

    shown = min(8, len(test_x))
    cams = CAMInputs(
        canvas_net,
        canvas_x,
        labels=canvas_y.tolist(),
        boxes=canvas_boxes,
        class_names=[str(d) for d in range(10)],
        shown=8,
        description=(
            "The VGG-16's last maps are 2 x 2 on its centred 32 x 32 digits, too coarse to "
            "judge. These maps are of netsight.zoo.CanvasNet, a small CNN trained by the "
            "demo on digits pasted at random places on 64 x 64 canvases among distractor "
            f"strokes ({config.canvas_train} training canvases, test accuracy "
            f"{canvas_info['history'][-1]['test_acc']:.1%}), explained on "
            f"{len(canvas_x)} canvases it never saw, where the digit's box is known."
        ),
    )
    page = report(
        model,
        test_x[:shown],
        labels=test_y[:shown].tolist(),
        class_names=[str(d) for d in range(10)],
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        title="The tutorials' VGG-16, trained on scikit-learn's digits",
        cam_methods=("gradcam", "gradcam++", "layercam", "eigencam"),
        cams=cams,
        faithfulness_steps=16,
        pattern_steps=64,  # over the default budget for a VGG-16: about a minute here
        statistics=trained,
        run=run if run and (Path(run) / "scalars.csv").is_file() else None,
        progress=True,
    )
    for part in page.sections:
        state = f"not shown: {part.skipped}" if part.skipped else f"{part.seconds:.1f} s"
        print(f"  {part.title}: {state}")
    written.append(page.save(out / "report.html"))
    audits = [
        {"section": f.section, "caption": f.caption, **f.audit.to_dict()}
        | {"problems": f.audit.problems()}
        for f in page.figures
    ]
    unreadable = [a for a in audits if a["problems"]]
    written.append(
        atomic_write_text(out / "report_figures.json", json.dumps(audits, indent=2) + "\n")
    )
    if unreadable:
        print(f"{len(unreadable)} figure(s) with problems, see {out / 'report_figures.json'}")
    print(f"open {out / 'report.html'} in a browser")

    _section("8. Explore it interactively")
    explore_files, command = _explorer_inputs(out, test_x, test_y)
    written.extend(explore_files)
    print("the trained VGG-16 and 16 test digits in the interactive explorer (a local server):")
    print(f"  {command}")

    index = out / "index.txt"
    rel = [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in written]
    written.append(atomic_write_text(index, "\n".join(rel) + "\n"))
    _section("Files")
    print(f"{len(written)} files under {out}; the list is in {index}")
    return written

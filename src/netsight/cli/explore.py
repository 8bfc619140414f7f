"""``netsight explore``: start the interactive explorer on a model and images
(:func:`netsight.explore.explore`) and serve it until Ctrl+C or SIGTERM."""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from pathlib import Path
from types import FrameType

from netsight.cli import common

__all__ = ["COMMAND"]

#: Suffixes read from a directory given as IMAGE.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: Images taken from the command line at most (more can be dropped on the page).
MAX_IMAGES = 64


def _port(text: str) -> int:
    if not text.strip().isdecimal() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE|DIR",
        help="image files, or directories whose images are all taken (sorted; at most "
        f"{MAX_IMAGES}); more can be dropped on the page (default: none)",
    )
    common.add_class_names_option(p)
    common.add_image_options(p, "224,224")
    p.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="N",
        help="the port to listen on; 0 takes a free one, printed with the URL (default: 0)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on; anything but this machine's own is reachable "
        "from other machines and warns (default: 127.0.0.1)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    p.add_argument(
        "--budget",
        type=common.parse_positive_int,
        metavar="MB",
        help="memory kept for layer outputs, in MB (default: a quarter of the free memory)",
    )


def image_paths(items: list[str]) -> list[str]:
    """Files as given, directories expanded to their image files (sorted)."""
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise common.UsageError(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(str(p) for p in found)
        elif not path.is_file():
            raise common.UsageError(f"{item}: no such file or directory")
        else:
            paths.append(str(path))
    if len(paths) > MAX_IMAGES:
        print(
            f"netsight explore: note: {len(paths)} images given, taking the first {MAX_IMAGES}",
            file=sys.stderr,
        )
    return paths[:MAX_IMAGES]


def run(args: argparse.Namespace) -> int:
    from netsight.explore import explore

    paths = image_paths(args.images)
    model = common.model_from_args(args, random_note="predictions and CAMs are meaningless")
    names = common.class_names_from_args(args, model)
    handle = explore(
        model,
        paths,
        class_names=names,
        mean=args.mean,
        std=args.std,
        size=common.image_size(args),
        host=args.host,
        port=args.port,
        open_browser=not args.no_browser,
        budget=args.budget << 20 if args.budget else None,
        name=args.model,
        wait=False,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        handle.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"netsight explore: {args.model} at {handle.url}", flush=True)
    print("netsight explore: Ctrl+C stops the server", file=sys.stderr, flush=True)
    if paths:
        problems = handle.wait_loaded()
        loaded = len(handle.session.images())
        print(
            f"netsight explore: {loaded} of {len(paths)} image(s) ready"
            + (f"; {len(problems)} problem(s) above" if problems else ""),
            file=sys.stderr,
            flush=True,
        )
    handle.wait()
    # The server has stopped; what is left is the interpreter's own teardown, whose
    # final garbage collections walk every object torch made (0.5-1 s here). Nothing
    # of ours waits on a finaliser, so those objects are frozen out of the last passes
    # and Ctrl+C gives the prompt back at once.
    gc.freeze()
    return 0


COMMAND = common.Command(
    name="explore",
    help="explore a model interactively in the browser (graph, layers, CAMs, patterns)",
    configure=configure,
    run=run,
    description="Start a local server with an interactive explorer of MODEL: its dataflow "
    "graph, every layer's output for each image, kernels, CAMs for any class and method, "
    "filter patterns on request. Prints the URL (with its access token) and opens it.",
)

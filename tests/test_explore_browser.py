"""The explorer's page in a real browser (Playwright driving Debian's Chromium).

One server per model and one browser for the module keep this file quick. No
request is mocked: the page talks to a live :func:`netsight.explore` server.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

from browser import WIDTH  # noqa: E402
from netsight.explore.server import ExploreWarning, explore  # noqa: E402
from netsight.zoo import Vgg16Net  # noqa: E402

EVIL = "<img src=x onerror=alert(1)>"
READY = "body[data-ready='1']"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("no chromium on PATH (Debian package chromium)")
    return found


class Server:
    """A running explorer, its model and a way to ask its API directly."""

    def __init__(self, model: nn.Module, images: torch.Tensor, **kwargs: Any) -> None:
        self.model = model
        self.ex = explore(model, images, open_browser=False, **kwargs)
        self.url = self.ex.url
        self.base = self.url.split("?")[0]

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.base + path, headers={"X-Netsight-Token": self.ex.token}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def resnet() -> Iterator[Server]:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    server = Server(model, torch.randn(2, 3, 64, 64))
    yield server
    server.ex.stop()


@pytest.fixture(scope="module")
def vgg() -> Iterator[Server]:
    torch.manual_seed(0)
    model = Vgg16Net().eval()
    names = [f"digit {k}" for k in range(10)]
    server = Server(model, torch.randn(2, 1, 32, 32), class_names=names)
    yield server
    server.ex.stop()


@pytest.fixture(scope="module")
def evil() -> Iterator[Server]:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(EVIL, nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(4, 3))
    server = Server(model.eval(), torch.randn(1, 3, 16, 16), class_names=[EVIL, "b", "c"])
    yield server
    server.ex.stop()


class Boom(nn.Module):
    """A layer that always fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom <b>here</b>")


@pytest.fixture(scope="module")
def failing() -> Iterator[Server]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Boom(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(ExploreWarning):
        server = Server(model.eval(), torch.randn(1, 3, 16, 16))
    yield server
    server.ex.stop()


class Page:
    """A page of the explorer, with what it logged."""

    def __init__(self, browser: Any, url: str, width: int = WIDTH, height: int = 800) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)
        self.page.goto(url)
        self.page.wait_for_selector(READY, timeout=60_000)

    def close(self) -> None:
        self.context.close()

    def nodes(self) -> int:
        return self.page.locator("#graph svg g.node").count()

    def click_node(self, node_id: str) -> None:
        self.page.click("#graph-fit")
        self.page.locator(f'#graph svg g.node[data-node="{node_id}"]').click()

    def wait_nodes(self, test: str) -> None:
        """Wait until the graph's node count passes ``test`` (e.g. ``"< 40"``)."""
        self.page.wait_for_function(
            f"() => document.querySelectorAll('#graph svg g.node').length {test}",
            timeout=60_000,
        )

    def idle(self) -> None:
        self.page.wait_for_function(
            "() => !document.querySelector('#status').classList.contains('busy')",
            timeout=60_000,
        )

    def grid_width(self, panel: str = "#layer-panel") -> int:
        self.page.wait_for_function(
            f"() => {{ const i = document.querySelector('{panel} img.grid');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=60_000,
        )
        return int(self.page.eval_on_selector(f"{panel} img.grid", "i => i.naturalWidth"))

    def wait_layer(self, name: str, panel: str = "#layer-panel") -> None:
        self.page.wait_for_function(
            "([panel, name]) => { const t = document.querySelector(panel + ' h2 .lname');"
            " return t && t.textContent === name; }",
            arg=[panel, name],
            timeout=60_000,
        )


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def make(server: Server, **kwargs: Any) -> Page:
        page = Page(browser, server.url, **kwargs)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()


def _first_conv(server: Server) -> tuple[str, str]:
    """A convolution's (node id, module name) in the default graph."""
    graph = server.get("api/graph")
    for node_id, info in graph["nodes"].items():
        if info["type"] == "Conv2d" and info["kind"] == "module":
            name = info["rolled"][0] if info["rolled"] else info["name"]
            return node_id, name
    raise AssertionError("no convolution node in the graph")


@pytest.mark.parametrize("which", ["vgg", "resnet"])
def test_the_page_loads_and_draws_the_graph(
    which: str, request: pytest.FixtureRequest, open_page: Any
) -> None:
    server: Server = request.getfixturevalue(which)
    page = open_page(server)
    assert page.nodes() > 10
    name = server.get("api/model")["name"]
    assert name in page.page.text_content("#model-name")
    assert "parameters" in page.page.text_content("#model-totals")
    assert page.page.locator("#images .thumb").count() >= 2
    assert page.page.locator("#images .thumb .preds li").count() >= 2
    assert page.page.locator("#layer-list tr.layer-row").count() > 10
    assert page.errors == []


@pytest.mark.parametrize("which", ["vgg", "resnet"])
def test_clicking_a_convolution_shows_its_channels(
    which: str, request: pytest.FixtureRequest, open_page: Any
) -> None:
    server: Server = request.getfixturevalue(which)
    node_id, name = _first_conv(server)
    conv = server.model.get_submodule(name)
    assert isinstance(conv, nn.Conv2d)
    page = open_page(server)
    page.click_node(node_id)
    page.wait_layer(name)
    assert page.grid_width() > 0
    count = page.page.text_content("#layer-panel .channels-count")
    assert count == f"{conv.out_channels} channels"
    assert page.page.locator(f'#graph svg g.node.selected[data-node="{node_id}"]').count() == 1
    # a click on the grid's first tile zooms channel 0, with its kernel beside it
    page.page.locator("#layer-panel img.grid").click(position={"x": 6, "y": 6})
    page.page.wait_for_selector("#channel-zoom img.zoom")
    assert "channel 0" in page.page.text_content("#channel-zoom")
    assert page.page.locator("#channel-zoom img.kernel").count() == 1
    assert page.page.locator("#layer-panel .kernels img").count() == 1
    assert page.errors == []


def test_changing_the_class_redraws_the_cam(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    page.page.wait_for_selector("#cam img")
    before = page.page.get_attribute("#cam img", "src")
    options = page.page.eval_on_selector_all(
        "#cam-class optgroup option", "os => os.map(o => o.value)"
    )
    assert len(options) >= 1000
    page.page.select_option("#cam-class", options[1])  # the second of the top 5
    page.page.wait_for_function(
        "before => { const i = document.querySelector('#cam img'); return i && i.src !== before; }",
        arg=before,
        timeout=60_000,
    )
    assert f"#{options[1]}" in page.page.text_content("#cam .cam-class-name")
    page.page.click("#layer-list tr[data-layer='layer3.1.conv2']")
    page.page.select_option("#cam-layer", "selected")
    page.page.wait_for_function(
        "() => document.querySelector('#cam').textContent.includes('layer3.1.conv2')",
        timeout=60_000,
    )
    page.page.select_option("#cam-method", "gradcam++")
    page.page.wait_for_function(
        "() => document.querySelector('#cam').textContent.includes('gradcam++')", timeout=60_000
    )
    assert page.errors == []


def test_uploading_an_image_adds_a_thumbnail_with_predictions(
    vgg: Server, open_page: Any, tmp_path: Path
) -> None:
    from PIL import Image

    picture = tmp_path / "my digit.png"
    Image.new("L", (40, 40), 30).save(picture)
    page = open_page(vgg)
    before = page.page.locator("#images .thumb").count()
    page.page.set_input_files("#upload", str(picture))
    page.page.wait_for_function(
        f"() => document.querySelectorAll('#images .thumb').length === {before + 1}",
        timeout=60_000,
    )
    thumb = page.page.locator("#images .thumb").last
    assert "my digit.png" in thumb.text_content()
    assert "digit " in thumb.locator(".preds").text_content()  # class names, not indices
    assert thumb.locator(".preds li").count() == 5
    assert "selected" in (thumb.get_attribute("class") or "")
    # not an image: the error is shown as text, nothing is added
    junk = tmp_path / "notes.png"
    junk.write_text("not a picture")
    page.page.set_input_files("#upload", str(junk))
    page.page.wait_for_selector("#images-error:not(.hidden)")
    assert "notes.png" in page.page.text_content("#images-error")
    assert page.page.locator("#images .thumb").count() == before + 1
    thumb.locator(".remove").click()
    page.page.wait_for_function(
        f"() => document.querySelectorAll('#images .thumb').length === {before}",
        timeout=60_000,
    )


def test_dropping_an_image_on_the_page_uploads_it(vgg: Server, open_page: Any) -> None:
    import base64
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(data, format="PNG")
    page = open_page(vgg)
    before = page.page.locator("#images .thumb").count()
    page.page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            document.querySelector("#layer-panel").dispatchEvent(
                new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(data.getvalue()).decode(),
    )
    page.page.wait_for_selector("#images .thumb.selected:has-text('dropped.png')")
    assert page.page.locator("#images .thumb").count() == before + 1
    page.page.locator("#images .thumb.selected .remove").click()
    page.page.wait_for_function(
        f"() => document.querySelectorAll('#images .thumb').length === {before}"
    )
    assert page.errors == []


def test_collapsing_and_expanding_a_module(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    full = page.nodes()
    node_id = resnet.get("api/graph")["layers"]["layer2.0.conv1"]
    page.click_node(node_id)
    page.page.click("#node-actions button:text-is('collapse layer2')")
    page.wait_nodes(f"< {full}")
    fewer = page.nodes()
    assert "collapsed layer2" in page.page.text_content("#graph-state")
    collapsed = resnet.get("api/graph?collapsed=layer2")
    assert fewer == len(collapsed["nodes"])
    page.click_node(collapsed["layers"]["layer2"])
    page.page.click("#node-actions button.expand")
    page.wait_nodes(f"=== {full}")
    assert page.errors == []


def test_depth_expand_and_reset(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    full = page.nodes()
    page.page.fill("#graph-depth", "1")
    page.page.press("#graph-depth", "Enter")
    page.wait_nodes(f"< {full}")
    shallow = page.nodes()
    graph = resnet.get("api/graph?depth=1")
    assert shallow == len(graph["nodes"])
    layer3 = graph["layers"]["layer3"]
    assert graph["nodes"][layer3]["expandable"]
    assert "expandable" in (page.page.get_attribute(f'g.node[data-node="{layer3}"]', "class") or "")
    page.click_node(layer3)
    page.wait_layer("layer3")
    page.page.click("#node-actions button.expand")
    page.wait_nodes(f"> {shallow}")
    assert "expanded layer3" in page.page.text_content("#graph-state")
    page.page.click("#graph-state button.reset")
    page.wait_nodes(f"=== {shallow}")
    assert page.page.locator("#graph-state .chip").count() == 0
    assert page.errors == []


def test_unrolling_a_rolled_run_of_blocks(resnet: Server, open_page: Any) -> None:
    graph = resnet.get("api/graph")
    rolled = next(n for n, info in graph["nodes"].items() if len(info["rolled"]) > 1)
    page = open_page(resnet)
    full = page.nodes()
    page.click_node(rolled)
    assert page.page.locator("#block-select option").count() == len(
        graph["nodes"][rolled]["rolled"]
    )
    page.page.click("#node-actions button.unroll")
    page.wait_nodes(f"> {full}")
    assert page.errors == []


def test_module_names_are_text_never_markup(evil: Server, open_page: Any) -> None:
    page = open_page(evil)
    assert page.page.locator("#layer-list").get_by_text(EVIL, exact=True).count() == 1
    page.page.locator("#layer-list tr.layer-row").first.click()
    page.wait_layer(EVIL)
    page.grid_width()
    page.page.fill("#search", "onerror")
    page.page.wait_for_selector("#search-results li.match")
    assert EVIL in page.page.text_content("#search-results")
    page.page.wait_for_selector("#cam img")
    assert EVIL in page.page.text_content("#cam-class")
    # the only images are the page's own pictures: no <img src=x> was made
    assert page.page.locator("img[src='x']").count() == 0
    page.page.wait_for_timeout(300)
    assert page.dialogs == []
    assert page.errors == []


def test_saving_the_report_and_a_picture(evil: Server, open_page: Any) -> None:
    """Downloads carry the token (fetched, saved from a blob) and safe file names."""
    page = open_page(evil)
    with page.page.expect_download(timeout=60_000) as report:
        page.page.click("#save-report")
    assert report.value.suggested_filename == "netsight-report-Sequential.html"
    assert "<html" in Path(report.value.path()).read_text(encoding="utf-8").lower()
    page.page.locator("#layer-list tr.layer-row").first.click()
    page.grid_width()
    with page.page.expect_download() as png:
        page.page.click("#layer-panel .grid-controls button.png")
    name = png.value.suggested_filename
    assert name.endswith(".png") and "img_src_x_onerror_alert_1" in name
    assert not set(name) & set("<>()= /")
    assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []


def test_wheel_zooms_and_drag_pans_the_graph(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)

    def view() -> list[float]:
        box = page.page.get_attribute("#graph svg", "viewBox") or ""
        return [float(v) for v in box.split()]

    box = page.page.locator("#graph").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    start = view()
    page.page.mouse.move(x, y)
    page.page.mouse.wheel(0, -300)
    page.page.wait_for_function(
        f"() => parseFloat(document.querySelector('#graph svg').getAttribute('viewBox')"
        f".split(' ')[2]) < {start[2] * 0.9}"
    )
    zoomed = view()
    page.page.mouse.down()
    page.page.mouse.move(x + 60, y + 80, steps=5)
    page.page.mouse.up()
    panned = view()
    assert panned[2] == pytest.approx(zoomed[2])
    assert panned[0] < zoomed[0] and panned[1] < zoomed[1]
    page.page.click("#graph-fit")
    fitted = view()
    full = resnet.get("api/graph")["svg"]
    height = float(full.split('viewBox="')[1].split('"')[0].split()[3])
    assert fitted[3] >= height


def test_a_model_that_fails_shows_where(failing: Server, open_page: Any) -> None:
    page = open_page(failing)
    page.page.wait_for_selector("#graph-error:not(.hidden)")
    assert "boom <b>here</b>" in page.page.text_content("#graph-error")
    assert page.page.locator("#graph svg g.node.failed").count() == 1
    assert page.page.locator("#graph b").count() == 0
    assert "boom" in page.page.text_content("#cam-error")
    assert "boom" in page.page.text_content("#images .thumb .error")
    # the layers before the failure still show their maps
    graph = failing.get("api/graph")
    conv = next(n for n, info in graph["nodes"].items() if info["type"] == "Conv2d")
    page.click_node(conv)
    page.wait_layer("0")
    assert page.grid_width() > 0
    assert page.errors == []


def test_readable_two_column_layout(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    page.page.click("#layer-list tr[data-layer='layer1.0.conv1']")
    page.grid_width()
    left = page.page.locator("#left").bounding_box()
    right = page.page.locator("#right").bounding_box()
    assert left is not None and right is not None
    assert left["x"] + left["width"] <= right["x"]
    assert left["width"] >= 400 and right["width"] >= 600
    smallest = page.page.evaluate(
        """() => {
            let min = 100, sample = "";
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (walker.nextNode()) {
                const node = walker.currentNode, el = node.parentElement;
                if (!node.textContent.trim() || !el || el.closest("svg, option")) continue;
                if (el.getClientRects().length === 0) continue;
                const size = parseFloat(getComputedStyle(el).fontSize);
                if (size < min) { min = size; sample = node.textContent.trim().slice(0, 30); }
            }
            return [min, sample];
        }"""
    )
    assert smallest[0] >= 12, smallest


def test_a_newer_request_replaces_an_older_one(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    for name in ("layer4.0.conv1", "layer2.1.conv2", "layer3.0.downsample.0", "layer1.1.conv1"):
        page.page.click(f"#layer-list tr[data-layer='{name}']")
    page.wait_layer("layer1.1.conv1")
    page.idle()
    assert page.page.text_content("#layer-panel .channels-count") == "64 channels"
    assert page.page.text_content("#status-text") == "ready"
    assert page.errors == []


def test_starting_without_images(open_page: Any, tmp_path: Path) -> None:
    from PIL import Image

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    server = Server(model.eval(), torch.empty(0, 3, 24, 24), size=(24, 24))
    try:
        page = open_page(server)
        assert page.nodes() >= 5
        assert "no images yet" in page.page.text_content("#images")
        page.page.click("#layer-list tr[data-layer='0']")
        page.page.wait_for_selector("#layer-panel .no-image")
        picture = tmp_path / "red.png"
        Image.new("RGB", (24, 24), (255, 0, 0)).save(picture)
        page.page.set_input_files("#upload", str(picture))
        page.page.wait_for_selector("#images .thumb.selected")
        assert page.grid_width() > 0
        assert page.page.text_content("#layer-panel .channels-count") == "6 channels"
        page.page.wait_for_selector("#cam img")
        assert page.errors == []
    finally:
        server.ex.stop()


class Slow(nn.Module):
    """A pause in the forward: images given to explore() arrive after the page."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.4)
        return x


def test_images_still_loading_arrive_on_the_page(open_page: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        Slow(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    server = Server(model.eval(), torch.randn(3, 3, 20, 20), wait=False)
    try:
        page = open_page(server)
        page.page.wait_for_function(
            "() => document.querySelectorAll('#images .thumb').length === 3", timeout=60_000
        )
        page.page.wait_for_selector("#images .thumb.selected")
        page.page.wait_for_selector("#cam img", timeout=60_000)
        assert page.page.locator("#images-pending").count() == 0
        page.page.click("#layer-list tr[data-layer='0']")
        assert page.grid_width() > 0
        assert page.errors == []
    finally:
        server.ex.stop()


def test_two_pages_at_once(resnet: Server, open_page: Any) -> None:
    first = open_page(resnet)
    second = open_page(resnet)
    first.page.click("#layer-list tr[data-layer='layer3.0.conv2']")
    second.page.click("#layer-list tr[data-layer='layer4.1.conv1']")
    first.wait_layer("layer3.0.conv2")
    second.wait_layer("layer4.1.conv1")
    assert first.grid_width() > 0 and second.grid_width() > 0
    assert first.page.text_content("#layer-panel .channels-count") == "256 channels"
    assert second.page.text_content("#layer-panel .channels-count") == "512 channels"
    assert first.errors == [] and second.errors == []


def test_search_finds_a_layer(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    page.page.fill("#search", "LAYER3.1.CONV")
    page.page.wait_for_selector("#search-results li.match")
    found = page.page.locator("#search-results li.match").all_text_contents()
    assert any(t.startswith("layer3.1.conv1") for t in found)
    assert all("layer3.1.conv" in t for t in found)
    page.page.locator("#search-results li.match").first.click()
    page.wait_layer("layer3.1.conv1")
    row = page.page.locator("#layer-list tr.selected")
    assert row.get_attribute("data-layer") == "layer3.1.conv1"
    listed = page.page.locator("#layer-list").bounding_box()
    shown = row.bounding_box()
    assert listed is not None and shown is not None
    assert listed["y"] <= shown["y"] <= listed["y"] + listed["height"] - shown["height"]
    node_id = resnet.get("api/graph")["layers"]["layer3.1.conv1"]
    assert page.page.locator(f'#graph svg g.node.selected[data-node="{node_id}"]').count() == 1
    # the selected box is centred in the graph's box
    box = page.page.locator("#graph").bounding_box()
    node = page.page.locator(f'#graph svg g.node[data-node="{node_id}"]').bounding_box()
    assert box is not None and node is not None
    assert abs(node["y"] + node["height"] / 2 - (box["y"] + box["height"] / 2)) < 20


def test_compare_two_images_at_one_layer(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    page.page.click("#layer-list tr[data-layer='conv1']")
    page.wait_layer("conv1")
    page.page.check("#compare-toggle")
    page.wait_layer("conv1", "#layer-panel-b")
    assert page.grid_width("#layer-panel-b") > 0
    assert "image 2" in page.page.text_content("#layer-panel-b dl.facts")
    page.page.select_option("#compare-mode", "layers")
    page.page.select_option("#compare-layer", "layer1.0.conv2")
    page.wait_layer("layer1.0.conv2", "#layer-panel-b")
    assert page.errors == []


def test_patterns_stream_progress_and_a_grid(resnet: Server, open_page: Any) -> None:
    page = open_page(resnet)
    page.page.click("#layer-list tr[data-layer='conv1']")
    page.wait_layer("conv1")
    page.page.fill("#patterns-channels", "0-1")
    page.page.fill("#patterns-steps", "3")
    page.page.click("#patterns-run")
    page.page.wait_for_selector("#patterns img", timeout=60_000)
    assert page.page.eval_on_selector("#patterns-progress", "p => p.value === p.max && p.max > 1")
    assert page.errors == []


@pytest.fixture(scope="module")
def canvas() -> Iterator[Server]:
    """The demo's CAM model (netsight.zoo.CanvasNet) trained for seconds on digit
    canvases, explored on six canvases it never saw: predictions and CAMs that mean
    something, for the README's picture."""
    from netsight.datasets import digit_canvases
    from netsight.demo import fit
    from netsight.zoo import CanvasNet

    torch.manual_seed(0)
    model = CanvasNet()
    train = digit_canvases("train", 3000, seed=0)
    test = digit_canvases("test", 6, seed=1)
    fit(model, train, test, epochs=6, lr=0.1, progress=False, label="canvas")  # as the demo
    model.eval()
    server = Server(
        model,
        test.tensors[0],
        class_names=[f"digit {d}" for d in range(10)],
        mean=(0.0,),
        std=(1.0,),
        image_names=[f"canvas {k}: a {int(d)}" for k, d in enumerate(test.tensors[1])],
    )
    server.labels = test.tensors[1].tolist()  # type: ignore[attr-defined]
    yield server
    server.ex.stop()


def test_screenshot_for_the_docs(canvas: Server, open_page: Any, tmp_path: Path) -> None:
    """A 1280 x 800 picture of the page with a layer and a CAM of a trained model;
    written to docs/explore.png when NETSIGHT_DOCS_SHOTS=1."""
    from PIL import Image

    images = canvas.get("api/images")
    labels = canvas.labels  # type: ignore[attr-defined]
    right = sum(i["predictions"][0]["index"] == d for i, d in zip(images, labels, strict=True))
    assert right >= 4, f"the canvas model should be trained: {right} of 6 right"
    page = open_page(canvas, width=WIDTH, height=800)
    page.page.fill("#search", "features.11")
    page.page.locator("#search-results li.match").first.click()
    page.wait_layer("features.11")
    page.grid_width()
    page.page.wait_for_selector("#cam img")
    page.idle()
    target = (
        DOCS / "explore.png" if os.environ.get("NETSIGHT_DOCS_SHOTS") == "1" else tmp_path / "e.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(target))
    with Image.open(target) as shot:
        assert shot.size == (WIDTH, 800)
        grey = shot.convert("L")
        dark = sum(n for n, v in grey.getcolors(256) or [] if v < 128)
        assert dark > 0.005 * shot.size[0] * shot.size[1]
    assert page.errors == []

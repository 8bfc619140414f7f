"""netsight.live.Session: the library behind the explorer, checked against plain
PyTorch (a forward hook, a softmax) and netsight's own CAM classes."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.live import ActivationCache, Session, SessionError


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class Broken(nn.Module):
    """Fails in its second layer: the head expects 5 features, the conv gives 784."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


def _reference(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The layer's output by a plain forward hook."""
    got: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, a, o: got.append(o.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return got[0]


def test_predictions_are_the_softmax_of_the_models_output(resnet: nn.Module, x: torch.Tensor):
    session = Session(resnet, class_names=[f"c{i}" for i in range(10)])
    info = session.add_image(x, name="noise")
    with torch.no_grad():
        probs = torch.softmax(resnet(x)[0], 0)
    values, indices = torch.topk(probs, 5)
    assert [p["index"] for p in info["predictions"]] == indices.tolist()
    assert [p["name"] for p in info["predictions"]] == [f"c{i}" for i in indices.tolist()]
    got = torch.tensor([p["probability"] for p in info["predictions"]])
    torch.testing.assert_close(got, values, rtol=1e-4, atol=1e-5)
    assert info["picture"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("layer", ["conv1", "layer2.1", "layer4.1.conv2", "layer1.0.relu"])
def test_kept_activation_equals_a_plain_forward_hook(resnet: nn.Module, x: torch.Tensor, layer):
    session = Session(resnet)
    session.add_image(x)
    forwards = session.forwards
    kept = session.activation("i1", layer)
    assert session.forwards == forwards, "a kept layer must not cost a forward"
    torch.testing.assert_close(kept, _reference(resnet, x, layer), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", ["layer1.0.bn1", "layer1.0.bn2"])
def test_an_output_changed_in_place_later_is_not_kept_but_made_again(resnet, x, layer):
    # bn1 is followed by ReLU(inplace=True) and bn2 by `out += identity`: after the
    # forward the tensor they returned holds something else
    session = Session(resnet)
    session.add_image(x)
    assert session.changed_in_place > 0
    forwards = session.forwards
    got = session.activation("i1", layer)
    assert session.forwards == forwards + 1
    reference = _reference(resnet, x, layer)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)
    assert (got < 0).any(), "a BatchNorm's own output has negative values"


def test_a_layer_not_kept_costs_one_stopped_forward(resnet: nn.Module, x: torch.Tensor):
    session = Session(resnet, budget=0)  # keeps nothing
    session.add_image(x)
    assert len(session.cache) == 0
    for k, layer in enumerate(["layer3.0.conv1", "layer1.1.relu"], start=1):
        before = session.forwards
        got = session.activation("i1", layer)
        assert session.forwards == before + 1
        torch.testing.assert_close(got, _reference(resnet, x, layer), rtol=1e-4, atol=1e-5)
        assert k


def test_the_cache_stays_within_its_budget_least_recently_used_out():
    cache = ActivationCache(budget=3 * 400)
    tensors = {k: torch.zeros(100) for k in "abcd"}  # 400 bytes each
    for key in "abc":
        cache.put(("i", key, 0), tensors[key])
    assert cache.get(("i", "a", 0)) is not None  # a is now the most recent
    cache.put(("i", "d", 0), tensors["d"])
    assert ("i", "b", 0) not in cache and ("i", "a", 0) in cache
    assert cache.bytes <= cache.budget
    cache.put(("i", "big", 0), torch.zeros(1000))  # larger than the budget: not kept
    assert ("i", "big", 0) not in cache and cache.bytes <= cache.budget


def test_layer_answer_has_a_grid_of_every_channel_and_statistics(resnet, x):
    session = Session(resnet)
    session.add_image(x)
    answer = session.layer("i1", "layer1.0.conv1")
    grid = answer["grid"]
    assert grid["total"] == resnet.layer1[0].conv1.out_channels == len(grid["channels"])
    reference = _reference(resnet, x, "layer1.0.conv1")
    assert answer["stats"]["sparsity"] == pytest.approx(float((reference == 0).float().mean()))
    assert answer["stats"]["dead_channels"] == int((reference[0].amax(dim=(1, 2)) <= 0).sum())
    assert answer["kernels"]["picture"].startswith("data:image/png")
    png = Image.open(io.BytesIO(_decode(grid["picture"])))
    assert list(png.size[::-1]) == grid["size"]
    assert answer["row"]["params"] == sum(p.numel() for p in resnet.layer1[0].conv1.parameters())
    head = session.layer("i1", "fc")
    assert head["grid"] is None and "no spatial maps" in head["note"]


def test_channel_zoom_reports_the_maps_range(resnet, x):
    session = Session(resnet)
    session.add_image(x)
    answer = session.channel("i1", "conv1", 5)
    reference = _reference(resnet, x, "conv1")[0, 5]
    assert answer["min"] == pytest.approx(float(reference.min()), abs=1e-5)
    assert answer["max"] == pytest.approx(float(reference.max()), abs=1e-5)
    assert answer["kernel"]["how"] == "RGB, grey at 0"
    with pytest.raises(SessionError, match="64 channels"):
        session.channel("i1", "conv1", 64)


@pytest.mark.parity
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_cam_from_the_kept_graph_equals_the_cam_class(resnet, x, method):
    session = Session(resnet)
    session.add_image(x)
    explainer = netsight.cam.METHODS[method]
    for layer in ("layer4", "layer2.1"):
        for target in (0, 7):
            found = session.cam_map("i1", layer, target, method)
            assert found.reused_graph, "a gradient CAM must reuse the kept graph"
            expected = explainer(resnet, target_layers=layer)(x, target)[0]
            torch.testing.assert_close(found.map, expected, rtol=1e-3, atol=1e-4)
    answer = session.cam("i1", "layer4", 3, method)
    assert answer["reused_graph"] and answer["picture"].startswith("data:image/png")


def test_cam_without_a_kept_graph_runs_the_method(resnet, x):
    session = Session(resnet, budget=0)
    session.add_image(x)
    answer = session.cam("i1", "layer4", 3, "gradcam")
    assert not answer["reused_graph"]
    assert session.cam("i1", "layer4", 3, "eigencam")["method"] == "eigencam"


def test_the_model_is_left_as_it_came(x):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    session = Session(model)
    session.add_image(x)
    session.layer("i1", "layer2.0.conv1")
    session.channel("i1", "conv1", 1)
    session.cam("i1", "layer3", 2, "gradcam")
    session.cam("i1", "layer3", 2, "scorecam")
    with pytest.raises(SessionError):
        session.layer("i1", "no.such.layer")
    session.patterns("layer1.0.conv1", [0, 1], steps=2, size=32)
    session.graph()
    assert_unchanged(model, before)


def test_a_forward_that_fails_is_reported_with_the_layer():
    session = Session(Broken())
    info = session.add_image(torch.randn(1, 3, 16, 16))
    assert info["error"] and "head" in info["error"]
    assert info["predictions"] == []
    assert netsight.count_hooks(session.model) == 0
    assert session.graph()["svg"].lstrip().startswith(("<?xml", "<svg", "<!--"))


def test_uploaded_bytes_are_decoded_like_files(resnet, tmp_path, monkeypatch):
    session = Session(resnet, size=(64, 64))
    buffer = io.BytesIO()
    Image.new("RGB", (80, 50), (200, 30, 30)).save(buffer, format="PNG")
    info = session.add_image(buffer.getvalue(), name="red.png")
    assert info["shape"] == [1, 3, 64, 64] and len(info["predictions"]) == 5
    with pytest.raises(ValueError, match="not an image"):
        session.add_image(b"GIF89a but not really", name="bad.gif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 80x50 is over twice that
    with pytest.raises(ValueError, match="too large to decode safely"):
        session.add_image(buffer.getvalue(), name="bomb.png")


def test_patterns_report_progress(resnet):
    session = Session(resnet)
    seen: list[tuple[int, int]] = []
    answer = session.patterns(
        "layer1.0.conv1", [0, 3], steps=4, size=32, on_step=lambda d, t: seen.append((d, t))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert answer["channels"] == [0, 3]


def _decode(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


def test_graph_expands_collapses_and_unrolls(resnet, x):
    session = Session(resnet)
    session.add_image(x)
    default = session.graph()
    assert default["layers"]["layer1.1.conv1"] in default["nodes"] or default["clusters"]
    collapsed = session.graph(collapsed=["layer1"])
    layer1 = [n for n in collapsed["nodes"].values() if n["name"] == "layer1"]
    assert layer1 and layer1[0]["expandable"]
    unrolled = session.graph(unrolled=["layer1"])
    names = {n["name"] for n in unrolled["nodes"].values()}
    assert {"layer1.0.conv1", "layer1.1.conv1"} <= names
    with pytest.raises(ValueError, match=r"no\.such"):
        session.graph(expanded=["no.such"])


def test_a_failing_model_draws_its_graph_up_to_the_failing_module():
    session = Session(Broken())
    session.add_image(torch.randn(1, 3, 16, 16))
    graph = session.graph()
    assert graph["error"] and "head" in graph["error"]
    failed = [n["name"] for n in graph["nodes"].values() if n["failed"]]
    assert failed == ["head"]
    assert "conv" in {n["name"] for n in graph["nodes"].values()}


def test_transformer_tokens_are_shown_as_their_patch_grid():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64)
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    before = snapshot(model)
    session = Session(model)
    session.add_image(image)
    answer = session.layer("i1", "blocks.2")
    assert answer["grid"]["total"] == 192  # channels of the tokens
    assert answer["grid"]["tile"][0] == answer["grid"]["tile"][1]  # a 4 x 4 patch grid
    assert "4 x 4 patch grid after the first (class) token" in answer["note"]
    cam = session.cam("i1", "blocks.5", 3)
    assert cam["reused_graph"]
    assert_unchanged(model, before)


def test_a_1d_convolution_is_shown_one_row_per_channel():
    class Rows(nn.Module):  # an image's rows as the channels of a 1-d convolution
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(8, 5, 3)
            self.head = nn.Linear(5 * 38, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(x[:, 0])).flatten(1))

    session = Session(Rows())
    session.add_image(torch.randn(1, 1, 8, 40))
    answer = session.layer("i1", "conv")
    assert answer["grid"]["total"] == 5
    assert "one row per channel" in answer["note"]
    tile_h, tile_w = answer["grid"]["tile"]
    assert tile_w == 38 * tile_h and tile_w <= 256


@pytest.mark.slow
def test_models_we_did_not_write_are_explored_and_left_as_they_came():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    ).eval()
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    vit = transformers.ViTForImageClassification(config).eval()
    cases = [
        (detector, torch.rand(1, 3, 128, 128), "backbone.body.3"),
        (vit, torch.randn(1, 3, 32, 32), "vit.layers.1.mlp"),
    ]
    for model, image, layer in cases:
        before = snapshot(model)
        session = Session(model)
        info = session.add_image(image)
        assert info["error"] is None, info["error"]
        answer = session.layer("i1", layer)
        assert answer["grid"] is not None and answer["stats"]["numel"] > 0
        graph = session.graph()
        assert graph["error"] is None and len(graph["nodes"]) > 5
        assert_unchanged(model, before)


@pytest.mark.parity
def test_cam_at_a_module_called_twice_uses_its_last_call_as_the_cam_classes_do(x):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.shared = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.shared(torch.relu(self.shared(torch.relu(self.stem(x)))))
            return self.head(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Twice().eval()
    session = Session(model)
    session.add_image(x)
    found = session.cam_map("i1", "shared", 2, "gradcam")
    assert found.reused_graph
    expected = netsight.GradCAM(model, target_layers="shared")(x, 2)[0]
    torch.testing.assert_close(found.map, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")  # random weights: flat maps happen
def test_one_backward_serves_every_later_layer_of_the_same_class(resnet, x):
    session = Session(resnet)
    session.add_image(x)
    session.cam_map("i1", "layer2.0", 4)
    assert session.backwards == 1
    for layer in ("layer3", "layer4.1.conv2", "layer4"):  # after layer2.0: no backward
        found = session.cam_map("i1", layer, 4)
        expected = netsight.GradCAM(resnet, target_layers=layer)(x, 4)[0]
        torch.testing.assert_close(found.map, expected, rtol=1e-3, atol=1e-4)
    assert session.backwards == 1
    session.cam_map("i1", "layer1", 4)  # before it: one more
    session.cam_map("i1", "layer4", 5)  # another class: one more
    assert session.backwards == 3


def test_methods_too_slow_for_a_click_are_not_offered(resnet, x):
    """SS-CAM and IS-CAM run num_samples masked forwards per channel (tens of
    thousands on a ResNet): the explorer lists and takes only interactive methods."""
    session = Session(resnet)
    session.add_image(x)
    offered = session.model_info()["methods"]
    assert "gradcam" in offered and "scorecam" in offered
    assert "sscam" not in offered and "iscam" not in offered
    with pytest.raises(SessionError, match="too slow for a click"):
        session.cam_map("i1", "layer4", 0, "sscam")

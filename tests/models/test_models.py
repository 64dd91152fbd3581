"""vtreid.models: torchvision-compatible backbones, heads, and the five methods' networks."""
import pytest
import torch
import torch.nn.functional as F

from vtreid.models import (CSBN, GeM, METHODS, ModalityResNet, NonLocal, alexnet, build_model, load_pretrained,
                           resnet18, resnet50)

from support import without_onednn

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_keys(bottleneck: bool, blocks) -> list[str]:
    """torchvision's ResNet state-dict keys, written out from its architecture (not from our modules)."""
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN]
    convs = 3 if bottleneck else 2
    for layer, count in enumerate(blocks, start=1):
        for b in range(count):
            prefix = f"layer{layer}.{b}"
            for c in range(1, convs + 1):
                keys += [f"{prefix}.conv{c}.weight"] + [f"{prefix}.bn{c}.{k}" for k in BN]
            if b == 0 and (bottleneck or layer > 1):
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{k}" for k in BN]
    return keys + ["fc.weight", "fc.bias"]


ALEXNET_KEYS = [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")] + \
               [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]


def test_state_dict_keys_match_torchvision():
    assert sorted(resnet50().state_dict()) == sorted(torchvision_resnet_keys(True, (3, 4, 6, 3)))
    assert sorted(resnet18().state_dict()) == sorted(torchvision_resnet_keys(False, (2, 2, 2, 2)))
    assert sorted(alexnet().state_dict()) == sorted(ALEXNET_KEYS)
    sd = resnet50().state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["fc.weight"].shape == (1000, 2048)
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert alexnet().state_dict()["classifier.1.weight"].shape == (4096, 9216)


def test_last_stride_one_doubles_the_final_map():
    x = torch.randn(1, 3, 128, 64)
    for make in (resnet18, resnet50):
        assert make(2).eval().features(x).shape[-2:] == (4, 2)
        assert make(1).eval().features(x).shape[-2:] == (8, 4)
    with pytest.raises(ValueError, match="last_stride"):
        resnet18(3)


def test_checkpoint_round_trip_and_load_errors(tmp_path):
    torch.manual_seed(0)
    source = resnet18().eval()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    fresh = resnet18().eval()
    missing, unexpected = load_pretrained(fresh, path, ignore=())
    assert missing == [] and unexpected == []
    x = torch.randn(2, 3, 64, 32)
    assert torch.equal(source(x), fresh(x))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained(resnet18(), tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth is not a PyTorch checkpoint"):
        load_pretrained(resnet18(), tmp_path / "junk.pth")
    torch.save(alexnet().state_dict(), tmp_path / "alex.pth")
    with pytest.raises(ValueError, match="alex.pth shares no parameter name"):
        load_pretrained(resnet18(), tmp_path / "alex.pth")
    torch.save(resnet18().state_dict(), tmp_path / "r18b.pth")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_pretrained(resnet50(), tmp_path / "r18b.pth")


def test_pretrained_option_loads_every_stream(tmp_path):
    source = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("hc", 5, arch="resnet18", pretrained=path)
    for stream in model.backbone.specific_stages:
        assert torch.equal(stream[0].conv1.weight, source.conv1.weight)


def grads_by_group(model, visible, infrared):
    model.zero_grad()
    out = model(visible, infrared)
    sum(o.float().sum() for o in out.values() if isinstance(o, torch.Tensor)).backward()
    return out


@pytest.mark.parametrize("specific", [0, 2, 5])
def test_specific_parts_are_separate_and_shared_parts_shared(specific):
    model = ModalityResNet("resnet18", specific)
    visible = torch.randn(2, 3, 64, 32)
    empty = torch.zeros(0, 3, 64, 32)
    out, _ = model(visible, empty)
    out.sum().backward()
    if specific:
        vis_params = set(map(id, model.specific_stages[0].parameters()))
        ir_params = set(map(id, model.specific_stages[1].parameters()))
        assert vis_params and not vis_params & ir_params
        assert all(p.grad is not None for p in model.specific_stages[0].parameters() if p.requires_grad)
        assert all(p.grad is None for p in model.specific_stages[1].parameters())
    if specific < 5:
        shared = list(model.shared_stages.parameters())
        assert shared and all(p.grad is not None for p in shared)
        model.zero_grad()
        out, _ = model(empty, visible)
        out.sum().backward()
        assert all(p.grad is not None for p in shared)  # the infrared batch trains the same shared weights
    assert len(list(model.specific_stages.parameters()) if specific else []) + len(
        list(model.shared_stages.parameters())) == len(list(model.parameters()))


SIZES = {"hsme": (128, 64), "dhsme": (128, 64)}  # AlexNet needs at least ~127 px


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_networks_train_and_eval(method):
    torch.manual_seed(0)
    options = {} if method in ("hsme", "dhsme") else {"arch": "resnet18"}
    model = build_model(method, 7, **options)
    h, w = SIZES.get(method, (96, 48))
    visible, infrared = torch.randn(2, 3, h, w), torch.randn(2, 3, h, w)
    out = grads_by_group(model, visible, infrared)
    expected = {
        "sphere": {"embedding": (4, 1024)},
        "hsme": {"embedding": (4, 1024)},
        "dhsme": {"embedding": (4, 1024)},
        "hc": {"stripes": (6, 4, 512), "logits": (6, 4, 7)},
        "lccrf": {"pooled": (4, 512), "feature": (4, 512), "logits": (4, 7), "parts": (6, 4, 512),
                  "specific": (4, 64, 24, 12)},
        "expat": {"pooled": (4, 512), "feature": (4, 512), "logits": (4, 7)},
    }[method]
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    trained = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trained) > len(trained) // 2
    model.eval()
    with torch.no_grad():
        first, second = model(visible, infrared), model(visible, infrared)
        only_visible = model(visible, torch.zeros(0, 3, h, w))
        with pytest.raises(ValueError, match="visible and infrared are both empty"):   # crashed deep in two-stream nets
            model(torch.zeros(0, 3, h, w), torch.zeros(0, 3, h, w))
    assert torch.equal(first, second)
    assert first.shape[0] == 4 and torch.allclose(only_visible, first[:2], atol=1e-5)
    if method in ("sphere", "hsme", "dhsme"):
        torch.testing.assert_close(first.norm(dim=1), torch.ones(4))
    if method == "hc":
        assert first.shape == (4, 3072)


def test_channels_last_and_autocast():
    model = build_model("expat", 5, arch="resnet18").to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 64, 32).to(memory_format=torch.channels_last)
    with without_onednn():   # oneDNN's bf16 kernels returned NaN on AMX CPUs, depending on the test order
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, x)
        assert out.shape == (4, 512) and out.isfinite().all()
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, x)
        out["logits"].float().sum().backward()


def test_dhsme_decorrelated_classifier_is_orthogonal_and_frozen():
    model = build_model("dhsme", 6)
    model.decorrelate_classifier()
    w = model.classifier.weight.double()
    gram = w @ w.T
    torch.testing.assert_close(gram, torch.diag(gram.diagonal()), atol=1e-6, rtol=0)
    assert not model.classifier.weight.requires_grad


def test_blocks():
    block = NonLocal(64).eval()
    x = torch.randn(2, 64, 6, 3)
    assert block.g.out_channels == 32                  # C / 2, not AGW's 1
    assert torch.equal(block(x), x)                    # zero-initialised residual: identity at start
    assert torch.allclose(GeM(1.0)(x.abs()), F.adaptive_avg_pool2d(x.abs(), 1), atol=1e-6)
    learnable = GeM(3.0, learnable=True)
    assert isinstance(learnable.p, torch.nn.Parameter)
    csbn = CSBN(8)
    assert (csbn.bias == 0).all() and not csbn.bias.requires_grad


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method must be one of"):
        build_model("agw", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("expat", 0, arch="resnet18")
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model("expat", 3, arch="vgg16")


@pytest.mark.parametrize("method", ["sphere", "hc", "lccrf", "expat"])
def test_resnet50_networks_forward_backward(method):
    model = build_model(method, 4)  # the papers' ResNet-50, on a small input to spare a 2-core machine
    x = torch.randn(2, 3, 64, 32)
    out = grads_by_group(model, x, x)
    width = {"sphere": 1024, "hc": 512, "lccrf": 2048, "expat": 2048}[method]
    first = next(iter(out.values()))
    assert first.shape[-1] == width and all(v.isfinite().all() for v in out.values())
    if method == "lccrf":
        blocks = model.backbone.shared_stages
        assert [len(stage.non_local) for stage in blocks if hasattr(stage, "non_local")] == [2, 3]
        assert blocks[0].non_local[0].g.in_channels == 512 and blocks[1].non_local[0].g.in_channels == 1024

"""python -m vtreid.export: every method's embedding network in onnxruntime matches PyTorch within 1e-4."""
import pytest
import torch

from vtreid import export
from vtreid.extract import load_checkpoint
from vtreid.methods import METHODS, VARIANTS, get_method
from vtreid.training.config import resolve

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the export extra) is not installed")
pytest.importorskip("onnx", reason="onnx (the export extra) is not installed")

#: tiny networks, small input; 64 x 32 leaves TSLFN's 6 stripes on a map whose height 6 does not divide
SIZE = ["input.size=[64, 32]", "input.resize=null", "input.test_size=null", "model.arch=resnet_tiny"]


def fake_checkpoint(method: str, path, stage: int = 1):
    """A checkpoint as the trainer writes it (the parts the tools read), of an untrained network whose
    BatchNorm statistics are not the identity, so that the eval-mode path is really compared."""
    cfg = resolve(method, "synthetic", None, SIZE, VARIANTS)
    m = get_method(method)(cfg, 8)
    model = m.build_model()
    if stage > 1:
        m.begin_stage(stage, model)
    g = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
    torch.save({"model": model.state_dict(), "config": cfg, "num_classes": 8, "stage": stage, "step": 1}, path)
    return path


@pytest.mark.parametrize("method", sorted(METHODS))
def test_export_runs_in_onnxruntime_and_matches_pytorch(method, tmp_path, capsys):
    ckpt = fake_checkpoint(method, tmp_path / "ckpt.pt", stage=2 if method == "dhsme" else 1)
    onnx_path = tmp_path / f"{method}.onnx"
    assert export.main(["--checkpoint", str(ckpt), "--onnx", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert "largest difference" in printed
    loaded = load_checkpoint(ckpt)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["visible", "infrared"]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["vtreid.method"] == method and meta["vtreid.image_size"] == "[64, 32]"
    # dynamic batch on each input, including one modality with no image
    for bv, bi in ((1, 1), (4, 2), (2, 5), (0, 3), (3, 0)):
        visible, infrared = torch.randn(bv, 3, 64, 32), torch.randn(bi, 3, 64, 32)
        with torch.no_grad():
            want = loaded.model(visible, infrared)
        got = session.run(None, {"visible": visible.numpy(), "infrared": infrared.numpy()})[0]
        assert got.shape == tuple(want.shape)
        assert float((torch.from_numpy(got) - want).abs().max()) <= 1e-4, (method, bv, bi)


def test_export_of_a_trained_checkpoint(trained_run, tmp_path, capsys):
    onnx_path = tmp_path / "hc.onnx"
    assert export.main(["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--onnx", str(onnx_path)]) == 0
    diff = float(capsys.readouterr().out.rsplit("largest difference", 1)[1].split()[0])
    assert diff <= 1e-4 and onnx_path.stat().st_size > 0


def test_export_errors_are_one_line_naming_the_file(tmp_path, capsys):
    not_ckpt = tmp_path / "feats.pt"
    torch.save({"features": torch.zeros(2, 3)}, not_ckpt)
    for path in (tmp_path / "missing.pt", not_ckpt):
        assert export.main(["--checkpoint", str(path), "--onnx", str(tmp_path / "m.onnx")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and len(err.strip().splitlines()) == 1

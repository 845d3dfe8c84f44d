"""TorchXRayVision's own model classes with weights the tests make, and its own preprocessing: the
reference that lungsite's TorchXRayVision support is compared with. Nothing is downloaded: xrv's
`get_weights` (the only place it fetches files) is pointed at a file written here, and every
socket connection is refused while a model is built."""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared_data_path

# Real images, as xrv's README reads them (skimage.io.imread, then normalize(img, 255)).
XRV_IMAGES = [
    ("nih_reproduce_chexnet", "images", "00000075_000.png"),  # 1024 x 1024, 8-bit
    ("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg"),  # 968 x 592: the crop matters
    ("torchxrayvision_tests", "00000001_000.png"),  # xrv's own test image
]


class NetworkTouched(AssertionError):
    pass


@contextlib.contextmanager
def no_network():
    """Every socket connection inside fails the test."""

    def refuse(self, *args, **kwargs):
        raise NetworkTouched(f"a connection was attempted: {args}")

    original = socket.socket.connect, socket.socket.connect_ex
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = original


def xrv_module():
    return pytest.importorskip("torchxrayvision", reason="torchxrayvision (test dependency) not installed")


def xrv_input(parts: tuple[str, ...], size: int = 224) -> np.ndarray:
    """(1, 1, size, size) float32: TorchXRayVision's own preprocessing of a real image (its README:
    imread, normalize(img, 255), one channel, XRayCenterCrop, XRayResizer)."""
    xrv = xrv_module()
    import skimage.io
    import torchvision

    image = skimage.io.imread(shared_data_path(*parts))
    image = xrv.datasets.normalize(image, 255)
    if image.ndim == 3:
        image = image.mean(2)
    transform = torchvision.transforms.Compose(
        [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size)]
    )
    return transform(image[None])[None].astype(np.float32)


def _look_trained(network: torch.nn.Module, images: torch.Tensor, head: torch.nn.Linear, seed: int) -> None:
    """Batch-norm statistics measured on real images (as training leaves them) and a head whose
    outputs spread over (0, 1): an untrained network's would hide mistakes in the input scale."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the cumulative mean over the batches seen
    network.train()
    with torch.no_grad():
        network(images)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
        network.eval()
        # Logits spread about 2 either side of 0 on these images: probabilities across (0, 1).
        logits = network(images)
        scale = 2.0 / float(logits.std())
        head.weight.mul_(scale)
        head.bias.mul_(scale).sub_(logits.mean(0) * scale).add_(
            0.5 * torch.randn(head.bias.shape, generator=generator)
        )


def _pointing_weights_at(monkeypatch, path: Path) -> None:
    xrv = xrv_module()
    monkeypatch.setattr(xrv.models, "get_weights", lambda weights, cache_dir=None: str(path))


def xrv_densenet(monkeypatch, tmp_path: Path, weights: str = "densenet121-res224-nih", seed: int = 0):
    """xrv.models.DenseNet(weights=`weights`) as xrv builds it (its labels, op_threshs and input
    resolution), holding random weights made trained-looking here instead of the published ones."""
    xrv = xrv_module()
    torch.manual_seed(seed)
    with no_network():
        donor = xrv.models.DenseNet(weights=None)
    images = torch.from_numpy(np.concatenate([xrv_input(parts) for parts in XRV_IMAGES]))
    _look_trained(donor, images, donor.classifier, seed)
    path = tmp_path / f"xrv-{weights}-{seed}.pt"
    torch.save(donor, path)  # xrv's published files are whole pickled models
    _pointing_weights_at(monkeypatch, path)
    with no_network():
        return xrv.models.DenseNet(weights=weights)


def xrv_resnet(monkeypatch, tmp_path: Path, seed: int = 0):
    """xrv.models.ResNet(weights="resnet50-res512-all") as xrv builds it, holding random
    trained-looking weights."""
    xrv = xrv_module()
    import torchvision

    torch.manual_seed(seed)
    donor = torchvision.models.resnet50(num_classes=18, weights=None)
    donor.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # as xrv does
    images = torch.from_numpy(np.concatenate([xrv_input(parts, 512) for parts in XRV_IMAGES[:2]]))
    _look_trained(donor, images, donor.fc, seed)
    path = tmp_path / f"xrv-resnet-{seed}.pt"
    torch.save(donor.state_dict(), path)  # xrv's published ResNet file is a state dict
    _pointing_weights_at(monkeypatch, path)
    with no_network():
        return xrv.models.ResNet(weights="resnet50-res512-all")


def state_dict_bytes(model: torch.nn.Module, fmt: str = "torch") -> bytes:
    """What docs/models.md tells an owner to run: torch.save(model.state_dict(), path), or
    safetensors' save_file."""
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(model.state_dict())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def xrv_sigmoid(model, x: np.ndarray) -> np.ndarray:
    """xrv's forward with apply_sigmoid=True and no op_threshs: (N, 18) probabilities."""
    saved = model.op_threshs, model.apply_sigmoid
    model.op_threshs, model.apply_sigmoid = None, True
    try:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    finally:
        model.op_threshs, model.apply_sigmoid = saved


def xrv_forward(model, x: np.ndarray) -> np.ndarray:
    """xrv's own call, model(x), op_threshs and all: (N, 18)."""
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()

"""Score-CAM on a ResNet-18 against the paper's formula computed in torch on identical weights.

The torch side is the official code's loop (Wang et al. 2020, haofanwang/Score-CAM): for each
channel k of layer4, upsample A_k bilinearly to the input size, min-max scale it to a mask M_k,
and weight the upsampled A_k by softmax(f(x * M_k))[class]; the map is the weighted sum.
"""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from jaxmm.models.resnet import ResNet18  # noqa: E402
from jaxmm.saliency import cams, model_fns  # noqa: E402
from jaxmm.third_party.resnet_torch import variables_from_torchvision  # noqa: E402

SIZE, K = 64, 3
CLASSES = (0, 1)


class Block(torch.nn.Module):
  """torchvision's BasicBlock."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(cout)
    self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet18(torch.nn.Module):
  """torchvision's ResNet-18 layout (no torchvision needed); `features` returns layer4."""

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(64)
    self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
    widths = (64, 128, 256, 512)
    for i, (cin, cout) in enumerate(zip((64,) + widths[:-1], widths)):
      stride = 1 if i == 0 else 2
      setattr(self, f"layer{i + 1}", torch.nn.Sequential(Block(cin, cout, stride),
                                                         Block(cout, cout, 1)))
    self.fc = torch.nn.Linear(512, K)

  def features(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x):
    return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def resnet():
  """The same random ResNet-18 in torch and jaxmm (random BN statistics; a head confident
  enough that classes' masked-input probabilities differ), and two images."""
  torch.manual_seed(0)
  net = TorchResNet18()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
    net.fc.weight.mul_(30.0)
  net.eval()
  state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  variables = variables_from_torchvision(state)
  variables["params"]["fc"] = {"kernel": jnp.asarray(state["fc.weight"].T),
                               "bias": jnp.asarray(state["fc.bias"])}
  apply = model_fns.linen_apply_fn(ResNet18(num_classes=K), variables, train=False)
  x = np.random.default_rng(0).normal(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  return net, apply, x


def official_score_cam(net, x: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """The official loop in torch (channels `chunk` at a time), for every class at once:
  weights [N, C, K] and maps [N, K, H, W] before the ReLU."""
  images = torch.tensor(x.transpose(0, 3, 1, 2))
  with torch.no_grad():
    up = F.interpolate(net.features(images), size=(SIZE, SIZE), mode="bilinear",
                       align_corners=False)  # [N, C, H, W]
    low, high = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    masks = (up - low) / torch.clamp(high - low, min=1e-12)
    weights = []
    for k in range(0, up.shape[1], chunk):
      masked = images[:, None] * masks[:, k:k + chunk, None]  # [N, c, 3, H, W]
      logits = net(masked.reshape((-1,) + masked.shape[2:]))
      weights.append(F.softmax(logits, dim=1).reshape(masked.shape[:2] + (K,)))
    weights = torch.cat(weights, 1)
    saliency = torch.einsum("nck,nchw->nkhw", weights, up)
  return weights.numpy(), saliency.numpy()


@pytest.fixture(scope="module")
def maps(resnet):
  """jaxmm's Score-CAM (default options) for each class of CLASSES, in one call."""
  _, apply, x = resnet
  f = lambda v: apply(v)[0]
  images = jnp.asarray(np.repeat(x, len(CLASSES), 0))  # [x0, x0, x1, x1]
  targets = jnp.asarray(np.tile(CLASSES, len(x)), jnp.int32)
  out = cams.score_cam(f, images, apply(images)[1]["stage4"], targets, chunk_size=64,
                       relu=False)
  by_class = lambda v: {c: np.asarray(v)[i::len(CLASSES)] for i, c in enumerate(CLASSES)}
  return {"weights": by_class(out["weights"]), "cam": by_class(out["cam"])}


def test_score_cam_matches_the_official_formula_on_resnet18(resnet, maps):
  net, _, x = resnet
  weights, saliency = official_score_cam(net, x)
  for c in CLASSES:
    np.testing.assert_allclose(maps["weights"][c], weights[..., c], rtol=2e-4, atol=1e-7)
    scale = np.abs(saliency[:, c]).max()
    np.testing.assert_allclose(maps["cam"][c], saliency[:, c], atol=2e-5 * scale)


def test_score_cam_maps_differ_between_classes_whose_probabilities_differ(maps):
  # With a softmax over channels of the probabilities the map of every class was the
  # class-agnostic mean activation map (correlation 0.9998 between the classes' maps here;
  # the paper's weights give 0.61 and -0.12).
  w0, w1 = maps["weights"][0], maps["weights"][1]
  for i in range(len(w0)):
    # Over channels the two classes' masked-input probabilities correlate ~0.9 here.
    assert np.corrcoef(w0[i], w1[i])[0, 1] < 0.95, "the classes' masked probabilities agree"
    corr = np.corrcoef(maps["cam"][0][i].ravel(), maps["cam"][1][i].ravel())[0, 1]
    assert corr < 0.99, (i, corr)

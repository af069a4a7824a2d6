"""Parity with captum on identical weights: a small torch CNN converted to Flax in the test.

Saliency (abs=False), IntegratedGradients (riemann_trapezoid and gausslegendre),
NoiseTunnel(Saliency) smoothgrad with the same noise supplied, and LayerGradCam.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
from captum.attr._core import noise_tunnel as captum_noise_tunnel  # noqa: E402

from jaxmm.saliency import cams, gradients, methods, model_fns, smoothgrad  # noqa: E402
from jaxmm.saliency.targets import target_scores  # noqa: E402

N, H, W, K = 2, 12, 12, 3
ATOL = 1e-5


class TorchCNN(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
    self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
    self.fc = torch.nn.Linear(6, K)

  def forward(self, x):
    a = torch.relu(self.conv2(torch.relu(self.conv1(x))))
    return self.fc(a.mean(dim=(2, 3)))


class FlaxCNN(nn.Module):
  """The same network, NHWC; the conv2 output (pre-ReLU) is marked with `perturb`."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv1")(x))
    conv2 = self.perturb("conv2", nn.Conv(6, (3, 3), padding=1, name="conv2")(x))
    logits = nn.Dense(K, name="fc")(nn.relu(conv2).mean((1, 2)))
    return logits, {"conv2": conv2}


def flax_params(module: TorchCNN) -> dict:
  conv = lambda m: {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(2, 3, 1, 0)),
                    "bias": jnp.asarray(m.bias.detach().numpy())}
  return {"conv1": conv(module.conv1), "conv2": conv(module.conv2),
          "fc": {"kernel": jnp.asarray(module.fc.weight.detach().numpy().T),
                 "bias": jnp.asarray(module.fc.bias.detach().numpy())}}


@pytest.fixture(scope="module")
def models():
  torch.manual_seed(0)
  net = TorchCNN().eval()
  variables = {"params": flax_params(net)}
  apply = model_fns.linen_apply_fn(FlaxCNN(), variables)
  images = np.random.default_rng(0).uniform(-1, 1, (N, H, W, 3)).astype(np.float32)
  return net, apply, images


def to_torch(images):
  return torch.tensor(images.transpose(0, 3, 1, 2), requires_grad=True)


def to_nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


TARGETS = [2, 0]


def test_forward_pass_matches(models):
  net, apply, images = models
  np.testing.assert_allclose(apply(jnp.asarray(images))[0],
                             net(to_torch(images)).detach().numpy(), atol=ATOL)


def test_saliency_matches_captum(models):
  net, apply, images = models
  expected = captum_attr.Saliency(net).attribute(to_torch(images), target=TARGETS, abs=False)
  ours = gradients.vanilla_gradient(lambda v: apply(v)[0], jnp.asarray(images),
                                    jnp.asarray(TARGETS))
  np.testing.assert_allclose(ours, to_nhwc(expected), atol=ATOL)


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "riemann_left", "gausslegendre"])
def test_integrated_gradients_match_captum(models, rule):
  net, apply, images = models
  baseline = np.full_like(images, -0.5)
  expected = captum_attr.IntegratedGradients(net).attribute(
      to_torch(images), baselines=torch.tensor(baseline.transpose(0, 3, 1, 2)), target=TARGETS,
      n_steps=20, method=rule, internal_batch_size=8)
  ours = gradients.integrated_gradients(lambda v: apply(v)[0], jnp.asarray(images),
                                        jnp.asarray(TARGETS), baseline=jnp.asarray(baseline),
                                        steps=20, rule=rule, chunk_size=6)
  if rule == "riemann_trapezoid":
    # captum's trapezoid weights are 1/n (halved at the ends) on linspace(0, 1, n): they sum
    # to (n - 1) / n, so its attributions are ours (weights 1/(n - 1), sum 1) scaled by that.
    ours = ours * (20 - 1) / 20
  np.testing.assert_allclose(ours, to_nhwc(expected), atol=ATOL)


def test_noise_tunnel_smoothgrad_matches_captum_with_the_same_noise(models, monkeypatch):
  net, apply, images = models
  samples = 4
  noise = np.random.default_rng(1).normal(0, 0.2, (samples, N, H, W, 3)).astype(np.float32)
  # captum adds noise to input.repeat_interleave(samples): row n * samples + s.
  torch_noise = torch.tensor(noise.transpose(1, 0, 4, 2, 3).reshape(N * samples, 3, H, W))
  monkeypatch.setattr(captum_noise_tunnel.torch, "normal", lambda mean, std: torch_noise)
  expected = captum_attr.NoiseTunnel(captum_attr.Saliency(net)).attribute(
      to_torch(images), nt_type="smoothgrad", nt_samples=samples, stdevs=0.2, target=TARGETS,
      abs=False)
  method = smoothgrad.smoothgrad(gradients.vanilla_gradient, num_samples=samples, chunk_size=3)
  ours = method(lambda v: apply(v)[0], jnp.asarray(images), jnp.asarray(TARGETS),
                key=jax.random.key(0), noise=jnp.asarray(noise))
  np.testing.assert_allclose(ours, to_nhwc(expected), atol=ATOL)


def test_layer_gradcam_matches_captum(models):
  net, apply, images = models
  expected = captum_attr.LayerGradCam(net, net.conv2).attribute(to_torch(images),
                                                                 target=TARGETS)
  targets = jnp.asarray(TARGETS)
  _, a, g = model_fns.layer_activations_and_gradients(
      apply, jnp.asarray(images), "conv2", lambda logits: target_scores(logits, targets))
  ours = cams.gradient_cam("gradcam", a, g, relu=False)
  np.testing.assert_allclose(ours["raw"], expected.detach().numpy()[:, 0], atol=ATOL)
  np.testing.assert_allclose(ours["cam"], ours["raw"])
  relu = captum_attr.LayerGradCam(net, net.conv2).attribute(to_torch(images), target=TARGETS,
                                                            relu_attributions=True)
  np.testing.assert_allclose(cams.gradient_cam("gradcam", a, g)["cam"],
                             relu.detach().numpy()[:, 0], atol=ATOL)
  # The runner's "normalized" map: captum's ReLU'd layer map, interpolated to the input size
  # (bilinear), over its max. A ReLU after upsampling would zero the positive side of every
  # sign change that the interpolation blurs across.
  upsampled = captum_attr.LayerAttribution.interpolate(relu, (H, W), interpolate_mode="bilinear")
  expected_map = upsampled.detach().numpy()[:, 0]
  expected_map = expected_map / expected_map.reshape(N, -1).max(1)[:, None, None]
  runner = methods.cam_maps(cams.gradient_cam("gradcam", a, g, relu=False, size=(H, W)))
  np.testing.assert_allclose(runner["normalized"], expected_map, atol=1e-5)
  np.testing.assert_allclose(runner["layer_raw"], ours["raw"])

"""The encoders in PyTorch, module tree and state_dict keys exactly as the reference's.

Optional (needs torch): used by the conversion parity tests and by benchmarks against PyTorch.
Input is NCDHW `[B, 3, T, H, W]`. Nothing else in the package imports this module. Written for
this project from the architectures' descriptions (SPEC section 2, the S3D-G paper and the
state_dict layout of the HowTo100M release); layers keep PyTorch's default initialisation, as
the authors' models do. `auxskd_checkpoint` / `vspp_checkpoint` write files exactly in the
formats of the authors' two training scripts.
"""

from __future__ import annotations

from typing import Mapping, Sequence

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("auxskd_jax.testing.reference_torch needs PyTorch: pip install 'auxskd-jax[torch]'"
                    ) from e

from auxskd_jax.models import ARCHITECTURES
from auxskd_jax.models.resnet import mid_channels


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
  return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class SpatioTemporalConv(nn.Module):
  """(2+1)D conv: spatial conv -> BN -> ReLU -> temporal conv (no biases)."""

  def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
    super().__init__()
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = map(_triple, (kernel_size, stride, padding))
    m = mid_channels((kt, kh, kw), cin, cout)
    self.spatial_conv = nn.Conv3d(cin, m, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False)
    self.bn = nn.BatchNorm3d(m)
    self.relu = nn.ReLU()
    self.temporal_conv = nn.Conv3d(m, cout, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.temporal_conv(self.relu(self.bn(self.spatial_conv(x))))


class FullConv(nn.Module):
  """R3D's conv: one full 3-D conv named `temporal_spatial_conv`."""

  def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
    super().__init__()
    self.temporal_spatial_conv = nn.Conv3d(cin, cout, kernel_size, stride, padding, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.temporal_spatial_conv(x)


class ResBlock(nn.Module):
  def __init__(self, conv, cin: int, cout: int, downsample: bool = False):
    super().__init__()
    self.downsample = downsample
    if downsample:
      self.downsampleconv = conv(cin, cout, 1, stride=2)
      self.downsamplebn = nn.BatchNorm3d(cout)
    self.conv1 = conv(cin, cout, 3, stride=2 if downsample else 1, padding=1)
    self.bn1 = nn.BatchNorm3d(cout)
    self.relu1 = nn.ReLU()
    self.conv2 = conv(cout, cout, 3, padding=1)
    self.bn2 = nn.BatchNorm3d(cout)
    self.outrelu = nn.ReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    r = self.relu1(self.bn1(self.conv1(x)))
    r = self.bn2(self.conv2(r))
    if self.downsample:
      x = self.downsamplebn(self.downsampleconv(x))
    return self.outrelu(x + r)


class ResLayer(nn.Module):
  def __init__(self, conv, cin: int, cout: int, num_blocks: int, downsample: bool = False):
    super().__init__()
    self.block1 = ResBlock(conv, cin, cout, downsample)
    self.blocks = nn.ModuleList([ResBlock(conv, cout, cout) for _ in range(num_blocks - 1)])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.block1(x)
    for block in self.blocks:
      x = block(x)
    return x


class _Heads(nn.Module):
  """Base for the encoders: pooled features, then the named linear heads."""

  # The torch attribute of a head; S3D-G calls its (only) head `fc`.
  _HEAD_ATTR: dict[str, str] = {}

  def _add_heads(self, dim: int, heads: Mapping[str, int], single: bool) -> None:
    self.head_names = list(heads)
    self.single_head = single
    for name, n in heads.items():
      setattr(self, self._HEAD_ATTR.get(name, name), nn.Linear(dim, n))

  def _outputs(self, x: torch.Tensor, features_only: bool, feature_layer: str = "pool"):
    if feature_layer == "conv5_maxpool":  # VCOP's retrieval features
      return F.max_pool3d(x, (1, 2, 2), (1, 2, 2)).flatten(1)
    features = x.mean(dim=(2, 3, 4))
    if features_only or not self.head_names:
      return features
    logits = {name: getattr(self, self._HEAD_ATTR.get(name, name))(features)
              for name in self.head_names}
    return logits[self.head_names[0]] if self.single_head else logits


class VideoResNet(_Heads):
  """R(2+1)D (`factorised`) or R3D, as in the reference."""

  def __init__(self, layer_sizes: Sequence[int], factorised: bool, heads: Mapping[str, int],
               single: bool, width: int = 64):
    super().__init__()
    conv = SpatioTemporalConv if factorised else FullConv
    self.conv1 = conv(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
    self.bn1 = nn.BatchNorm3d(width)
    self.relu1 = nn.ReLU()
    cin = width
    for i, size in enumerate(layer_sizes):
      cout = width * 2**i
      setattr(self, f"conv{i + 2}", ResLayer(conv, cin, cout, size, downsample=i > 0))
      cin = cout
    self.num_layers = len(layer_sizes)
    self._add_heads(cin, heads, single)

  def forward(self, x: torch.Tensor, features_only: bool = False, feature_layer: str = "pool"):
    x = self.relu1(self.bn1(self.conv1(x)))
    for i in range(self.num_layers):
      x = getattr(self, f"conv{i + 2}")(x)
    return self._outputs(x, features_only, feature_layer)


class C3D(_Heads):
  """C3D with BN: conv{1,2,3a,3b,4a,4b,5a,5b} + bn*, max pools, average pool."""

  _LAYERS = (("1", 1, (1, 2, 2)), ("2", 2, (2, 2, 2)), ("3a", 4, None), ("3b", 4, (2, 2, 2)),
             ("4a", 8, None), ("4b", 8, (2, 2, 2)), ("5a", 8, None), ("5b", 8, None))

  def __init__(self, heads: Mapping[str, int], single: bool, width: int = 64):
    super().__init__()
    cin = 3
    for suffix, mult, pool in self._LAYERS:
      setattr(self, f"conv{suffix}", nn.Conv3d(cin, width * mult, 3, padding=1))
      setattr(self, f"bn{suffix}", nn.BatchNorm3d(width * mult))
      if pool is not None:
        setattr(self, f"pool{suffix[0]}", nn.MaxPool3d(pool, pool))
      cin = width * mult
    self.relu = nn.ReLU()
    self._add_heads(cin, heads, single)

  def forward(self, x: torch.Tensor, features_only: bool = False, feature_layer: str = "pool"):
    for suffix, _, pool in self._LAYERS:
      x = self.relu(getattr(self, f"bn{suffix}")(getattr(self, f"conv{suffix}")(x)))
      if pool is not None:
        x = getattr(self, f"pool{suffix[0]}")(x)
    return self._outputs(x, features_only, feature_layer)


class STConv3D(nn.Module):
  """S3D-G's conv unit: conv1, bn1, ReLU; separable: a spatial then a temporal conv, each
  followed by BN and ReLU, both with `cout` channels."""

  def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0,
               separable: bool = False):
    super().__init__()
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = map(_triple, (kernel_size, stride, padding))
    self.separable = separable
    if separable:
      self.conv1 = nn.Conv3d(cin, cout, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False)
      self.bn1 = nn.BatchNorm3d(cout)
      self.conv2 = nn.Conv3d(cout, cout, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)
      self.bn2 = nn.BatchNorm3d(cout)
    else:
      self.conv1 = nn.Conv3d(cin, cout, (kt, kh, kw), (st, sh, sw), (pt, ph, pw), bias=False)
      self.bn1 = nn.BatchNorm3d(cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(x))) if self.separable else x


class SelfGating(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.fc = nn.Linear(channels, channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    gate = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
    return x * gate[:, :, None, None, None]


def tf_same_max_pool(x: torch.Tensor, kernel: tuple[int, int, int],
                     stride: tuple[int, int, int]) -> torch.Tensor:
  """The HowTo100M release's 'SAME' max pool: zero padding of max(k - s, 0) (low side gets the
  floor half), given to the pad op as (H, W, T) pairs exactly as that release does (the pad
  op reads (W, H, T)), then a ceil-mode max pool."""
  pads: list[int] = []
  for k, s in zip(kernel, stride):
    total = max(k - s, 0)
    pads += [total // 2, total - total // 2]
  pads = pads[2:] + pads[:2]  # (T, H, W) pairs -> (H, W, T), as the release builds them
  return F.max_pool3d(F.pad(x, pads, value=0.0), kernel, stride, ceil_mode=True)


class Inception(nn.Module):
  def __init__(self, cin: int, c0: int, c1a: int, c1b: int, c2a: int, c2b: int, c3b: int):
    super().__init__()
    self.conv_b0 = STConv3D(cin, c0, 1)
    self.conv_b1_a = STConv3D(cin, c1a, 1)
    self.conv_b1_b = STConv3D(c1a, c1b, 3, padding=1, separable=True)
    self.conv_b2_a = STConv3D(cin, c2a, 1)
    self.conv_b2_b = STConv3D(c2a, c2b, 3, padding=1, separable=True)
    self.conv_b3_b = STConv3D(cin, c3b, 1)
    for i, c in enumerate((c0, c1b, c2b, c3b)):
      setattr(self, f"gating_b{i}", SelfGating(c))
    self.out_channels = c0 + c1b + c2b + c3b

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    branches = (self.conv_b0(x), self.conv_b1_b(self.conv_b1_a(x)),
                self.conv_b2_b(self.conv_b2_a(x)),
                self.conv_b3_b(F.max_pool3d(x, 3, 1, padding=1)))
    return torch.cat([getattr(self, f"gating_b{i}")(b) for i, b in enumerate(branches)], 1)


class S3DG(_Heads):
  """S3D-G of the HowTo100M MIL-NCE release (space-to-depth stem, gating), head `fc`."""

  _HEAD_ATTR = {"linear": "fc"}

  def __init__(self, heads: Mapping[str, int], single: bool, width: int = 64,
               space_to_depth: bool = True):
    super().__init__()
    c = lambda n: n * width // 64  # noqa: E731
    self.space_to_depth = space_to_depth
    if space_to_depth:
      self.conv1 = STConv3D(24, c(64), (2, 4, 4), padding=(1, 2, 2))
    else:
      self.conv1 = STConv3D(3, c(64), (3, 7, 7), stride=2, padding=(1, 3, 3))
    self.conv_2b = STConv3D(c(64), c(64), 1)
    self.conv_2c = STConv3D(c(64), c(192), 3, padding=1, separable=True)
    self.gating = SelfGating(c(192))
    cin = c(192)
    self.block_names = []
    from auxskd_jax.models.s3dg import INCEPTION

    for name, channels in INCEPTION:
      block = Inception(cin, *(c(n) for n in channels))
      setattr(self, name, block)
      self.block_names.append(name)
      cin = block.out_channels
    self._add_heads(cin, heads, single)

  def forward(self, x: torch.Tensor, features_only: bool = False, feature_layer: str = "pool"):
    if self.space_to_depth:
      b, ch, t, h, w = x.shape
      x = x.reshape(b, ch, t // 2, 2, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
      x = self.conv1(x.reshape(b, 8 * ch, t // 2, h // 2, w // 2))[:, :, 1:, 1:, 1:]
    else:
      x = self.conv1(x)
    x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self.gating(self.conv_2c(self.conv_2b(x)))
    x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))
    for name in self.block_names:
      if name == "mixed_4b":
        x = tf_same_max_pool(x, (3, 3, 3), (2, 2, 2))
      elif name == "mixed_5b":
        x = tf_same_max_pool(x, (2, 2, 2), (2, 2, 2))
      x = getattr(self, name)(x)
    return self._outputs(x, features_only, feature_layer)


def _init_kaiming(model: nn.Module) -> None:
  """This port's alternative scheme (`init='kaiming'`): Kaiming-normal (fan_out, ReLU) convs,
  LeCun-normal (truncated, as Flax's) linear weights, zero biases, BN weight 1 and bias 0.
  The authors' code never re-initialises; `init='torch'` (the default) leaves PyTorch's
  defaults in place, as they do."""
  for m in model.modules():
    if isinstance(m, nn.Conv3d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.Linear):
      std = (1.0 / m.in_features) ** 0.5 / 0.87962566103423978
      nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
      nn.init.ones_(m.weight)
    if isinstance(m, (nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm3d)) and \
        m.bias is not None:
      nn.init.zeros_(m.bias)


def build_torch(name: str, num_classes: int | None = None, heads: Mapping[str, int] | None = None,
                width: int = 64, init: str = "torch") -> nn.Module:
  """PyTorch twin of `auxskd_jax.models.build(name, num_classes, heads=heads, width=width,
  init=init)`."""
  if name not in ARCHITECTURES:
    raise ValueError(f"model name {name!r} is not an encoder; choose one of {list(ARCHITECTURES)}.")
  if num_classes is not None and heads is not None:
    raise ValueError("give num_classes (one head named 'linear') or heads, not both.")
  if init not in ("torch", "kaiming"):
    raise ValueError(f"init={init!r}: use 'torch' or 'kaiming'.")
  single = num_classes is not None
  head_map = {"linear": int(num_classes)} if single else dict(heads or {})
  family, layers = ARCHITECTURES[name]
  if family == "c3d":
    model = C3D(head_map, single, width)
  elif family == "s3d_g":
    model = S3DG(head_map, single, width)
  else:
    model = VideoResNet(layers, family == "r21d", head_map, single, width)
  if init == "kaiming":
    _init_kaiming(model)
  return model


# ---------------------------------------------------------------------------------------------
# Checkpoints exactly as the authors' scripts write them (for tests and for users converting).


def predictor(embed: int = 128, hidden: int = 1024) -> nn.Module:
  """auxSKD's predictor `predict_q_c`: Linear, BatchNorm1d, ReLU, Linear (keys 0, 1, 3)."""
  return nn.Sequential(nn.Linear(embed, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                       nn.Linear(hidden, embed))


class Distillation(nn.Module):
  """The module tree of the authors' auxSKD distillation model: student `encoder_q`, teacher
  `encoder_k` (a copy, no gradients), predictor `predict_q_c`, buffers `queue` [K, embed] and
  `queue_ptr` [1] (int64). `data_parallel()` wraps each sub-network in `DataParallel` inside
  the module, as their script does, which puts `.module.` inside every key."""

  def __init__(self, name: str, width: int = 64, embed: int = 128, hidden: int = 1024,
               queue_size: int = 15360):
    super().__init__()
    self.encoder_q = build_torch(name, num_classes=embed, width=width)
    self.encoder_k = build_torch(name, num_classes=embed, width=width)
    self.predict_q_c = predictor(embed, hidden)
    self.encoder_k.load_state_dict(self.encoder_q.state_dict())
    for p in self.encoder_k.parameters():
      p.requires_grad = False
    self.register_buffer("queue", F.normalize(torch.randn(queue_size, embed), dim=1))
    self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

  def data_parallel(self) -> None:
    self.encoder_q = nn.DataParallel(self.encoder_q)
    self.encoder_k = nn.DataParallel(self.encoder_k)
    self.predict_q_c = nn.DataParallel(self.predict_q_c)

  def step(self, optimizer: torch.optim.Optimizer, x_q: torch.Tensor, x_k: torch.Tensor,
           momentum: float = 0.9) -> float:
    """One distillation step (student update, teacher EMA, enqueue), enough to make every
    part of a checkpoint differ from its initial value."""
    q = F.normalize(self.predict_q_c(self.encoder_q(x_q)), dim=1)
    with torch.no_grad():
      for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
        pk.mul_(momentum).add_(pq.detach(), alpha=1 - momentum)
      k = F.normalize(self.encoder_k(x_k), dim=1)
    s_q, s_k = q @ self.queue.t() / 0.1, k @ self.queue.t() / 0.02
    loss = F.kl_div(F.log_softmax(s_q, 1), F.softmax(s_k, 1), reduction="batchmean")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      ptr = int(self.queue_ptr)
      n = k.shape[0]
      self.queue[ptr:ptr + n] = k
      self.queue_ptr[0] = (ptr + n) % self.queue.shape[0]
    return float(loss.detach())


def auxskd_checkpoint(name: str, *, width: int = 64, embed: int = 128, hidden: int = 1024,
                      queue_size: int = 15360, epoch: int = 3, steps: int = 1,
                      clip: tuple[int, int] = (8, 16), seed: int = 0) -> dict:
  """`{'opt': argparse.Namespace, 'state_dict', 'optimizer', 'epoch'}` as the authors' auxSKD
  script saves it (`pckpt_epoch_N.pth`), after `steps` training steps on random clips."""
  import argparse

  torch.manual_seed(seed)
  model = Distillation(name, width, embed, hidden, queue_size)
  model.data_parallel()
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=0.005)
  model.train()
  t, size = clip
  for _ in range(steps):
    model.step(optimizer, torch.rand(4, 3, t, size, size) * 255,
               torch.rand(4, 3, t, size, size) * 255)
  opt = argparse.Namespace(model=name, lr=0.001, bs=4, epochs=25, clip_len=t, crop_sz=size,
                           max_sr=4, max_segment=4, num_classes_segment=embed, temp=0.02,
                           momentum=0.999, start_epoch=1, gpu="0,1,2,3")
  return {"opt": opt, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
          "epoch": epoch}


def vspp_checkpoint(name: str, *, width: int = 64, max_speed: int = 4, num_segments: int = 4,
                    seed: int = 0) -> dict:
  """The state_dict the authors' VSPP script saves (`epoch_segment_self_f-NN.pth.tar`): its
  `DataParallel` model's, keys `module.<encoder>`, heads `module.linear`,
  `module.linear_segment`."""
  torch.manual_seed(seed)
  model = build_torch(name, heads={"linear": max_speed, "linear_segment": num_segments},
                      width=width)
  return nn.DataParallel(model).state_dict()

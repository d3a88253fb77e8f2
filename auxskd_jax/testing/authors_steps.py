"""One training step of each method as the authors' PyTorch training code computes it.

Written for this project from reading the authors' scripts (never copied): auxSKD's
`auxSKD/train.py` and VSPP's `VSPP/train.py` (Plrbear/auxSKD), VCOP's `train_vcop.py` and
`models/vcopn.py` (xudejing/video-clip-order-prediction), VideoPace's `train.py`
(laura-wang/video-pace) and RSPNet's `pretrain.py`, `moco/builder_diffspeed_diffloss.py`
(`MoCoDiffLossTwoFc`, `Loss`) and `moco/split_wrapper.py` (laura-wang's and RSPNet's encoders
are `reference_torch`'s). Only the clip recipes are left out: every step takes clips that are
already made (NCDHW float tensors) and their labels, so a test can feed ours and theirs the same
ones (`tests/test_authors_step.py`).

What each step keeps of its script, in its order:
- auxSKD: student forward, predictor, normalise; under no_grad the teacher's EMA from the
  current (not yet updated) student, the batch shuffled for the teacher's BN and unshuffled,
  normalise; similarities against a copy of the queue taken before the enqueue, / 0.1 and
  / 0.02; enqueue (the queue size a multiple of the batch) and pointer wrap;
  `kl_div(log_softmax(s_q), softmax(s_k), 'batchmean')`; SGD (momentum 0.9, weight decay on
  every trained parameter: the student and the predictor); `StepLR` per epoch.
- VSPP, VideoPace: one forward, cross-entropy (VSPP: speed + segment), SGD, `StepLR`.
- VCOP: the encoder run once per clip position (BN statistics per position), each pair i < j
  through `fc7`, ReLU, concatenated, dropout, `fc8`, cross-entropy, SGD, no schedule.
- RSPNet: EMA first, the other-speed key through the shuffled key encoder, then the key, then
  the query; A-VID: CE over [q.k, q Q^T] / T plus CE over [q.o, q Q^T] / T; RSP:
  `MarginRankingLoss(margin)` on q_m.k_m / T against q_m.o_m / T; loss A * A-VID + M * RSP; the
  other-speed key's appearance embedding enqueued; SGD (its key encoder has no gradients, so
  no decay).
The DataParallel / DistributedDataParallel wrappers change nothing on one device except where
shuffled BN draws its permutation, which cannot change a BN's statistics over the whole batch.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TorchRun:
  """What one of the authors' runs holds between steps: networks by role (the roles in
  `trained` get gradients, in that order), its SGD, and the queue `[K, D]` and pointer of the
  momentum methods (RSPNet keeps its queue as `[D, K]`; here it is transposed)."""
  modules: dict[str, nn.Module]
  trained: tuple[str, ...]
  lr: float
  momentum: float = 0.9
  weight_decay: float = 0.0
  queue: torch.Tensor | None = None
  queue_ptr: int = 0
  optimizer: torch.optim.SGD = field(init=False)

  def __post_init__(self) -> None:
    self.optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum,
                                     weight_decay=self.weight_decay)

  def parameters(self) -> list[torch.Tensor]:
    """The optimizer's parameters as the scripts list them (`requires_grad` only)."""
    return [p for role in self.trained for p in self.modules[role].parameters()
            if p.requires_grad]

  def set_lr(self, lr: float) -> None:
    for group in self.optimizer.param_groups:
      group["lr"] = lr

  def momentum_buffers(self, role: str) -> dict[str, torch.Tensor]:
    """`name -> SGD momentum buffer` of one trained network (absent before the first step)."""
    out = {}
    for name, p in self.modules[role].named_parameters():
      buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
      if buf is not None:
        out[name] = buf
    return out

  def clone(self, dtype: torch.dtype = torch.float64) -> "TorchRun":
    """A deep copy in `dtype`, momentum buffers and learning rate included (the float64 twin
    that measures a step's float32 rounding)."""
    modules = {k: copy.deepcopy(m).to(dtype) for k, m in self.modules.items()}
    twin = TorchRun(modules, self.trained, self.optimizer.param_groups[0]["lr"], self.momentum,
                    self.weight_decay,
                    None if self.queue is None else self.queue.detach().clone().to(dtype),
                    self.queue_ptr)
    for old, new in zip(self.parameters(), twin.parameters()):
      buf = self.optimizer.state.get(old, {}).get("momentum_buffer")
      if buf is not None:
        twin.optimizer.state[new]["momentum_buffer"] = buf.detach().clone().to(dtype)
    return twin

  def enqueue(self, keys: torch.Tensor) -> None:
    """The scripts' `_dequeue_and_enqueue`: overwrite at the pointer, move it, wrap."""
    k, n = self.queue.shape[0], keys.shape[0]
    assert k % n == 0, "the authors' queue size is a multiple of the batch"
    self.queue[self.queue_ptr:self.queue_ptr + n] = keys.detach()
    self.queue_ptr = (self.queue_ptr + n) % k

  def sgd_step(self, loss: torch.Tensor) -> None:
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()


def step_lr(base_lr: float, epoch: int, step_size: int = 6, gamma: float = 0.1) -> float:
  """`optim.lr_scheduler.StepLR(step_size, gamma)`'s rate after `epoch` scheduler steps."""
  return base_lr * gamma ** (epoch // step_size)


@torch.no_grad()
def ema_(teacher: nn.Module, student: nn.Module, m: float) -> None:
  """`param_k = param_k * m + param_q * (1 - m)` over parameters only (BN buffers are the
  teacher's own, from its forwards)."""
  for pk, pq in zip(teacher.parameters(), student.parameters()):
    pk.data = pk.data * m + pq.data * (1.0 - m)


@torch.no_grad()
def shuffled_forward(module: nn.Module, x: torch.Tensor,
                     generator: torch.Generator | None = None) -> Any:
  """Shuffle BN as the scripts do it: forward a permuted batch, un-permute the outputs."""
  perm = torch.randperm(x.shape[0], generator=generator)
  back = torch.argsort(perm)
  out = module(x[perm])
  if isinstance(out, dict):
    return {k: v[back] for k, v in out.items()}
  return out[back]


def auxskd_step(run: TorchRun, x_q: torch.Tensor, x_k: torch.Tensor, *, momentum: float,
                student_temp: float = 0.1, teacher_temp: float = 0.02,
                generator: torch.Generator | None = None) -> dict[str, float]:
  """auxSKD/train.py's `ISD.forward` + `KLD` + SGD (roles `encoder_q`, `encoder_k`,
  `predict_q_c`)."""
  student, teacher, predictor = (run.modules[r] for r in ("encoder_q", "encoder_k",
                                                          "predict_q_c"))
  q = F.normalize(predictor(student(x_q)), dim=1)
  with torch.no_grad():
    ema_(teacher, student, momentum)
    k = F.normalize(shuffled_forward(teacher, x_k, generator), dim=1)
  queue = run.queue.clone().detach()
  s_q = q @ queue.t() / student_temp
  s_k = k @ queue.t() / teacher_temp
  run.enqueue(k)
  loss = F.kl_div(F.log_softmax(s_q, dim=1), F.softmax(s_k, dim=1), reduction="batchmean")
  run.sgd_step(loss)
  return {"loss": float(loss.detach())}


def vspp_step(run: TorchRun, x: torch.Tensor, speed: torch.Tensor,
              segment: torch.Tensor) -> dict[str, float]:
  """VSPP/train.py: CE(speed) + CE(segment) of the two heads (role `model`)."""
  out = run.modules["model"](x)
  loss = F.cross_entropy(out["linear"], speed) + F.cross_entropy(out["linear_segment"], segment)
  run.sgd_step(loss)
  return {"loss": float(loss.detach())}


def pace_step(run: TorchRun, x: torch.Tensor, pace: torch.Tensor) -> dict[str, float]:
  """video-pace train.py: CE of the pace head (role `model`)."""
  loss = F.cross_entropy(run.modules["model"](x), pace)
  run.sgd_step(loss)
  return {"loss": float(loss.detach())}


class VCOPHead(nn.Module):
  """VCOPN's head: `fc7` on each pair's concatenated features, ReLU, concatenation, dropout,
  `fc8`. `keep` (the dropout mask, 1 = kept) replaces torch's own draw so a test can use the
  mask ours drew."""

  def __init__(self, feature_size: int = 512, tuple_len: int = 3, hidden: int = 512,
               dropout: float = 0.5):
    super().__init__()
    self.tuple_len, self.p = tuple_len, dropout
    pairs = tuple_len * (tuple_len - 1) // 2
    self.fc7 = nn.Linear(feature_size * 2, hidden)
    self.fc8 = nn.Linear(hidden * pairs, len(list(itertools.permutations(range(tuple_len)))))

  def forward(self, features: list[torch.Tensor], keep: torch.Tensor | None = None):
    pair_out = [F.relu(self.fc7(torch.cat([features[i], features[j]], dim=1)))
                for i, j in itertools.combinations(range(self.tuple_len), 2)]
    h = torch.cat(pair_out, dim=1)
    if keep is None:
      h = F.dropout(h, self.p, self.training)
    elif self.training:
      h = h * keep.to(h.dtype) / (1.0 - self.p)
    return self.fc8(h)


def vcop_step(run: TorchRun, tuple_clips: torch.Tensor, order: torch.Tensor, *,
              keep: torch.Tensor | None = None, per_position: bool = True) -> dict[str, float]:
  """train_vcop.py + VCOPN.forward (roles `encoder`, `head`) on clips `[B, n, C, T, H, W]`.

  `per_position=True` is the authors' (the encoder once per clip position, n BN updates);
  False runs the n clips as one batch, the choice docs/FIDELITY.md documents for ours."""
  encoder, head = run.modules["encoder"], run.modules["head"]
  b, n = tuple_clips.shape[:2]
  if per_position:
    features = [encoder(tuple_clips[:, i]) for i in range(n)]
  else:
    flat = encoder(tuple_clips.reshape(b * n, *tuple_clips.shape[2:])).reshape(b, n, -1)
    features = [flat[:, i] for i in range(n)]
  loss = F.cross_entropy(head(features, keep), order)
  run.sgd_step(loss)
  return {"loss": float(loss.detach())}


def rspnet_step(run: TorchRun, x_q: torch.Tensor, x_k: torch.Tensor, x_o: torch.Tensor, *,
                momentum: float, temperature: float = 0.07, margin: float = 2.0,
                weight_avid: float = 1.0, weight_rsp: float = 1.0,
                generator: torch.Generator | None = None) -> dict[str, float]:
  """RSPNet's `MoCoDiffLossTwoFc.forward` + `Loss` + SGD (roles `encoder_q`, `encoder_k`;
  heads `linear_appearance` (A) and `linear_speed` (M), both L2-normalised as
  `MultiTaskWrapper` returns them). `x_o` is the key's window at the other speed."""
  enc_q, enc_k = run.modules["encoder_q"], run.modules["encoder_k"]

  def embed(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return (F.normalize(out["linear_appearance"], dim=1),
            F.normalize(out["linear_speed"], dim=1))

  with torch.no_grad():
    ema_(enc_k, enc_q, momentum)
    o_a, o_m = embed(shuffled_forward(enc_k, x_o, generator))
    k_a, k_m = embed(shuffled_forward(enc_k, x_k, generator))
  q_a, q_m = embed(enc_q(x_q))
  t = temperature
  negatives = q_a @ run.queue.clone().detach().t() / t
  same = torch.cat([(q_a * k_a).sum(1, keepdim=True) / t, negatives], dim=1)
  other = torch.cat([(q_a * o_a).sum(1, keepdim=True) / t, negatives], dim=1)
  target = torch.zeros(q_a.shape[0], dtype=torch.long)
  avid = F.cross_entropy(same, target) + F.cross_entropy(other, target)
  pos = (q_m * k_m).sum(1, keepdim=True) / t
  neg = (q_m * o_m).sum(1, keepdim=True) / t
  # The script's target has shape [N] against [N, 1] inputs, which its torch broadcast to
  # [N, N] rows that repeat: the same mean as this.
  rsp = F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=margin)
  run.enqueue(o_a)
  loss = weight_avid * avid + weight_rsp * rsp
  run.sgd_step(loss)
  return {"loss": float(loss.detach()), "loss_avid": float(avid.detach()),
          "loss_rsp": float(rsp.detach())}


STEPS: dict[str, Callable[..., dict[str, float]]] = {
    "auxskd": auxskd_step, "vspp": vspp_step, "pace": pace_step, "vcop": vcop_step,
    "rspnet": rspnet_step}

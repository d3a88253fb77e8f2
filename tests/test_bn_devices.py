"""BN over several devices against the authors' semantics: our auxSKD step (its loss, EMA,
shuffled-BN teacher, queue, optimizer) pmapped over 4 CPU devices, beside a PyTorch emulation of
`nn.DataParallel` as the authors' `train.py` uses it, on a tiny conv + BN encoder (the BN
mechanics are what is tested; the full encoders are tested layer by layer elsewhere).

`DataParallel` scatters the batch in contiguous chunks, one per GPU; every replica's BN
normalises with its own chunk's statistics, and only the first replica's running statistics
survive (the others are discarded copies). The teacher's batch is permuted over the whole
batch before the scatter (shuffled BN) and un-permuted after. Gradients are those of the loss
over the whole gathered batch (`kl_div(..., 'batchmean')`).

- `train.bn=local` on N devices is their DataParallel on N GPUs at the same per-device batch:
  identical outputs, loss, gradients, update, teacher and queue; the running statistics are the
  mean of the devices', theirs device 0's. `train.bn=dataparallel` keeps device 0's: theirs.
- `train.bn=sync` on N devices is their code on one GPU with the whole batch.
"""


import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from auxskd_jax import models
from auxskd_jax.methods import auxskd, base, momentum
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train import step as step_lib

import tiny
from tiny import tiny_config

DEVICES, BATCH, WIDTH, EMBED, HIDDEN, QUEUE = 4, 8, 4, 8, 16, 16
T, S = 2, 6  # clip length, crop


class TinyNet(nn.Module):
  """conv (1x3x3, no bias) -> BN -> ReLU -> global mean -> linear: one BN layer to test."""
  features: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool, **unused):
    x = nn.Conv(WIDTH, (1, 3, 3), padding=((0, 0), (1, 1), (1, 1)), use_bias=False,
                name="conv")(x)
    x = models.norm.BatchNorm(use_running_average=not train,
                              axis_name=self.bn_axis_name if train else None, name="bn")(x)
    return nn.Dense(self.features, name="linear")(nn.relu(x).mean(axis=(1, 2, 3)))


class TinyAuxSKD(auxskd.AuxSKD):
  """The auxSKD method (its loss, EMA, queue, state) with `TinyNet` as student and teacher."""

  def __init__(self, config):
    base.Method.__init__(self, config)
    self.section = config.auxskd
    axis = encoder_lib.student_bn_axis(config)
    self.student = TinyNet(EMBED, bn_axis_name=axis)
    self.teacher = TinyNet(EMBED, bn_axis_name=momentum.teacher_bn_axis(
        self.section.teacher_bn))
    self.predictor = auxskd.Predictor(hidden=HIDDEN, features=EMBED, bn_axis_name=axis)


def given_clips(task, key, batch, config, *, train):
  del task, key, config, train
  return batch["clips"], {}


def make_config(bn: str, teacher_bn: str):
  config = tiny_config("auxskd_r21d_k100")
  config.clip.clip_len, config.clip.crop_size = T, S
  config.model.embed_dim, config.model.predictor_hidden = EMBED, HIDDEN
  config.train.batch_size = BATCH
  config.train.bn = bn
  config.auxskd.teacher_bn = teacher_bn
  config.auxskd.queue_size = QUEUE  # the authors need K a multiple of the batch
  config.auxskd.momentum = 0.9
  config.optim.learning_rate = 0.5  # a visible update on tiny gradients
  return config


def ours(config, clips):
  """(initial state, state after one pmapped step on DEVICES devices, metrics)."""
  method = TinyAuxSKD(config)
  state, train_step = tiny.state_and_step(method, config, steps_per_epoch=10, total_steps=20,
                                          make_clips=given_clips)
  # A teacher away from the student, so the EMA before the forward is visible.
  # (numpy, here and below: jnp per leaf would compile a small program per leaf shape)
  noise = jax.tree.map(lambda p: (0.1 * np.sin(np.arange(p.size, dtype=np.float32))
                                  ).reshape(p.shape),
                       state.extras["teacher"]["params"])
  teacher = {"params": jax.tree.map(lambda p, n: np.asarray(p) + n,
                                    state.extras["teacher"]["params"], noise),
             "batch_stats": state.extras["teacher"]["batch_stats"]}
  state = state.replace(extras=dict(state.extras, teacher=teacher))
  devs = jax.devices()[:DEVICES]
  rep = tiny.host_replicas(state, DEVICES)
  step = jax.pmap(train_step, axis_name="batch", devices=devs)
  sharded = {"clips": clips.reshape((DEVICES, -1) + clips.shape[1:])}
  base_key = jax.random.PRNGKey(1)
  new, metrics = step(rep, sharded, tiny.host_replicas(base_key, DEVICES))
  shared = jax.random.fold_in(jax.random.fold_in(base_key, 0), step_lib.SHARED_STREAM)
  perm = np.asarray(jax.random.permutation(shared, BATCH))  # shuffled_apply's permutation
  return (state, jax.tree.map(lambda x: x[0], jax.device_get(new)), jax.device_get(metrics),
          perm)


# --- the PyTorch side, written from the authors' train.py --------------------------------

class TorchTiny(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv3d(3, WIDTH, (1, 3, 3), padding=(0, 1, 1), bias=False)
    self.bn = torch.nn.BatchNorm3d(WIDTH)
    self.linear = torch.nn.Linear(WIDTH, EMBED)

  def forward(self, x):
    return self.linear(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3, 4)))


def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def torch_tiny(params, stats):
  net = TorchTiny().double()
  with torch.no_grad():
    net.conv.weight.copy_(_t(params["conv"]["kernel"]).permute(4, 3, 0, 1, 2))
    net.bn.weight.copy_(_t(params["bn"]["scale"]))
    net.bn.bias.copy_(_t(params["bn"]["bias"]))
    net.bn.running_mean.copy_(_t(stats["bn"]["mean"]))
    net.bn.running_var.copy_(_t(stats["bn"]["var"]))
    net.linear.weight.copy_(_t(params["linear"]["kernel"]).T)
    net.linear.bias.copy_(_t(params["linear"]["bias"]))
  return net


def torch_predictor(params, stats):
  net = torch.nn.Sequential(torch.nn.Linear(EMBED, HIDDEN), torch.nn.BatchNorm1d(HIDDEN),
                            torch.nn.ReLU(), torch.nn.Linear(HIDDEN, EMBED)).double()
  with torch.no_grad():
    for i, name in ((0, "linear1"), (3, "linear2")):
      net[i].weight.copy_(_t(params[name]["kernel"]).T)
      net[i].bias.copy_(_t(params[name]["bias"]))
    net[1].weight.copy_(_t(params["bn"]["scale"]))
    net[1].bias.copy_(_t(params["bn"]["bias"]))
    net[1].running_mean.copy_(_t(stats["bn"]["mean"]))
    net[1].running_var.copy_(_t(stats["bn"]["var"]))
  return net


def data_parallel(net, x, chunks):
  """`nn.DataParallel(net)(x)` on `chunks` GPUs: each chunk through its own replica (shared
  parameters, so gradients add up as DataParallel's reduce); the module keeps the first
  replica's running statistics. Also returns every replica's (mean, var) of its BN."""
  bn = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)][0]
  start = (bn.running_mean.clone(), bn.running_var.clone())
  outs, replicas = [], []
  for c in torch.chunk(x, chunks):
    # fresh buffer tensors per replica (autograd keeps the ones a forward read)
    bn.running_mean, bn.running_var = start[0].clone(), start[1].clone()
    outs.append(net(c))
    replicas.append((bn.running_mean, bn.running_var))
  bn.running_mean, bn.running_var = replicas[0]
  return torch.cat(outs), replicas


def torch_step(state, clips, perm, *, student_chunks, teacher_chunks, config):
  """One step of the authors' auxSKD training (EMA before the teacher's forward, shuffled BN,
  similarities against the pre-enqueue queue, batchmean KL, SGD with weight decay)."""
  s = config.auxskd
  student = torch_tiny(state.params["encoder"], state.batch_stats["encoder"])
  pred = torch_predictor(state.params["predictor"], state.batch_stats["predictor"])
  teacher = torch_tiny(state.extras["teacher"]["params"], state.extras["teacher"]["batch_stats"])
  queue = _t(state.extras["queue"])
  x = _t(clips).permute(0, 1, 5, 2, 3, 4)  # [B, 2, C, T, H, W]
  im_q, im_k = x[:, 0], x[:, 1]
  z, student_replicas = data_parallel(student, im_q, student_chunks)
  p, pred_replicas = data_parallel(pred, z, student_chunks)
  q = F.normalize(p, dim=1)
  with torch.no_grad():
    for pq, pk in zip(student.parameters(), teacher.parameters()):
      pk.data = pk.data * s.momentum + pq.data * (1.0 - s.momentum)
    forward = torch.tensor(np.asarray(perm), dtype=torch.long)
    reverse = torch.zeros_like(forward).index_copy_(0, forward, torch.arange(len(perm)))
    k, teacher_replicas = data_parallel(teacher, im_k[forward], teacher_chunks)
    k = F.normalize(k, dim=1)[reverse]
  sim_q = q @ queue.T / s.student_temp
  sim_k = k @ queue.T / s.teacher_temp
  loss = F.kl_div(F.log_softmax(sim_q, 1), F.softmax(sim_k, 1), reduction="batchmean")
  params = list(student.parameters()) + list(pred.parameters())
  opt = torch.optim.SGD(params, lr=config.optim.learning_rate, momentum=config.optim.momentum,
                        weight_decay=config.optim.weight_decay)
  opt.zero_grad()
  loss.backward()
  opt.step()
  new_queue = queue.clone()
  new_queue[:len(k)] = k
  return {"loss": loss.item(), "student": student, "pred": pred, "teacher": teacher, "k": k,
          "queue": new_queue, "replicas": {"student": student_replicas, "pred": pred_replicas,
                                          "teacher": teacher_replicas}}


def _np(t):
  return t.detach().numpy()


def check_params(new, ref, tol):
  enc, pred, teacher = new.params["encoder"], new.params["predictor"], new.extras["teacher"]
  for flax_tree, net in ((enc, ref["student"]), (teacher["params"], ref["teacher"])):
    np.testing.assert_allclose(flax_tree["conv"]["kernel"],
                               _np(net.conv.weight).transpose(2, 3, 4, 1, 0), **tol)
    np.testing.assert_allclose(flax_tree["bn"]["scale"], _np(net.bn.weight), **tol)
    np.testing.assert_allclose(flax_tree["linear"]["kernel"], _np(net.linear.weight).T, **tol)
  np.testing.assert_allclose(pred["linear1"]["kernel"], _np(ref["pred"][0].weight).T, **tol)
  np.testing.assert_allclose(pred["bn"]["bias"], _np(ref["pred"][1].bias), **tol)
  np.testing.assert_allclose(new.extras["queue"], _np(ref["queue"]), **tol)
  assert int(new.extras["queue_ptr"]) == BATCH


def running_stats(new):
  """(mean, var) of ours: student, predictor, teacher."""
  bs = new.batch_stats
  return {"student": (bs["encoder"]["bn"]["mean"], bs["encoder"]["bn"]["var"]),
          "pred": (bs["predictor"]["bn"]["mean"], bs["predictor"]["bn"]["var"]),
          "teacher": (new.extras["teacher"]["batch_stats"]["bn"]["mean"],
                      new.extras["teacher"]["batch_stats"]["bn"]["var"])}


# float32 (ours) against float64 (theirs): BN over 2 examples a device makes the gradients
# sensitive; the update moves parameters by up to ~1.7 and both sides agree to ~1.5e-5.
TOL = {"rtol": 1e-4, "atol": 5e-5}
STATS_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def clips():
  rng = np.random.default_rng(0)
  return rng.uniform(0, 1, (BATCH, 2, T, S, S, 3)).astype(np.float32)


@pytest.mark.parametrize("mode", ["local", "dataparallel"])
def test_local_bn_is_their_data_parallel(clips, mode):
  """train.bn=local / dataparallel, shuffled teacher on 4 devices = their DataParallel on 4
  GPUs; the running statistics are the devices' mean under 'local', the first replica's (as
  theirs) under 'dataparallel'."""
  config = make_config(mode, "shuffle")
  state, new, metrics, perm = ours(config, clips)
  ref = torch_step(state, clips, perm, student_chunks=DEVICES, teacher_chunks=DEVICES,
                   config=config)
  np.testing.assert_allclose(float(metrics["loss"][0]), ref["loss"], rtol=2e-4)
  check_params(new, ref, TOL)
  # same semantics at one device: the authors' single-GPU run would differ by far more
  single = torch_step(state, clips, perm, student_chunks=1, teacher_chunks=DEVICES,
                      config=config)
  assert abs(single["loss"] - ref["loss"]) > 100 * 2e-4 * abs(ref["loss"])
  assert np.abs(new.params["encoder"]["conv"]["kernel"] - _np(
      single["student"].conv.weight).transpose(2, 3, 4, 1, 0)).max() > 100 * TOL["atol"]
  for name, (mean, var) in running_stats(new).items():
    replicas = ref["replicas"][name]
    first = (_np(replicas[0][0]), _np(replicas[0][1]))
    average = (np.mean([_np(r[0]) for r in replicas], 0),
               np.mean([_np(r[1]) for r in replicas], 0))
    want, other = (first, average) if mode == "dataparallel" else (average, first)
    np.testing.assert_allclose(mean, want[0], **STATS_TOL)
    np.testing.assert_allclose(var, want[1], **STATS_TOL)
    assert np.abs(var - other[1]).max() > 2e-5, name  # the two modes really differ


def test_sync_bn_is_their_single_gpu_run(clips):
  """train.bn=sync on 4 devices = their code on one GPU with the whole batch (the teacher
  still shuffled over 4 chunks); running statistics then identical too."""
  config = make_config("sync", "shuffle")
  state, new, metrics, perm = ours(config, clips)
  ref = torch_step(state, clips, perm, student_chunks=1, teacher_chunks=DEVICES, config=config)
  np.testing.assert_allclose(float(metrics["loss"][0]), ref["loss"], rtol=2e-4)
  check_params(new, ref, TOL)
  stats = running_stats(new)
  for name in ("student", "pred"):
    (mean, var), (t_mean, t_var) = stats[name], ref["replicas"][name][0]
    np.testing.assert_allclose(mean, _np(t_mean), **STATS_TOL)
    np.testing.assert_allclose(var, _np(t_var), **STATS_TOL)

"""A sixth pretext method is one file (plus its config): a method module dropped into
`auxskd_jax.methods` becomes a task that validates, trains, checkpoints and resumes through the
shared step and loop, without touching any other file."""

import os
import textwrap

import auxskd_jax.methods
from auxskd_jax import config as config_lib
from auxskd_jax import tasks

METHOD = textwrap.dedent('''
    """Playback-direction prediction: is the clip played forwards or backwards?"""
    import jax.numpy as jnp

    from auxskd_jax.methods import base
    from auxskd_jax.train import encoder as encoder_lib


    class Arrow(base.Method):
      recipe = "clip"
      name = "arrow of time"

      def __init__(self, config):
        super().__init__(config)
        self.model = encoder_lib.build_encoder(config, num_classes=2)

      def loss(self, params, state, clips, labels, keys):
        x = clips[:, 0]
        backwards = jnp.arange(x.shape[0]) % 2  # every other clip reversed in time
        x = jnp.where(backwards[:, None, None, None, None] == 1, x[:, ::-1], x)
        logits, stats = encoder_lib.apply_train(self.model, params["encoder"],
                                                state.batch_stats["encoder"], x)
        loss, accuracy = encoder_lib.classification_loss(logits, backwards)
        return loss, {"batch_stats": {"encoder": stats}, "metrics": {"accuracy": accuracy}}

''')


def test_a_method_file_is_a_task(tiny_prepared, tmp_path, monkeypatch):
  package = tmp_path / "methods"
  package.mkdir()
  (package / "arrow_of_time.py").write_text(METHOD)
  monkeypatch.setattr(auxskd_jax.methods, "__path__",
                      list(auxskd_jax.methods.__path__) + [str(package)])
  assert tasks.known("arrow_of_time")
  config = config_lib.base_config()
  config.task = "arrow_of_time"
  config.data.data_dir, config.data.name = tiny_prepared
  config.model.name, config.model.width = "r3d_10", 4
  config.clip.clip_len, config.clip.crop_size = 4, 16
  config.train.batch_size, config.train.num_steps = 4, 3
  config.train.log_every, config.train.checkpoint_every = 1, 2
  task = tasks.get("arrow_of_time")
  task.validate(config)
  workdir = str(tmp_path / "run")
  result = task.run(config, workdir)
  assert result["step"] == 3
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = f.read().splitlines()
  assert len(rows) == 3 and '"accuracy"' in rows[-1]

"""Fine-tuning: from the official .pt, from a pre-training run, new tasks, resume, and using
its checkpoints for evaluation and restoring."""
import logging

import jax
import numpy as np
import pytest
from PIL import Image

from configs import finetune as finetune_config
from ipt_jax import errors
from ipt_jax import evaluate
from ipt_jax import finetune
from ipt_jax import inference
from ipt_jax import restore
from ipt_jax import torch_layout
from ipt_jax import weights
from tests.conftest import shared_path

TINY_PT = ('fixtures', 'official_ipt_tiny', 'state_dict.pt')


def config_for(task, init, num_heads=None, **overrides):
  """The fine-tuning config on the bundled samples, a few steps."""
  config = finetune_config.get_config(task)
  config.checkpoint = str(init)
  config.model.num_heads = num_heads
  config.data.source, config.data.val_source = 'samples:train', 'samples:validation'
  config.data.image_key = 'image'
  config.data.batch_size = 4
  config.model.dtype = 'float32'
  config.eval.num_examples = 4
  config.total_steps, config.log_every, config.eval_every, config.checkpoint_every = 2, 1, 2, 2
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.slow
def test_keeps_the_chosen_task_and_drops_the_others():
  pt = shared_path(*TINY_PT)
  _, official = torch_layout.from_torch(str(pt), num_heads=2)
  model, params = finetune.init_model(config_for('sr_x4', pt, num_heads=2))
  assert model.tasks == ('sr_x4',) and model.num_heads == 2 and model.n_feats == 8
  assert sorted(params) == ['body', 'head_sr_x4', 'tail_sr_x4']
  assert not [k for k in params['body'] if k.startswith('query_embed_') and 'sr_x4' not in k]
  for name in ('head_sr_x4', 'tail_sr_x4'):
    jax.tree.map(np.testing.assert_array_equal, params[name], official[name])
  np.testing.assert_array_equal(params['body']['query_embed_sr_x4'],
                                official['body']['query_embed_sr_x4'])
  jax.tree.map(np.testing.assert_array_equal, params['body']['encoder_1'],
               official['body']['encoder_1'])


@pytest.mark.slow
def test_a_new_task_gets_a_fresh_head_on_the_pretrained_body():
  pt = shared_path(*TINY_PT)
  _, official = torch_layout.from_torch(str(pt), num_heads=2)
  model, params = finetune.init_model(config_for('sr_x8', pt, num_heads=2))
  assert model.tasks == ('sr_x8',)
  assert 'upsample_2' in params['tail_sr_x8']  # Three x2 pixel shuffles.
  jax.tree.map(np.testing.assert_array_equal, params['body']['decoder_0'],
               official['body']['decoder_0'])
  shapes = jax.eval_shape(model.init_params, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(shapes)


@pytest.mark.slow
def test_from_the_official_pt_runs_resumes_evaluates_and_restores(tmp_path, caplog):
  pt = shared_path(*TINY_PT)
  workdir = tmp_path / 'sr_x2'
  finetune.finetune(config_for('sr_x2', pt, num_heads=2), str(workdir))
  with caplog.at_level(logging.INFO):
    state = finetune.finetune(config_for('sr_x2', pt, num_heads=2, total_steps=3),
                              str(workdir))
  assert 'Loaded checkpoint step 2' in caplog.text
  assert int(state.step) == 3

  scores, _ = evaluate.evaluate(evaluate.Options(
      tasks=('sr_x2',), data_dir=str(shared_path('data', 'benchmark')), sets=('Set5',),
      checkpoint=str(workdir), tiling='fast', output_dir=str(tmp_path / 'eval')))
  assert len(scores) == 1 and np.isfinite(scores[0].psnr) and len(scores[0].images) == 5

  photo = tmp_path / 'photo.png'
  Image.fromarray(np.full((30, 50, 3), 120, np.uint8)).save(photo)
  model, params = weights.load(str(workdir))
  image_model = inference.image_model(model, params, 'sr_x2', mode='fast')
  assert restore.restore_files([str(photo)], image_model, tmp_path / 'out', '_x2') == []
  assert Image.open(tmp_path / 'out' / 'photo_x2.png').size == (100, 60)


@pytest.mark.slow
def test_from_a_pretraining_run(trained_run, tmp_path):
  config = config_for('denoise_30', trained_run.workdir, total_steps=1)
  _, params = finetune.init_model(config)
  _, pretrained = weights.load(trained_run.workdir)
  jax.tree.map(np.testing.assert_array_equal, params['head_denoise_30'],
               jax.device_get(pretrained['head_denoise_30']))
  state = finetune.finetune(config, str(tmp_path / 'ft'))
  assert int(state.step) == 1
  assert weights.load(tmp_path / 'ft')[0].tasks == ('denoise_30',)


def test_bad_configs_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='Set --config.checkpoint to a pre-training checkpoint'):
    finetune.init_model(config_for('sr_x2', ''))
  config = config_for('sr_x2', tmp_path)
  config.data.tasks = ('sr_x2', 'sr_x3')
  with pytest.raises(ValueError, match='Fine-tuning trains one task'):
    finetune.init_model(config)
  with pytest.raises(errors.InputError, match='no such file or directory'):
    finetune.init_model(config_for('sr_x2', tmp_path / 'nothing'))

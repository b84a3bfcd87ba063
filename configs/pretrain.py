"""IPT pre-training as in the paper: six tasks on ImageNet, batch 256, 300 epochs.

  python -m ipt_jax.main --config=configs/pretrain.py --workdir=gs://bucket/ipt \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Every knob of the project has its default here (configs are data: they import no library
module); any field can be overridden on the command line as --config.FIELD=VALUE.
"""
import ml_collections
from ml_collections import config_dict

# The six pre-training tasks in the official head / tail / task-embedding order.
PRETRAIN_TASKS = ('sr_x2', 'sr_x3', 'sr_x4', 'derain', 'denoise_30', 'denoise_50')


def data_config() -> ml_collections.ConfigDict:
  """The input pipeline (ipt_jax.data.pipeline)."""
  data = ml_collections.ConfigDict()
  # Clean images: 'tfds:<name>[:<split>]', 'folder:<path>' or 'samples[:<split>]'; or, for the
  # derain task alone, real rainy / clean pairs: 'pairs:<path>' (rain-*.png with norain-*.png).
  data.source = 'tfds:imagenet2012:train'
  # Held-out images for evaluation during training.
  data.val_source = 'tfds:imagenet2012:validation'
  data.data_dir = config_dict.placeholder(str)  # TFDS data_dir (local or gs://); unset: TFDS's.
  data.image_key = 'image'  # The TFDS image feature, e.g. 'hr' for div2k.
  data.shuffle_buffer = 10_000  # TFDS records shuffled per epoch (encoded, ~110 KB each).
  # Tasks in the model's order (a batch's task index refers to it) and the probability of
  # training each at a step (empty: equal).
  data.tasks = PRETRAIN_TASKS
  data.task_weights = ()
  data.batch_size = 256  # Global: summed over hosts.
  # Crops cut from each decoded image: officially one per image and epoch (docs/recipe.md);
  # more amortise decoding but put several crops of one image in a contrastive group.
  data.crops_per_image = 1
  data.augment = False  # Random flips and transposes; none in the official pre-training.
  # (low, high) ranges each image's rain streaks are drawn from; unset: the Rain100L-like
  # defaults of ipt_jax.data.degrade.RainConfig, e.g. --config.data.rain.density=(0.01,0.02).
  data.rain = ml_collections.ConfigDict({
      name: config_dict.placeholder(tuple)
      for name in ('density', 'length', 'width', 'angle', 'intensity')})
  # A folder of one-channel rain streak images (its rainstreak-* files if any, e.g. RainTrainL's,
  # as the official MindSpore pre-training) cut and added to derain crops instead of `rain`.
  data.rain_streaks = config_dict.placeholder(str)
  return data


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config()

  # A preset name ('paper', 'small', 'tiny') plus any IPT field (ipt_jax/models/ipt.py).
  # bfloat16 compute with float32 parameters is the accelerator setting; use float32 on CPU.
  config.model = ml_collections.ConfigDict(dict(
      preset='paper', dtype='bfloat16', param_dtype='float32',
      attention_impl=config_dict.placeholder(str),  # 'cudnn' on NVIDIA GPUs.
      # One loop over the layers: XLA:CPU fuses the residual stream's gradient across
      # unrolled layers, and the paper model's step costs 4x more (BENCHMARKS.md).
      scan_layers=True))

  # Length: total_steps, or num_epochs over num_train_images at the global batch size.
  config.num_epochs = 300
  config.num_train_images = 1_281_167  # ImageNet-1k train.
  config.total_steps = config_dict.placeholder(int)

  # The official MindSpore recipe: one Adam over all parameters, each gradient tensor clipped
  # to norm 1 on its own, lr 5e-5 halved at epoch 200. The alternatives: per_task_state=True
  # (Adam moments per task, inactive tasks frozen), clip='global', schedule='cosine' (to end_lr).
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=5e-5, schedule='step', decay_epochs=(200,), decay_factor=0.5, end_lr=2e-5,
      warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0, clip='per_tensor',
      per_task_state=False))  # grad_clip=0 turns clipping off.
  # Contrastive loss as the official code: all patches (contrastive_patches=0; N > 0 samples
  # N per image, cheaper), one loss per contrastive_group consecutive images (0: the whole
  # batch), averaged; shard-local when a group divides the batch per device. Float32
  # similarities of a group of 64 x 256 patches: 1 GiB (3.4 GiB temporaries with the
  # gradient; at batch 256 on 8 devices a group spans 2 devices, 1.7 GiB each); groups of 32:
  # 256 MiB (0.85 GiB); the whole batch of 256: 16 GiB; 16 sampled patches over it: 64 MiB.
  config.loss = ml_collections.ConfigDict(dict(
      contrastive_weight=0.1, temperature=0.07, contrastive_patches=0, contrastive_group=64))
  config.max_nonfinite_steps = 10  # Non-finite steps in a row before training stops.

  # Devices: data parallel, times `fsdp` devices sharding each parameter of at least
  # fsdp_min_size_mb (and its Adam moments); smaller ones stay replicated.
  # cpu_devices: on a CPU, run as this many devices (one per core is fastest; 0: one device).
  config.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size_mb=1., cpu_devices=0))
  config.distributed = 'auto'  # 'on' for multi-host Cloud TPU (see ipt_jax/parallel.py).
  # Several processes: one that sends no heartbeat for this long counts as lost, and the job
  # stops (exit status 75: resubmit to resume); they wait this long for each other at start.
  config.heartbeat_timeout_seconds = 100
  config.startup_timeout_seconds = 300

  config.log_every = 100
  config.eval_every = 5_000
  config.eval = ml_collections.ConfigDict(dict(num_examples=64))  # Held-out crops per task.
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  return config

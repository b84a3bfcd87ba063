"""Speed benchmarks: the train step, whole-image inference and the input pipeline.

  python -m ipt_jax.benchmark --what=train --config=configs/pretrain.py --preset=paper \
      --tasks=sr_x2 --batch=256 --dtype=bfloat16
  python -m ipt_jax.benchmark --what=infer --preset=paper --tasks=sr_x2 --image_size=256
  python -m ipt_jax.benchmark --what=input --config=configs/pretrain.py [--source=folder:DIR]
  python -m ipt_jax.benchmark --what=train --config=configs/pretrain.py --preset=paper \
      --tasks=sr_x2 --batch=4 --dtype=float32 --compare_official=PATH/Pretrained-IPT
  python -m ipt_jax.benchmark --what=infer --preset=paper --tasks=sr_x2 --image_size=72 \
      --dtype=float32 --compare_official=PATH/Pretrained-IPT

`train` and `infer` run on synthetic on-device data and print images/s, step time, achieved
TFLOP/s and MFU, peak device memory, and the seconds to initialise and to compile. FLOPs are
counted analytically from the model's matrix multiplications and convolutions (`ipt.forward_flops`;
the paper model's x2 forward is 66.6 GFLOP per 48x48 image, a training step 3x that): XLA's
cost analysis leaves out cuBLAS / cuDNN calls on GPUs. The optimiser, loss and data settings
come from --config (e.g. configs/pretrain.py, any field overridable); `--remat` and
`--scan_layers` (default: the config's model fields) choose how the transformer layers run.

`--compare_official=PATH` also builds the official PyTorch IPT from a checkout of
huawei-noah/Pretrained-IPT (`model.ipt.ipt`, sized as the preset, one head and tail for the
task), loads the same weights (`torch_layout.to_torch`), and times, in this process, its
training step (L1 loss, torch.optim.Adam, as the official trainer) on the same batch, or its
whole-image inference (`forward_chop` of its model/__init__.py, --tile_batch tiles per call)
on the same image. The two sides alternate rounds so that load from elsewhere on the machine
affects both alike; it prints both (best and median, images/s) and the ratio of their speeds.

`input`: training samples per second out of the input pipeline (decode, crop, augment,
degrade, batch), in total and per CPU core. Without `--source` it reads a temporary folder
of ImageNet-sized (500x375) JPEGs made from the scikit-image samples.

This module imports and runs `train` and `infer` without TensorFlow (accelerator machines may
lack it); only the input benchmark loads it.
"""
from collections.abc import Callable
import os
import sys
import tempfile
import time

from absl import flags
from absl import logging
import jax
import numpy as np

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import inference
from ipt_jax import optimizer
from ipt_jax import parallel
from ipt_jax import tasks as tasks_lib
from ipt_jax import train
from ipt_jax.models import ipt

_WHAT = flags.DEFINE_enum('what', 'train', ['train', 'infer', 'input'], 'Which benchmark to run.')
_CONFIG = cli.config_flag()
_PRESET = flags.DEFINE_enum('preset', 'paper', list(ipt.PRESETS),
                            "Model size; with --config and no --preset, the config's model.")
_TASKS = cli.tasks_flag()
_DTYPE = cli.dtype_flag()
_ATTENTION = flags.DEFINE_enum('attention_impl', None, ['xla', 'cudnn'],
                               'jax.nn.dot_product_attention implementation (default: JAX picks).')
_BATCH = flags.DEFINE_integer('batch', 256, 'Global batch (train, input); infer: --tile_batch.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (train, input) or images (infer).')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps first.')
_PEAK = flags.DEFINE_float('peak_tflops', None, 'Peak dense TFLOP/s of one device for MFU '
                           '(default: from the device kind, bfloat16).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Infer: side of the square LR image.')
_SOURCE = flags.DEFINE_string(
    'source', None, 'Input benchmark: image source (see ipt_jax.data.sources); default: '
    'a temporary folder of 500x375 JPEGs.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 200,
                                   'Input benchmark: JPEGs in the generated folder.')
_SEED = cli.seed_flag()
_INFERENCE = cli.inference_flags()
_REMAT = flags.DEFINE_bool(
    'remat', None, 'Recompute each transformer layer in the backward pass (IPT.remat); default: '
    "the --config's model.remat, else false.")
_SCAN = flags.DEFINE_bool(
    'scan_layers', None, 'Run the encoder and decoder layers as two loops (IPT.scan_layers); '
    "default: the --config's model.scan_layers, else false.")
_COMPARE = flags.DEFINE_string(
    'compare_official', None, 'Train / infer: also time the official PyTorch IPT with the '
    'same weights, from this checkout of huawei-noah/Pretrained-IPT (its model/ipt.py and '
    'model/__init__.py): its training step (L1 loss, torch.optim.Adam) on the same batch, or '
    'its forward_chop on the same image; side by side in this process, and print the ratio. '
    'Needs torch.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'With --compare_official: alternating rounds of --steps steps (or images) '
    'each side (the best of all rounds counts).', lower_bound=1)

_IMAGENET_SIZE = (375, 500)  # Height, width: the most common ImageNet image size.
# Dense bfloat16 TFLOP/s per device (vendor figures), by a substring of device_kind.
PEAK_TFLOPS = {'H100': 989., 'H200': 989., 'A100': 312., 'TPU v4': 275., 'TPU v5 lite': 197.,
               'TPU v5p': 459., 'TPU v6 lite': 918.}


def _peak_tflops(device) -> float | None:
  if _PEAK.value:
    return _PEAK.value
  return next((v for k, v in PEAK_TFLOPS.items() if k in device.device_kind), None)


def _peak_memory_gib(device) -> float | None:
  stats = device.memory_stats()  # None on CPU.
  return stats['peak_bytes_in_use'] / 2**30 if stats else None


def _config_model() -> bool:
  """Whether the model is the --config's (no --preset given) rather than a preset."""
  return _CONFIG.value is not None and not flags.FLAGS['preset'].present


def _model() -> ipt.IPT:
  fields = {'preset': _PRESET.value}
  if _config_model():
    fields = dict(_CONFIG.value.model)  # E.g. small_data's one-layer small model.
  fields.update(tasks=(_task(),), dtype=_DTYPE.value, attention_impl=_ATTENTION.value,
                remat=_layer_option(_REMAT, 'remat'),
                scan_layers=_layer_option(_SCAN, 'scan_layers'))
  return ipt.create(**fields)


def _layer_option(flag: flags.FlagHolder, field: str) -> bool:
  """The flag when given, else the config's model field when there is one, else False."""
  if flag.value is not None:
    return flag.value
  return bool(_CONFIG.value is not None and _CONFIG.value.model.get(field))


def _config():
  if _CONFIG.value is None:
    raise errors.FlagError(f'--what={_WHAT.value} needs --config (optimiser, loss and data '
                           'settings), e.g. --config=configs/pretrain.py.')
  return _CONFIG.value


def _task() -> str:
  """The one task whose head and tail run."""
  if not _TASKS.value or len(_TASKS.value) != 1:
    raise errors.FlagError('--tasks: name the one task whose head and tail run, e.g. '
                           '--tasks=sr_x2.')
  return tasks_lib.get(_TASKS.value[0]).name


def _report(what: str, *, seconds: float, images: int, flops: float, init_s: float,
            compile_s: float, unit: str):
  device = jax.devices()[0]
  tflops = flops / seconds / 1e12
  peak = _peak_tflops(device)
  memory = _peak_memory_gib(device)
  layers = ', '.join(name for name, on in (('remat', _layer_option(_REMAT, 'remat')), (
      'scan_layers', _layer_option(_SCAN, 'scan_layers'))) if on)
  model = "the config's" if _config_model() else f'{_PRESET.value}'
  print(f'{what} on {jax.device_count()} x {device.device_kind} ({model} model, '
        f'{_task()}, {_DTYPE.value}, attention {_ATTENTION.value or "default"}'
        f'{", " + layers if layers else ""}):')
  print(f'  {images / seconds:,.1f} images/s, {seconds / _STEPS.value * 1e3:.1f} ms per {unit}')
  print(f'  {tflops:.3g} TFLOP/s achieved' + (
      f', MFU {tflops / (peak * jax.device_count()):.1%} of {peak:.0f} TFLOP/s per device'
      if peak else ' (no peak known for this device: --peak_tflops for MFU)'))
  print(f'  peak device memory {memory:.1f} GiB' if memory is not None else
        '  peak device memory: not reported by this device')
  print(f'  initialise {init_s:.1f} s, compile {compile_s:.1f} s')


def benchmark_train() -> None:
  config = _config()
  model = _model()
  mesh = parallel.make_mesh(config.mesh.fsdp)
  parallel.check_batch_size(_BATCH.value, mesh)
  schedule = optimizer.learning_rate(config, optimizer.total_steps(config))
  tx = optimizer.make(config, model, schedule)
  start = time.perf_counter()
  state = jax.block_until_ready(train.create_train_state(model, tx, mesh, config))
  init_s = time.perf_counter() - start
  step = train.make_train_steps(model, tx, schedule, config, mesh,
                                jax.eval_shape(lambda s: s, state))[0]
  scale, patch = model.scale(0), model.patch_size
  rng = np.random.default_rng(_SEED.value)
  host_batch = {
      'lq': rng.integers(0, 256, (_BATCH.value, patch, patch, 3), np.uint8),
      'hq': rng.integers(0, 256, (_BATCH.value, patch * scale, patch * scale, 3), np.uint8)}
  batch = parallel.global_batch(mesh, host_batch)
  official = None
  if _COMPARE.value:
    official = OfficialTrainStep(_COMPARE.value, model, state.params, host_batch, config)
    official.check_outputs(model, state.params)
  start = time.perf_counter()
  step = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start

  def train_step():
    nonlocal state
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)

  run_ours = lambda steps: _times(train_step, steps)
  run_ours(_WARMUP_STEPS.value)
  if official is None:
    seconds = sum(run_ours(_STEPS.value))
  else:
    ours_times, official_times = _side_by_side(run_ours, official.run)
    seconds = min(ours_times) * _STEPS.value
  images = _STEPS.value * _BATCH.value
  _report(f'train step, batch {_BATCH.value}', seconds=seconds, images=images,
          flops=3 * ipt.forward_flops(model, 0) * images, init_s=init_s,
          compile_s=compile_s, unit='step')
  if official is not None:
    _report_comparison(ours_times, official_times, unit='step', images=_BATCH.value)


# Seconds between the two sides' rounds: XLA's and PyTorch's thread pools spin a while after
# their last task and would slow the other side's first steps.
_PAUSE_S = 1.


def _times(run: Callable[[], object], count: int) -> list[float]:
  """The seconds of each of `count` calls of `run`."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return times


def _after_pause(run: Callable[[int], list[float]]) -> list[float]:
  """--steps timed steps after a pause and an untimed step: the other side's threads settle."""
  time.sleep(_PAUSE_S)
  run(1)
  return run(_STEPS.value)


def _side_by_side(run_ours: Callable[[int], list[float]],
                  run_official: Callable[[int], list[float]]) -> tuple[list[float], list[float]]:
  """--rounds alternating rounds of each side (after --warmup_steps of the official side):
  the times of every timed step, ours and official."""
  run_official(_WARMUP_STEPS.value)
  ours, official = [], []
  for _ in range(_ROUNDS.value):  # Back to back, so that the machine's load hits both alike.
    ours += _after_pause(run_ours)
    official += _after_pause(run_official)
  return ours, official


def _report_comparison(ours: list[float], official: list[float], *, unit: str, images: int):
  units = unit + 's' * (_STEPS.value > 1)
  print(f'side by side, {_ROUNDS.value} rounds of {_STEPS.value} {units} each, best {unit} '
        '(median) in seconds:')
  for name, times in (('ipt-jax', ours), ('official PyTorch', official)):
    print(f'  {name:17s} {min(times):.3f} s ({np.median(times):.3f} s) per {unit}, '
          f'{images / min(times):,.2f} images/s')
  ratio, median_ratio = min(official) / min(ours), np.median(official) / np.median(ours)
  faster = 'ipt-jax' if ratio >= 1 else 'official'
  print(f'  speed ratio ipt-jax / official: {ratio:.2f} (medians: {median_ratio:.2f}); '
        f'{faster} is faster')


class OfficialTrainStep:
  """The official PyTorch IPT's training step (L1 loss, torch.optim.Adam, as its trainer.py)
  on the same batch, from a checkout of huawei-noah/Pretrained-IPT, with ipt-jax's weights."""

  def __init__(self, path: str, model: ipt.IPT, params, host_batch: dict[str, np.ndarray],
               config):
    import torch  # pylint: disable=g-import-not-at-top

    self._torch = torch
    self.net = build_official_model(path, model, params)
    self.net.train()
    opt = config.optimizer
    self.optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad],
                                      lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps)
    to_nchw = lambda x: torch.from_numpy(np.ascontiguousarray(
        x.transpose(0, 3, 1, 2), dtype=np.float32))
    self.lq, self.hq = to_nchw(host_batch['lq']), to_nchw(host_batch['hq'])

  def check_outputs(self, model: ipt.IPT, params):
    """Prints how far apart the two models' outputs on the batch are (same weights)."""
    ours = np.asarray(model.apply({'params': params}, jax.numpy.asarray(
        self.lq.numpy().transpose(0, 2, 3, 1)), task=0)).transpose(0, 3, 1, 2)
    with self._torch.no_grad():
      theirs = self.net(self.lq).numpy()
    print(f'same weights: outputs differ by at most {np.abs(ours - theirs).max():.2g} '
          '(of 255)')

  def run(self, steps: int) -> list[float]:
    return _times(self._step, steps)

  def _step(self):
    self.optimizer.zero_grad()
    self._torch.nn.functional.l1_loss(self.net(self.lq), self.hq).backward()
    self.optimizer.step()


class OfficialWholeImage:
  """The official whole-image inference on a CPU: `Model.forward_chop` of the checkout's
  model/__init__.py (48x48 tiles 12 px apart, averaged), `tile_batch` tiles per call, with
  ipt-jax's weights.

  forward_chop is written for a GPU: its `.cuda()` calls are made the identity while it runs
  and its `P.data_parallel(model, tiles, devices)` a plain call of the model on the CPU.
  """

  def __init__(self, path: str, model: ipt.IPT, params, image: np.ndarray, tile_batch: int):
    import importlib  # pylint: disable=g-import-not-at-top
    import types  # pylint: disable=g-import-not-at-top

    import torch  # pylint: disable=g-import-not-at-top

    self._torch = torch
    net = build_official_model(path, model, params)
    net.eval()
    official = importlib.import_module('model')  # The checkout's model/__init__.py.
    official.P = types.SimpleNamespace(data_parallel=lambda module, tiles, devices: module(tiles))
    chopper = official.Model.__new__(official.Model)  # Its __init__ loads a checkpoint file.
    torch.nn.Module.__init__(chopper)
    chopper.model, chopper.patch_size, chopper.n_GPUs = net, model.patch_size, 1
    chopper.scale, chopper.idx_scale = [model.scale(0)], 0
    chopper.args = types.SimpleNamespace(crop_batch_size=tile_batch)
    self._forward_chop = chopper.forward_chop
    self._image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))

  def __call__(self) -> np.ndarray:
    """The restored image, [height, width, 3] (not clipped or rounded)."""
    cuda = self._torch.Tensor.cuda
    self._torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
    try:
      with self._torch.no_grad():
        return self._forward_chop(self._image)[0].numpy().transpose(1, 2, 0)
    finally:
      self._torch.Tensor.cuda = cuda

  def run(self, images: int) -> list[float]:
    return _times(self, images)


def _check_official_checkout(path: str):
  if not os.path.isfile(os.path.join(path, 'model', 'ipt.py')):
    raise errors.InputError(f'--compare_official={path}: no model/ipt.py there; give a checkout '
                            'of https://github.com/huawei-noah/Pretrained-IPT.')


def build_official_model(path: str, model: ipt.IPT, params):
  """The official `model.ipt.ipt` of the checkout at `path`, sized as `model`, for its tasks,
  holding `params` (ipt-jax's, in the official layout)."""
  import types  # pylint: disable=g-import-not-at-top

  from ipt_jax import torch_layout  # pylint: disable=g-import-not-at-top
  _check_official_checkout(path)
  dim = model.n_feats * model.patch_dim**2
  if model.mlp_dim != 4 * dim or tuple(model.rgb_mean) != ipt.RGB_MEAN:
    raise errors.InputError('The official model has mlp_dim = 4 x n_feats x patch_dim**2 and '
                            'the DIV2K mean; this model does not.')
  if path not in sys.path:
    sys.path.insert(0, path)
  from model import ipt as official_ipt  # pylint: disable=g-import-not-at-top,import-error
  args = types.SimpleNamespace(
      n_feats=model.n_feats, n_colors=3, rgb_range=255,
      scale=[model.scale(i) for i in range(len(model.tasks))], patch_size=model.patch_size,
      patch_dim=model.patch_dim, num_heads=model.num_heads, num_layers=model.num_layers,
      num_queries=len(model.tasks), dropout_rate=model.dropout_rate, no_mlp=False,
      pos_every=False, no_pos=False, no_norm=False)
  net = official_ipt.ipt(args)
  net.set_scale(0)
  net.load_state_dict(torch_layout.to_torch(params, model), strict=True)
  return net


def benchmark_infer() -> None:
  model = _model()
  start = time.perf_counter()
  params = jax.block_until_ready(model.init_params(jax.random.key(_SEED.value)))
  init_s = time.perf_counter() - start
  image_model = inference.ImageModel(model, params, 0, **_INFERENCE.image_model_args())
  image = np.random.default_rng(_SEED.value).integers(
      0, 256, (_IMAGE_SIZE.value, _IMAGE_SIZE.value, 3)).astype(np.float32)
  start = time.perf_counter()
  restored = image_model(image)  # Compiles the tile function.
  compile_s = time.perf_counter() - start
  run_ours = lambda images: _times(lambda: image_model(image), images)
  run_ours(_WARMUP_STEPS.value)
  if _COMPARE.value:
    official = OfficialWholeImage(_COMPARE.value, model, params, image, image_model.tile_batch)
    print(f'same weights and image: the restored images differ by at most '
          f'{np.abs(restored - official()).max():.2g} (of 255; {image_model.mode} tiling here, '
          'forward_chop there)')
    ours_times, official_times = _side_by_side(run_ours, official.run)
    seconds = min(ours_times) * _STEPS.value
  else:
    seconds = sum(run_ours(_STEPS.value))
  tiles = image_model.num_tiles(_IMAGE_SIZE.value, _IMAGE_SIZE.value)
  print(f'{tiles} tiles of {model.patch_size}x{model.patch_size} per {_IMAGE_SIZE.value}x'
        f'{_IMAGE_SIZE.value} image ({image_model.mode} tiling, tile batch '
        f'{image_model.tile_batch})')
  _report('whole-image inference', seconds=seconds, images=_STEPS.value,
          flops=ipt.forward_flops(model, 0) * tiles * _STEPS.value, init_s=init_s,
          compile_s=compile_s, unit='image')
  if _COMPARE.value:
    _report_comparison(ours_times, official_times, unit='image', images=1)


def write_jpeg_folder(folder: str, num_images: int, seed: int) -> None:
  """Writes `num_images` 500x375 JPEGs (quality 90): random crops of the skimage samples."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage  # pylint: disable=g-import-not-at-top
  from ipt_jax.data import sources  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  height, width = _IMAGENET_SIZE
  images = []
  for name in sources.SAMPLE_SPLITS['train']:
    with Image.open(os.path.join(skimage.data_dir, name)) as image:
      image = sources.pil_to_rgb(image)
    # Upscale the small samples so that a 500x375 window fits.
    zoom = max(height / image.shape[0], width / image.shape[1], 1.)
    images.append(Image.fromarray(image).resize(
        (int(np.ceil(image.shape[1] * zoom)), int(np.ceil(image.shape[0] * zoom))),
        Image.BICUBIC))
  for i in range(num_images):
    image = images[i % len(images)]
    top = rng.integers(0, image.height - height + 1)
    left = rng.integers(0, image.width - width + 1)
    image.crop((left, top, left + width, top + height)).save(
        os.path.join(folder, f'{i:05d}.jpg'), quality=90)


def input_throughput(source: str, *, batch_size: int, steps: int, warmup_steps: int,
                     seed: int) -> tuple[float, float]:
  """Training samples per second of wall time and per second of CPU time (all threads).

  The second is what one core delivers however busy the machine is with other work.
  """
  from ipt_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = _config()
  data = config.data.copy_and_resolve_references()
  data.source = source
  data.batch_size = batch_size
  batches = pipeline.make_train_iterator(data, patch_size=train.build_model(config).patch_size,
                                         seed=seed)
  for _ in range(warmup_steps):
    next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return steps * batch_size / wall, steps * batch_size / cpu


def benchmark_input() -> None:
  cores = len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as folder:
    source = _SOURCE.value
    if source is None:
      write_jpeg_folder(folder, _NUM_IMAGES.value, _SEED.value)
      source = f'folder:{folder}'
    rate, cpu_rate = input_throughput(source, batch_size=_BATCH.value,
                                      steps=_STEPS.value, warmup_steps=_WARMUP_STEPS.value,
                                      seed=_SEED.value)
  logging.info('Input pipeline: %.0f samples/s, %.0f samples per CPU-second', rate, cpu_rate)
  print(f'input pipeline ({source}, batch {_BATCH.value}): {rate:.0f} samples/s in total, '
        f'{rate / cores:.0f} samples/s per core ({cores} cores); {cpu_rate:.0f} samples per '
        'CPU-second')


def main(argv):
  cli.check_no_arguments(argv)
  # Before JAX starts, the CPU's device count: --cpu_devices for inference, else the config's.
  if _WHAT.value == 'infer':
    parallel.initialize('off', _INFERENCE.cpu_devices.value)
  elif _CONFIG.value is not None:
    parallel.initialize('off', _CONFIG.value.mesh.cpu_devices)
  if _COMPARE.value:
    if _WHAT.value == 'input':
      raise errors.FlagError('--compare_official goes with --what=train or --what=infer.')
    _check_official_checkout(_COMPARE.value)
  {'train': benchmark_train, 'infer': benchmark_infer, 'input': benchmark_input}[_WHAT.value]()


if __name__ == '__main__':
  cli.run(main)

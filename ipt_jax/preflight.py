"""Preflight: compile a config's training for a Cloud TPU slice on any machine, without a TPU.

  python -m ipt_jax.preflight --config=configs/pretrain.py --topology=v5litepod-16
  python -m ipt_jax.preflight --config=configs/finetune.py:sr_x2 --topology=v6e-8 \
      --output_dir=preflight/v6e-8

The real TPU compiler (libtpu, `pip install "jax[tpu]"`) compiles the config's train step,
with its mesh, shardings and global batch, for the slice's devices as `topologies` describes
them, and the evaluation step. Tasks whose steps have the same shapes (derain and the
denoising tasks: scale 1) compile once. It prints per task:
  * HBM per chip, from the compiled program, against what the compiler can use: fits or not;
  * the largest batch per chip that fits, found by compiling around a linear prediction;
  * FLOPs per step and chip, of the optimised program, loops counted per trip (`hlo`);
  * the bytes each kind of collective hands over and sends over the interconnect;
  * an estimate of the step time: a roofline from the chip's peak bfloat16 FLOP/s, HBM and
    interconnect bandwidth (`tpus`), the slowest of the three. It assumes perfect overlap
    and peak rates, so it is a lower bound on the step time, not a measurement.
and a summary with the estimated days for the config's length. --output_dir writes the same
figures to preflight.json. When the config does not fit, it exits with status 1 and one line
naming a batch and a mesh.fsdp that fit.

Compiling the paper model takes minutes a program on 2 cores: programs compile two at a time,
and what the compiler made of every program (its memory figures and optimised HLO) is kept in
--cache_dir under a hash of its lowered text, the topology and the JAX and libtpu versions, so
that a second preflight is quick.
"""
from collections.abc import Callable
import concurrent.futures
import dataclasses
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import hlo
from ipt_jax import optimizer
from ipt_jax import parallel
from ipt_jax import quiet
from ipt_jax import tpus
from ipt_jax import train
from ipt_jax.models import ipt

_CONFIG = cli.config_flag()
_TOPOLOGY = flags.DEFINE_list(
    'topology', None, 'The Cloud TPU accelerator type(s) to compile for, e.g. v4-8, '
    'v5litepod-16, v5p-32, v6e-256; several, comma-separated, end with a table comparing them.')
_OUTPUT_DIR = cli.output_dir_flag()
_SEARCH = flags.DEFINE_bool(
    'search_batch', True, 'Find the largest batch per chip that fits, by compiling (a few '
    'more programs); when the config does not fit, it is searched anyway.')
_CACHE = flags.DEFINE_string(
    'cache_dir', os.path.join('~', '.cache', 'ipt_jax', 'preflight'), 'Keeps what the compiler '
    'made of each program (memory figures, optimised HLO); empty: compile everything.')
_MAX_BATCH = flags.DEFINE_integer(
    'max_batch_per_chip', 256, 'The batch search looks no higher than this many images per '
    'chip (a large batch compiles for many minutes).', lower_bound=1)
_PARALLEL = flags.DEFINE_integer('parallel_compiles', 2, 'Programs compiled at once.',
                                 lower_bound=1)

GIB = 2**30
_LIBTPU_MISSING = ('the TPU compiler (libtpu) is not installed: pip install '
                   f'"jax[tpu]=={jax.__version__}" (it compiles for TPUs on any machine).')


@dataclasses.dataclass(frozen=True)
class Program:
  """A step to compile: `kind` 'train' or 'eval', for a task index, at a global batch, over a
  mesh with `fsdp` devices sharding the large parameters."""
  kind: str
  task: int
  batch: int
  fsdp: int


@dataclasses.dataclass
class Figures:
  """What the compiler says of one program, per chip."""
  compile_s: float
  fits: bool
  hbm_gib: float  # Arguments + temporaries + code + outputs not aliased to arguments.
  arguments_gib: float
  temporaries_gib: float
  code_gib: float
  flops: float
  memory_bytes: float
  collectives: dict[str, dict[str, float]]  # kind -> {count, operand_bytes, traffic_bytes}
  compiler_error: str = ''  # The compiler's out-of-memory message, when it refused.

  @property
  def traffic_bytes(self) -> float:
    return sum(c['traffic_bytes'] for c in self.collectives.values())


@dataclasses.dataclass
class Estimate:
  """A roofline: the step can go no faster than its FLOPs at peak, its memory traffic at the
  HBM bandwidth, or its collectives at the interconnect bandwidth."""
  compute_s: float
  hbm_s: float
  ici_s: float
  images_per_step: int

  @property
  def step_s(self) -> float:
    return max(self.compute_s, self.hbm_s, self.ici_s)

  @property
  def bound(self) -> str:
    return max((self.compute_s, 'compute'), (self.hbm_s, 'HBM'), (self.ici_s, 'ICI'))[1]

  @property
  def images_per_s(self) -> float:
    return self.images_per_step / self.step_s


def estimate(figures: Figures, chip: tpus.Chip, images_per_step: int) -> Estimate:
  return Estimate(compute_s=figures.flops / (chip.peak_tflops * 1e12),
                  hbm_s=figures.memory_bytes / (chip.hbm_gbytes_per_s * 1e9),
                  ici_s=figures.traffic_bytes / (chip.ici_gbytes_per_s * 1e9),
                  images_per_step=images_per_step)


def usable_hbm_gib(devices) -> float | None:
  """The HBM the compiler lets one program use on these devices, from its own refusal of a
  program that needs more than any chip has (None if it words it otherwise)."""
  mesh = parallel.make_mesh(1, devices=devices)
  column = jax.ShapeDtypeStruct((2**18,), jnp.float32, sharding=parallel.replicated(mesh))
  try:  # Sorting a 256 GiB outer product needs it in temporaries.
    jax.jit(lambda x: jnp.sort(x[:, None] * x[None, :2**17], axis=0)[0]).lower(column).compile()
  except jax.errors.JaxRuntimeError as e:
    match = re.search(r'available HBM \(([0-9.]+)([GM])\)', str(e))
    if match:
      return float(match.group(1)) / (1024 if match.group(2) == 'M' else 1)
  return None


class Compiler:
  """Builds and compiles a config's steps for a slice's devices; caches what the compiler made
  of them."""

  def __init__(self, config: ml_collections.ConfigDict, tpu: tpus.Slice, devices,
               cache_dir: str | None, usable_gib: float, parallel_compiles: int):
    self.config = config
    self.tpu = tpu
    self.devices = devices
    self.model = build_model(config)
    steps = optimizer.total_steps(config)
    self.schedule = optimizer.learning_rate(config, steps)
    self.tx = optimizer.make(config, self.model, self.schedule)
    self.abstract_state = train.abstract_train_state(self.model, self.tx, config)
    self.usable_gib = usable_gib
    self._key = f'{tpu.topology_name} jax {jax.__version__} libtpu {_libtpu_version()}'
    self._cache_dir = cache_dir
    self._pool = concurrent.futures.ThreadPoolExecutor(parallel_compiles)
    self.compiled = []  # (compiler seconds, whether from the cache) of every program asked for.

  def close(self):
    self._pool.shutdown(cancel_futures=True)

  def figures(self, programs: list[Program]) -> dict[Program, Figures]:
    """Each program's figures: from the cache, else compiled (several at once)."""
    lowered = {p: self.lower(p) for p in programs}  # Tracing stays on this thread.
    futures = {p: self._pool.submit(self._figures, p, lowered) for p in programs}
    return {p: f.result() for p, f in futures.items()}

  def _figures(self, program: Program, lowered) -> Figures:
    """From the cache (the compiler's output, analysed again), else compiled and cached."""
    text = lowered[program].as_text()
    key = hashlib.sha256(f'{self._key}\n{text}'.encode()).hexdigest()
    path = self._cache_path(key)
    cached = bool(path and os.path.exists(path))
    if cached:
      with gzip.open(path, 'rt', encoding='utf-8') as f:
        compiled = json.load(f)
    else:
      logging.info('Compiling %s.', program)
      compiled = self.compile(lowered[program])
      if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_atomically(path, lambda temporary: _write_gzip_json(temporary, compiled))
    self.compiled.append((compiled['compile_s'], cached))
    return self.figures_of(compiled)

  def _cache_path(self, key: str) -> str | None:
    if not self._cache_dir:
      return None
    return os.path.join(os.path.expanduser(self._cache_dir), f'{key}.json.gz')

  @staticmethod
  def compile(lowered) -> dict:
    """What the compiler says: {'compile_s', and 'memory' (memory_analysis()) and 'hlo' (the
    optimised HLO text), or 'error' when it runs out of HBM}."""
    start = time.perf_counter()
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      return {'compile_s': time.perf_counter() - start, 'error': ' '.join(str(e).split())[:300]}
    return compiler_output(compiled, time.perf_counter() - start)

  def figures_of(self, compiled: dict) -> Figures:
    """The figures of a compiler's output (`compile`)."""
    if 'error' in compiled:
      needed = re.search(r'\(([0-9.]+)G\) exceeds', compiled['error'])
      nan = float('nan')
      return Figures(compile_s=compiled['compile_s'], fits=False,
                     hbm_gib=float(needed.group(1)) if needed else nan, arguments_gib=nan,
                     temporaries_gib=nan, code_gib=nan, flops=nan, memory_bytes=nan,
                     collectives={}, compiler_error=compiled['error'])
    memory = compiled['memory']
    analysis = hlo.analyse(compiled['hlo'], len(self.devices))
    hbm = (memory['argument'] + memory['temp'] + memory['generated_code'] + memory['output'] -
           memory['alias']) / GIB
    return Figures(
        compile_s=compiled['compile_s'], fits=hbm <= self.usable_gib, hbm_gib=hbm,
        arguments_gib=memory['argument'] / GIB, temporaries_gib=memory['temp'] / GIB,
        code_gib=memory['generated_code'] / GIB, flops=analysis.flops,
        memory_bytes=analysis.memory_bytes,
        collectives={k: dataclasses.asdict(v) for k, v in analysis.collectives.items()})

  def lower(self, program: Program):
    mesh = parallel.make_mesh(program.fsdp, devices=self.devices)
    shardings = train.state_shardings(mesh, self.abstract_state, self.config)
    state = jax.tree.map(_with_sharding, self.abstract_state, shardings)
    p = self.model.patch_size
    if program.kind == 'eval':
      lq = jax.ShapeDtypeStruct((program.batch, p, p, 3), jnp.float32,
                                sharding=parallel.replicated(mesh))
      return train.make_eval_step(self.model, program.task).lower(state.params, lq)
    config = self.config.copy_and_resolve_references()
    with config.unlocked():
      config.mesh.fsdp = program.fsdp
    step = train.make_train_steps(self.model, self.tx, self.schedule, config, mesh,
                                  self.abstract_state)[program.task]
    out = p * self.model.scale(program.task)
    batch = {'lq': ((program.batch, p, p, 3), jnp.float32),
             'hq': ((program.batch, out, out, 3), jnp.uint8),
             'image_id': ((program.batch,), jnp.int32)}
    sharding = parallel.batch_sharding(mesh)
    return step.lower(state, {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
                              for k, (shape, dtype) in batch.items()})


def compiler_output(compiled: jax.stages.Compiled, compile_s: float) -> dict:
  """What `Compiler.compile` keeps of a compiled program."""
  memory = compiled.memory_analysis()
  return {'compile_s': compile_s, 'hlo': compiled.as_text(),
          'memory': {name: getattr(memory, f'{name}_size_in_bytes') for name in (
              'argument', 'output', 'alias', 'temp', 'generated_code')}}


def _with_sharding(abstract, sharding):
  return jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding)


def _libtpu_version() -> str:
  return importlib.metadata.version('libtpu')


def build_model(config: ml_collections.ConfigDict) -> ipt.IPT:
  """The config's model; a fine-tuning config (sizes from its checkpoint) gets the paper's."""
  fields = dict(config.model)
  return ipt.create(**{'preset': 'paper', **fields}, tasks=config.data.tasks)


def distinct_tasks(model: ipt.IPT) -> dict[int, list[str]]:
  """The first task of each output scale -> every task with its step's shapes."""
  by_scale = {}
  for task, name in enumerate(model.tasks):
    by_scale.setdefault(model.scale(task), (task, []))[1].append(name)
  return dict(by_scale.values())


def valid_batch(per_chip: int, chips: int, config: ml_collections.ConfigDict) -> bool:
  """Whether a batch per chip trains with the config's loss, contrastive groups aligned with
  the chips' shares of the batch: a group within one chip, or spread over whole chips. A group
  that straddles chips' shares (20 per chip in groups of 64) makes XLA gather the features
  and compute the similarities on many chips: twice the memory and 2-3x the FLOPs (the
  paper's pre-training on v5litepod-16, docs/preflight.md)."""
  group, batch = config.loss.contrastive_group, per_chip * chips
  if not config.loss.contrastive_weight or group == 0 or group >= batch:
    return True
  return batch % group == 0 and (per_chip % group == 0 or group % per_chip == 0)


def largest_batch(fits: Callable[[list[int]], dict[int, Figures]], known: dict[int, Figures],
                  chips: int, config, usable_gib: float, max_per_chip: int,
                  rounds: int = 4) -> int:
  """The largest per-chip batch whose train step fits, by compiling: each round predicts it
  from a line through the memory of the batches compiled so far (through the arguments and
  one batch, at first), then compiles the prediction and the next valid batch above it.
  Returns 0 when a batch of 1 per chip does not fit, max_per_chip when that fits."""
  candidates = [b for b in range(1, max_per_chip + 1) if valid_batch(b, chips, config)]
  for _ in range(rounds):
    fitting = [b for b, f in known.items() if f.fits]
    over = [b for b, f in known.items() if not f.fits]
    low, high = max(fitting, default=0), min(over, default=candidates[-1] + 1)
    between = [b for b in candidates if low < b < high]
    if not between:
      return low
    guess = _predict(known, usable_gib)
    below = [b for b in between if b <= guess]
    pick = below[-1] if below else between[0]
    following = [b for b in between if b > pick][:1]
    known.update(fits([pick, *following]))
  return max((b for b, f in known.items() if f.fits), default=0)


def _predict(known: dict[int, Figures], usable_gib: float) -> float:
  """The batch at which the line through the compiled batches' HBM reaches usable_gib."""
  measured = sorted((b, f.hbm_gib) for b, f in known.items() if np.isfinite(f.hbm_gib))
  if not measured:
    return 0.
  if len(measured) >= 2:
    (b0, m0), (b1, m1) = measured[0], measured[-1]
    slope, base = (m1 - m0) / (b1 - b0), m0 - (m1 - m0) / (b1 - b0) * b0
  else:
    (b0, m0), = measured
    base = next((f.arguments_gib for f in known.values() if np.isfinite(f.arguments_gib)), 0.)
    slope = (m0 - base) / b0
  return (usable_gib - base) / slope if slope > 0 else float('inf')


def _write_gzip_json(path: str, value):
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    json.dump(value, f)


def _write_json(path: str, value):
  files.write_atomically(path, lambda temporary: open(temporary, 'w', encoding='utf-8').write(
      json.dumps(value, indent=1)))


class DoesNotFit(errors.InputError):
  """The config's steps need more HBM than the slice's chips have."""


def make_compiler(config: ml_collections.ConfigDict, accelerator_type: str, *,
                  cache_dir: str | None = None, parallel_compiles: int = 2) -> Compiler:
  """A Compiler of the config's steps for the slice's devices, once the config is checked."""
  train.check_config(config)
  tpu = tpus.get(accelerator_type)
  with quiet.libtpu_start_up():
    devices = tpu.devices()
  parallel.check_batch_size(config.data.batch_size,
                            parallel.make_mesh(config.mesh.fsdp, devices=devices))
  usable = usable_hbm_gib(devices) or tpu.chip.hbm_gib
  return Compiler(config, tpu, devices, cache_dir, usable, parallel_compiles)


def run(config: ml_collections.ConfigDict, accelerator_type: str, *, search_batch: bool = True,
        max_batch_per_chip: int = 256, cache_dir: str | None = None,
        parallel_compiles: int = 2) -> dict:
  """Compiles the config's steps for the slice and returns the report (preflight.json)."""
  compiler = make_compiler(config, accelerator_type, cache_dir=cache_dir,
                           parallel_compiles=parallel_compiles)
  try:
    return _report(compiler, search_batch and max_batch_per_chip)
  finally:
    compiler.close()


def _report(compiler: Compiler, max_batch_per_chip: int) -> dict:
  """max_batch_per_chip: where the batch search ends (0: no search unless it does not fit)."""
  tpu = compiler.tpu
  config, model, chips = compiler.config, compiler.model, tpu.chips
  batch, fsdp = config.data.batch_size, config.mesh.fsdp
  groups = distinct_tasks(model)
  largest_scale = max(groups, key=model.scale)
  programs = [Program('train', t, batch, fsdp) for t in groups]
  programs.append(Program('eval', largest_scale, config.eval.num_examples, fsdp))
  figures = compiler.figures(programs)
  train_figures = {p.task: figures[p] for p in programs if p.kind == 'train'}
  worst = max(train_figures, key=lambda t: train_figures[t].hbm_gib)
  fits = all(f.fits for f in figures.values())
  largest = None
  if max_batch_per_chip or not fits:
    per_chip = batch // chips
    known = {per_chip: train_figures[worst]} if batch % chips == 0 else {}
    compile_batches = lambda batches: {b: f for (b, f) in zip(batches, compiler.figures(
        [Program('train', worst, b * chips, fsdp) for b in batches]).values())}
    largest = largest_batch(compile_batches, known, chips, config, compiler.usable_gib,
                            max_batch_per_chip or per_chip)
  fsdp_fit = None
  worst_figures = train_figures[worst]
  # Sharding the parameters and Adam moments over every chip saves at most all but 1/chips of
  # the arguments: compiled only when that could be enough.
  if (not fits and fsdp != chips and np.isfinite(worst_figures.arguments_gib) and
      worst_figures.hbm_gib - worst_figures.arguments_gib * (1 - 1 / chips) <=
      compiler.usable_gib):
    fsdp_fit, = compiler.figures([Program('train', worst, batch, chips)]).values()
  tasks = []
  weights = _task_weights(config, model)
  for task, names in groups.items():
    f = train_figures[task]
    tasks.append({
        'task': model.tasks[task], 'tasks_with_these_shapes': names, 'step': 'train',
        'global_batch': batch, 'batch_per_chip': batch / chips, 'mesh_fsdp': fsdp,
        'share_of_steps': sum(weights[model.tasks.index(n)] for n in names),
        'model_flops_per_chip': _model_flops(model, task, batch / chips),
        **_figures_json(f, tpu, batch),
        'largest_batch_per_chip': largest if task == worst else None})
  eval_figures = figures[programs[-1]]
  tasks.append({'task': model.tasks[largest_scale], 'step': 'eval',
                'global_batch': config.eval.num_examples, 'note': 'every chip runs the whole '
                'evaluation batch (replicated)', **_figures_json(eval_figures, tpu, None)})
  step_s = sum(t['share_of_steps'] * t['estimate']['step_s'] for t in tasks
               if t['step'] == 'train' and t['estimate'])
  steps = optimizer.total_steps(config)
  summary = {
      'fits': fits, 'hbm_gib_needed': max(f.hbm_gib for f in figures.values()),
      'usable_hbm_gib': compiler.usable_gib, 'largest_batch_per_chip': largest,
      'max_batch_per_chip': max_batch_per_chip,
      'largest_batch_task': model.tasks[worst],
      'estimated_step_s': step_s if fits else None,
      'estimated_images_per_s': batch / step_s if fits and step_s else None,
      'total_steps': steps,
      'estimated_days': steps * step_s / 86400 if fits else None,
      'programs': len(compiler.compiled),
      'programs_from_cache': sum(cached for _, cached in compiler.compiled),
      'compile_s': sum(seconds for seconds, _ in compiler.compiled)}
  if fsdp_fit is not None:
    summary['fsdp_over_all_chips'] = {'mesh_fsdp': chips, 'fits': fsdp_fit.fits,
                                      'hbm_gib': fsdp_fit.hbm_gib}
  return {'topology': {'accelerator_type': tpu.accelerator_type, 'topology': tpu.topology_name,
                       'chips': chips, **dataclasses.asdict(tpu.chip)},
          'config': {'global_batch': batch, 'mesh_fsdp': fsdp, 'dtype': str(model.dtype),
                     'tasks': list(model.tasks)},
          'tasks': tasks, 'summary': summary}


def _task_weights(config, model) -> list[float]:
  weights = np.asarray(config.data.task_weights or [1.] * len(model.tasks), float)
  return list(weights / weights.sum())


def _model_flops(model: ipt.IPT, task: int, images: float) -> float:
  """The model's own count for a training step: 3 forward passes (no contrastive loss)."""
  return 3 * ipt.forward_flops(model, task) * images


def _figures_json(figures: Figures, tpu: tpus.Slice, batch: int | None) -> dict:
  result = dataclasses.asdict(figures)
  result['estimate'] = None
  if figures.fits and batch:
    e = estimate(figures, tpu.chip, batch)
    result['estimate'] = {'compute_s': e.compute_s, 'hbm_s': e.hbm_s, 'ici_s': e.ici_s,
                          'step_s': e.step_s, 'images_per_s': e.images_per_s, 'bound': e.bound}
  return result


def _gib(value: float) -> str:
  return f'{value:.2f}' if np.isfinite(value) else '?'


def _mib(value: float) -> str:
  return f'{value / 2**20:,.1f} MiB'


def _largest(per_chip: int, report: dict) -> str:
  capped = per_chip == report['summary']['max_batch_per_chip']
  return (f'{"at least " if capped else ""}{per_chip} per chip (global '
          f'{per_chip * report["topology"]["chips"]}), found by compiling'
          f'{"; the search stops there" if capped else ""}')


def format_report(report: dict) -> str:
  """The report as the command prints it: a table per task, then the summary."""
  topology, summary = report['topology'], report['summary']
  usable = summary['usable_hbm_gib']
  lines = [f'{topology["accelerator_type"]}: {topology["chips"]} chips ({topology["topology"]}), '
           f'{usable:.2f} GiB of HBM usable per chip; global batch '
           f'{report["config"]["global_batch"]}, mesh.fsdp={report["config"]["mesh_fsdp"]}, '
           f'{report["config"]["dtype"]}.']
  for task in report['tasks']:
    same = [t for t in task.get('tasks_with_these_shapes', []) if t != task['task']]
    batch = (f'{task["global_batch"]} ({task["batch_per_chip"]:g} per chip)'
             if task['step'] == 'train' else f'{task["global_batch"]} on every chip')
    lines += ['', f'{task["task"]} {task["step"]} step{" (also " + ", ".join(same) + ")" if same else ""}'
              f': batch {batch}, compiled in {task["compile_s"]:.0f} s']
    rows = [('HBM per chip', f'{_gib(task["hbm_gib"])} GiB of {usable:.2f}: '
             f'{"fits" if task["fits"] else "DOES NOT FIT"} (arguments '
             f'{_gib(task["arguments_gib"])}, temporaries {_gib(task["temporaries_gib"])}, code '
             f'{_gib(task["code_gib"])})')]
    if task.get('largest_batch_per_chip') is not None:
      rows.append(('largest batch', _largest(task['largest_batch_per_chip'], report)))
    if task['fits']:
      flops = f'{task["flops"] / 1e12:.3g} TFLOP per chip'
      if 'model_flops_per_chip' in task:
        flops += (f' (the model\'s own count, without the contrastive loss: '
                  f'{task["model_flops_per_chip"] / 1e12:.3g})')
      rows += [('FLOPs per step', flops),
               ('HBM traffic', f'{task["memory_bytes"] / GIB:,.1f} GiB per chip')]
      for kind, c in sorted(task['collectives'].items()):
        rows.append((kind, f'{c["count"]:g} per step, {_mib(c["operand_bytes"])} per chip, '
                           f'{_mib(c["traffic_bytes"])} sent over ICI'))
      if task['estimate']:
        e = task['estimate']
        rows.append(('estimate', f'{e["step_s"] * 1e3:.1f} ms per step, {e["images_per_s"]:,.0f} '
                     f'images/s, {e["bound"]}-bound (roofline: compute '
                     f'{e["compute_s"] * 1e3:.1f} ms, HBM {e["hbm_s"] * 1e3:.1f} ms, ICI '
                     f'{e["ici_s"] * 1e3:.1f} ms)'))
    else:
      rows.append(('compiler', task['compiler_error'] or 'fits the compiler, not the chip'))
    lines += [f'  {name:16s}{value}' for name, value in rows]
  lines += ['', 'summary: ' + (
      f'fits ({_gib(summary["hbm_gib_needed"])} GiB of {usable:.2f} per chip at most)'
      if summary['fits'] else 'DOES NOT FIT')]
  if summary['largest_batch_per_chip'] is not None:
    lines.append(f'  largest batch: {_largest(summary["largest_batch_per_chip"], report)}, '
                 f'for {summary["largest_batch_task"]}, the task that needs the most HBM')
  if summary['estimated_step_s']:
    lines.append(f'  estimate (roofline, a lower bound): {summary["estimated_step_s"] * 1e3:.1f} '
                 f'ms per step on average over the tasks, '
                 f'{summary["estimated_images_per_s"]:,.0f} images/s; '
                 f'{summary["total_steps"]:,} steps in {summary["estimated_days"]:.2g} days')
  lines.append(f'  {summary["programs"]} programs, {summary["programs_from_cache"]} of them from '
               f'the cache: {summary["compile_s"]:.0f} s of compiler time (a cached program\'s '
               'first compile)')
  return '\n'.join(lines)


def does_not_fit_line(report: dict) -> str:
  """What does not fit, and the batch and mesh.fsdp that do."""
  summary, config = report['summary'], report['config']
  chips = report['topology']['chips']
  worst = next(t for t in report['tasks'] if not t['fits'])
  line = (f'the config does not fit {report["topology"]["accelerator_type"]}: the '
          f'{worst["task"]} {worst["step"]} step needs {_gib(worst["hbm_gib"])} GiB per chip of '
          f'{summary["usable_hbm_gib"]:.2f} at a global batch of {worst["global_batch"]}.')
  if worst['step'] == 'eval':
    return line + ' Every chip evaluates the whole batch: lower --config.eval.num_examples.'
  largest = summary['largest_batch_per_chip']
  if largest:
    line += (f' It fits at --config.data.batch_size={largest * chips} '
             f'--config.mesh.fsdp={config["mesh_fsdp"]} ({largest} per chip).')
  else:
    line += ' Not even one image per chip fits at this mesh.fsdp.'
  sharded = summary.get('fsdp_over_all_chips')
  if sharded:
    line += (f' --config.mesh.fsdp={sharded["mesh_fsdp"]} at this batch '
             f'{"fits" if sharded["fits"] else "does not fit either"} '
             f'({_gib(sharded["hbm_gib"])} GiB).')
  elif chips > 1 and config['mesh_fsdp'] != chips and np.isfinite(worst['arguments_gib']):
    line += (f' No mesh.fsdp makes this batch fit: sharding the parameters and optimiser '
             f'state ({_gib(worst["arguments_gib"])} GiB) over all chips saves too little.')
  return line


def _ici_s(task: dict, chips: int, slice_chips: int, chip: dict) -> float:
  """A train step's collectives' time on `chips` chips: those over the whole slice of
  `slice_chips` rescaled to `chips` devices, those over smaller groups as they are."""
  sent = sum(hlo.traffic(kind, size, chips if group == slice_chips else group)
             for kind, c in task['collectives'].items()
             for group, size in c.get('operand_bytes_by_group', []))
  return sent / (chip['ici_gbytes_per_s'] * 1e9)


def scaling(report: dict, chips: int) -> float | None:
  """Estimated images/s per chip of the same per-chip program on a slice of `chips` chips of
  this generation (only the slice-wide collectives change), averaged over the tasks."""
  topology = report['topology']
  step_s = 0.
  for task in report['tasks']:
    if task['step'] != 'train':
      continue
    if not task['estimate']:
      return None
    e = task['estimate']
    ici = _ici_s(task, chips, topology['chips'], topology)
    step_s += task['share_of_steps'] * max(e['compute_s'], e['hbm_s'], ici)
  return report['config']['global_batch'] / topology['chips'] / step_s


def format_table(reports: list[dict]) -> str:
  """One markdown row per slice: the summary's figures, and how the same batch per chip would
  scale from 8 to 256 chips (estimated)."""
  lines = ['| accelerator | chips | fits | GiB per chip (of usable) | largest batch per chip | '
           'mesh.fsdp | est. step time | est. images/s | est. days | bound | est. scaling, '
           '8 -> 256 chips |', '|' + ' --- |' * 11]
  for report in reports:
    summary, topology = report['summary'], report['topology']
    bound = {t['estimate']['bound'] for t in report['tasks']
             if t['step'] == 'train' and t['estimate']}
    eight, many = scaling(report, 8), scaling(report, 256)
    fits = summary['fits']
    lines.append(
        f'| {topology["accelerator_type"]} | {topology["chips"]} | {"yes" if fits else "no"} | '
        f'{_gib(summary["hbm_gib_needed"])} ({summary["usable_hbm_gib"]:.2f}) | '
        f'{summary["largest_batch_per_chip"] if summary["largest_batch_per_chip"] is not None else "not searched"} | '
        f'{report["config"]["mesh_fsdp"]} | '
        + (f'{summary["estimated_step_s"] * 1e3:.1f} ms | {summary["estimated_images_per_s"]:,.0f} | '
           f'{summary["estimated_days"]:.2g} | {", ".join(sorted(bound))} | '
           f'{many / eight:.0%} |' if fits else '— | — | — | — | — |'))
  return '\n'.join(lines)


def main(argv):
  cli.check_no_arguments(argv)
  if importlib.util.find_spec('libtpu') is None:
    raise errors.InputError(_LIBTPU_MISSING)
  for name in _TOPOLOGY.value:  # Every name checked before minutes of compiling.
    tpus.get(name)
  if _OUTPUT_DIR.value:
    files.prepare_output_dir(_OUTPUT_DIR.value)
  reports = {}
  for name in _TOPOLOGY.value:
    reports[name] = run(_CONFIG.value, name, search_batch=_SEARCH.value,
                        max_batch_per_chip=_MAX_BATCH.value, cache_dir=_CACHE.value or None,
                        parallel_compiles=_PARALLEL.value)
    print(format_report(reports[name]) + '\n', flush=True)
    if _OUTPUT_DIR.value:  # After each slice: minutes of compiling are not lost.
      _write_json(os.path.join(_OUTPUT_DIR.value, 'preflight.json'), reports)
  if len(reports) > 1:
    print(format_table(list(reports.values())), flush=True)
  failed = [r for r in reports.values() if not r['summary']['fits']]
  if failed:
    raise DoesNotFit(' '.join(does_not_fit_line(r) for r in failed))


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # Nothing runs: no TPU is looked for.
  flags.mark_flags_as_required(['config', 'topology'])
  cli.run(main)

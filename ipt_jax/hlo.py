"""What a compiled XLA program does per run, read from its optimised HLO text.

`analyse(compiled.as_text())` counts, per device, the FLOPs of its matrix multiplications and
convolutions, the bytes its kernels read and write in device memory, and the bytes each kind of
collective sends. Every instruction counts as often as it runs: the body of a loop (the scan
over IPT's layers) times its trip count. XLA's own `cost_analysis()` counts a loop body once,
so it undercounts a scanned model by about the number of layers.

The memory traffic is a roofline's: every top-level kernel (fusion, copy, collective...) reads
its operands and writes its result once; what a kernel keeps on chip is not counted twice.
The collectives' traffic is that of ring algorithms on n devices: an all-reduce of S bytes
sends 2 (n - 1) / n S per device, an all-gather (n - 1) times its operand, a reduce-scatter and
an all-to-all (n - 1) / n of theirs, a collective-permute its operand.
"""
import collections
import dataclasses
import functools
import math
import re

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')

# Bytes per element of each HLO element type.
_BYTES = {'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1,
          's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8,
          'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_ARRAY = re.compile(r'\b(' + '|'.join(_BYTES) + r')\[([0-9,]*)\]')
_ARRAY_LAYOUT = re.compile(_ARRAY.pattern + r'(\{[^}]*\})?')
# `%name = <shape> <opcode>(<operands>)<attributes>`; a shape may be a tuple.
_INSTRUCTION = re.compile(r'^\s*(ROOT )?%([^ ]+) = (\(.*?\)|[^ ]+) ([a-z][a-z0-9-]*)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([^ ]+) ')
_CALLED = re.compile(r'\b(?:calls|body|to_apply|branch_computations|called_computations)='
                     r'(\{[^}]*\}|%[^ ,]+)')
# Instructions that move no data themselves.
_FREE = {'parameter', 'get-tuple-element', 'tuple', 'bitcast', 'constant', 'while', 'call',
         'conditional', 'after-all', 'partition-id', 'replica-id', 'iota', 'opt-barrier',
         'add-dependency'}


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attributes: str
  literal: str  # What is written between its parentheses (a constant's value, a parameter's index).
  is_root: bool = False


@dataclasses.dataclass
class Collective:
  """One kind of collective over a program run, per device."""
  count: int = 0  # Instructions run (a loop's, times its trips).
  operand_bytes: float = 0.  # The data each device hands to them.
  traffic_bytes: float = 0.  # What each device sends over the interconnect (ring algorithms).
  # [devices in the group, operand bytes] of the operands, by group size.
  operand_bytes_by_group: list[list[float]] = dataclasses.field(default_factory=list)

  def add(self, runs: int, operand_bytes: float, group: int, kind: str):
    self.count += runs
    self.operand_bytes += runs * operand_bytes
    self.traffic_bytes += runs * traffic(kind, operand_bytes, group)
    for entry in self.operand_bytes_by_group:
      if entry[0] == group:
        entry[1] += runs * operand_bytes
        break
    else:
      self.operand_bytes_by_group.append([group, runs * operand_bytes])


@dataclasses.dataclass
class Analysis:
  flops: float  # Of dots and convolutions, per device.
  memory_bytes: float  # Read and written by the kernels in device memory, per device.
  collectives: dict[str, Collective]  # By kind (COLLECTIVES), those that occur.
  loop_trips: list[int]  # The trip count of each while loop.


def shape_bytes(shape: str, hbm_only: bool = False) -> float:
  """Bytes of an HLO shape (array or tuple), e.g. 'bf16[8,72]{1,0}' -> 1152. hbm_only: of the
  arrays in device memory alone, not those whose layout puts them in another memory space
  (S(1): a TPU core's on-chip vector memory)."""
  return sum(_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
             for dtype, dims, layout in _ARRAY_LAYOUT.findall(shape)
             if not (hbm_only and re.search(r'S\(\d+\)', layout)))


def _dims(shape: str) -> list[int]:
  match = _ARRAY.search(shape)
  return [int(d) for d in match.group(2).split(',') if d] if match else []


def _split_operands(text: str) -> tuple[str, str]:
  """'%a, %b), attr=...' -> ('%a, %b', ', attr=...')."""
  depth, end = 0, len(text)
  for i, char in enumerate(text):
    if char in '({':
      depth += 1
    elif char in ')}':
      if depth == 0:
        end = i
        break
      depth -= 1
  return text[:end], text[end + 1:]


def parse(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """HLO module text -> ({computation: its instructions}, the entry computation's name)."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    if not line.startswith(' ') and line.rstrip().endswith('{'):
      match = _COMPUTATION.match(line)
      if match:
        current = computations.setdefault(match.group(1), [])
        if line.startswith('ENTRY'):
          entry = match.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      root, name, shape, opcode, rest = match.groups()
      operands, attributes = _split_operands(rest)
      current.append(Instruction(name, shape, opcode, re.findall(r'%([^ ,)]+)', operands),
                                 attributes, operands.strip(), bool(root)))
  if entry is None:
    raise ValueError('No ENTRY computation in the HLO text.')
  return computations, entry


def _trip_count(condition: list[Instruction]) -> int:
  """A counted loop's trips: the integer its condition compares the counter with."""
  bounds = [int(i.literal) for i in condition
            if i.opcode == 'constant' and re.fullmatch(r'-?\d+', i.literal)]
  return max(bounds) if bounds else 1


def _group_size(attributes: str, default: int) -> int:
  """Devices per replica group: `replica_groups={{0,1},{2,3}}` or the iota form `[2,2]<=[4]`."""
  iota = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', attributes)
  if iota:
    return int(iota.group(2))
  named = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", attributes)
  if named:  # mesh['axis_0'=4,'axis_1'=2] {'axis_0'}: groups along the listed axes.
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", named.group(1)))
    return math.prod(int(sizes[axis]) for axis in re.findall(r"'([^']+)'", named.group(2)))
  listed = re.search(r'replica_groups=\{\{([0-9,]*)\}', attributes)
  if listed:
    return len(listed.group(1).split(','))
  pairs = re.search(r'source_target_pairs=', attributes)
  return 2 if pairs else default


def traffic(kind: str, operand_bytes: float, n: int) -> float:
  """Bytes one device sends for a collective of `kind` over n devices (ring algorithms)."""
  if n <= 1:
    return 0.
  return {'all-reduce': 2 * (n - 1) / n * operand_bytes,
          'all-gather': (n - 1) * operand_bytes,
          'reduce-scatter': (n - 1) / n * operand_bytes,
          'all-to-all': (n - 1) / n * operand_bytes,
          'collective-permute': operand_bytes}[kind]


def _flops(instruction: Instruction, shapes: dict[str, str]) -> float:
  if instruction.opcode == 'dot':
    lhs = _dims(shapes[instruction.operands[0]])
    contracting = re.search(r'lhs_contracting_dims=\{([0-9,]*)\}', instruction.attributes)
    size = math.prod(lhs[int(d)] for d in contracting.group(1).split(',') if d) if contracting else 1
    return 2. * math.prod(_dims(instruction.shape)) * size
  if instruction.opcode == 'convolution':
    return _convolution_flops(instruction, shapes)
  return 0.


def _window_taps(size: int, out_size: int, window: dict[str, list[int]], dim: int) -> int:
  """Window taps that land on input elements, summed over a spatial dimension's outputs:
  not on padding, nor between the elements of an lhs-dilated input. XLA:TPU writes batched
  matmuls as convolutions whose window spans a padded or dilated batch dimension, where most
  taps land on nothing."""
  field = lambda name, default: window.get(name, [default] * (dim + 1))[dim]
  k, stride, dilation = field('size', 1), field('stride', 1), field('lhs_dilate', 1)
  rhs_dilation, low = field('rhs_dilate', 1), window.get('pad', [(0, 0)] * (dim + 1))[dim][0]
  last = (size - 1) * dilation
  return sum(1 for o in range(out_size) for j in range(k)
             if 0 <= (p := o * stride + j * rhs_dilation - low) <= last and p % dilation == 0)


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
  """2 x (multiply-adds that touch input elements) of a convolution."""
  lhs, kernel = (_dims(shapes[o]) for o in instruction.operands[:2])
  out = _dims(instruction.shape)
  labels = re.search(r'dim_labels=([^_]+)_([^-]+)->(\S+?)[,\s]', instruction.attributes + ',')
  lhs_labels, kernel_labels, out_labels = labels.groups()
  window = {}
  match = re.search(r'window=\{([^}]*)\}', instruction.attributes)
  for field in (match.group(1).split() if match else []):
    name, value = field.split('=')
    parts = value.split('x')
    window[name] = ([tuple(int(v) for v in part.split('_')) for part in parts] if name == 'pad'
                    else [int(v) for v in parts])
  spatial = [c for c in out_labels if c.isdigit()]
  taps = math.prod(_window_taps(lhs[lhs_labels.index(c)], out[out_labels.index(c)], window, int(c))
                   for c in spatial)
  non_spatial = math.prod(out[out_labels.index(c)] for c in out_labels if not c.isdigit())
  return 2. * non_spatial * taps * kernel[kernel_labels.index('i')]


def _fused(instruction: Instruction) -> str | None:
  """The computation a fusion (or call) runs: its `calls=` attribute."""
  called = re.search(r'calls=%([^ ,]+)', instruction.attributes)
  return called.group(1) if called else None


def _users(instructions: list[Instruction], name: str) -> list[Instruction]:
  """What reads `name`, looking through bitcasts."""
  users = []
  for i in instructions:
    if name in i.operands:
      users += _users(instructions, i.name) if i.opcode == 'bitcast' else [i]
  return users


def _parameter_read(computations, computation: str, index: int, size: float) -> float:
  """Bytes of a fused computation's parameter `index` (of `size` bytes) that it reads: only the
  slices it dynamic-slices out, nothing of a buffer it dynamic-update-slices into in place,
  nested fusions followed."""
  instructions = computations[computation]
  name = next((i.name for i in instructions
               if i.opcode == 'parameter' and i.literal == str(index)), None)
  users = _users(instructions, name) if name else []
  if not users:
    return size
  read = 0.
  for user in users:
    if user.opcode == 'dynamic-slice' and user.operands[0] == name:
      read += shape_bytes(user.shape)
    elif user.opcode == 'dynamic-update-slice' and user.operands[0] == name:
      continue
    elif user.opcode == 'fusion' and _fused(user):
      read += sum(_parameter_read(computations, _fused(user), k, size)
                  for k, operand in enumerate(user.operands) if operand == name)
    else:
      return size
  return min(read, size)


def _tuple_elements(shape: str) -> list[str]:
  """The top-level elements of a tuple shape, as text."""
  elements, depth, start = [], 0, 1
  for i, char in enumerate(shape):
    if char in '({':
      depth += 1
    elif char in ')}':
      depth -= 1
    if (char == ',' and depth == 1) or (char == ')' and depth == 0):
      elements.append(shape[start:i].strip())
      start = i + 1
  return elements


def _kernel_bytes(instruction: Instruction, shapes: dict[str, str], computations) -> float:
  """HBM bytes a top-level kernel reads and writes; what lives in on-chip memory (layouts
  marked S(1)) is not counted. A loop over layers keeps each layer's activations in stacked
  buffers: a kernel that dynamic-slices one layer out of its operand reads the slice, and one
  that dynamic-update-slices into it writes the update (in place)."""
  hbm = functools.partial(shape_bytes, hbm_only=True)
  operands = [hbm(shapes.get(o, '')) for o in instruction.operands]
  opcode = instruction.opcode
  if opcode in ('dynamic-slice', 'slice'):
    return hbm(instruction.shape) + shape_bytes(instruction.shape)
  if opcode == 'dynamic-update-slice':
    return 2 * shape_bytes(shapes.get(instruction.operands[1], ''))
  if opcode == 'slice-start':  # ((operand), slice, context): reads the slice.
    piece = _tuple_elements(instruction.shape)[1]
    return shape_bytes(piece) + hbm(piece)
  if opcode == 'copy-start':  # (destination, source, context).
    return sum(hbm(element) for element in _tuple_elements(instruction.shape)[:2])
  called = _fused(instruction)
  if opcode != 'fusion' or not called:
    return hbm(instruction.shape) + sum(operands)
  fused = computations[called]
  read = sum(_parameter_read(computations, called, k, size)
             for k, size in enumerate(operands) if size)
  by_name = {i.name: i for i in fused}
  root = next((i for i in fused if i.is_root), fused[-1])
  outputs = [by_name[o] for o in root.operands] if root.opcode == 'tuple' else [root]
  written = sum(shape_bytes(by_name[o.operands[1]].shape) if o.opcode == 'dynamic-update-slice'
                else hbm(o.shape) for o in outputs)
  return read + written


def analyse(text: str, num_devices: int) -> Analysis:
  """FLOPs, memory traffic and collectives per device of one run of an HLO module's entry."""
  computations, entry = parse(text)
  flops, memory = 0., 0.
  collectives = collections.defaultdict(Collective)
  trips = []
  # (computation, runs per program run, whether its instructions are kernels of their own).
  pending = [(entry, 1, True)]
  while pending:
    name, runs, top_level = pending.pop()
    instructions = computations[name]
    shapes = {i.name: i.shape for i in instructions}
    for instruction in instructions:
      flops += runs * _flops(instruction, shapes)
      opcode = instruction.opcode
      kind = opcode.removesuffix('-start')
      if top_level and opcode not in _FREE and not opcode.endswith('-done'):
        memory += runs * _kernel_bytes(instruction, shapes, computations)
      if kind in COLLECTIVES and not opcode.endswith('-done'):
        size = sum(shape_bytes(shapes.get(o, '')) for o in instruction.operands)
        collectives[kind].add(runs, size, _group_size(instruction.attributes, num_devices), kind)
      for callee, callee_runs, callee_top in _callees(instruction, computations, runs):
        if callee_runs != runs:
          trips.append(callee_runs // runs)
        pending.append((callee, callee_runs, callee_top and top_level))
  return Analysis(flops, memory, dict(collectives), trips)


def _callees(instruction: Instruction, computations, runs: int):
  """(computation, runs, top-level) of what an instruction calls: a while loop's body runs
  its trip count times; a fusion's or reduction's computation is part of its kernel."""
  if instruction.opcode == 'while':
    body = re.search(r'body=%([^ ,]+)', instruction.attributes).group(1)
    condition = re.search(r'condition=%([^ ,]+)', instruction.attributes).group(1)
    yield body, runs * _trip_count(computations[condition]), True
    return
  top_level = instruction.opcode in ('call', 'conditional')
  if instruction.opcode in ('call', 'conditional', 'fusion'):
    for match in _CALLED.finditer(instruction.attributes):
      for callee in re.findall(r'%([^ ,}]+)', match.group(1)):
        yield callee, runs, top_level

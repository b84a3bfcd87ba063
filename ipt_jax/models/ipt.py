"""The Image Processing Transformer (IPT, Chen et al., CVPR 2021) in Flax linen.

One head, tail and task embedding per task around one shared encoder-decoder
transformer (the body) on 3x3 patch tokens, numerically the official PyTorch
model. Inputs and outputs are NHWC in [0, 255]; the output is not clipped.

Parameter names (used by `ipt_jax.convert` and by the per-task optimiser):
  head_<task>/{conv_in, res_0, res_1}
  body/{linear_encoding, pos_embed, query_embed_<task>, encoder_<i>, decoder_<i>, mlp_head}
  tail_<task>/{upsample_<i>, conv_out}

The facts this module matches, with their sources, are in docs/ipt_reference.md ("Model").
"""
from collections.abc import Sequence
import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipt_jax import errors
from ipt_jax import tasks as tasks_lib

# Mean RGB of DIV2K on the [0, 1] scale, subtracted first and added back last.
RGB_MEAN = (0.4488, 0.4371, 0.4040)

# Trainable parameters with the six pre-training tasks, and GFLOPs of one 48x48 sr_x2
# forward pass (forward_flops), to size runs and MFU.
PRESETS = {
    # The paper's model: 118,892,370 parameters (the official checkpoint's 118,892,394 less
    # its 24 fixed mean-shift values); 66.6 GFLOPs.
    'paper': dict(n_feats=64, num_heads=12, num_layers=12, mlp_dim=2304),
    # For quick experiments on one accelerator: 11,397,042 parameters; 6.7 GFLOPs.
    'small': dict(n_feats=32, num_heads=6, num_layers=4, mlp_dim=1152),
    # For tests and CPU runs: 522,810 parameters; 0.33 GFLOPs.
    'tiny': dict(n_feats=8, num_heads=2, num_layers=2, mlp_dim=288),
}

# Task-specific parameters are named with these prefixes followed by the task name.
TASK_PREFIXES = ('head_', 'tail_', 'query_embed_')


def _uniform(bound: float):
  """U(-bound, bound): PyTorch's default for conv / linear weights and biases."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _torch_default_init(fan_in: int) -> dict[str, Any]:
  # kaiming_uniform(a=sqrt(5)) and the matching bias init both give 1/sqrt(fan_in).
  bound = 1 / math.sqrt(fan_in)
  return dict(kernel_init=_uniform(bound), bias_init=_uniform(bound))


def conv(features: int, kernel_size: int, in_features: int, dtype, param_dtype,
         name: str) -> nn.Conv:
  """A 'same'-padded square convolution with bias, initialised as PyTorch's."""
  return nn.Conv(features, (kernel_size, kernel_size), padding='SAME', dtype=dtype,
                 param_dtype=param_dtype, name=name,
                 **_torch_default_init(in_features * kernel_size**2))


class ResBlock(nn.Module):
  """conv 5x5 -> ReLU -> conv 5x5, plus identity.

  The head's residual block (Chen et al. 2021, Sec. 3.1; official `model/common.py`
  ResBlock with kernel size 5). Both convolutions keep the input's channel count.

  Attributes:
    dtype: compute dtype of the convolutions.
    param_dtype: dtype of the kernels and biases.
  """
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    conv5 = lambda name: conv(n, 5, n, self.dtype, self.param_dtype, name)
    return x + conv5('conv_1')(nn.relu(conv5('conv_0')(x)))


def _pixel_dtype(dtype):
  """At least float32 for the convolutions that read or write pixels: bfloat16 holds values
  above 128 only to +-0.5. They are a tiny share of the model's FLOPs."""
  return jnp.promote_types(dtype, jnp.float32)


class Head(nn.Module):
  """Task head: conv 3x3 (3 -> n_feats), then two ResBlocks.

  One per task (Chen et al. 2021, Sec. 3.1, Fig. 2; official `model/ipt.py`, `ipt.head`).
  Takes the mean-shifted image, returns an n_feats-channel map of the same size.

  Attributes:
    n_feats: output channels (64 in the paper), the body's feature channels.
    dtype: compute dtype; the first convolution, which reads pixels, runs in at least float32.
    param_dtype: dtype of the kernels and biases.
  """
  n_feats: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(self.n_feats, 3, x.shape[-1], _pixel_dtype(self.dtype), self.param_dtype,
             'conv_in')(x)
    x = ResBlock(self.dtype, self.param_dtype, name='res_0')(x)
    return ResBlock(self.dtype, self.param_dtype, name='res_1')(x)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """NHWC pixel shuffle with PyTorch's channel order: out[h*r+i, w*r+j, c] = in[h, w, c*r*r+i*r+j]."""
  return einops.rearrange(x, 'b h w (c i j) -> b (h i) (w j) c', i=r, j=r)


def upsampler_factors(scale: int) -> list[int]:
  """Pixel-shuffle factors of a tail: x2^k: k times 2 (conv to 4n, shuffle 2); x3: once 3
  (conv to 9n); x1: none."""
  return [3] if scale == 3 else [2] * int(math.log2(scale))


class Tail(nn.Module):
  """Task tail: pixel-shuffle upsampler for the task's scale, then conv 3x3 (n_feats -> 3).

  One per task (Chen et al. 2021, Sec. 3.1, Fig. 2; official `model/common.py` Upsampler
  and `model/ipt.py`, `ipt.tail`).

  Attributes:
    scale: output size / input size: 1 (no upsampler), 3, or a power of 2.
    dtype, param_dtype: compute dtype (the last convolution, which writes pixels, runs in at
      least float32) and the dtype of the kernels and biases.
  """
  scale: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n_feats = x.shape[-1]
    for i, r in enumerate(upsampler_factors(self.scale)):
      x = conv(n_feats * r * r, 3, n_feats, self.dtype, self.param_dtype, f'upsample_{i}')(x)
      x = pixel_shuffle(x, r)
    return conv(3, 3, n_feats, _pixel_dtype(self.dtype), self.param_dtype, 'conv_out')(x)


class Attention(nn.Module):
  """Multi-head attention without biases, as torch.nn.MultiheadAttention(bias=False).

  The attention of the encoder and decoder layers (Chen et al. 2021, Sec. 3.1; official
  `model/ipt.py`, which builds it with bias=False). Separate query / key / value kernels
  here stand for PyTorch's packed in_proj_weight (ipt_jax.convert splits and joins it).

  Attributes:
    num_heads: number of heads; the token width must divide by it (12 heads of 48 in the
      paper).
    qkv_init_bound: U(-bound, bound) init of the query / key / value kernels, to match the
      initialisation of the official encoder or decoder.
    dtype: compute dtype.
    param_dtype: dtype of the kernels.
    attention_impl: `implementation` of jax.nn.dot_product_attention ('xla'; 'cudnn': fused
      attention on NVIDIA GPUs). None: `dot_product_attention` below in float32 and float64,
      jax.nn.dot_product_attention's choice in bfloat16.
  """
  num_heads: int
  qkv_init_bound: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, query, key, value):
    dim = query.shape[-1]
    dense = lambda name, bound: nn.Dense(dim, use_bias=False, dtype=self.dtype,
                                         param_dtype=self.param_dtype, name=name,
                                         kernel_init=_uniform(bound))
    # Heads first ([batch, heads, tokens, head_dim]): batched matrix products without
    # transposes in between, the fastest layout on XLA:CPU.
    heads = lambda t: einops.rearrange(t, 'b t (n d) -> b n t d', n=self.num_heads)
    q = heads(dense('query', self.qkv_init_bound)(query))
    k = heads(dense('key', self.qkv_init_bound)(key))
    v = heads(dense('value', self.qkv_init_bound)(value))
    if self.attention_impl is None and q.dtype in (jnp.float32, jnp.float64):
      out = dot_product_attention(q, k, v)
    else:  # bfloat16 (softmax in float32 with consistent backward dtypes), or a named kernel.
      swap = lambda t: jnp.swapaxes(t, 1, 2)
      out = swap(jax.nn.dot_product_attention(swap(q), swap(k), swap(v),
                                              implementation=self.attention_impl))
    return dense('out', 1 / math.sqrt(dim))(einops.rearrange(out, 'b n t d -> b t (n d)'))


def dot_product_attention(q, k, v):
  """softmax(q k^T / sqrt(head_dim)) v on [batch, heads, tokens, head_dim], in q's dtype.

  Normalised after the product with v, as exp(logits - max) v / sum(exp(logits - max)): the
  same in exact arithmetic, and the scale goes on q, so that nothing [tokens, tokens] is
  divided or scaled (on 2 CPU cores, whole-image inference of the small_data model is about
  10% faster than with a softmax first, BENCHMARKS.md). No transposes to and from
  jax.nn.dot_product_attention's [batch, tokens, heads, head_dim].
  """
  logits = jnp.einsum('bnqd,bnkd->bnqk', q / math.sqrt(q.shape[-1]), k)
  # The shift cancels out, so it needs no gradient.
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  return jnp.einsum('bnqk,bnkd->bnqd', weights, v) / weights.sum(axis=-1, keepdims=True)


class MlpBlock(nn.Module):
  """Linear -> ReLU -> Linear, with dropout after each linear.

  The feed-forward network of every encoder and decoder layer, and the body's `mlp_head`
  (Chen et al. 2021, Sec. 3.1; official `model/ipt.py`). Output width = input width.

  Attributes:
    hidden_dim: width of the hidden layer (4x the token width, 2304, in the paper).
    dropout_rate: dropout after each linear layer (0 in the paper).
    dtype: compute dtype.
    param_dtype: dtype of the kernels and biases.
  """
  hidden_dim: int
  dropout_rate: float = 0.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dim = x.shape[-1]
    dense = lambda features, fan_in, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        **_torch_default_init(fan_in))
    x = nn.Dropout(self.dropout_rate)(dense(self.hidden_dim, dim, 'fc1')(x), deterministic)
    x = dense(dim, self.hidden_dim, 'fc2')(nn.relu(x))
    return nn.Dropout(self.dropout_rate)(x, deterministic)


class _Layer(nn.Module):
  """Common fields of the pre-norm encoder and decoder layers.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the feed-forward network.
    dropout_rate: dropout after attention and in the feed-forward network (0 in the paper).
    dtype: compute dtype.
    param_dtype: dtype of the parameters.
    attention_impl: see Attention.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  def norm(self, name):
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=name)

  def attention(self, name, qkv_init_bound):
    return Attention(self.num_heads, qkv_init_bound, self.dtype, self.param_dtype,
                     self.attention_impl, name=name)

  def mlp(self, x, deterministic):
    return MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                    name='mlp')(x, deterministic)

  def dropout(self, x, deterministic):
    return nn.Dropout(self.dropout_rate)(x, deterministic)


class EncoderLayer(_Layer):
  """x += MHA(LN x, LN x, LN x); x += FFN(LN x).

  A pre-norm transformer encoder layer (Chen et al. 2021, Sec. 3.1, Fig. 2; official
  `model/ipt.py`, TransformerEncoderLayer). LayerNorm epsilon 1e-5, as PyTorch.

  Attributes:
    num_heads, mlp_dim, dropout_rate, dtype, param_dtype, attention_impl: as _Layer.
  """

  @nn.compact
  def __call__(self, x, deterministic: bool):
    h = self.norm('norm1')(x)
    # PyTorch re-initialises the encoder's packed in_proj with kaiming_uniform(a=sqrt(5)).
    h = self.attention('self_attn', 1 / math.sqrt(x.shape[-1]))(h, h, h)
    x = x + self.dropout(h, deterministic)
    return x + self.mlp(self.norm('norm2')(x), deterministic)


class DecoderLayer(_Layer):
  """Self-attention and cross-attention with the task embedding added to queries (and self keys).

  A pre-norm transformer decoder layer (Chen et al. 2021, Sec. 3.1, Fig. 2; official
  `model/ipt.py`, TransformerDecoderLayer): with h = LN x and e the task embedding,
  x += SelfMHA(h + e, h + e, h); x += CrossMHA(LN x + e, memory, memory); x += FFN(LN x).

  Attributes:
    num_heads, mlp_dim, dropout_rate, dtype, param_dtype, attention_impl: as _Layer.
  """

  @nn.compact
  def __call__(self, x, memory, task_embed, deterministic: bool):
    # The decoder keeps PyTorch's xavier_uniform init of the packed [3*dim, dim] in_proj.
    bound = math.sqrt(6 / (4 * x.shape[-1]))
    h = self.norm('norm1')(x)
    q = h + task_embed
    h = self.attention('self_attn', bound)(q, q, h)
    x = x + self.dropout(h, deterministic)
    h = self.norm('norm2')(x)
    h = self.attention('cross_attn', bound)(h + task_embed, memory, memory)
    x = x + self.dropout(h, deterministic)
    return x + self.mlp(self.norm('norm3')(x), deterministic)


class Body(nn.Module):
  """The shared transformer on non-overlapping patch_dim x patch_dim patch tokens.

  Chen et al. 2021, Sec. 3.1, Fig. 2; official `model/ipt.py`, VisionTransformer: tokens,
  x += linear_encoding(x), + position embedding, encoder, decoder (input and memory both the
  encoder output, task embedding added to queries), x += mlp_head(x), fold back.

  Attributes:
    num_tokens: patches per image, (patch_size / patch_dim)**2 (256 in the paper); the
      number of rows of the position and task embeddings.
    patch_dim: side of a patch in feature pixels (3).
    num_heads: attention heads per layer.
    num_layers: encoder layers, and as many decoder layers (12 each in the paper).
    mlp_dim: hidden width of the feed-forward networks and of mlp_head.
    tasks: task names, one learned embedding (`query_embed_<task>`) each.
    dropout_rate: dropout rate (0 in the paper).
    dtype: compute dtype; the residual stream stays in at least float32.
    param_dtype: dtype of the parameters.
    attention_impl: see Attention.
    remat: recompute each layer's activations in the backward pass instead of storing them
      (less memory).
    scan_layers: run the encoder layers, then the decoder layers, as one loop each
      (jax.lax.scan over their stacked parameters, which keep their per-layer names). The
      same numbers; XLA compiles one layer instead of all, and cannot fuse the residual
      stream's gradient across layers, which on XLA:CPU makes the paper model's gradient
      4x slower when unrolled. Unrolled (False) records each layer's outputs under
      `capture_intermediates`.
  """
  num_tokens: int
  patch_dim: int
  num_heads: int
  num_layers: int
  mlp_dim: int
  tasks: tuple[str, ...]
  dropout_rate: float = 0.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None
  remat: bool = False
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x, task: int, deterministic: bool):
    """[B, H, W, C] feature map -> (same-shaped map, output patch features [B, tokens, dim])."""
    height = x.shape[1]
    # Tokens in row-major patch order, values channel-major within a token (PyTorch unfold).
    tokens = einops.rearrange(x, 'b (h p) (w q) c -> b (h w) (c p q)', p=self.patch_dim,
                              q=self.patch_dim)
    # The residual stream stays in (at least) float32 when computing in bfloat16.
    tokens = tokens.astype(jnp.promote_types(self.dtype, jnp.float32))
    dim = tokens.shape[-1]
    embed = lambda name: self.param(name, nn.initializers.normal(1.), (self.num_tokens, dim),
                                    self.param_dtype)
    pos_embed = embed('pos_embed')
    # Every task's embedding is declared (so that init creates them all); one is used.
    task_embed = [embed(f'query_embed_{t}') for t in self.tasks][task].astype(self.dtype)

    encoding = nn.Dense(dim, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='linear_encoding', **_torch_default_init(dim))(tokens)
    x = tokens + nn.Dropout(self.dropout_rate)(encoding, deterministic)
    x = x + pos_embed.astype(x.dtype)

    layer_args = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                      dropout_rate=self.dropout_rate, dtype=self.dtype,
                      param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    x = self._layers(EncoderLayer, 'encoder', layer_args, x, deterministic=deterministic)
    # The decoder's input and its memory are both the encoder output.
    x = self._layers(DecoderLayer, 'decoder', layer_args, x, x, task_embed,
                     deterministic=deterministic)
    features = x + MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                            name='mlp_head')(x, deterministic)
    out = einops.rearrange(features, 'b (h w) (c p q) -> b (h p) (w q) c', h=height // self.patch_dim,
                           p=self.patch_dim, q=self.patch_dim)
    return out, features

  def _layers(self, layer_cls, prefix: str, layer_args: dict, x, *args, deterministic: bool):
    """`num_layers` layers `<prefix>_<i>` applied in turn to x (other arguments shared)."""
    if not self.scan_layers or self.is_initializing():
      # `deterministic` (the last argument) is a Python bool: static under remat.
      layer_cls = nn.remat(layer_cls, static_argnums=(len(args) + 2,)) if self.remat else layer_cls
      for i in range(self.num_layers):
        x = layer_cls(**layer_args, name=f'{prefix}_{i}')(x, *args, deterministic)
      return x
    # One loop over the layers: the parameters keep their per-layer names and are stacked here.
    params = self.variables['params']
    stacked = jax.tree.map(lambda *p: jnp.stack(p),
                           *[params[f'{prefix}_{i}'] for i in range(self.num_layers)])
    layer = layer_cls(**layer_args, parent=None)
    use_rng = not deterministic and self.dropout_rate > 0
    rngs = (jax.random.split(self.make_rng('dropout'), self.num_layers) if use_rng else
            jnp.zeros((self.num_layers,), jnp.uint32))

    def step(x, layer_params_and_rng):
      layer_params, rng = layer_params_and_rng
      return layer.apply({'params': layer_params}, x, *args, deterministic,
                         rngs={'dropout': rng} if use_rng else None), None

    if self.remat:
      step = jax.checkpoint(step, prevent_cse=False)
    return jax.lax.scan(step, x, (stacked, rngs))[0]


class IPT(nn.Module):
  """Multi-head, multi-tail IPT.

  Call: `model.apply({'params': params}, x, task=i)` with x NHWC in [0, 255] of shape
  [B, patch_size, patch_size, 3] and i a static index into `tasks`; returns
  [B, patch_size * scale, patch_size * scale, 3]. With `return_features=True` it also
  returns the body's output patch features [B, num_tokens, n_feats * patch_dim**2].

  Chen et al. 2021, Sec. 3.1, Fig. 2; official `model/ipt.py`, class ipt: mean shift, the
  task's head, the shared body plus the head's output (global residual), the task's tail,
  mean shift back.

  Attributes:
    n_feats: feature channels of heads, body and tails (64 in the paper).
    patch_size: input side in pixels (48); the embeddings are sized for it.
    patch_dim: side of a token's patch (3), so a token has n_feats * patch_dim**2 values.
    num_heads: attention heads per layer.
    num_layers: encoder layers, and as many decoder layers.
    mlp_dim: hidden width of the feed-forward networks (4x the token width in the paper).
    tasks: task names in head / tail / embedding order (ipt_jax.tasks; the six pre-training
      tasks by default).
    dtype: compute dtype (e.g. bfloat16); pixel convolutions and the transformer's residual
      stream stay in at least float32.
    param_dtype: dtype of the parameters (float32).
    dropout_rate: dropout in the body (0 in the paper).
    attention_impl: see Attention.
    remat, scan_layers: see Body.
    rgb_mean: per-channel mean on the [0, 1] scale, subtracted (times 255) first and added
      back last; fixed, not trained.
  """
  n_feats: int = 64
  patch_size: int = 48
  patch_dim: int = 3
  num_heads: int = 12
  num_layers: int = 12
  mlp_dim: int = 2304
  tasks: tuple[str, ...] = tasks_lib.PRETRAIN_NAMES
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout_rate: float = 0.
  attention_impl: str | None = None
  remat: bool = False
  scan_layers: bool = False
  rgb_mean: tuple[float, float, float] = RGB_MEAN

  @property
  def mean_shift(self) -> np.ndarray:
    """255 * rgb_mean, rounded to float32 as in the official checkpoint."""
    return np.float32(255) * np.asarray(self.rgb_mean, np.float32)

  def scale(self, task: int) -> int:
    return tasks_lib.get(self.tasks[task]).scale

  @nn.compact
  def __call__(self, x, task: int, *, train: bool = False, return_features: bool = False):
    self._check_inputs(x, task)
    heads = [Head(self.n_feats, self.dtype, self.param_dtype, name=f'head_{t}')
             for t in self.tasks]
    tails = [Tail(self.scale(i), self.dtype, self.param_dtype, name=f'tail_{t}')
             for i, t in enumerate(self.tasks)]
    if self.is_initializing():  # Create every task's head and tail, not only the one called.
      for i in range(len(self.tasks)):
        if i != task:
          tails[i](heads[i](x))

    mean = jnp.asarray(self.mean_shift, x.dtype)
    x = heads[task](x - mean)
    body = Body((self.patch_size // self.patch_dim)**2, self.patch_dim, self.num_heads,
                self.num_layers, self.mlp_dim, tuple(self.tasks), self.dropout_rate, self.dtype,
                self.param_dtype, self.attention_impl, self.remat, self.scan_layers, name='body')
    res, features = body(x, task, deterministic=not train)
    out = tails[task](res + x) + mean
    return (out, features) if return_features else out

  def _check_inputs(self, x, task):
    if not isinstance(task, (int, np.integer)) or isinstance(task, bool):
      raise TypeError(f'task must be a static Python int (an index into {self.tasks}), '
                      f'got {type(task).__name__}. Use tasks.index(name, model.tasks).')
    if not 0 <= task < len(self.tasks):
      raise ValueError(f'task index {task} is out of range for a model with tasks '
                       f'{self.tasks} (valid: 0..{len(self.tasks) - 1}).')
    expected = (self.patch_size, self.patch_size, 3)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f'IPT takes NHWC inputs of shape [batch, {self.patch_size}, '
                       f'{self.patch_size}, 3] (its position and task embeddings are sized for '
                       f'it), got {tuple(x.shape)}. Use ipt_jax.inference to run whole images.')

  def init_params(self, rng: jax.Array) -> dict:
    """Freshly initialised parameters of every task (no compute beyond the initialisers).

    Outside jit the initialisers run op by op, each draw compiled once per distinct shape: on 2
    CPU cores the paper model's train state starts in 6.5 s, not the 21 s that compiling every
    draw into one program took (BENCHMARKS.md)."""
    x = jax.ShapeDtypeStruct((1, self.patch_size, self.patch_size, 3), self.param_dtype)
    return self.lazy_init(rng, x, task=0)['params']


def task_of_param(path: Sequence[str], model_tasks: Sequence[str]) -> str | None:
  """The task a parameter belongs to (from its path of names), or None when shared."""
  for key in path:
    for prefix in TASK_PREFIXES:
      if key.startswith(prefix) and key[len(prefix):] in model_tasks:
        return key[len(prefix):]
  return None


_CONFIG_FIELDS = ('n_feats', 'patch_size', 'patch_dim', 'num_heads', 'num_layers', 'mlp_dim',
                  'tasks', 'dtype', 'param_dtype', 'dropout_rate', 'attention_impl', 'remat',
                  'scan_layers', 'rgb_mean')


def to_config(model: IPT) -> dict[str, Any]:
  """The model's fields as JSON-friendly values (saved beside every checkpoint);
  `create(**to_config(model)) == model`."""
  config = {f: getattr(model, f) for f in _CONFIG_FIELDS}
  config['dtype'] = jnp.dtype(model.dtype).name
  config['param_dtype'] = jnp.dtype(model.param_dtype).name
  config['tasks'] = list(model.tasks)
  config['rgb_mean'] = list(model.rgb_mean)
  return config


def create(preset: str | None = None, **fields) -> IPT:
  """The one way to build an IPT: a preset's sizes (when named), then `fields` on top.

  Takes what configs and saved checkpoints hold (`to_config`): dtype names, lists for
  tuples; a field set to None keeps its default.
  """
  if preset is not None and preset not in PRESETS:
    raise errors.InputError(f'Unknown model preset {preset!r}; choose one of '
                            f'{", ".join(PRESETS)}.')
  unknown = set(fields) - set(_CONFIG_FIELDS)
  if unknown:
    raise errors.InputError(f'Unknown IPT fields {sorted(unknown)}; valid: '
                            f'{", ".join(_CONFIG_FIELDS)}.')
  fields = {**PRESETS.get(preset, {}), **{k: v for k, v in fields.items() if v is not None}}
  for name in ('dtype', 'param_dtype'):
    if name in fields:
      fields[name] = jnp.dtype(fields[name])
  for name in ('tasks', 'rgb_mean'):
    if name in fields:
      fields[name] = tuple(fields[name])
  return IPT(**fields)


def forward_flops(model: IPT, task: int) -> int:
  """FLOPs (2 per multiply-add) of the matmuls and convolutions of one image's forward pass."""
  p, n, scale = model.patch_size, model.n_feats, model.scale(task)
  conv = lambda size, k, c_in, c_out: 2 * size**2 * k * k * c_in * c_out
  head = conv(p, 3, 3, n) + 4 * conv(p, 5, n, n)
  tokens, dim, mlp = (p // model.patch_dim)**2, n * model.patch_dim**2, model.mlp_dim
  projection = 2 * tokens * dim * dim
  attention = 4 * projection + 2 * 2 * tokens**2 * dim  # q, k, v, out; scores and mixing.
  ffn = 2 * 2 * tokens * dim * mlp
  body = projection + model.num_layers * (attention + ffn) + model.num_layers * (
      2 * attention + ffn) + ffn  # linear_encoding, encoder, decoder, mlp_head.
  tail, size = 0, p
  for r in upsampler_factors(scale):
    tail += conv(size, 3, n, n * r * r)
    size *= r
  tail += conv(size, 3, n, 3)
  return head + body + tail


def count_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


"""The channel structure of a network: which channels must be kept or removed together.

Below both :mod:`prunelab.pruning` (structured pruning selects whole groups' channels) and
:mod:`prunelab.compress` (compaction removes dead channels). The network is traced with
``torch.fx`` (in eval mode, so that stochastic depth and dropout are identities) and every
tensor's channel dimension gets a *space*: the channel groups it is made of, in order.

- A Conv or Linear (``groups=1``) *consumes* its input's channels (its input columns; ``H*W``
  columns per channel after a flatten) and *produces* a new group (its output rows).
- Per-channel modules keep the space and are *members* of its groups at their offsets:
  BatchNorm, InstanceNorm, a GroupNorm with one channel per group, a depthwise convolution.
- Element-wise operations, pooling, dropout, permutes and reshapes that keep the channel
  dimension whole keep the space; flatten keeps it with ``features per channel``.
- A residual addition (or an element-wise product of equal shapes) ties its operands' groups
  into one; a concatenation along the channel dimension concatenates their groups.
- A gate (``x * s`` with ``s`` one value per channel, squeeze-and-excitation) ties the gate's
  producers to ``x``'s group as *followers*: removed with its channels, whatever their values.
- An attention module that declares ``prunable_heads = True`` (``qkv``, ``proj``,
  ``num_heads``, ``head_dim``; :class:`prunelab.models.vit.Attention`) consumes its input,
  produces its output, and has a *heads group*: one unit per head.

Groups that reach the network's input or output, a norm over channels (LayerNorm, GroupNorm),
a channel shuffle, or any operation not known above are *fixed*: left whole.

A group's channel is *dead* (removable without changing the outputs: :func:`dead_channels`)
when it is zero wherever it is read: every producer row and bias is zero and every member maps
zero to zero, with nothing on the way that turns a zero into something else (a sigmoid), or
every consumer's input columns for it are zero.
"""

from prunelab.graph.groups import (
                                   CHANNEL_NORMS,
                                   CONVS,
                                   LAYERS,
                                   NORMS,
                                   ChannelGroup,
                                   GraphError,
                                   coupled_parameters,
                                   head_columns,
                                   head_rows,
)
from prunelab.graph.trace import channel_groups, trace

__all__ = ["CHANNEL_NORMS", "CONVS", "LAYERS", "NORMS", "ChannelGroup", "GraphError",
           "channel_groups", "coupled_parameters", "head_columns", "head_rows", "trace"]

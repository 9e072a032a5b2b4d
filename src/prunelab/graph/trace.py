"""The walk: a network traced by torch.fx, every tensor's channel dimension assigned its groups
(the rules are in :mod:`prunelab.graph`'s docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunelab.graph.groups import (
    ADDS,
    CATS,
    CHANNEL_NORMS,
    CONVS,
    DIVS,
    INPLACE_OPERATORS,
    KEEP_ZERO_FUNCTIONS,
    KEEP_ZERO_METHODS,
    KEEP_ZERO_MODULES,
    MULS,
    NONZERO_FUNCTIONS,
    NONZERO_METHODS,
    NONZERO_MODULES,
    REDUCTIONS,
    SAMPLE_SCALING,
    ChannelGroup,
    GraphError,
    Space,
    UnionFind,
    flat_nodes,
    has_channel_tensors,
    is_heads_module,
    keeps_zero,
    numel,
)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with attention modules that declare their heads kept as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_heads_module(m) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, input_shape: Sequence[int]) -> fx.GraphModule:
    """``model`` traced by torch.fx in eval mode, every node's output shape recorded."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        try:
            tracer = _Tracer()
            graph = tracer.trace(model)
            gm = fx.GraphModule(tracer.root, graph)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: cannot compact
            raise GraphError(f"{type(model).__name__} cannot be traced by torch.fx "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                             f"compaction needs a traceable network") from None
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(2, *input_shape, device=device, dtype=dtype))
        except Exception as exc:  # noqa: BLE001
            raise GraphError(f"{type(model).__name__} does not run on input {tuple(input_shape)} "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    finally:
        for m, training in modes.items():
            m.training = training
    return gm


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """The channel groups of ``model`` (traced with ``torch.fx`` on a batch of ``input_shape``),
    in the order their first channel appears in the network."""
    gm = trace(model, input_shape)
    return _Builder(gm).run()


class _Builder:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.groups = UnionFind()
        self.space: dict[fx.Node, Space] = {}

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def fix(self, node: Any) -> None:
        for n in flat_nodes(node):
            sp = self.space.get(n)
            if sp is not None:
                for gid, _ in sp.segs:
                    self.groups.get(gid).fixed = True

    def new(self, node: fx.Node, dim: int = 1, fixed: bool = False) -> int | None:
        s = self.shape(node)
        if s is None or len(s) < 2:
            return None
        dim = dim % len(s)
        gid = self.groups.new(s[dim], fixed=fixed)
        self.space[node] = Space(((gid, s[dim]),), dim, len(s))
        return gid

    def unknown(self, node: fx.Node) -> None:
        self.fix((node.args, node.kwargs))
        self.new(node, fixed=True)

    def keep(self, node: fx.Node, src: Any, zero: bool | None = None) -> None:
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        if sp is None:
            self.unknown(node)
            return
        self.set(node, Space(sp.segs, sp.dim, sp.ndim, sp.per,
                             sp.zero if zero is None else (sp.zero and zero)))

    def set(self, node: fx.Node, sp: Space) -> None:
        """``node``'s space, when its shape has the channels where ``sp`` says (else unknown)."""
        s = self.shape(node)
        if s is None or len(s) != sp.ndim or s[sp.dim] != sp.size * sp.per:
            self.unknown(node)
            return
        self.space[node] = sp

    def union(self, a: Space, b: Space, follow: bool = False) -> bool:
        if [n for _, n in a.segs] != [n for _, n in b.segs] or a.per != b.per:
            for sp in (a, b):
                for gid, _ in sp.segs:
                    self.groups.get(gid).fixed = True
            return False
        for (ga, _), (gb, _) in zip(a.segs, b.segs):
            self.groups.union(ga, gb, follow=follow)
        return True

    def consume(self, name: str, src: Any, dim_ok: bool) -> None:
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        if sp is None or not dim_ok:
            self.fix(src)  # (nothing to fix without a space)
            return
        for gid, off in sp.offsets():
            g = self.groups.get(gid)
            g.consumers.append((name, sp.per, off))
            if not sp.zero:
                g.zero_safe = False

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> list[ChannelGroup]:
        try:
            return self._run()
        except GraphError:
            raise
        except Exception as exc:  # noqa: BLE001 - a graph this walk does not understand
            raise GraphError(f"the channel structure of {type(self.gm).__name__} could not be "
                             f"read ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
                             ) from None

    def _run(self) -> list[ChannelGroup]:
        calls: dict[str, int] = {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        self.reused = {t for t, n in calls.items() if n > 1}
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.new(node, fixed=True)
            elif node.op == "get_attr":
                self.new(node, fixed=True)
            elif node.op == "output":
                self.fix(node.args)
            elif node.op == "call_module":
                mod = self.modules[node.target]
                if node.target in self.reused and has_channel_tensors(mod):
                    self.unknown(node)  # one module's rows cannot belong to two groups
                else:
                    self.module(node, mod)
            else:
                self.function(node)
                self.in_place(node)
        seen, out = set(), []
        for i in range(len(self.groups.parent)):
            r = self.groups.find(i)
            if r not in seen:
                seen.add(r)
                out.append(self.groups.info[r])
        return out

    def module(self, node: fx.Node, mod: nn.Module) -> None:
        src = node.args[0] if node.args else None
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        name = node.target
        if is_heads_module(mod):
            self.consume(f"{name}.qkv", src, sp is not None and sp.dim == sp.ndim - 1)
            self.fix(node.args[1:])
            gid = self.new(node, dim=-1)
            if gid is not None:
                self.groups.get(gid).producers.append(f"{name}.proj")
            heads = self.groups.new(int(mod.num_heads))
            self.groups.get(heads).heads.append(name)
        elif isinstance(mod, nn.Linear):
            self.consume(name, src, sp is not None and sp.dim == sp.ndim - 1)
            gid = self.new(node, dim=-1)
            if gid is not None:
                self.groups.get(gid).producers.append(name)
        elif isinstance(mod, CONVS):
            depthwise = (mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels)
            if depthwise and sp is not None and sp.dim == 1 and sp.per == 1:
                for gid, off in sp.offsets():
                    self.groups.get(gid).members.append((name, off))
                self.keep(node, src)
            elif mod.groups == 1:
                self.consume(name, src, sp is not None and sp.dim == 1 and sp.per == 1)
                gid = self.new(node, dim=1)
                if gid is not None:
                    self.groups.get(gid).producers.append(name)
            else:  # a grouped convolution: its channels are tied within its groups
                self.unknown(node)
        elif isinstance(mod, CHANNEL_NORMS) or (
                isinstance(mod, nn.GroupNorm) and mod.num_groups == mod.num_channels):
            if sp is not None and sp.dim == 1 and sp.per == 1:
                for gid, off in sp.offsets():
                    self.groups.get(gid).members.append((name, off))
                self.keep(node, src)
            else:
                self.unknown(node)
        elif isinstance(mod, KEEP_ZERO_MODULES):
            self.keep(node, src, zero=keeps_zero(mod))
        elif isinstance(mod, NONZERO_MODULES):
            self.keep(node, src, zero=False)
        elif isinstance(mod, nn.Flatten):
            self.flatten(node, src, mod.start_dim, mod.end_dim)
        elif isinstance(mod, nn.Softmax) and sp is not None and mod.dim is not None \
                and mod.dim % sp.ndim != sp.dim:
            self.keep(node, src, zero=False)
        else:  # LayerNorm, GroupNorm, MultiheadAttention, anything unknown
            self.unknown(node)

    def function(self, node: fx.Node) -> None:
        target = node.target
        src = node.args[0] if node.args else None
        if target in ADDS or target in MULS or target in DIVS:
            self.arithmetic(node, target)
        elif target in CATS:
            self.cat(node)
        elif (target in KEEP_ZERO_FUNCTIONS or target in KEEP_ZERO_METHODS
              or getattr(target, "__name__", None) in SAMPLE_SCALING):
            self.keep(node, src)
        elif target in NONZERO_FUNCTIONS or target in NONZERO_METHODS:
            self.keep(node, src, zero=False)
        elif target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self.flatten(node, src, int(start), int(end))
        elif target in REDUCTIONS:
            self.reduce(node, src)
        elif target in ("permute", torch.permute):
            dims = node.args[1:] if target == "permute" else node.args[1]
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            self.moved(node, src, lambda d: list(dims).index(d) if d in dims else None)
        elif target in ("transpose", torch.transpose):
            a = int(node.args[1] if len(node.args) > 1 else node.kwargs["dim0"])
            b = int(node.args[2] if len(node.args) > 2 else node.kwargs["dim1"])
            self.moved(node, src, lambda d, a=a, b=b, n=len(self.shape(src) or ()):
                       b % n if d == a % n else a % n if d == b % n else d)
        elif target in ("view", "reshape", torch.reshape):
            self.reshape(node, src)
        elif target in ("size", "dim", getattr):
            return
        elif self.shape(node) is None and not flat_nodes((node.args, node.kwargs)):
            return
        else:
            self.unknown(node)

    def in_place(self, node: fx.Node) -> None:
        """An in-place op changes its first argument: later readers of it see the result."""
        t = node.target
        name = t if isinstance(t, str) else getattr(t, "__name__", "")
        in_place = (name.endswith("_") and not name.startswith("_")) or t in INPLACE_OPERATORS
        src = node.args[0] if node.args else None
        if in_place and isinstance(src, fx.Node):
            if node in self.space:
                self.space[src] = self.space[node]
            else:
                self.fix(src)

    def arithmetic(self, node: fx.Node, target: Any) -> None:
        args = [a for a in node.args[:2]]
        spaces = [self.space.get(a) if isinstance(a, fx.Node) else None for a in args]
        tensors = [a for a in args if isinstance(a, fx.Node) and self.shape(a) is not None]
        out_shape = self.shape(node)
        if out_shape is None:
            return
        if len(tensors) == 1 and tensors[0] in self.space:  # with a python number
            keeps_zero = target not in ADDS  # x * c, x / c keep zeros; x + c does not
            if target in DIVS and args[0] is not tensors[0]:
                self.unknown(node)
                return
            self.keep(node, tensors[0], zero=keeps_zero)
            return
        if len(tensors) != 2 or any(s is None for s in spaces):
            self.unknown(node)
            return
        a, b = spaces
        if target in DIVS:
            self.unknown(node)
            return
        sa, sb = self.shape(args[0]), self.shape(args[1])
        if target in MULS and sa != sb:  # a gate: one value per channel times the data
            gate_first = numel(sa) < numel(sb)
            data, gate = (b, a) if gate_first else (a, b)
            data_node = args[1] if gate_first else args[0]
            if (tuple(self.shape(data_node)) != out_shape or gate.dim != data.dim
                    or not self.union(data, gate, follow=True)):
                self.unknown(node)
                return
            self.keep(node, data_node)
            return
        if sa != sb or a.dim != b.dim or not self.union(a, b):
            self.unknown(node)
            return
        zero = (a.zero and b.zero) if target in ADDS else (a.zero or b.zero)
        if target in ADDS and not zero:
            for gid, _ in a.segs:
                self.groups.get(gid).zero_safe = False
        self.set(node, Space(self.space[args[0]].segs, a.dim, a.ndim, a.per, zero))

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get(
            "dim", node.kwargs.get("axis", 0))
        parts = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
        spaces = [self.space.get(t) if isinstance(t, fx.Node) else None for t in parts]
        out = self.shape(node)
        if out is None or any(s is None for s in spaces):
            self.unknown(node)
            return
        dim = int(dim) % len(out)
        if all(s.dim == dim and s.per == 1 and s.ndim == len(out) for s in spaces):
            segs = tuple(seg for s in spaces for seg in s.segs)
            self.set(node, Space(segs, dim, len(out), 1, all(s.zero for s in spaces)))
            return
        first = spaces[0]
        if all(s.dim == first.dim != dim for s in spaces) and all(
                self.union(first, s) for s in spaces[1:]):
            self.set(node, Space(first.segs, first.dim, first.ndim, first.per,
                                      all(s.zero for s in spaces)))
            return
        self.unknown(node)

    def flatten(self, node: fx.Node, src: Any, start: int, end: int) -> None:
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        s_in, s_out = self.shape(src), self.shape(node)
        if sp is None or s_in is None or s_out is None:
            self.unknown(node)
            return
        start, end = start % len(s_in), end % len(s_in)
        if start > sp.dim or end < sp.dim:  # the channel dimension is not flattened
            dim = sp.dim if sp.dim < start else sp.dim - (end - start)
            self.set(node, Space(sp.segs, dim, len(s_out), sp.per, sp.zero))
        elif start == sp.dim:  # channels outermost: each keeps its block of features
            per = sp.per * numel(s_in[sp.dim + 1:end + 1])
            self.set(node, Space(sp.segs, start, len(s_out), per, sp.zero))
        else:
            self.unknown(node)

    def reduce(self, node: fx.Node, src: Any) -> None:
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        s_in, s_out = self.shape(src), self.shape(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get(
            "dim", node.kwargs.get("axis"))
        if sp is None or s_in is None or s_out is None or dims is None:
            self.unknown(node)
            return
        dims = [int(d) % len(s_in) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if sp.dim in dims:
            self.unknown(node)
            return
        shift = 0 if len(s_out) == len(s_in) else sum(1 for d in dims if d < sp.dim)
        self.set(node, Space(sp.segs, sp.dim - shift, len(s_out), sp.per, sp.zero))

    def moved(self, node: fx.Node, src: Any, where) -> None:
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        if sp is None or sp.per != 1:
            self.unknown(node)
            return
        new = where(sp.dim)
        if new is None:
            self.unknown(node)
            return
        self.set(node, Space(sp.segs, int(new), sp.ndim, 1, sp.zero))

    def reshape(self, node: fx.Node, src: Any) -> None:
        sp = self.space.get(src) if isinstance(src, fx.Node) else None
        s_in, s_out = self.shape(src), self.shape(node)
        if sp is None or s_in is None or s_out is None:
            self.unknown(node)
            return
        d = sp.dim
        if tuple(s_out[:d + 1]) == tuple(s_in[:d + 1]):
            if len(s_out) == d + 1:  # the dims after the channel flattened into it
                per = sp.per * numel(s_in[d + 1:])
                self.set(node, Space(sp.segs, d, len(s_out), per, sp.zero))
            elif sp.per == 1:
                self.set(node, Space(sp.segs, d, len(s_out), 1, sp.zero))
            else:
                self.unknown(node)
            return
        self.unknown(node)



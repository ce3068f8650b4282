"""Memory-lean activations: compact storage of spike tensors saved for backward, and recompute.

Neurons mark what they return (:func:`mark_spikes`): plain spikes are exactly 0/1; the fused SEW
output ``g(A, S)`` is often a small non-negative integer (ADD) but need not be (a non-binary
shortcut), so it is checked before it is stored compactly.

* :class:`compact_spikes` (a ``saved_tensors_hooks`` context): while autograd records a forward,
  every saved tensor marked ``"binary"`` is kept as 1 bit per element, one marked ``"integer"``
  as 1 byte per element when its values are integers in [0, 255] (1 bit when they are all 0/1),
  anything else as it is. Unpacking restores dtype, shape and strides (channels_last stays so)
  bit for bit.
* A tensor that is cheap to compute again from what autograd keeps anyway (the output of an
  event-driven convolution of spikes, rebuilt from the spikes' bit mask that the convolution keeps
  for its weight gradient) carries how (:func:`mark_recomputable`): :class:`compact_spikes` keeps
  that instead of the tensor (a batch norm's fp32 input) and builds it again, bit for bit, when the
  backward pass needs it.
* :func:`recompute`: run a residual block keeping only its (compacted) input for backward and
  run it again in backward (``torch.utils.checkpoint``, non-reentrant). Batch-norm running
  statistics, the state of ``stateful`` neurons and their spike counts are left as the first
  forward left them.
* :func:`recompute_chain`: a layer's batch norm -> neuron (-> SEW ``g``) chain keeps only the
  batch norm's input (which the batch norm keeps anyway) and runs the batch norm and the neuron
  again in backward, instead of also keeping the neuron's fp32 charged potential H.
* :data:`MEMORY_MODES`: ``"compact"`` (the default of the networks), ``"dense"`` (autograd as
  usual), ``"recompute"`` (recompute per block + compact), ``"lean"`` (compact + the batch norm
  and neuron of every layer recomputed).

What each mode recomputes is one policy, :func:`segments` (which runs of a network's layers are
rerun in backward) and :func:`recomputes_bn_neuron` (whether blocks rerun their BN -> neuron
chains); the networks apply it.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mark_spikes", "spike_kind", "mark_recomputable", "Recomputable", "combined_bound",
           "MEMORY_MODES", "check_memory_mode", "compact_spikes", "pack_saved", "stash", "unstash",
           "unpack_saved", "PackedSpikes", "recompute", "memory_context", "recompute_chain",
           "recomputes_bn_neuron", "segments", "THIN_CONV", "thin_conv"]

_ATTR = "_sewforge_spikes"

#: what the networks' ``memory=`` option accepts
MEMORY_MODES = ("compact", "dense", "recompute", "lean")


def mark_spikes(t: torch.Tensor, binary: bool = False, *, bound: Optional[int] = None,
                kind: Optional[str] = None) -> torch.Tensor:
    """Mark ``t`` as spikes: ``binary`` (0/1 by construction), integers known to lie in
    ``[0, bound]``, or (neither) possibly-integer values to be checked before compacting; ``kind``
    copies another tensor's mark (:func:`spike_kind`).

    Not under ``torch.compile``, whose compiled graph decides itself what it saves."""
    if _compiling():
        return t
    if kind is None:
        if binary or (bound is not None and bound <= 1):
            kind = "binary"
        else:
            kind = f"int:{bound}" if bound is not None else "integer"
    try:
        setattr(t, _ATTR, kind)
    except (AttributeError, RuntimeError):  # e.g. a tensor subclass under tracing
        pass
    return t


def spike_kind(t: torch.Tensor) -> Optional[str]:
    """``"binary"``, ``"int:N"`` (integers in [0, N]), ``"integer"`` (values to be checked) or
    None, also through views (a convolution saves ``x.flatten(0, 1)``, whose ``_base`` is the
    neuron's output)."""
    kind = getattr(t, _ATTR, None)
    if kind is None and t._base is not None:
        kind = getattr(t._base, _ATTR, None)
    return kind


def _bound(kind: Optional[str]) -> Optional[int]:
    if kind == "binary":
        return 1
    if kind is not None and kind.startswith("int:"):
        return int(kind[4:])
    return None


#: how each built-in SEW function bounds g(A, S) for binary A and S in [0, N]
_G_BOUNDS: Dict[str, Callable[[int], int]] = {"ADD": lambda n: n + 1, "AND": lambda n: n, "IAND": lambda n: n,
                                                  "RIAND": lambda n: 1 if n <= 1 else None}


def combined_bound(g_name: str, shortcut: Optional[torch.Tensor]) -> Optional[int]:
    """The largest value of ``g(A, S)`` for binary A when S is a marked spike tensor (None when
    unknown: then the values are checked before they are compacted)."""
    n = _bound(spike_kind(shortcut)) if isinstance(shortcut, torch.Tensor) else None
    rule = _G_BOUNDS.get(g_name)
    return None if n is None or rule is None else rule(n)


def check_memory_mode(value: Any, name: str = "memory") -> str:
    """``value`` if it is one of :data:`MEMORY_MODES`, else a one-line ValueError naming ``name``."""
    if not isinstance(value, str) or value not in MEMORY_MODES:
        raise ValueError(f"{name}={value!r} is not a memory mode; use one of "
                         f"{', '.join(repr(m) for m in MEMORY_MODES)}")
    return value


# ---------------------------------------------------------------------------------------------
# compact storage
# ---------------------------------------------------------------------------------------------
class PackedSpikes:
    """What autograd keeps instead of a spike tensor: ``data`` holds the values in the tensor's
    memory order, 8 per byte (``bits``) or one per byte; the rest rebuilds the tensor."""

    __slots__ = ("data", "bits", "shape", "stride", "dtype", "device")

    def __init__(self, data: torch.Tensor, bits: bool, like: torch.Tensor):
        self.data = data
        self.bits = bits
        self.shape = like.shape
        self.stride = like.stride()
        self.dtype = like.dtype
        self.device = like.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def __repr__(self) -> str:
        return (f"PackedSpikes({tuple(self.shape)}, {self.dtype}, {'1 bit' if self.bits else '1 byte'} per element, "
                f"{self.nbytes} bytes)")


def stash(kept: Any) -> Tuple[Optional[torch.Tensor], Any]:
    """``(tensor, rest)`` of what :func:`pack_saved` returned (a :class:`PackedSpikes`, a tensor
    or None), for an autograd Function that keeps it itself: the tensor goes to
    ``ctx.save_for_backward`` (so that autograd frees it once the backward pass has used it, where an
    attribute of ``ctx`` would live as long as the graph), ``rest`` onto ``ctx``;
    :func:`unstash` puts them together again."""
    if isinstance(kept, PackedSpikes):
        shell = copy.copy(kept)
        shell.data = None
        return kept.data, shell
    return kept, None


def unstash(tensor: Optional[torch.Tensor], rest: Any) -> Any:
    """What :func:`stash` took apart."""
    if isinstance(rest, PackedSpikes):
        packed = copy.copy(rest)
        packed.data = tensor
        return packed
    return tensor


_REBUILD = "_sewforge_rebuild"


class Recomputable:
    """What autograd keeps instead of a tensor marked by :func:`mark_recomputable`: the function
    that builds it again, and the view (shape, strides, offset) that was saved."""

    __slots__ = ("rebuild", "shape", "stride", "offset")

    def __init__(self, rebuild: Callable[[], torch.Tensor], like: torch.Tensor):
        self.rebuild = rebuild
        self.shape, self.stride, self.offset = like.shape, like.stride(), like.storage_offset()

    def __call__(self) -> torch.Tensor:
        full = self.rebuild()
        return full.as_strided(self.shape, self.stride, self.offset)


def mark_recomputable(t: torch.Tensor, rebuild: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Say that ``rebuild()`` returns ``t`` again, bit for bit (same shape, strides and values),
    from what it holds (kept for backward anyway). While :class:`compact_spikes` records, saving
    ``t`` (or a view of it) for backward keeps ``rebuild`` instead, as long as ``t`` was not
    modified in place since it was marked. Not under ``torch.compile``."""
    if not _compiling():
        try:
            setattr(t, _REBUILD, (rebuild, t._version))
        except (AttributeError, RuntimeError):
            pass
    return t


def _recomputable(t: torch.Tensor) -> Optional[Recomputable]:
    root = t._base if t._base is not None else t
    mark = getattr(root, _REBUILD, None)
    if mark is None or mark[1] != root._version or t.dtype != root.dtype:
        return None
    return Recomputable(mark[0], t)


def _memory_order(t: torch.Tensor) -> Optional[List[int]]:
    """The permutation of dims that makes ``t`` contiguous (its memory order), or None when ``t``
    has gaps or overlaps (then it is not compacted)."""
    if t.is_contiguous():
        return list(range(t.dim()))
    perm = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    return perm if t.permute(perm).is_contiguous() else None


_MAGIC = 0x0102040810204080  # (bytes b0..b7 in 0/1 as a little-endian int64) * M >> 56 = sum b_i << i
_BIT_TABLES: Dict[Tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _pack_bits(u: torch.Tensor) -> torch.Tensor:
    """0/1 bytes ``u`` (1-D, offset 0) -> ``ceil(n / 8)`` bytes, element ``i`` in bit ``i % 8``."""
    n = u.numel()
    whole = n // 8
    out = torch.empty((n + 7) // 8, dtype=torch.uint8, device=u.device)
    if whole:
        words = u[:whole * 8].view(torch.int64)
        try:  # unsigned: the product wraps by definition
            gathered = (words.view(torch.uint64) * _MAGIC).view(torch.int64)
        except (RuntimeError, NotImplementedError):  # no uint64 arithmetic here: shifts and ors
            gathered = words.clone()
            for s in (7, 14, 28):
                gathered |= gathered >> s
            out[:whole] = gathered  # the low byte holds the bits
        else:
            out[:whole] = gathered >> 56
    if n > whole * 8:
        tail = u[whole * 8:].to(torch.int64)
        out[whole] = (tail << torch.arange(tail.numel(), device=u.device)).sum()
    return out


#: elements per piece when packing on the CPU: the intermediates stay in cache (a multiple of 8)
_CPU_CHUNK = 1 << 16


def _bits_of(flat: torch.Tensor) -> torch.Tensor:
    """0/1 values (1-D) -> packed bits; on the CPU piece by piece, so that the byte copy of each
    piece is still in cache when it is packed (one pass over the values instead of three)."""
    n = flat.numel()
    if flat.device.type != "cpu" or n <= _CPU_CHUNK:
        return _pack_bits(flat.to(torch.uint8))
    out = torch.empty((n + 7) // 8, dtype=torch.uint8)
    buf = torch.empty(_CPU_CHUNK, dtype=torch.uint8)
    for start in range(0, n, _CPU_CHUNK):
        piece = flat[start:start + _CPU_CHUNK]
        b = buf[:piece.numel()]
        b.copy_(piece)
        out[start // 8:(start + piece.numel() + 7) // 8] = _pack_bits(b)
    return out


def _bytes_if_lossless(flat: torch.Tensor) -> Optional[torch.Tensor]:
    """``flat`` (1-D) as uint8 if that keeps every value exactly (integers in [0, 255]), else None."""
    n = flat.numel()
    u = torch.empty(n, dtype=torch.uint8, device=flat.device)
    if flat.device.type != "cpu" or n <= _CPU_CHUNK:
        u.copy_(flat)
        return u if torch.equal(u.to(flat.dtype), flat) else None
    back = torch.empty(_CPU_CHUNK, dtype=flat.dtype)
    for start in range(0, n, _CPU_CHUNK):
        piece = flat[start:start + _CPU_CHUNK]
        b = u[start:start + piece.numel()]
        b.copy_(piece)
        if not torch.equal(back[:piece.numel()].copy_(b), piece):
            return None
    return u


def _bit_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, device)
    table = _BIT_TABLES.get(key)
    if table is None:
        byte = torch.arange(256, device=device).unsqueeze(1)
        table = ((byte >> torch.arange(8, device=device)) & 1).to(dtype)
        _BIT_TABLES[key] = table
    return table


def pack_saved(t: torch.Tensor) -> Any:
    """The pack hook of :class:`compact_spikes`: a :class:`PackedSpikes` for a marked spike
    tensor that can be stored losslessly in fewer bytes, else ``t`` itself."""
    kind = spike_kind(t) if isinstance(t, torch.Tensor) else None
    if kind is None or not t.is_floating_point() or t.numel() == 0 or t.device.type == "meta":
        return t
    order = _memory_order(t)
    if order is None:
        return t
    with torch.no_grad():
        flat = t.detach().permute(order).reshape(-1)  # a view: the values in memory order
        if kind == "binary":
            return PackedSpikes(_bits_of(flat), True, t)
        bound = _bound(kind)
        if bound is not None and bound <= 255:  # integers in [0, bound] by construction: no check
            u = torch.empty(flat.numel(), dtype=torch.uint8, device=flat.device)
            u.copy_(flat)
            return PackedSpikes(u, False, t)
        u = _bytes_if_lossless(flat)
        if u is None:  # negative, above 255, fractional or NaN: kept as it is
            return t
        if bool(u.max() > 1):
            return PackedSpikes(u, False, t)
        return PackedSpikes(_pack_bits(u), True, t)


def unpack_saved(packed: Any) -> Any:
    """The unpack hook of :class:`compact_spikes`: the tensor :func:`pack_saved` was given (or
    that a :class:`Recomputable` builds again)."""
    if isinstance(packed, Recomputable):
        with torch.no_grad():
            return packed()
    if not isinstance(packed, PackedSpikes):
        return packed
    with torch.no_grad():
        if packed.bits:
            table = _bit_table(packed.dtype, packed.device)
            values = F.embedding(packed.data.to(torch.int32), table).view(-1)
        else:
            values = packed.data.to(packed.dtype)
    # ``values`` lists the elements in the original memory order from offset 0, so the original
    # strides address them (a trailing partial byte leaves up to 7 unused elements at the end)
    return values.as_strided(packed.shape, packed.stride)


class compact_spikes(torch.autograd.graph.saved_tensors_hooks):
    """Within this context, spike tensors saved for backward are stored compactly (see the module
    docstring). A tensor saved by several operations (a block input used by ``conv1`` and the
    downsample shortcut), or saved as several views of the same elements, is packed once."""

    def __init__(self) -> None:
        self._cache: Dict[Tuple[Any, ...], Tuple[Any, Any]] = {}
        super().__init__(self._pack, unpack_saved)

    def _pack(self, t: torch.Tensor) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        again = _recomputable(t)
        if again is not None:
            return again
        if spike_kind(t) is None:
            return t
        root = t._base if t._base is not None else t
        # a dense tensor's values in memory order depend on its offset and size only: a block
        # input [T, B, ...] and its T*B fold share one packed copy
        form = (t.numel(),) if _memory_order(t) is not None else (tuple(t.shape), t.stride())
        key = (id(root), root._version, t.storage_offset(), form, t.dtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is root:
            packed = hit[1]
            if packed.shape != t.shape or packed.stride != t.stride():
                packed = PackedSpikes(packed.data, packed.bits, t)
            return packed
        packed = pack_saved(t)
        if packed is not t:
            try:
                self._cache[key] = (weakref.ref(root), packed)
            except TypeError:  # not weakly referenceable: just do not share
                pass
        return packed

    def __exit__(self, *exc: Any) -> None:
        self._cache.clear()
        super().__exit__(*exc)


def memory_context(mode: str) -> contextlib.AbstractContextManager:
    """The context a network's forward runs in for ``mode``: :class:`compact_spikes` while
    autograd records ("compact", "recompute", "lean"), nothing otherwise (or while being compiled:
    the compiler plans what to keep itself); blocks run inside it ask
    :func:`recomputes_bn_neuron` whether to rerun their batch norm -> neuron chains."""
    if _compiling():
        return contextlib.nullcontext()
    if mode == "dense" or not torch.is_grad_enabled():
        return _policy(False)
    return _policy(mode in _BN_NEURON_MODES, compact_spikes())


#: the modes whose blocks rerun each batch norm -> neuron chain in backward (not "recompute": its
#: blocks are rerun whole anyway)
_BN_NEURON_MODES = ("lean",)
_POLICY = threading.local()


@contextlib.contextmanager
def _policy(bn_neuron: bool, hooks: Optional[contextlib.AbstractContextManager] = None) -> Iterator[None]:
    before = getattr(_POLICY, "bn_neuron", False)
    _POLICY.bn_neuron = bn_neuron
    try:
        if hooks is None:
            yield
        else:
            with hooks:
                yield
    finally:
        _POLICY.bn_neuron = before


def recomputes_bn_neuron() -> bool:
    """Whether the forward now running (inside a network's :func:`memory_context`) reruns its
    batch norm -> neuron chains in backward (:func:`recompute_chain`): in "lean" memory while
    autograd records, not under ``torch.compile``."""
    return not _compiling() and torch.is_grad_enabled() and bool(getattr(_POLICY, "bn_neuron", False))


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - old torch
        return False


# ---------------------------------------------------------------------------------------------
# recompute per block
# ---------------------------------------------------------------------------------------------
class _Token(torch.autograd.Function):
    """``x`` -> a stand-in of x's shape that holds one element (stride 0); its gradient is x's."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _Restore(torch.autograd.Function):
    """``(token, values)`` -> values, with the gradient going to the token (hence to x)."""

    @staticmethod
    def forward(ctx: Any, token: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return values.view_as(values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        return grad, None


_NEURON_STATE = ("v", "spike_count", "spike_numel")
_HOOKS = ("_forward_pre_hooks", "_forward_hooks")


def _all_modules(modules: Sequence[nn.Module]) -> List[nn.Module]:
    """Every module in ``modules`` and below them, each once."""
    seen: Dict[int, nn.Module] = {}
    for top in modules:
        for m in top.modules():
            seen.setdefault(id(m), m)
    return list(seen.values())


def _batch_norms(modules: Sequence[nn.Module]) -> List[nn.Module]:
    return [m for m in modules
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]


@contextlib.contextmanager
def _forward_context(modules: Sequence[nn.Module], entry: Dict[int, Any]) -> Iterator[None]:
    for m in modules:  # the state each stateful neuron starts from
        if getattr(m, "stateful", False) and hasattr(m, "v"):
            entry[id(m)] = m.v
    yield


@contextlib.contextmanager
def _recompute_context(modules: Sequence[nn.Module], entry: Dict[int, Any], quiet: bool = False) -> Iterator[None]:
    """Run the modules again as they ran the first time, then put back what the rerun changed
    (batch-norm running statistics, neuron state and spike counts); ``quiet``: their forward hooks
    do not see the rerun."""
    bns = [(m, [(n, b.clone()) for n, b in m.named_buffers(recurse=False) if b is not None])
           for m in _batch_norms(modules)]
    kept = [(m, {a: getattr(m, a) for a in _NEURON_STATE if hasattr(m, a)}) for m in modules
            if any(hasattr(m, a) for a in _NEURON_STATE)]
    hooks = [(m, {h: getattr(m, h) for h in _HOOKS}) for m in modules if quiet and any(getattr(m, h) for h in _HOOKS)]
    for m, _ in kept:
        if id(m) in entry:
            m.v = entry[id(m)]
    for m, _ in hooks:
        for h in _HOOKS:
            setattr(m, h, type(getattr(m, h))())
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in bns:
                for name, value in buffers:
                    getattr(m, name).copy_(value)
        for m, attrs in kept:
            for a, value in attrs.items():
                setattr(m, a, value)
        for m, saved in hooks:
            for h, value in saved.items():
                setattr(m, h, value)


def recompute(block: Callable[..., torch.Tensor], x: torch.Tensor, *others: Any,
              modules: Optional[Sequence[nn.Module]] = None) -> torch.Tensor:
    """``block(x, *others)``, keeping only ``x`` (packed as by :func:`pack_saved` when it is
    marked spikes) and ``others`` (as the active saved-tensor hooks store them) for backward and
    running the block again in backward. Gives the same output and gradients as ``block(x)``;
    runs ``block(x)`` plainly when autograd is not recording. ``modules``: those whose state the
    rerun must start from and leave as the first forward did (default: ``block`` itself)."""
    if not torch.is_grad_enabled() or _compiling():
        return block(x, *others)
    from torch.utils.checkpoint import checkpoint

    kept = pack_saved(x)
    source: List[Optional[torch.Tensor]] = [x.detach()]  # the first forward uses x as it is
    if modules is None:
        modules = [block] if isinstance(block, nn.Module) else []
    mods = _all_modules(modules)
    entry: Dict[int, Any] = {}

    def run(token: torch.Tensor, *rest: Any) -> torch.Tensor:
        values = source[0]
        if values is None:  # the rerun in backward
            values = unpack_saved(kept)
            if values is kept:
                values = values.detach()
        return block(_Restore.apply(token, values), *rest)

    def contexts() -> Tuple[Any, Any]:
        return _forward_context(mods, entry), _recompute_context(mods, entry)

    token = _Token.apply(x)
    try:
        return checkpoint(run, token, *others, use_reentrant=False, context_fn=contexts)
    finally:
        source[0] = None


def recompute_chain(chain: Callable[..., torch.Tensor], y: torch.Tensor, *others: Any,
                    modules: Sequence[nn.Module]) -> torch.Tensor:
    """``chain(y, *others)``, keeping only ``y`` and ``others`` for backward (as the active
    saved-tensor hooks store them) and running the chain again there. Made for a batch norm ->
    neuron chain: ``y`` is the batch norm's input, which it keeps anyway, ``others`` e.g. a SEW
    block's shortcut for the fused ``g`` (kept anyway by the block's first convolution), so what
    this saves is everything else the chain keeps, mainly the neuron's fp32 charged potential H.
    The rerun repeats the first run bit for bit (same input, same batch statistics), starts
    stateful neurons of ``modules`` from the state the first run started from, and leaves
    running statistics, neuron state and spike counts as the first run left them (updated once);
    forward hooks of ``modules`` do not see it. Same output and gradients as
    ``chain(y, *others)``, which runs plainly when autograd is not recording or under
    ``torch.compile``."""
    if not torch.is_grad_enabled() or _compiling():
        return chain(y, *others)
    from torch.utils.checkpoint import checkpoint

    mods = _all_modules(modules)
    entry: Dict[int, Any] = {}

    def contexts() -> Tuple[Any, Any]:
        return _forward_context(mods, entry), _recompute_context(mods, entry, quiet=True)

    return checkpoint(chain, y, *others, use_reentrant=False, context_fn=contexts, preserve_rng_state=False)


# ---------------------------------------------------------------------------------------------
# the policy: which layers of a network are rerun in backward
# ---------------------------------------------------------------------------------------------
#: a convolution with at most this many input values per output (in_channels x kernel area / groups)
#: is recomputed in backward rather than keeping the batch norm input it feeds
THIN_CONV = 8


def thin_conv(layer: nn.Module) -> bool:
    """Whether ``layer`` (a convolution, or a wrapper with ``.module``) is thin (:data:`THIN_CONV`):
    rerunning it costs less than keeping the batch norm input it produces."""
    conv = getattr(layer, "module", layer)
    if not isinstance(conv, nn.Conv2d):
        return False
    return conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] <= THIN_CONV


def segments(kinds: Sequence[str], layers: Sequence[nn.Module], mode: str, start: int = 0,
             end: Optional[int] = None) -> List[Tuple[int, int]]:
    """The runs ``[i, j)`` of a sequential network's layers (``kinds``: "conv", "bn", "neuron",
    "block", ...) between ``start`` and ``end`` that are rerun in backward in memory ``mode``
    (:func:`recompute_chain` of the run, keeping its input):

    * every mode but "dense": a thin convolution (:func:`thin_conv`) and the batch norm it feeds
      (the convolution's input is far smaller than the batch norm's);
    * "lean": also the neuron after such a batch norm, and every batch norm -> neuron pair (the
      batch norm's input is kept anyway; the neuron's H is not).

    Residual blocks are not listed: "recompute" reruns them whole, "lean" has them rerun their
    batch norm -> neuron chains (:func:`recomputes_bn_neuron`)."""
    if mode == "dense":
        return []
    end = len(kinds) if end is None else end
    lean = mode in _BN_NEURON_MODES
    runs: List[Tuple[int, int]] = []
    i = start
    while i < end:
        j = i
        if kinds[i] == "conv" and i + 1 < end and kinds[i + 1] == "bn" and thin_conv(layers[i]):
            j = i + 2
        elif lean and kinds[i] == "bn":
            j = i + 1
        if j > i and lean and j < end and kinds[j - 1] == "bn" and kinds[j] == "neuron":
            j += 1
        if j - i >= 2:
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs

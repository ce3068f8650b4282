"""Tokenizer and recursive-descent parser for spec strings in the paper's notation.

Grammar (whitespace is ignored everywhere outside quotes, names are case-insensitive)::

    spec    := seq EOF
    seq     := item ('-' item)*
    item    := ('{' seq '}' | '<' seq '>') '*' INT        repetition, nested freely
             | NAME [ '(' [arg (',' arg)*] ')' ]          a layer, neuron or block
    arg     := value | WORD '=' value
    value   := ['+'|'-'] NUMBER | WORD [ '(' args ')' ] | 'quoted'

Layer words: ``c{C}k{K}[s{S}][p{P}]``, ``BN``, ``MPk{K}[s{S}][p{P}]``, ``APk{K}[s{S}][p{P}]``,
``GAP``, ``FC{N}``, ``DP``. Any other name is looked up in ``NEURONS`` and then ``BLOCKS`` (also
without a trailing "Block", so the paper's ``SEW Block (c32)`` is the ``SEW`` block, and its
"basic block" is ``SpikingResNet``). Dashes copied from PDFs (en dash, minus, soft hyphen, the
U+FFFE that pdftotext leaves at a line break) count as ``-``; ``×``, ``∗`` (U+2217), the fullwidth
asterisk and Markdown's escaped ``\\*`` count as ``*``.
Names are resolved here, so an unknown name fails at parse time with close-match suggestions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..registry import BLOCKS, ELEMENTWISE, MODELS, NEURONS, SURROGATES
from .errors import SpecError, close_matches
from .nodes import (DEFAULT_BLOCK_KERNEL, DEFAULT_DROPOUT, BatchNorm, Block, Call, Conv, Dropout, GlobalPool,
                    Linear, Neuron, Node, Pool, Repeat, Spec)

__all__ = ["parse", "tokenize", "Token", "BLOCK_ALIASES", "LAYER_WORDS", "MAX_REPEAT", "MAX_DEPTH"]

#: other spellings of the registered blocks (lower case, spaces and a trailing "block" removed)
BLOCK_ALIASES: Dict[str, str] = {
    "basic": "SpikingResNet",
    "spikingbasic": "SpikingResNet",
    "spikingresnetbasic": "SpikingResNet",
    "spikingresnetbottleneck": "SpikingBottleneck",
}
#: the built-in layer words, for suggestions
LAYER_WORDS = ("BN", "FC", "DP", "MP", "AP", "GAP")
#: a repetition count above this is certainly a typo (ResNet-152 has 50 blocks)
MAX_REPEAT = 10_000
#: groups nested deeper than this are certainly a mistake (and would exhaust Python's stack)
MAX_DEPTH = 64

_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u00ad\ufffe"
_SINGLE = {"(": "LPAREN", ")": "RPAREN", "{": "LBRACE", "}": "RBRACE", "<": "LANGLE", ">": "RANGLE",
           "*": "STAR", "\u00d7": "STAR", "\u2217": "STAR", "\uff0a": "STAR", ",": "COMMA", "=": "EQ", "+": "PLUS"}
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

_CONV_RE = re.compile(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?", re.I)
_POOL_RE = re.compile(r"(mp|ap)k(\d+)(?:s(\d+))?(?:p(\d+))?", re.I)
_FC_RE = re.compile(r"fc(\d+)", re.I)
_BLOCK_SHAPE_RE = re.compile(r"(?:c(\d+))?(?:k(\d+))?(?:s(\d+))?", re.I)
_OPENERS = {"LBRACE": ("RBRACE", "}"), "LANGLE": ("RANGLE", ">")}
_CLOSERS = {"RBRACE": "}", "RANGLE": ">"}


@dataclass(frozen=True)
class Token:
    kind: str  # WORD NUMBER STRING LPAREN RPAREN LBRACE RBRACE LANGLE RANGLE STAR DASH COMMA EQ PLUS EOF
    text: str  # as read, whitespace removed
    pos: int  # span in the original string
    end: int


def tokenize(text: str) -> List[Token]:
    """Tokens of ``text``; whitespace outside quotes is dropped first (so ``SEW Block`` is one word)."""
    if not isinstance(text, str):
        raise SpecError(f"a spec must be a string, got {type(text).__name__}")
    # compact copy without whitespace, and where each of its characters came from
    chars: List[str] = []
    where: List[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            close = text.find(ch, i + 1)
            if close == -1:
                raise SpecError(f"unterminated quoted name starting with {ch}", text, i, n)
            for j in range(i, close + 1):
                chars.append(text[j])
                where.append(j)
            i = close + 1
            continue
        if not ch.isspace():
            chars.append(ch)
            where.append(i)
        i += 1
    compact = "".join(chars)
    where.append(n)

    def span(a: int, b: int) -> Tuple[int, int]:
        return where[a], where[b - 1] + 1 if b > a else where[a]

    tokens: List[Token] = []
    i, n = 0, len(compact)
    while i < n:
        ch = compact[i]
        if ch in "'\"":
            close = compact.index(ch, i + 1)
            body = compact[i + 1:close]
            p, e = span(i, close + 1)
            if not body:
                raise SpecError("empty quoted name", text, p, e)
            tokens.append(Token("STRING", body, p, e))
            i = close + 1
            continue
        m = _WORD_RE.match(compact, i)
        if m:
            tokens.append(Token("WORD", m.group(), *span(i, m.end())))
            i = m.end()
            continue
        m = _NUMBER_RE.match(compact, i)
        if m:
            tokens.append(Token("NUMBER", m.group(), *span(i, m.end())))
            i = m.end()
            continue
        if ch == "\\" and compact.startswith("*", i + 1):
            i += 1  # a Markdown copy of the paper escapes '*' as '\*'
            continue
        if ch in _DASHES:
            tokens.append(Token("DASH", "-", *span(i, i + 1)))
        elif ch in _SINGLE:
            tokens.append(Token(_SINGLE[ch], ch, *span(i, i + 1)))
        else:
            p, e = span(i, i + 1)
            hint = None
            if ch in "[]":
                hint = "repetition is written {...}*N or <...>*N; remove citation marks such as [8]"
            raise SpecError(f"unexpected character {ch!r}", text, p, e, hint=hint)
        i += 1
    tokens.append(Token("EOF", "", len(text), len(text)))
    return tokens


def parse(text: str) -> Spec:
    """Parse a spec string into a :class:`Spec` of typed nodes; raises :class:`SpecError`."""
    if isinstance(text, Spec):
        return text
    parser = _Parser(text)
    return Spec(parser.parse(), text)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- helpers ---------------------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, msg: str, tok_or_span: Any, suggestions=(), hint: Optional[str] = None) -> SpecError:
        if isinstance(tok_or_span, Token):
            pos, end = tok_or_span.pos, max(tok_or_span.end, tok_or_span.pos + 1)
        else:
            pos, end = tok_or_span
        return SpecError(msg, self.text, pos, end, suggestions, hint)

    @staticmethod
    def describe(tok: Token) -> str:
        return "the end of the spec" if tok.kind == "EOF" else repr(tok.text)

    # -- grammar ---------------------------------------------------------------------------
    def parse(self) -> Tuple[Node, ...]:
        if self.peek().kind == "EOF":
            raise self.error("empty spec: expected layers such as 'c32k3s1-BN-PLIF-FC10'", (0, max(1, len(self.text))))
        nodes = self.seq(None)
        tok = self.peek()
        if tok.kind != "EOF":
            if tok.kind in _CLOSERS:
                raise self.error(f"unmatched {tok.text!r}: no group is open here", tok)
            raise self.error(f"expected '-' before {self.describe(tok)}", tok,
                             hint="layers are separated by '-', e.g. 'BN-PLIF'")
        return nodes

    def seq(self, opener: Optional[Token]) -> Tuple[Node, ...]:
        items = [self.item(opener, first=True)]
        while self.peek().kind == "DASH":
            self.next()
            items.append(self.item(opener, first=False))
        tok = self.peek()
        if opener is not None and tok.kind not in _CLOSERS and tok.kind != "EOF":
            raise self.error(f"expected '-' or {_OPENERS[opener.kind][1]!r} before {self.describe(tok)}", tok)
        return tuple(items)

    def item(self, opener: Optional[Token], first: bool) -> Node:
        tok = self.peek()
        if tok.kind in _OPENERS:
            return self.group()
        if tok.kind in ("WORD", "STRING"):
            return self.layer()
        if tok.kind == "DASH":
            where = "the spec starts" if first and opener is None else "two '-' in a row"
            raise self.error(f"expected a layer, neuron or block, but {where} with '-'", tok)
        if tok.kind == "EOF":
            if opener is not None:
                raise self.error(f"{opener.text!r} is never closed; expected a layer and then "
                                 f"{_OPENERS[opener.kind][1]!r}", opener)
            raise self.error("the spec ends with '-': expected a layer after it", tok)
        if tok.kind in _CLOSERS:
            what = "an empty group" if first and opener is not None else "a '-' with nothing after it"
            raise self.error(f"expected a layer, neuron or block, found {what} before {tok.text!r}", tok)
        raise self.error(f"expected a layer, neuron or block, found {self.describe(tok)}", tok)

    def group(self) -> Repeat:
        opener = self.next()
        closer_kind, closer_text = _OPENERS[opener.kind]
        if self.depth >= MAX_DEPTH:
            raise self.error(f"groups are nested more than {MAX_DEPTH} deep here; a network needs a few levels "
                             "at most (is a '}' or '>' missing?)", opener)
        self.depth += 1
        body = self.seq(opener)
        self.depth -= 1
        tok = self.peek()
        if tok.kind == "EOF":
            raise self.error(f"{opener.text!r} is never closed: add {closer_text!r}", opener)
        if tok.kind != closer_kind:
            raise self.error(f"{opener.text!r} at char {opener.pos} is closed by {tok.text!r}; close it with "
                             f"{closer_text!r}", tok)
        close = self.next()
        star = self.peek()
        if star.kind in _CLOSERS:
            raise self.error(f"unmatched {star.text!r}: the group {opener.text}...{closer_text} before it is "
                             "already closed", star, hint=f"remove the extra {star.text!r}, then write "
                             f"{opener.text}...{closer_text}*N")
        if star.kind != "STAR":
            raise self.error(f"expected '*N' (the repetition count) after {closer_text!r}", (close.end, close.end + 1),
                             hint=f"write {opener.text}...{closer_text}*2 to repeat twice; use *1 for a plain group")
        self.next()
        count = self.peek()
        if count.kind != "NUMBER" or not count.text.isdigit():
            raise self.error(f"expected a whole number after '*', found {self.describe(count)}", count
                             if count.kind != "EOF" else (star.pos, star.end))
        self.next()
        times = int(count.text)
        if times < 1 or times > MAX_REPEAT:
            raise self.error(f"repetition count must be between 1 and {MAX_REPEAT}, got {times}", count)
        return Repeat(body, times, span=(opener.pos, count.end))

    def layer(self) -> Node:
        name_tok = self.next()
        args: List[Tuple[Optional[str], Any, Tuple[int, int]]] = []
        end = name_tok.end
        if self.peek().kind == "LPAREN":
            lparen_index = self.i
            try:
                args, end = self.arguments()
            except SpecError:
                label = self._trailing_label(lparen_index)
                if label is None:
                    raise
                lparen = self.tokens[lparen_index]
                raise self.error(f"{name_tok.text} is followed by {label!r}, which is not an argument list", lparen,
                                 hint=f"a table row names its network after the spec: remove {label!r}; the spec "
                                      f"ends at {name_tok.text!r}") from None
        return self.resolve(name_tok, args, (name_tok.pos, end))

    def _trailing_label(self, lparen_index: int) -> Optional[str]:
        """``(7B-Net)`` when the parentheses at ``lparen_index`` close at the very end of the spec
        and hold no ``key=value``: the network's name printed after it in the paper's tables."""
        rest = self.tokens[lparen_index + 1:-1]
        if not rest or rest[-1].kind != "RPAREN":
            return None
        if any(t.kind in ("EQ", "LPAREN", "RPAREN", "COMMA") for t in rest[:-1]):
            return None
        return self.text[self.tokens[lparen_index].pos:rest[-1].end]

    def arguments(self) -> Tuple[List[Tuple[Optional[str], Any, Tuple[int, int]]], int]:
        """``( [arg (, arg)*] )`` -> [(key or None, value, span)], end position."""
        lparen = self.next()
        args: List[Tuple[Optional[str], Any, Tuple[int, int]]] = []
        if self.peek().kind == "RPAREN":
            return args, self.next().end
        seen_keyword = False
        while True:
            tok = self.peek()
            key = None
            if tok.kind == "WORD" and self.tokens[self.i + 1].kind == "EQ":
                key = tok.text
                self.i += 2
                seen_keyword = True
            elif seen_keyword:
                raise self.error("a positional argument cannot follow a keyword argument", tok)
            start = self.peek().pos
            value = self.value()
            val_span = (start, self.tokens[self.i - 1].end)
            if key is not None and any(k is not None and k.lower() == key.lower() for k, _, _ in args):
                raise self.error(f"argument {key!r} is given twice", (tok.pos, val_span[1]))
            args.append((key, value, (tok.pos if key else start, val_span[1])))
            tok = self.next()
            if tok.kind == "RPAREN":
                return args, tok.end
            if tok.kind != "COMMA":
                if tok.kind == "EOF":
                    raise self.error("'(' is never closed: add ')'", lparen)
                raise self.error(f"expected ',' or ')' in the argument list, found {self.describe(tok)}", tok)

    def value(self) -> Any:
        tok = self.next()
        sign = 1
        if tok.kind in ("DASH", "PLUS"):
            sign = -1 if tok.kind == "DASH" else 1
            tok = self.next()
            if tok.kind != "NUMBER":
                raise self.error(f"expected a number after the sign, found {self.describe(tok)}", tok)
        if tok.kind == "NUMBER":
            if re.fullmatch(r"\d+", tok.text):
                return sign * int(tok.text)
            return sign * float(tok.text)
        if tok.kind == "STRING":
            return tok.text
        if tok.kind == "WORD":
            low = tok.text.lower()
            if low in ("true", "false"):
                return low == "true"
            if low == "none":
                return None
            if self.peek().kind == "LPAREN":
                args, _ = self.arguments()
                pos = tuple(v for k, v, _ in args if k is None)
                kw = tuple(sorted((k, v) for k, v, _ in args if k is not None))
                return Call(tok.text, pos, kw) if (pos or kw) else tok.text
            return tok.text
        raise self.error(f"expected a value (a number, a name, True/False/None), found {self.describe(tok)}", tok)

    # -- name resolution ---------------------------------------------------------------------
    def resolve(self, tok: Token, args, span: Tuple[int, int]) -> Node:
        name = tok.text
        low = name.lower()
        tspan = (tok.pos, tok.end)

        if tok.kind == "WORD":
            if low == "bn":
                return BatchNorm(self.keyword_args(name, args, {"eps": float, "momentum": float}), span=span)
            m = _CONV_RE.fullmatch(name)
            if m:
                channels, kernel = self.count(m.group(1), "channels", tok), self.count(m.group(2), "kernel size", tok)
                stride = self.count(m.group(3), "stride", tok) if m.group(3) else 1
                padding = int(m.group(4)) if m.group(4) is not None else None
                if padding is not None and padding == kernel // 2:
                    padding = None  # the default, written out
                kw = dict(self.keyword_args(name, args, {"bias": bool}))
                return Conv(channels, kernel, stride, padding, kw.get("bias"), span=span)
            m = _POOL_RE.fullmatch(name)
            if m:
                self.no_args(name, args)
                kernel = self.count(m.group(2), "kernel size", tok)
                stride = self.count(m.group(3), "stride", tok) if m.group(3) else kernel
                padding = int(m.group(4) or 0)
                if padding > kernel // 2:
                    raise self.error(f"{name}: padding {padding} is more than half the kernel {kernel}", tok)
                return Pool(m.group(1).upper(), kernel, stride, padding, span=span)
            m = _FC_RE.fullmatch(name)
            if m:
                features = self.count(m.group(1), "number of outputs", tok)
                kw = dict(self.keyword_args(name, args, {"bias": bool}))
                return Linear(features, kw.get("bias"), span=span)
            if low == "gap":
                self.no_args(name, args)
                return GlobalPool(span=span)
            if low == "dp":
                return Dropout(self.dropout_p(name, args), span=span)

        registered = self.lookup(name)
        if registered is not None:
            kind, canonical = registered
            if kind == "neuron":
                return Neuron(canonical, self.neuron_args(canonical, args), span=span)
            return self.block(canonical, args, span)
        raise self.unknown(tok, tspan)

    def lookup(self, name: str) -> Optional[Tuple[str, str]]:
        candidates = [name]
        if len(name) > 5 and name.lower().endswith("block"):
            candidates.append(name[:-5])
        for cand in candidates:
            if cand in NEURONS:
                return "neuron", NEURONS.entry(cand).name
            if cand in BLOCKS:
                return "block", BLOCKS.entry(cand).name
            alias = BLOCK_ALIASES.get(cand.lower())
            if alias is not None and alias in BLOCKS:
                return "block", BLOCKS.entry(alias).name
        return None

    def unknown(self, tok: Token, tspan: Tuple[int, int]) -> SpecError:
        name, low = tok.text, tok.text.lower()
        hint = None
        if re.fullmatch(r"c\d+(s\d+)?(p\d+)?", low):
            hint = "a convolution needs its kernel size, e.g. " + re.sub(r"^([cC]\d+)", r"\1k3", name)
            return self.error(f"{name!r} is not a layer: the kernel size is missing", tspan, hint=hint)
        if re.fullmatch(r"(mp|ap)\d*(s\d+)?", low):
            return self.error(f"{name!r} is not a layer: pooling is written {name[:2].upper()}k{{K}}s{{S}}",
                              tspan, hint=f"e.g. {name[:2].upper()}k2s2")
        if low == "fc":
            return self.error("'FC' needs its number of outputs, e.g. FC10", tspan)
        forms = {"conv": "c{C}k{K}[s{S}][p{P}], e.g. c32k3s1", "pool": "MPk{K}[s{S}][p{P}] or APk{K}[s{S}][p{P}], "
                 "e.g. MPk2s2", "fc": "FC{N}, e.g. FC10"}
        kind = ("conv" if re.match(r"c\d+k|ck\d", low) else "pool" if re.match(r"(mp|ap)k", low)
                else "fc" if re.match(r"fc\d", low) else None)
        if kind is not None and not close_matches(name, NEURONS.names() + BLOCKS.names(), cutoff=0.8):
            return self.error(f"{name!r} is not a valid layer word", tspan, hint=f"write {forms[kind]}")
        candidates = list(LAYER_WORDS) + NEURONS.names() + BLOCKS.names() + list(BLOCK_ALIASES)
        whole = len(self.tokens) == 2  # the whole spec is this one name: maybe a model name
        if whole:
            candidates += MODELS.names()
        base = name[:-5] if low.endswith("block") and len(name) > 5 else name
        suggestions = close_matches(base, candidates, cutoff=0.6)
        suggestions = [BLOCK_ALIASES.get(s.lower(), s) for s in suggestions]
        suggestions = list(dict.fromkeys(suggestions))
        source = self.text[tok.pos:tok.end]
        if any(c.isspace() for c in source):
            words = source.split()
            known = [w for w in words if w.lower() in ("bn", "dp", "gap") or self.lookup(w) is not None
                     or _CONV_RE.fullmatch(w) or _POOL_RE.fullmatch(w) or _FC_RE.fullmatch(w)]
            if len(known) >= 2:
                hint = f"is a '-' missing between {' and '.join(repr(w) for w in known)}?"
        what = "layer, neuron, block or model" if whole else "layer, neuron or block"
        return self.error(f"unknown {what} {name!r}", tspan, suggestions, hint=hint)

    # -- argument checks ---------------------------------------------------------------------
    def count(self, digits: str, what: str, tok: Token) -> int:
        value = int(digits)
        if value < 1:
            raise self.error(f"{tok.text}: the {what} must be at least 1, got {value}", tok)
        return value

    def no_args(self, name: str, args) -> None:
        if args:
            raise self.error(f"{name} takes no arguments", (args[0][2][0], args[-1][2][1]))

    def keyword_args(self, name: str, args, allowed: Dict[str, type]):
        out = []
        for key, value, vspan in args:
            if key is None:
                raise self.error(f"{name} takes keyword arguments only ({', '.join(allowed) or 'none'})", vspan)
            k = key.lower()
            if k not in allowed:
                raise self.error(f"{name} has no argument {key!r}", vspan, close_matches(key, allowed),
                                 hint=f"{name} accepts: {', '.join(allowed) or 'no arguments'}")
            typ = allowed[k]
            if typ is bool and not isinstance(value, bool):
                raise self.error(f"{name}: {key} must be True or False, got {value!r}", vspan)
            if typ is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise self.error(f"{name}: {key} must be a number, got {value!r}", vspan)
            out.append((k, value))
        return tuple(sorted(out))

    def dropout_p(self, name: str, args) -> float:
        if not args:
            return DEFAULT_DROPOUT
        if len(args) > 1:
            raise self.error(f"{name} takes one argument, the drop probability p", args[1][2])
        key, value, vspan = args[0]
        if key is not None and key.lower() != "p":
            raise self.error(f"{name} has no argument {key!r}; write DP(0.2) or DP(p=0.2)", vspan)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise self.error(f"{name}: the drop probability must be a number in [0, 1), got {value!r}", vspan)
        return float(value)

    def neuron_args(self, name: str, args):
        out = []
        for key, value, vspan in args:
            if key is None:
                raise self.error(f"neuron {name} takes keyword arguments, e.g. {name}(v_threshold=0.5)", vspan)
            out.append((key, self.check_value(key, value, vspan)))
        return tuple(sorted(out))

    def check_value(self, key: str, value: Any, vspan) -> Any:
        """Resolve registry-valued keywords (surrogate, g, neuron) to their canonical names."""
        k = key.lower()
        registry = {"surrogate": SURROGATES, "g": ELEMENTWISE, "neuron": NEURONS}.get(k)
        if registry is None:
            return value
        name = value.name if isinstance(value, Call) else value
        if not isinstance(name, str):
            raise self.error(f"{key} must be a registered {registry.kind} name, got {value!r}", vspan)
        if name not in registry:
            raise self.error(f"unknown {registry.kind} {name!r} for {key}", vspan,
                             close_matches(name, registry.names(), cutoff=0.5),
                             hint=f"known: {', '.join(registry.names())}")
        canonical = registry.entry(name).name
        if isinstance(value, Call):
            if k == "g":
                raise self.error("g takes a name only, e.g. g=IAND", vspan)
            if k == "neuron":
                if value.args:
                    raise self.error(f"neuron {canonical} takes keyword arguments, e.g. "
                                     f"{canonical}(v_threshold=0.5)", vspan)
                return Call(canonical, (), tuple((kk, self.check_value(kk, vv, vspan)) for kk, vv in value.kwargs))
            return Call(canonical, value.args, value.kwargs)
        return canonical

    def block(self, name: str, args, span: Tuple[int, int]) -> Block:
        channels = kernel = None
        stride = 1
        kwargs = []
        for n, (key, value, vspan) in enumerate(args):
            if key is None:
                if n != 0 or not isinstance(value, str) or not value or not _BLOCK_SHAPE_RE.fullmatch(value):
                    raise self.error(f"block {name}: the positional argument is its shape, written "
                                     f"c{{C}}[k{{K}}][s{{S}}] (e.g. {name}(c64s2)); other arguments go by name",
                                     vspan)
                m = _BLOCK_SHAPE_RE.fullmatch(value)
                tok = Token("WORD", value, *vspan)
                channels = self.count(m.group(1), "channels", tok) if m.group(1) else None
                kernel = self.count(m.group(2), "kernel size", tok) if m.group(2) else None
                stride = self.count(m.group(3), "stride", tok) if m.group(3) else 1
                if kernel == DEFAULT_BLOCK_KERNEL:
                    kernel = None
                continue
            k = key.lower() if key.lower() in ("g", "zero_init", "neuron") else key
            if k in ("in_channels", "out_channels", "stride", "kernel_size", "fuse"):
                raise self.error(f"block {name}: {key} is not a spec argument", vspan,
                                 hint="write the shape as the first argument, e.g. SEW(c64k3s2); "
                                      "fusion is chosen at build time (fuse=...)")
            if k == "zero_init" and not isinstance(value, bool):
                raise self.error(f"block {name}: zero_init must be True or False, got {value!r}", vspan)
            kwargs.append((k, self.check_value(k, value, vspan)))
        return Block(name, channels, stride, kernel, tuple(sorted(kwargs)), span=span)

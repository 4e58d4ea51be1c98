"""A small PromQL tokenizer: which names in a query are metric names.

Enough of PromQL to tell metric names from everything else that looks like an identifier:
function and aggregation names (an identifier followed by `(`), label names (inside `{...}`
matchers, in `by (...)` / `without (...)` / `on (...)` / `ignoring (...)` /
`group_left (...)` / `group_right (...)` lists), keywords (`and`, `or`, `unless`, `bool`,
`offset`, ...), ranges and durations (`[5m]`, `[$__rate_interval]`, `offset 1h`), number
literals (`1e3`, `0x1f`, `inf`, `nan`), string literals and Grafana variables (`$namespace`,
`${namespace}`, `[[var]]`). `{__name__="x"}` names metric `x`.

It is not a parser: it does not check that a query is well formed beyond balanced brackets
and known function names. Grafana's dashboards only need the names checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
    clamp_max clamp_min cos cosh count_over_time days_in_month day_of_month day_of_week day_of_year
    deg delta deriv exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters double_exponential_smoothing hour
    idelta increase irate label_join label_replace last_over_time ln log10 log2 mad_over_time
    max_over_time min_over_time minute month pi predict_linear present_over_time quantile_over_time
    rad rate resets round scalar sgn sin sinh sort sort_desc sort_by_label sort_by_label_desc sqrt
    stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year info
    """.split()
)
AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio".split()
)
LABEL_LIST_KEYWORDS = frozenset("by without on ignoring group_left group_right".split())
KEYWORDS = frozenset("and or unless bool offset atan2 inf nan".split()) | LABEL_LIST_KEYWORDS

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,@:])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    """The query is not something this tokenizer understands (the message says where)."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    return tokens


@dataclass(frozen=True)
class Names:
    metrics: tuple[str, ...]
    functions: tuple[str, ...]
    """Function and aggregation names called."""
    labels: tuple[tuple[str, str], ...]
    """(metric, label) for each label matcher on a metric (metric "" for a bare `{...}`)."""


def names(expr: str) -> Names:
    """The metric names, called functions and label matchers in `expr`.

    Raises:
        PromQLError: unbalanced brackets or a token the tokenizer does not know.
    """
    tokens = tokenize(expr)
    metrics: list[str] = []
    functions: list[str] = []
    labels: list[tuple[str, str]] = []
    stack: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "open":
            if tok.text == "[":   # a range or a subquery's range: skip to its ]
                j = _closing(tokens, i)
                i = j + 1
                continue
            if tok.text == "{":   # label matchers of the metric just before (or a bare selector)
                j = _closing(tokens, i)
                named, matched = _matchers(tokens[i + 1 : j])
                after_metric = i > 0 and tokens[i - 1].kind == "ident" and metrics[-1:] == [tokens[i - 1].text]
                owner = metrics[-1] if after_metric else named
                if named and not after_metric:
                    metrics.append(named)
                labels += [(owner, label) for label in matched]
                i = j + 1
                continue
            stack.append(tok.text)
        elif tok.kind == "close":
            if not stack or {"(": ")"}[stack.pop()] != tok.text:
                raise PromQLError(f"unbalanced {tok.text!r} at {tok.pos} in {expr!r}")
        elif tok.kind == "ident":
            word = tok.text
            if word in LABEL_LIST_KEYWORDS:
                if nxt is not None and nxt.text == "(":   # a label list: skip it
                    i = _closing(tokens, i + 1) + 1
                    continue
                i += 1   # `group_left` without a list
                continue
            if word in KEYWORDS:
                i += 1
                continue
            if nxt is not None and (nxt.text == "(" or (word in AGGREGATIONS and nxt.text in ("by", "without"))):
                functions.append(word)   # `sum by (pod) (x)`: the grouping may come first
            else:
                metrics.append(word)
        i += 1
    if stack:
        raise PromQLError(f"unclosed {stack[-1]!r} in {expr!r}")
    return Names(tuple(metrics), tuple(functions), tuple(labels))


def _closing(tokens: list[Token], i: int) -> int:
    """Index of the bracket closing tokens[i]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    want = [pairs[tokens[i].text]]
    j = i + 1
    while j < len(tokens):
        t = tokens[j]
        if t.kind == "open":
            want.append(pairs[t.text])
        elif t.kind == "close":
            if t.text != want.pop():
                raise PromQLError(f"unbalanced {t.text!r} at {t.pos}")
            if not want:
                return j
        j += 1
    raise PromQLError(f"unclosed {tokens[i].text!r} at {tokens[i].pos}")


def _matchers(inner: list[Token]) -> tuple[str, list[str]]:
    """The label names of `label op "value"` matchers, and the metric `__name__="x"` names."""
    named = ""
    matched: list[str] = []
    k = 0
    while k < len(inner):
        t = inner[k]
        if t.kind == "op" and t.text == ",":
            k += 1
            continue
        if t.kind != "ident" or k + 2 >= len(inner) or inner[k + 1].text not in ("=", "!=", "=~", "!~"):
            raise PromQLError(f"bad label matcher at {t.pos}: {t.text!r}")
        value = inner[k + 2]
        if value.kind not in ("string", "variable"):
            raise PromQLError(f"label {t.text} must be matched against a string at {value.pos}")
        if t.text == "__name__" and inner[k + 1].text == "=" and value.kind == "string":
            named = value.text[1:-1]
        else:
            matched.append(t.text)
        k += 3
    return named, matched

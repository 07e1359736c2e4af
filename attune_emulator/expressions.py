"""Attune's expression language (rule conditions, workflow `when`, `publish`, `input`, `output_map`).

Not Jinja2: a small language with its own tokenizer, a recursive-descent parser and an evaluator
over JSON values. Precedence, lowest first:

    or  <  and  <  not  <  == != < > <= >= in  <  + -  <  * / %  <  unary -  <  .field [index] f(args)

Literals: 'single' or "double" quoted strings (backslash escapes), integers, floats, true, false,
null, lists `[a, b]` (trailing comma allowed) and objects `{"k": v, k2: v}`.

Semantics follow upstream's evaluator: `+` joins strings and lists; int op int stays int (a `/`
that does not divide evenly gives a float); `%` keeps the dividend's sign; `==` is deep equality
where 1 == 1.0 but true != 1; ordering works on numbers, strings and lists; `in` tests list
membership, object keys or substrings; a missing variable, field, key or index is an error; `and`
/ `or` short-circuit and return booleans. Workflow functions (`result()`, `succeeded()`, ...) are
supplied by the caller through `functions` and take precedence over the built-ins.

Public interface:
    evaluate(expr, context, functions=None) -> value      (raises ExpressionError)
    truthy(value) -> bool
    render(template, context, functions=None) -> value    (recursive, type kept for `{{ x }}`)
    to_display(value) -> str                              (interpolation form; null -> "")
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

__all__ = ["ExpressionError", "evaluate", "truthy", "render", "strip_braces", "to_display",
           "parse", "json_eq", "type_name"]


class ExpressionError(Exception):
    """Syntax error, missing variable/field, type error or unknown function."""


# ---------------------------------------------------------------------------- tokenizer

_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_TWO_CHAR = {"==", "!=", "<=", ">="}
_ONE_CHAR = set("+-*/%<>()[]{},.:")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0",
            "/": "/"}


class _Tok:
    __slots__ = ("kind", "value", "pos")

    def __init__(self, kind: str, value: Any, pos: int):
        self.kind = kind      # num, str, ident, kw, op, eof
        self.value = value
        self.pos = pos

    def __repr__(self) -> str:
        return f"{self.kind}:{self.value!r}"

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of expression"
        if self.kind == "str":
            return f"string {json.dumps(self.value)}"
        return f"'{self.value}'"


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c.isdigit():
            while i < n and src[i].isdigit():
                i += 1
            is_float = False
            if i + 1 < n and src[i] == "." and src[i + 1].isdigit():
                is_float = True
                i += 1
                while i < n and src[i].isdigit():
                    i += 1
            if i < n and src[i] in "eE":
                j = i + 1
                if j < n and src[j] in "+-":
                    j += 1
                if j < n and src[j].isdigit():
                    is_float = True
                    i = j
                    while i < n and src[i].isdigit():
                        i += 1
            text = src[start:i]
            toks.append(_Tok("num", float(text) if is_float else int(text), start))
            continue
        if c.isalpha() or c == "_":
            while i < n and (src[i].isalnum() or src[i] == "_"):
                i += 1
            word = src[start:i]
            toks.append(_Tok("kw" if word in _KEYWORDS else "ident", word, start))
            continue
        if c in ("'", '"'):
            quote = c
            i += 1
            out = []
            while True:
                if i >= n:
                    raise ExpressionError(f"Unterminated string starting at position {start}")
                ch = src[i]
                if ch == "\\" and i + 1 < n:
                    nxt = src[i + 1]
                    if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", src[i + 2:i + 6]):
                        out.append(chr(int(src[i + 2:i + 6], 16)))
                        i += 6
                        continue
                    out.append(_ESCAPES.get(nxt, "\\" + nxt))
                    i += 2
                    continue
                if ch == quote:
                    i += 1
                    break
                out.append(ch)
                i += 1
            toks.append(_Tok("str", "".join(out), start))
            continue
        two = src[i:i + 2]
        if two in _TWO_CHAR:
            toks.append(_Tok("op", two, start))
            i += 2
            continue
        if c in _ONE_CHAR:
            toks.append(_Tok("op", c, start))
            i += 1
            continue
        if c == "=":
            raise ExpressionError(f"Unexpected '=' at position {start} (use '==' to compare)")
        if c == "|":
            raise ExpressionError(f"Unexpected character '|' at position {start} "
                                  "(filters are not supported; use function calls)")
        raise ExpressionError(f"Unexpected character {c!r} at position {start}")
    toks.append(_Tok("eof", None, n))
    return toks


# ---------------------------------------------------------------------------- parser
# AST nodes are tuples:
#   ("lit", value) ("list", [nodes]) ("obj", [(key, node)]) ("var", name)
#   ("bin", op, left, right) ("not", node) ("neg", node)
#   ("dot", node, field) ("idx", node, index_node) ("call", name, [nodes])

_COMPARE = {"==", "!=", "<", ">", "<=", ">="}


class _Parser:
    def __init__(self, toks: list[_Tok]):
        self.toks = toks
        self.pos = 0

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def advance(self) -> _Tok:
        tok = self.toks[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def is_op(self, value: str) -> bool:
        t = self.peek()
        return t.kind == "op" and t.value == value

    def is_kw(self, value: str) -> bool:
        t = self.peek()
        return t.kind == "kw" and t.value == value

    def expect_op(self, value: str) -> None:
        t = self.peek()
        if not (t.kind == "op" and t.value == value):
            raise ExpressionError(f"Expected '{value}', found {t.describe()} at position {t.pos}")
        self.advance()

    def parse(self):
        node = self.parse_or()
        t = self.peek()
        if t.kind != "eof":
            raise ExpressionError(f"Unexpected token {t.describe()} at position {t.pos}")
        return node

    def parse_or(self):
        left = self.parse_and()
        while self.is_kw("or"):
            self.advance()
            left = ("bin", "or", left, self.parse_and())
        return left

    def parse_and(self):
        left = self.parse_not()
        while self.is_kw("and"):
            self.advance()
            left = ("bin", "and", left, self.parse_not())
        return left

    def parse_not(self):
        if self.is_kw("not"):
            self.advance()
            return ("not", self.parse_not())
        return self.parse_comparison()

    def parse_comparison(self):
        left = self.parse_additive()
        while True:
            t = self.peek()
            if t.kind == "op" and t.value in _COMPARE:
                op = t.value
            elif t.kind == "kw" and t.value == "in":
                op = "in"
            elif t.kind == "kw" and t.value == "not" and self._next_is_in():
                # `x not in y` (a convenience: parsed as not (x in y))
                self.advance()
                self.advance()
                left = ("not", ("bin", "in", left, self.parse_additive()))
                continue
            else:
                return left
            self.advance()
            left = ("bin", op, left, self.parse_additive())

    def _next_is_in(self) -> bool:
        nxt = self.toks[self.pos + 1] if self.pos + 1 < len(self.toks) else None
        return nxt is not None and nxt.kind == "kw" and nxt.value == "in"

    def parse_additive(self):
        left = self.parse_multiplicative()
        while self.peek().kind == "op" and self.peek().value in ("+", "-"):
            op = self.advance().value
            left = ("bin", op, left, self.parse_multiplicative())
        return left

    def parse_multiplicative(self):
        left = self.parse_unary()
        while self.peek().kind == "op" and self.peek().value in ("*", "/", "%"):
            op = self.advance().value
            left = ("bin", op, left, self.parse_unary())
        return left

    def parse_unary(self):
        if self.is_op("-"):
            self.advance()
            return ("neg", self.parse_unary())
        return self.parse_postfix()

    def parse_postfix(self):
        node = self.parse_primary()
        while True:
            if self.is_op("."):
                self.advance()
                t = self.advance()
                if t.kind in ("ident", "kw"):
                    node = ("dot", node, t.value)
                elif t.kind == "num" and isinstance(t.value, int):
                    # `a.0` reads element 0 of a list (dotted-path convenience)
                    node = ("idx", node, ("lit", t.value))
                else:
                    raise ExpressionError(f"Expected identifier after '.', found {t.describe()} "
                                          f"at position {t.pos}")
            elif self.is_op("["):
                self.advance()
                index = self.parse_or()
                self.expect_op("]")
                node = ("idx", node, index)
            elif self.is_op("(") and node[0] == "var":
                self.advance()
                args = []
                if not self.is_op(")"):
                    args.append(self.parse_or())
                    while self.is_op(","):
                        self.advance()
                        args.append(self.parse_or())
                self.expect_op(")")
                node = ("call", node[1], args)
            else:
                return node

    def parse_primary(self):
        t = self.peek()
        if t.kind in ("num", "str"):
            self.advance()
            return ("lit", t.value)
        if t.kind == "kw" and t.value in ("true", "false", "null"):
            self.advance()
            return ("lit", {"true": True, "false": False, "null": None}[t.value])
        if t.kind == "ident":
            self.advance()
            return ("var", t.value)
        if self.is_op("("):
            self.advance()
            node = self.parse_or()
            self.expect_op(")")
            return node
        if self.is_op("["):
            self.advance()
            items = []
            if not self.is_op("]"):
                items.append(self.parse_or())
                while self.is_op(","):
                    self.advance()
                    if self.is_op("]"):
                        break
                    items.append(self.parse_or())
            self.expect_op("]")
            return ("list", items)
        if self.is_op("{"):
            self.advance()
            pairs = []
            while not self.is_op("}"):
                k = self.advance()
                if k.kind == "str" or k.kind in ("ident", "kw"):
                    key = k.value
                elif k.kind == "num":
                    key = str(k.value)
                else:
                    raise ExpressionError(f"Expected an object key, found {k.describe()} "
                                          f"at position {k.pos}")
                self.expect_op(":")
                pairs.append((key, self.parse_or()))
                if self.is_op(","):
                    self.advance()
                    continue
                if not self.is_op("}"):
                    t2 = self.peek()
                    raise ExpressionError(f"Expected ',' or '}}', found {t2.describe()} "
                                          f"at position {t2.pos}")
            self.expect_op("}")
            return ("obj", pairs)
        if t.kind == "eof":
            raise ExpressionError("Unexpected end of expression")
        raise ExpressionError(f"Unexpected token {t.describe()} at position {t.pos}")


_CACHE: dict[str, Any] = {}


def parse(expr: str):
    """Parse an expression (without `{{ }}`) into an AST; raises ExpressionError."""
    cached = _CACHE.get(expr)
    if cached is not None:
        return cached
    if not expr.strip():
        raise ExpressionError("Empty expression")
    ast = _Parser(_tokenize(expr)).parse()
    if len(_CACHE) > 2048:
        _CACHE.clear()
    _CACHE[expr] = ast
    return ast


# ---------------------------------------------------------------------------- values

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if _is_num(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def truthy(v: Any) -> bool:
    """null, false, 0, "", [] and {} are false; everything else is true."""
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if _is_num(v):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def json_eq(a: Any, b: Any) -> bool:
    """Deep equality: numbers compare across int/float, other types never equal each other."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_num(a) and _is_num(b):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and json_eq(v, b[k]) for k, v in a.items())
    return False


def _dump(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=str)


def _num_str(v: Any) -> str:
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e16:
            return f"{int(v)}.0"
        return repr(v)
    return str(v)


def value_to_string(v: Any) -> str:
    """`string()`: null -> "null", booleans lower case, containers as compact JSON."""
    if isinstance(v, str):
        return v
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_num(v):
        return _num_str(v)
    return _dump(v)


def to_display(v: Any) -> str:
    """Interpolation form inside a larger string: null -> "", containers as compact JSON."""
    if v is None:
        return ""
    return value_to_string(v)


def _err_type(msg: str) -> ExpressionError:
    return ExpressionError(f"Type error: {msg}")


# ---------------------------------------------------------------------------- evaluation

def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+":
        if isinstance(a, str) and isinstance(b, str):
            return a + b
        if isinstance(a, list) and isinstance(b, list):
            return a + b
    if not (_is_num(a) and _is_num(b)):
        raise _err_type(f"Cannot apply '{op}' to {type_name(a)} and {type_name(b)}")
    both_int = isinstance(a, int) and isinstance(b, int)
    if op == "+":
        return a + b if both_int else float(a) + float(b)
    if op == "-":
        return a - b if both_int else float(a) - float(b)
    if op == "*":
        return a * b if both_int else float(a) * float(b)
    if op == "/":
        if float(b) == 0.0:
            raise ExpressionError("Division by zero")
        if both_int:
            return a // b if a % b == 0 else a / b
        return float(a) / float(b)
    if op == "%":
        if float(b) == 0.0:
            raise ExpressionError("Division by zero")
        if both_int:
            r = abs(a) % abs(b)
            return -r if a < 0 else r
        return math.fmod(float(a), float(b))
    raise ExpressionError(f"Unknown operator {op}")


def _compare_lists(a: list, b: list) -> int:
    for x, y in zip(a, b):
        if _is_num(x) and _is_num(y):
            if float(x) != float(y):
                return -1 if float(x) < float(y) else 1
        elif isinstance(x, str) and isinstance(y, str):
            if x != y:
                return -1 if x < y else 1
        else:
            raise _err_type("Cannot compare heterogeneous array elements for ordering")
    return (len(a) > len(b)) - (len(a) < len(b))


def _order(op: str, a: Any, b: Any) -> bool:
    if _is_num(a) and _is_num(b):
        x, y = float(a), float(b)
        c = (x > y) - (x < y)
    elif isinstance(a, str) and isinstance(b, str):
        c = (a > b) - (a < b)
    elif isinstance(a, list) and isinstance(b, list):
        c = _compare_lists(a, b)
    else:
        raise _err_type(f"Cannot compare {type_name(a)} and {type_name(b)} with ordering operators")
    return {"<": c < 0, ">": c > 0, "<=": c <= 0, ">=": c >= 0}[op]


def _in(needle: Any, hay: Any) -> bool:
    if isinstance(hay, list):
        return any(json_eq(needle, x) for x in hay)
    if isinstance(hay, dict):
        if isinstance(needle, str):
            return needle in hay
        raise _err_type("Only string keys can be tested for membership in objects")
    if isinstance(hay, str):
        if isinstance(needle, str):
            return needle in hay
        raise _err_type("Only strings can be tested for substring membership")
    raise _err_type(f"'in' requires array, object, or string on right side, got {type_name(hay)}")


def _as_index(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _dot(obj: Any, field: str) -> Any:
    if isinstance(obj, dict):
        if field in obj:
            return obj[field]
        raise ExpressionError(f"Variable not found: field '{field}'")
    raise _err_type(f"Cannot access property '{field}' on {type_name(obj)}")


def _index(obj: Any, idx: Any) -> Any:
    if isinstance(obj, list):
        i = _as_index(idx)
        if i is None:
            raise _err_type("Array index must be an integer")
        j = len(obj) + i if i < 0 else i
        if 0 <= j < len(obj):
            return obj[j]
        raise ExpressionError(f"Index out of bounds: {i}")
    if isinstance(obj, dict):
        if not isinstance(idx, str):
            raise _err_type("Object key must be a string")
        if idx in obj:
            return obj[idx]
        raise ExpressionError(f"Variable not found: key '{idx}'")
    if isinstance(obj, str):
        i = _as_index(idx)
        if i is None:
            raise _err_type("String index must be an integer")
        j = len(obj) + i if i < 0 else i
        if 0 <= j < len(obj):
            return obj[j]
        raise ExpressionError(f"Index out of bounds: {i}")
    raise _err_type(f"Cannot index into {type_name(obj)}")


def _eval(node, ctx: dict, fns: dict) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "var":
        name = node[1]
        if isinstance(ctx, dict) and name in ctx:
            return ctx[name]
        raise ExpressionError(f"Variable not found: {name}")
    if kind == "dot":
        return _dot(_eval(node[1], ctx, fns), node[2])
    if kind == "idx":
        return _index(_eval(node[1], ctx, fns), _eval(node[2], ctx, fns))
    if kind == "bin":
        op = node[1]
        if op == "and":
            return truthy(_eval(node[2], ctx, fns)) and truthy(_eval(node[3], ctx, fns))
        if op == "or":
            return truthy(_eval(node[2], ctx, fns)) or truthy(_eval(node[3], ctx, fns))
        a = _eval(node[2], ctx, fns)
        b = _eval(node[3], ctx, fns)
        if op == "==":
            return json_eq(a, b)
        if op == "!=":
            return not json_eq(a, b)
        if op in ("<", ">", "<=", ">="):
            return _order(op, a, b)
        if op == "in":
            return _in(a, b)
        return _arith(op, a, b)
    if kind == "not":
        return not truthy(_eval(node[1], ctx, fns))
    if kind == "neg":
        v = _eval(node[1], ctx, fns)
        if not _is_num(v):
            raise _err_type(f"Cannot negate {type_name(v)}")
        return -v
    if kind == "list":
        return [_eval(x, ctx, fns) for x in node[1]]
    if kind == "obj":
        return {k: _eval(v, ctx, fns) for k, v in node[1]}
    if kind == "call":
        name = node[1]
        args = [_eval(a, ctx, fns) for a in node[2]]
        if fns and name in fns:
            return fns[name](*args)
        fn = _BUILTINS.get(name)
        if fn is None:
            raise ExpressionError(f"Unknown function: {name}")
        return fn(name, args)
    raise ExpressionError(f"bad node {kind}")


def strip_braces(expr: str) -> str:
    """Remove one optional surrounding `{{ ... }}`."""
    s = expr.strip()
    if s.startswith("{{") and s.endswith("}}") and len(s) >= 4:
        return s[2:-2].strip()
    return s


def evaluate(expr: str, context: dict | None, functions: dict | None = None) -> Any:
    """Evaluate `expr` (an optional surrounding `{{ }}` is stripped) against `context`."""
    if not isinstance(expr, str):
        raise ExpressionError(f"expression must be a string, got {type_name(expr)}")
    ast = parse(strip_braces(expr))
    try:
        return _eval(ast, context or {}, functions or {})
    except RecursionError as exc:
        raise ExpressionError("expression nested too deeply") from exc


# ---------------------------------------------------------------------------- rendering

def _pure_expression(s: str) -> str | None:
    t = s.strip()
    if not (t.startswith("{{") and t.endswith("}}")) or t.count("{{") != 1:
        return None
    inner = t[2:-2].strip()
    return inner or None


def render_string(s: str, context: dict, functions: dict | None = None) -> Any:
    pure = _pure_expression(s)
    if pure is not None:
        return evaluate(pure, context, functions)
    out: list[str] = []
    pos = 0
    while True:
        start = s.find("{{", pos)
        if start < 0:
            break
        end = s.find("}}", start)
        if end < 0:
            break
        out.append(s[pos:start])
        inner = s[start + 2:end].strip()
        out.append(to_display(evaluate(inner, context, functions)))
        pos = end + 2
    out.append(s[pos:])
    return "".join(out)


def render(template: Any, context: dict, functions: dict | None = None) -> Any:
    """Render `{{ }}` templates in strings found anywhere in `template` (dicts, lists).

    A string that is exactly one `{{ expr }}` becomes the expression's value with its JSON type;
    mixed strings interpolate (containers as compact JSON, null as ""). Errors raise
    ExpressionError.
    """
    if isinstance(template, str):
        return render_string(template, context, functions)
    if isinstance(template, dict):
        return {k: render(v, context, functions) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context, functions) for v in template]
    return template


# ---------------------------------------------------------------------------- built-ins

def _want(name: str, args: list, n: int) -> None:
    if len(args) != n:
        raise ExpressionError(f"Wrong number of arguments for {name}: expected {n}, got {len(args)}")


def _str_arg(fn: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _err_type(f"{fn}() requires string argument, got {type_name(v)}")
    return v


def _arr_arg(fn: str, v: Any, what: str = "") -> list:
    if not isinstance(v, list):
        raise _err_type(f"{fn}() {what}requires array, got {type_name(v)}")
    return v


def _fn_number(v: Any) -> Any:
    if _is_num(v):
        return v
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise _err_type(f"Cannot convert string '{v}' to number") from None
        return f
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    raise _err_type(f"Cannot convert {type_name(v)} to number")


def _fn_int(v: Any) -> int:
    if isinstance(v, bool):
        return 1 if v else 0
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _err_type("Cannot convert number to int")
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
        try:
            return int(float(v.strip()))
        except (ValueError, OverflowError):
            raise _err_type(f"Cannot convert string '{v}' to int") from None
    raise _err_type(f"Cannot convert {type_name(v)} to int")


def _fn_length(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # byte length, as upstream
    if isinstance(v, (list, dict)):
        return len(v)
    raise _err_type(f"length() requires string, array, or object, got {type_name(v)}")


def _num_fn(fn: str, v: Any, op: Callable[[float], int]) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float):
        return op(v)
    raise _err_type(f"{fn}() requires number, got {type_name(v)}")


def _fn_abs(v: Any) -> Any:
    if not _is_num(v):
        raise _err_type(f"abs() requires number, got {type_name(v)}")
    return abs(v)


def _round_half_away(f: float) -> int:
    return int(math.copysign(math.floor(abs(f) + 0.5), f))


def _minmax(fn: str, a: Any, b: Any) -> Any:
    if _is_num(a) and _is_num(b):
        if isinstance(a, int) and isinstance(b, int):
            return min(a, b) if fn == "min" else max(a, b)
        return min(float(a), float(b)) if fn == "min" else max(float(a), float(b))
    if isinstance(a, str) and isinstance(b, str):
        return min(a, b) if fn == "min" else max(a, b)
    raise _err_type(f"{fn}() requires two numbers or two strings")


def _fn_sum(v: Any) -> Any:
    arr = _arr_arg("sum", v)
    has_float = False
    total_i = 0
    total_f = 0.0
    for x in arr:
        if not _is_num(x):
            raise _err_type(f"sum() requires array of numbers, found {type_name(x)}")
        if isinstance(x, float):
            has_float = True
        else:
            total_i += x
        total_f += float(x)
    return total_f if has_float else total_i


def _fn_sort(v: Any) -> list:
    arr = _arr_arg("sort", v)
    if all(_is_num(x) for x in arr):
        return sorted(arr, key=float)
    if all(isinstance(x, str) for x in arr):
        return sorted(arr)
    raise _err_type("sort() requires array of numbers or strings")


def _fn_unique(v: Any) -> list:
    out: list = []
    for x in _arr_arg("unique", v):
        if not any(json_eq(x, y) for y in out):
            out.append(x)
    return out


def _fn_flat(v: Any) -> list:
    out: list = []
    for x in _arr_arg("flat", v):
        if isinstance(x, list):
            out.extend(x)
        else:
            out.append(x)
    return out


def _fn_range(name: str, args: list) -> list:
    if len(args) not in (1, 2):
        raise ExpressionError(f"Wrong number of arguments for {name}: expected 1 or 2, got {len(args)}")
    ints = [_as_index(a) for a in args]
    if any(i is None for i in ints):
        raise _err_type("range() requires integer arguments")
    if len(ints) == 1:
        return list(range(ints[0]))
    return list(range(ints[0], ints[1]))


def _fn_slice(name: str, args: list) -> Any:
    if len(args) not in (2, 3):
        raise ExpressionError(f"Wrong number of arguments for {name}: expected 2 or 3, got {len(args)}")
    v, start = args[0], args[1]
    end = args[2] if len(args) == 3 else None
    s = _as_index(start)
    if s is None:
        raise _err_type("slice() start must be integer")
    if not isinstance(v, (list, str)):
        raise _err_type(f"slice() requires array or string, got {type_name(v)}")
    if end is None:
        e = len(v)
    else:
        e = _as_index(end)
        if e is None:
            raise _err_type("slice() end must be integer")
    big = 1 << 62
    s = big if s < 0 else s   # upstream casts to an unsigned index
    e = big if e < 0 else e
    e = min(e, len(v))
    s = min(s, e)
    return v[s:e]


def _fn_index_of(hay: Any, needle: Any) -> int:
    if isinstance(hay, list):
        for i, x in enumerate(hay):
            if json_eq(x, needle):
                return i
        return -1
    if isinstance(hay, str):
        if not isinstance(needle, str):
            raise _err_type("index_of() needle must be string for string search")
        pos = hay.find(needle)
        return -1 if pos < 0 else len(hay[:pos].encode("utf-8"))
    raise _err_type(f"index_of() requires array or string, got {type_name(hay)}")


def _fn_count(hay: Any, needle: Any) -> int:
    if isinstance(hay, list):
        return sum(1 for x in hay if json_eq(x, needle))
    if isinstance(hay, str):
        if not isinstance(needle, str):
            raise _err_type("count() needle must be string for string search")
        return hay.count(needle)
    raise _err_type(f"count() requires array or string, got {type_name(hay)}")


def _fn_merge(a: Any, b: Any) -> dict:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        out.update(b)
        return out
    raise _err_type(f"merge() requires two objects, got {type_name(a)} and {type_name(b)}")


def _fn_chunks(v: Any, size: Any) -> list:
    n = _as_index(size)
    if n is None or n <= 0:
        raise _err_type("chunks() size must be a positive integer")
    arr = _arr_arg("chunks", v)
    return [arr[i:i + n] for i in range(0, len(arr), n)]


def _fn_match(pattern: Any, s: Any) -> bool:
    p = _str_arg("match", pattern)
    text = _str_arg("match", s)
    try:
        return re.search(p, text) is not None
    except re.error as exc:
        raise ExpressionError(f"Regex error: {exc}") from None


def _fn_reversed(v: Any) -> Any:
    if isinstance(v, list):
        return list(reversed(v))
    if isinstance(v, str):
        return v[::-1]
    raise _err_type(f"reversed() requires array or string, got {type_name(v)}")


def _fn_zip(a: Any, b: Any) -> list:
    x = _arr_arg("zip", a, "first argument ")
    y = _arr_arg("zip", b, "second argument ")
    return [[p, q] for p, q in zip(x, y)]


def _fn_join(arr: Any, sep: Any) -> str:
    items = _arr_arg("join", arr, "first argument ")
    return _str_arg("join", sep).join(value_to_string(x) for x in items)


def _fn_keys(v: Any) -> list:
    if isinstance(v, dict):
        return list(v.keys())
    raise _err_type(f"keys() requires object, got {type_name(v)}")


def _fn_values(v: Any) -> list:
    if isinstance(v, dict):
        return list(v.values())
    raise _err_type(f"values() requires object, got {type_name(v)}")


def _fixed(n: int, fn: Callable[..., Any]) -> Callable[[str, list], Any]:
    def call(name: str, args: list) -> Any:
        _want(name, args, n)
        return fn(*args)
    return call


_BUILTINS: dict[str, Callable[[str, list], Any]] = {
    "string": _fixed(1, value_to_string),
    "number": _fixed(1, _fn_number),
    "int": _fixed(1, _fn_int),
    "bool": _fixed(1, truthy),
    "type_of": _fixed(1, type_name),
    "length": _fixed(1, _fn_length),
    "keys": _fixed(1, _fn_keys),
    "values": _fixed(1, _fn_values),
    "abs": _fixed(1, lambda v: _fn_abs(v)),
    "floor": _fixed(1, lambda v: _num_fn("floor", v, math.floor)),
    "ceil": _fixed(1, lambda v: _num_fn("ceil", v, math.ceil)),
    "round": _fixed(1, lambda v: _num_fn("round", v, _round_half_away)),
    "min": _fixed(2, lambda a, b: _minmax("min", a, b)),
    "max": _fixed(2, lambda a, b: _minmax("max", a, b)),
    "sum": _fixed(1, _fn_sum),
    "lower": _fixed(1, lambda v: _str_arg("lower", v).lower()),
    "upper": _fixed(1, lambda v: _str_arg("upper", v).upper()),
    "trim": _fixed(1, lambda v: _str_arg("trim", v).strip()),
    "split": _fixed(2, lambda s, sep: _split(s, sep)),
    "join": _fixed(2, _fn_join),
    "replace": _fixed(3, lambda s, a, b: _str_arg("replace", s).replace(
        _str_arg("replace", a), _str_arg("replace", b))),
    "starts_with": _fixed(2, lambda s, p: _str_arg("starts_with", s).startswith(_str_arg("starts_with", p))),
    "ends_with": _fixed(2, lambda s, p: _str_arg("ends_with", s).endswith(_str_arg("ends_with", p))),
    "match": _fixed(2, _fn_match),
    "contains": _fixed(2, lambda hay, needle: _in(needle, hay)),
    "reversed": _fixed(1, _fn_reversed),
    "sort": _fixed(1, _fn_sort),
    "unique": _fixed(1, _fn_unique),
    "flat": _fixed(1, _fn_flat),
    "zip": _fixed(2, _fn_zip),
    "range": _fn_range,
    "slice": _fn_slice,
    "index_of": _fixed(2, _fn_index_of),
    "count": _fixed(2, _fn_count),
    "merge": _fixed(2, _fn_merge),
    "chunks": _fixed(2, _fn_chunks),
}


def _split(s: Any, sep: Any) -> list:
    text = _str_arg("split", s)
    delim = _str_arg("split", sep)
    if delim == "":
        # Rust's str::split("") yields "", each char, ""
        return [""] + list(text) + [""]
    return text.split(delim)


BUILTIN_NAMES = frozenset(_BUILTINS)

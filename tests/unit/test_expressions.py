"""Attune's expression language (attune_emulator.expressions)."""
import pytest

from attune_emulator.expressions import ExpressionError, evaluate, render, truthy

EVENT = {"event": {"id": 7, "trigger": "p.hook", "trigger_ref": "p.hook",
                   "payload": {"severity": "critical", "tags": ["db", "web"], "count": 150,
                               "env": "prod", "user": {"email": "a@b.c"}, "n": None}}}


@pytest.mark.parametrize("expr,expected", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("10 / 5", 2),
    ("10 / 4", 2.5),
    ("7 % 3", 1),
    ("-7 % 3", -1),
    ("-(2 + 3)", -5),
    ("'a' + \"b\"", "ab"),
    ("[1] + [2, 3]", [1, 2, 3]),
    ("1 == 1.0", True),
    ("true == 1", False),
    ("null == null", True),
    ("'b' > 'a'", True),
    ("[1, 2] < [1, 3]", True),
    ("not true", False),
    ("not 0 and 1", True),
    ("false or 'x'", True),
    ("2 in [1, 2]", True),
    ("'k' in {'k': 1}", True),
    ("'ell' in 'hello'", True),
    ("3 not in [1, 2]", True),
    ("{'a': 1, b: [1, 2,]}", {"a": 1, "b": [1, 2]}),
    ("[1, 2, 3][-1]", 3),
    ("'abc'[1]", "b"),
    ("{'a': {'b': 5}}.a.b", 5),
    ("{'a': 1}['a']", 1),
    ("1.5e1", 15.0),
    ("'it\\'s'", "it's"),
])
def test_operators(expr, expected):
    assert evaluate(expr, {}) == expected


def test_strips_braces_and_reads_context():
    assert evaluate("{{ event.payload.severity == 'critical' and 'db' in event.payload.tags }}",
                    EVENT) is True
    assert evaluate("event.payload.count > 100", EVENT) is True
    assert evaluate("event.payload.env in ['prod', 'staging']", EVENT) is True
    assert evaluate("event.payload.user.email", EVENT) == "a@b.c"
    assert evaluate("event.payload.n", EVENT) is None


@pytest.mark.parametrize("expr", [
    "event.payload.missing", "nope", "event.payload.tags[5]", "1 +", "a | upper",
    "unknown_fn(1)", "1 / 0", "'a' - 1", "'a' < 1", "length(1)", "(1", "x = 1", "'open",
])
def test_errors(expr):
    with pytest.raises(ExpressionError):
        evaluate(expr, EVENT)


@pytest.mark.parametrize("expr,expected", [
    ("string(1)", "1"), ("string(null)", "null"), ("string(true)", "true"),
    ("string([1, 'a'])", '[1,"a"]'), ("number('2.5')", 2.5), ("int('42')", 42),
    ("int(3.9)", 3), ("bool([])", False), ("type_of({})", "object"), ("type_of(1.5)", "number"),
    ("length('abc')", 3), ("length([1, 2])", 2), ("keys({'a': 1})", ["a"]),
    ("values({'a': 1})", [1]), ("abs(-3)", 3), ("floor(2.7)", 2), ("ceil(2.1)", 3),
    ("round(2.5)", 3), ("round(-2.5)", -3), ("min(3, 1)", 1), ("max('a', 'b')", "b"),
    ("sum([1, 2, 3])", 6), ("sum([1, 2.5])", 3.5), ("lower('AB')", "ab"), ("upper('ab')", "AB"),
    ("trim('  x ')", "x"), ("split('a,b', ',')", ["a", "b"]), ("join(['a', 1], '-')", "a-1"),
    ("replace('aXa', 'X', 'y')", "aya"), ("starts_with('hello', 'he')", True),
    ("ends_with('hello', 'lo')", True), ("match('^h.*o$', 'hello')", True),
    ("contains([1, 2], 2)", True), ("contains('abc', 'bc')", True), ("reversed([1, 2])", [2, 1]),
    ("reversed('ab')", "ba"), ("sort([3, 1, 2])", [1, 2, 3]), ("unique([1, 1, 2])", [1, 2]),
    ("flat([[1], 2, [3]])", [1, 2, 3]), ("zip([1, 2], ['a', 'b'])", [[1, "a"], [2, "b"]]),
    ("range(3)", [0, 1, 2]), ("range(1, 3)", [1, 2]), ("slice([1, 2, 3], 1)", [2, 3]),
    ("slice('hello', 1, 3)", "el"), ("index_of([5, 6], 6)", 1), ("index_of('abc', 'z')", -1),
    ("count([1, 1, 2], 1)", 2), ("merge({'a': 1}, {'b': 2})", {"a": 1, "b": 2}),
    ("chunks([1, 2, 3], 2)", [[1, 2], [3]]),
])
def test_builtins(expr, expected):
    assert evaluate(expr, {}) == expected


def test_caller_functions_win():
    fns = {"result": lambda: {"data": {"x": 1}}, "succeeded": lambda: True}
    assert evaluate("result().data.x", {}, fns) == 1
    assert evaluate("succeeded() and result().data.x == 1", {}, fns) is True


@pytest.mark.parametrize("value,expected", [
    (None, False), (False, False), (0, False), (0.0, False), ("", False), ([], False),
    ({}, False), (True, True), (1, True), ("a", True), ([0], True), ({"a": 1}, True),
])
def test_truthy(value, expected):
    assert truthy(value) is expected


def test_render_keeps_type_and_interpolates():
    ctx = {"parameters": {"count": 42, "email": "a@b.c", "items": ["x"], "none": None},
           "item": {"k": 1}}
    tpl = {"whole": "{{ parameters.count * 2 }}", "list": ["{{ parameters.items }}"],
           "mixed": "{{ parameters.email }}:{{ parameters.count }}",
           "obj": "v={{ item }}", "null": "[{{ parameters.none }}]",
           "upper": "{{ upper(parameters.email) }}", "plain": "no template", "num": 5}
    assert render(tpl, ctx) == {"whole": 84, "list": [["x"]], "mixed": "a@b.c:42",
                                "obj": 'v={"k":1}', "null": "[]", "upper": "A@B.C",
                                "plain": "no template", "num": 5}


def test_render_error_names_missing_field():
    with pytest.raises(ExpressionError, match="nope"):
        render({"x": "{{ task.ok.nope }}"}, {"task": {"ok": {"status": "ok"}}})

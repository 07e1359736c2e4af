"""Unit tests of the worker's pure logic: parameter rendering, inline scripts, result shaping and
bounded output capture (attune_emulator.worker.params / .output)."""
import json
import subprocess

import pytest
import yaml

from attune_emulator.worker import output, params
from attune_emulator.worker.output import BoundedBuffer, ProcessOutcome, shape_result


# ------------------------------------------------------------------ parameter documents
def test_merge_document_ambient_keys_win_in_order():
    doc = params.merge_document({"a": 1, "name": "param"}, [("name", "system"), ("name", "pack"),
                                                            ("b", 2)])
    assert doc == {"a": 1, "name": "pack", "b": 2}


def test_merge_document_non_object_config():
    assert params.merge_document(None, []) == {}
    assert params.merge_document(["x"], [("k", 1)]) == {"k": 1}


def test_json_is_one_compact_line_with_newline():
    payload = params.stdin_payload({"message": "héllo", "n": [1, {"x": None}]}, "json")
    assert payload == '{"message":"héllo","n":[1,{"x":null}]}\n'.encode()
    assert payload.count(b"\n") == 1


def test_dotenv_sorted_flattened_and_quoted():
    doc = {"url": "https://x", "headers": {"Content-Type": "application/json", "X": {"deep": 1}},
           "list": [1, "a"], "none": None, "flag": True, "count": 42, "ratio": 1.5,
           "quote": "It's", "empty": {}}
    text = params.render_dotenv(doc)
    assert text.split("\n") == sorted(text.split("\n"))
    assert "headers.Content-Type='application/json'" in text
    assert "headers.X.deep='1'" in text
    assert "list='[1,\"a\"]'" in text
    assert "none=''" in text
    assert "flag='true'" in text
    assert "count='42'" in text
    assert "ratio='1.5'" in text
    assert "quote='It'\\''s'" in text
    assert "empty" not in text
    assert not text.endswith("\n")


def test_dotenv_round_trips_through_bash():
    value = "multi\nline 'quoted' $HOME `x` \\ end"
    text = params.render_dotenv({"v": value})
    script = text + '\nprintf "%s" "$v"'
    out = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == value


def test_yaml_round_trip():
    doc = {"a": {"b": [1, 2]}, "s": "x: y", "n": None}
    assert yaml.safe_load(params.render_yaml(doc)) == doc


def test_render_dispatch():
    assert params.render({"a": 1}, "json") == '{"a":1}'
    assert params.render({"a": 1}, "dotenv") == "a='1'"
    assert params.render({"a": 1}, "yaml").strip() == "a: 1"


# ------------------------------------------------------------------ inline shell scripts
def test_inline_script_shape():
    script = params.build_inline_script('printf "%s" "$item"', {"item": "apple", "n": 3,
                                                                  "lst": [1, "a"], "bad-name": "x"})
    lines = script.split("\n")
    assert lines[0] == "#!/bin/bash"
    assert lines[1] == "set -e"
    assert "PARAM_ITEM='apple'" in lines and "item='apple'" in lines
    assert "PARAM_N='3'" in lines and "n='3'" in lines
    assert "lst='[1,\"a\"]'" in lines
    assert "PARAM_BAD_NAME='x'" in lines
    assert not any(line.startswith("bad-name=") for line in lines)
    assert not any(line.startswith("export") for line in lines)
    assert script.rstrip().endswith('printf "%s" "$item"')


def test_inline_script_runs_and_does_not_export(tmp_path):
    path = tmp_path / "s.sh"
    path.write_text(params.build_inline_script(
        'printf "%s|%s|" "$item" "$PARAM_ITEM"; env | grep -c "^item=" || true',
        {"item": "it's"}))
    out = subprocess.run(["/bin/bash", str(path)], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert out.stdout == "it's|it's|0\n"


@pytest.mark.parametrize("action,runtime,expected", [
    ({"is_adhoc": True, "pack_ref": "mypack"}, "shell", True),
    ({"is_adhoc": True, "pack_ref": "mypack"}, "Shell", True),
    ({"is_adhoc": True, "pack_ref": "core"}, "shell", False),
    ({"is_adhoc": True, "pack_ref": "core_tools"}, "shell", False),
    ({"is_adhoc": False, "pack_ref": "mypack"}, "shell", False),
    ({"is_adhoc": True, "pack_ref": "mypack"}, "python", False),
])
def test_is_inline_shell(action, runtime, expected):
    assert params.is_inline_shell(action, runtime) is expected


# ------------------------------------------------------------------ bounded capture
def test_bounded_buffer_under_and_at_limit():
    buf = BoundedBuffer(178)
    buf.write(b"x" * 50)
    assert buf.text == "x" * 50 and not buf.truncated and buf.bytes_truncated == 0


def test_bounded_buffer_cuts_byte_exact_and_counts():
    limit = 1000
    buf = BoundedBuffer(limit, "stdout")
    data = bytes((65 + i % 26) for i in range(5000))
    kept = b""
    for i in range(0, len(data), 333):
        kept += buf.write(data[i:i + 333])
    expected = data[:limit - 128] + b"\n\n[OUTPUT TRUNCATED: stdout exceeded size limit]\n"
    assert buf.raw == expected
    assert kept == expected  # what the live log file receives
    assert buf.truncated
    assert buf.bytes_truncated == 5000 - (limit - 128)


def test_bounded_buffer_one_byte_over():
    buf = BoundedBuffer(138, "stderr")
    buf.write(b"12345678901")
    assert buf.truncated and buf.bytes_truncated == 1
    assert buf.text.endswith("[OUTPUT TRUNCATED: stderr exceeded size limit]\n")


# ------------------------------------------------------------------ parsing
def test_parse_json_whole_then_last_line():
    assert output.parse_output('{"a": 1}\n', "json") == {"a": 1}
    assert output.parse_output('noise\n{"a": 2}\n', "json") == {"a": 2}
    assert not output.has_data(output.parse_output("no json here", "json"))
    assert output.parse_output("null", "json") is None


def test_parse_yaml_and_jsonl_and_text():
    assert output.parse_output("a: 1\nb: [x]\n", "yaml") == {"a": 1, "b": ["x"]}
    assert output.parse_output('{"a":1}\nnoise\n[2]\n', "jsonl") == [{"a": 1}, [2]]
    assert not output.has_data(output.parse_output("hello", "text"))


@pytest.mark.parametrize("stderr,expected", [
    ("", "Command exited with code 3"),
    ("Starting action...\n", "Starting action...\n"),
    ("1\n2\n3\n4\n5\n", "1\n2\n3\n4\n5\n"),
    ("1\n2\n3\n4\n5\n6\n", "6"),
    ("x\n" * 10 + "\n\n[OUTPUT TRUNCATED: stderr exceeded size limit]\n",
     "[OUTPUT TRUNCATED: stderr exceeded size limit]"),
])
def test_error_from_stderr(stderr, expected):
    assert output.error_from_stderr(3, stderr) == expected


# ------------------------------------------------------------------ result shapes
def _outcome(stdout=b"", stderr=b"", code=0, max_out=10_000, max_err=10_000, **kw):
    out, err = BoundedBuffer(max_out, "stdout"), BoundedBuffer(max_err, "stderr")
    out.write(stdout)
    err.write(stderr)
    return ProcessOutcome(exit_code=code, duration_ms=12, stdout=out, stderr=err, **kw)


def test_success_text():
    status, result = shape_result(_outcome(b"tick-1"), "text", "/a/stderr.log")
    assert status == "completed"
    assert result == {"exit_code": 0, "duration_ms": 12, "succeeded": True, "stdout": "tick-1"}


def test_success_json_has_data_not_stdout_and_stderr_log():
    status, result = shape_result(_outcome(b'log\n{"x": 1}\n', b"warn\n"), "json", "/a/stderr.log")
    assert status == "completed"
    assert result == {"exit_code": 0, "duration_ms": 12, "succeeded": True, "data": {"x": 1},
                      "stderr_log": "/a/stderr.log"}


def test_success_unparsable_json_keeps_stdout_and_whitespace_stderr_has_no_log():
    _, result = shape_result(_outcome(b"plain", b"  \n"), "json", "/a/stderr.log")
    assert result["stdout"] == "plain" and "data" not in result and "stderr_log" not in result


def test_failure_shapes():
    status, result = shape_result(_outcome(b"", b"", code=3), "text", "/a/e")
    assert status == "failed"
    assert result == {"succeeded": False, "exit_code": 3, "duration_ms": 12,
                      "error": "Command exited with code 3"}
    _, result = shape_result(_outcome(b"partial", b"Starting action...\n", code=1), "json", "/a/e")
    assert result["error"].strip() == "Starting action..."
    assert result["stdout"] == "partial" and result["stderr_log"] == "/a/e"
    assert "data" not in result


def test_failure_truncation_flags():
    _, result = shape_result(_outcome(b"a" * 2000, b"", code=1, max_out=1000), "text", "/a/e")
    assert result["stdout_truncated"] is True
    assert result["stdout_bytes_truncated"] == 2000 - (1000 - 128)
    _, result = shape_result(_outcome(b"", b"e\n" * 2000, code=1, max_err=1000), "text", "/a/e")
    assert result["stderr_truncated"] is True
    assert result["error"] == "[OUTPUT TRUNCATED: stderr exceeded size limit]"


def test_success_has_no_truncation_flags():
    _, result = shape_result(_outcome(b"a" * 2000, max_out=1000), "text", "/a/e")
    assert "stdout_truncated" not in result
    assert result["stdout"].endswith("[OUTPUT TRUNCATED: stdout exceeded size limit]\n")


def test_timeout_and_cancel_shapes():
    status, result = shape_result(_outcome(b"tick 1\n", code=-1, timed_out=True,
                                           timeout_seconds=2), "text", "/a/e")
    assert status == "failed"
    assert result == {"succeeded": False, "exit_code": -1, "duration_ms": 12,
                      "error": "Execution timed out after 2 seconds", "stdout": "tick 1\n"}
    status, result = shape_result(_outcome(b"tick 1\ncleanup-ran\n", code=143, cancelled=True),
                                  "text", "/a/e")
    assert status == "cancelled"
    assert result == {"succeeded": False, "cancelled": True, "exit_code": 143, "duration_ms": 12,
                      "error": "Execution cancelled by user", "stdout": "tick 1\ncleanup-ran\n"}


def test_broken_pipe_on_fast_success_is_ignored():
    status, _ = shape_result(_outcome(b"ok", stdin_error="Failed to write parameters to stdin: "
                                      "Broken pipe"), "text")
    assert status == "completed"
    status, result = shape_result(_outcome(b"ok", code=0, stdin_error="Failed to write: other"),
                                  "text")
    assert status == "failed" and result["error"] == "Failed to write: other"


def test_result_is_json_serialisable():
    _, result = shape_result(_outcome(b"\xff\xfebinary"), "text")
    json.dumps(result)


# ------------------------------------------------------------------ secret restore helpers
@pytest.mark.parametrize("path,parts", [("/auth_token", ["auth_token"]), ("$.a.b", ["a", "b"]),
                                        ("a.b", ["a", "b"]), ("/x~1y/0", ["x/y", "0"])])
def test_split_json_path(path, parts):
    assert params.split_json_path(path) == parts


def test_set_path_restores_nested_and_list_values():
    doc = {"auth_token": {"$attune_secret": True, "redacted": True}, "l": [0, {"k": 1}]}
    params.set_path(doc, ["auth_token"], "tok")
    params.set_path(doc, ["l", "1", "k"], "v")
    params.set_path(doc, ["new", "deep"], 3)
    params.set_path(doc, ["l", "9"], "ignored")
    assert doc == {"auth_token": "tok", "l": [0, {"k": "v"}], "new": {"deep": 3}}

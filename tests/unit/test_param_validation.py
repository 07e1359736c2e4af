"""attune_emulator.executor.param_validation (extension E10): which executions are validated,
the message format, and E9 redaction markers standing for valid values."""
from attune_emulator.executor.param_validation import invalid_config
from attune_emulator.keystore import REDACTED

ACTION = {"ref": "p.fetch", "param_schema": {"url": {"type": "string", "required": True},
                                             "retries": {"type": "integer", "minimum": 0}}}


def top(config):
    return {"id": 1, "parent": None, "action_ref": "p.fetch", "config": config}


def test_missing_required_parameter_message():
    assert invalid_config(top({}), ACTION) == \
        "Invalid parameters for action 'p.fetch': \"url\" is a required property"
    assert invalid_config(top(None), ACTION) == \
        "Invalid parameters for action 'p.fetch': \"url\" is a required property"


def test_type_errors_are_joined_with_pointers_in_path_order():
    assert invalid_config(top({"url": 123, "retries": -1}), ACTION) == (
        "Invalid parameters for action 'p.fetch': -1 is less than the minimum of 0 at /retries, "
        "123 is not of type \"string\" at /url")


def test_valid_and_extra_parameters_pass():
    assert invalid_config(top({"url": "http://x"}), ACTION) is None
    assert invalid_config(top({"url": "http://x", "extra": [1, 2]}), ACTION) is None


def test_workflow_children_and_schemaless_actions_are_not_validated():
    child = dict(top({}), parent=7)
    assert invalid_config(child, ACTION) is None
    assert invalid_config(top({}), {"ref": "p.free", "param_schema": None}) is None
    assert invalid_config(top({}), {"ref": "p.free", "param_schema": {}}) is None
    assert invalid_config(top({}), None) is None


def test_redacted_secret_stands_for_a_value_of_the_property_type():
    assert invalid_config(top({"url": dict(REDACTED)}), ACTION) is None
    nested = {"ref": "p.n", "param_schema": {"auth": {"type": "object", "required": True,
                                                      "properties": {"token": {"type": "string"}}}}}
    assert invalid_config(top({"auth": {"token": dict(REDACTED)}}), nested) is None
    assert invalid_config(top({"auth": {"token": 5}}), nested) == \
        "Invalid parameters for action 'p.n': 5 is not of type \"string\" at /auth/token"


def test_unusable_schema_is_not_validated():
    broken = {"ref": "p.b", "param_schema": {"x": {"type": "no-such-type", "required": True}}}
    assert invalid_config(top({}), broken) is None


def test_json_schema_passes_through():
    js = {"ref": "p.j", "param_schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                         "required": ["n"]}}
    assert invalid_config(top({"n": "x"}), js) == \
        "Invalid parameters for action 'p.j': \"x\" is not of type \"integer\" at /n"

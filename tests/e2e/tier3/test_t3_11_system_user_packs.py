"""T3.11 System vs user packs (scenarios.md T3.11).

Upstream has no tenants. A "system" pack is a standard pack (`is_standard: true`, like `core`):
it bypasses ownership checks, so every identity sees and runs it. A "user" pack created with
POST /api/v1/packs records `installed_by` and is hidden (404, dropped from lists) from every
other identity, `core.admin` included. A python pack's actions all run in the pack's one
virtualenv, `<runtime_envs_dir>/<pack ref>/python`, whoever executes them.

`e2e_standard` is uploaded under a unique ref and made standard with
PUT /api/v1/packs/<ref> {"is_standard": true}.
"""
import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import expect_api_error
from tests.helpers.security import pack_refs, upload_fixture_pack

pytestmark = [pytest.mark.tier3, pytest.mark.packs, pytest.mark.multi_tenant, pytest.mark.rbac]


@pytest.fixture
def standard_pack(admin, make) -> str:
    """`e2e_standard` uploaded under a unique ref, then marked standard; deleted at cleanup."""
    ref = upload_fixture_pack(admin, make, "e2e_standard")
    updated = admin.update_pack(ref, is_standard=True)
    assert updated["is_standard"] is True, f"PUT is_standard=true did not stick: {updated}"
    return ref


def test_core_is_a_system_pack(admin, make):
    """T3.11 System vs user packs: `GET /packs/core` says is_standard true, and a brand-new user
    holding no permission set at all still sees `core` in its pack list (system packs are
    visible to everyone)."""
    assert admin.get_pack("core")["is_standard"] is True
    nobody, _ = make.user([])
    assert "core" in pack_refs(nobody), "a user without grants must still list the core pack"


def test_system_packs_shared_user_packs_private(admin, make, uid, standard_pack):
    """T3.11 System vs user packs: users A and B (core.admin) each create a user pack. Both lists
    contain core and the standard pack; A's list has A's pack and not B's and vice versa; cross
    GETs answer 404. Both users run core.echo and <standard>.env_report to `completed`, each
    execution's `executor` is its own user, and both env_report runs report the same
    sys.prefix, the pack's shared virtualenv ending in /<standard ref>/python."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, ident_b = make.user(["core.admin"])
    pack_a = make.pack(client=user_a, ref=f"e2e_user_a_{uid}", label=f"user A {uid}")["ref"]
    pack_b = make.pack(client=user_b, ref=f"e2e_user_b_{uid}", label=f"user B {uid}")["ref"]

    seen_a, seen_b = pack_refs(user_a), pack_refs(user_b)
    assert {"core", standard_pack, pack_a} <= seen_a, f"A's list misses packs: {sorted(seen_a)}"
    assert {"core", standard_pack, pack_b} <= seen_b, f"B's list misses packs: {sorted(seen_b)}"
    assert pack_b not in seen_a, "A's pack list shows B's user pack"
    assert pack_a not in seen_b, "B's pack list shows A's user pack"
    expect_api_error(lambda: user_a.get_pack(pack_b), 404, "A reading B's user pack")
    expect_api_error(lambda: user_b.get_pack(pack_a), 404, "B reading A's user pack")
    assert user_b.get_pack(standard_pack)["is_standard"] is True, "B must read the system pack"

    runs = {}
    for name, client, ident in (("A", user_a, ident_a), ("B", user_b, ident_b)):
        echo = client.execute("core.echo", {"message": f"hello-{name}-{uid}"})
        report = client.execute(f"{standard_pack}.env_report", {},
                                permission_set_refs=["core.viewer"])
        echo = wait_for_execution(client, echo["id"], "completed", timeout=30)
        report = wait_for_execution(client, report["id"], "completed", timeout=90)
        assert echo["result"].get("stdout") == f"hello-{name}-{uid}", f"{name}'s echo: {echo['result']}"
        assert (echo["executor"], report["executor"]) == (ident["id"], ident["id"]), \
            f"{name}'s executions must run as {name} ({ident['id']}): {echo['executor']}, {report['executor']}"
        data = report["result"].get("data") or {}
        assert data.get("token_sub") == str(ident["id"]), \
            f"{name}'s env_report saw the execution token of identity {data.get('token_sub')}"
        runs[name] = data

    prefix_a, prefix_b = runs["A"].get("sys_prefix"), runs["B"].get("sys_prefix")
    assert prefix_a == prefix_b, f"system pack runs used different environments: {prefix_a} vs {prefix_b}"
    assert str(prefix_a).endswith(f"/{standard_pack}/python"), \
        f"sys.prefix {prefix_a} is not the pack's shared virtualenv .../{standard_pack}/python"

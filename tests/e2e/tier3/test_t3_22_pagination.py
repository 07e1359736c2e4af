"""T3.22 Execution history pagination (scenarios.md T3.22).

`GET /api/v1/executions` pages with `page` / `per_page` (default 20, cap 100), ordered by
`created` DESC; `total_items` / `total_pages` only with `include_total=true`; `page_size` echoes
the requested `per_page`; `limit` / `offset` are ignored (api.md §0.4, §8). Everything is filtered
on the server by this test's own ad-hoc action ref.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.polling import wait_until
from tests.helpers.scenario import parse_ts

# one xdist worker runs the suite's heavy bursts (these 100-execution runs, T3.21's 10 MiB output)
# and T3.14's latency measurement one after the other
pytestmark = [pytest.mark.tier3, pytest.mark.pagination, pytest.mark.xdist_group("t3_heavy")]

COUNT = 100
PER_PAGE = 20


def _execute_many(client, action_ref: str, n: int) -> list[int]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [ex["id"] for ex in pool.map(lambda _: client.execute(action_ref, {}), range(n))]


def test_pages_cover_every_execution_once_in_stable_order(admin, make, uid, e2e_pack):
    """T3.22 Execution history pagination: 100 executions of one ad-hoc action, paged with
    per_page 20 and include_total while they still change status: pages 1-5 hold 20 items each,
    total_items 100, total_pages 5, has_next true on pages 1-4 only, has_previous false on page 1
    only; the ids are the 100 created ones without duplicates; `created` never increases across
    pages; page 6 is empty. Re-paging after all are completed gives the same order. Without
    include_total there is no total_items/total_pages and page_size echoes per_page; limit/offset
    are ignored; the default per_page is 20; status filters combine with action_ref."""
    action = make.action(ref=f"{e2e_pack}.paged_{uid}", pack_ref=e2e_pack, runtime_ref="core.shell",
                         entrypoint="printf ok", param_schema={})
    ref = action["ref"]
    created_ids = _execute_many(admin, ref, COUNT)
    assert len(set(created_ids)) == COUNT

    def pages(**extra):
        return [admin.list_executions(action_ref=ref, page=n, per_page=PER_PAGE,
                                      include_total=True, **extra) for n in range(1, 7)]

    live = pages()  # while the executions are still being scheduled and run
    for n, page in enumerate(live[:5], start=1):
        pg = page["pagination"]
        assert (len(page["items"]), pg["page"], pg["page_size"], pg["total_items"],
                pg["total_pages"], pg["has_next"], pg["has_previous"]) == \
            (PER_PAGE, n, PER_PAGE, COUNT, 5, n < 5, n > 1), f"page {n}: {pg}, {len(page['data'])} items"
    assert live[5]["items"] == [] and live[5]["pagination"]["has_next"] is False, \
        f"page 6 is not empty: {live[5]}"
    ids = [i["id"] for p in live for i in p["items"]]
    assert len(ids) == len(set(ids)) == COUNT and set(ids) == set(created_ids), \
        f"paged ids: {len(ids)} ({len(set(ids))} distinct); missing {set(created_ids) - set(ids)}, " \
        f"extra {set(ids) - set(created_ids)}"
    stamps = [parse_ts(i["created"]) for p in live for i in p["items"]]
    assert all(a >= b for a, b in zip(stamps, stamps[1:])), "created increases across pages"

    wait_until(lambda: admin.list_executions(action_ref=ref, status="completed", per_page=1,
                                             include_total=True)["pagination"]["total_items"],
               timeout=90, done=lambda n: n == COUNT, description=f"all {COUNT} executions completed")
    settled = pages()
    assert [i["id"] for p in settled for i in p["items"]] == ids, \
        "the order changed once the executions completed (unstable ordering)"
    no_total = admin.list_executions(action_ref=ref, page=2, per_page=PER_PAGE)
    assert "total_items" not in no_total["pagination"] and "total_pages" not in no_total["pagination"] \
        and no_total["pagination"]["page_size"] == PER_PAGE and no_total["pagination"]["has_next"] is True, \
        f"without include_total: {no_total['pagination']}"
    assert [i["id"] for i in no_total["items"]] == ids[PER_PAGE:2 * PER_PAGE], \
        "page 2 without include_total differs from page 2 with it"
    ignored = admin.list_executions(action_ref=ref, limit=5, offset=10)
    assert [i["id"] for i in ignored["items"]] == ids[:20] and ignored["pagination"]["page_size"] == 20, \
        f"limit/offset were not ignored (default page 1 of 20): {ignored['pagination']}"
    assert admin.list_executions(action_ref=ref, status="completed", include_total=True
                                 )["pagination"]["total_items"] == COUNT
    assert admin.list_executions(action_ref=ref, status="failed", include_total=True
                                 )["pagination"]["total_items"] == 0


def test_per_page_is_capped_at_100(admin, make, uid, e2e_pack):
    """T3.22 Execution history pagination, caps: with 105 executions of one action, per_page 500
    returns 100 items with page_size echoing 500, has_next true and total_items 105; page 2 of
    per_page 100 holds the remaining 5, total_pages 2, and pages 1 + 2 of per_page 100 are
    exactly the 105 created ids."""
    action = make.action(ref=f"{e2e_pack}.capped_{uid}", pack_ref=e2e_pack, runtime_ref="core.shell",
                         entrypoint="printf ok", param_schema={})
    created_ids = _execute_many(admin, action["ref"], COUNT + 5)
    big = admin.list_executions(action_ref=action["ref"], per_page=500, include_total=True)
    pg = big["pagination"]
    assert (len(big["items"]), pg["page_size"], pg["has_next"], pg["total_items"]) == \
        (100, 500, True, COUNT + 5), f"per_page 500: {pg}, {len(big['data'])} items"
    rest = admin.list_executions(action_ref=action["ref"], per_page=100, page=2, include_total=True)
    assert (len(rest["items"]), rest["pagination"]["has_next"], rest["pagination"]["total_pages"]) == \
        (5, False, 2), f"page 2 of 100: {rest['pagination']}"
    first = admin.list_executions(action_ref=action["ref"], per_page=100, page=1)
    all_ids = [i["id"] for i in first["items"]] + [i["id"] for i in rest["items"]]
    assert sorted(all_ids) == sorted(created_ids), "per_page 100 pages lose or duplicate items"

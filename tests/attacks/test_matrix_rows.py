"""Every row of the attack matrix (issue 6), both ways: the attack succeeds without its protection,
is blocked with it, and the hypervisor's own evidence names the mechanism that stopped it."""

import re

import pytest

from vtlvisor.attacks import catalogue, run_one

ROWS = {a.name: a for a in catalogue()}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_both_ways(name):
    a = ROWS[name]
    without = run_one(a, False)
    assert without.outcome == "SUCCEEDED", f"{name} without {a.protection}: {without.line} {without.evidence}"
    with_ = run_one(a, True)
    assert with_.outcome == "BLOCKED", f"{name} with {a.protection}: {with_.line} {with_.evidence}"
    assert with_.evidence or a.expect_guest, f"{name}: blocked without hypervisor evidence: {with_.line}"
    if a.expect:
        assert any(re.search(a.expect, e) for e in with_.evidence), (a.expect, with_.evidence)
        assert not any(re.search(a.expect, e) for e in without.evidence), (a.expect, without.evidence)
    if a.expect_guest:
        assert any(re.search(a.expect_guest, g) for g in with_.guest), (a.expect_guest, with_.guest)
        assert not any(re.search(a.expect_guest, g) for g in without.guest), (a.expect_guest, without.guest)


def test_every_vbs_row_names_the_mechanism():
    """Rows contributed by the reference guest say which evidence proves the block."""
    vbs = [a for a in ROWS.values() if a.image.endswith("vbs.elf")]
    assert vbs and all(a.expect or a.expect_guest for a in vbs), [a.name for a in vbs if not a.expect]
